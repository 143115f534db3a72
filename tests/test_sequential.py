"""Deletion requests one after another: each forget set unlearned on the model the request before left."""

from __future__ import annotations

import json

import pytest

from conftest import MEMORISED_SEQ_LEN, REPO, memorised_run_overrides, run_cli

pytestmark = pytest.mark.integration


def test_two_requests_in_turn_and_the_first_still_forgotten_after_the_second(memorized_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from conftest import DATA
    from unlearnkit.config import SourceConfig
    from unlearnkit.data.sources import load_blocks

    # the memorised rows, as two requests of two records each (one record per line of a file)
    tokenizer = AutoTokenizer.from_pretrained(memorized_model_dir)
    memorised = load_blocks(SourceConfig(source="jang", n=4, set=0), tokenizer, DATA, seq_len=MEMORISED_SEQ_LEN)
    texts = [tokenizer.decode(row) for row in memorised.input_ids]
    files = []
    for number, pair in enumerate((texts[:2], texts[2:]), 1):
        path = tmp_path / f"request-{number}.jsonl"
        path.write_text("".join(json.dumps({"text": text}) + "\n" for text in pair), encoding="utf-8")
        files.append(path)
    again = load_blocks(SourceConfig(source="file", path=str(files[0]), per_document=True), tokenizer, DATA,
                        seq_len=MEMORISED_SEQ_LEN)
    assert again.input_ids.tolist() == memorised.input_ids[:2].tolist()  # the same token rows

    out = tmp_path / "requests"
    settings = [*memorised_run_overrides(memorized_model_dir, out), "method.name=ihl", "adapter.name=lora",
                "train.lr=0.1", "eval.audit=false", "eval.bootstrap=50", "train.epochs=6",
                f"data.forget={{source: file, path: {files[0]}, per_document: true}}",
                f"data.requests=[{{source: file, path: {files[1]}, per_document: true}}]"]
    arguments = ["run", str(REPO / "configs/paper/gpt-neo-125m-lora-ihl.yaml"), "-q",
                 *[part for setting in settings for part in ("--set", setting)]]
    done = run_cli(*arguments)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "requests.json").read_text())
    assert [len(after["forget_sets"]) for after in summary["after"]] == [1, 2]
    assert all(after["criterion_met"] for after in summary["after"])
    first_after_second = summary["after"][1]["forget_sets"][0]
    assert first_after_second["ma"] <= summary["after"][1]["thresholds"]["ma"]  # forgetting held
    # request 2 started from request 1's unlearned model: its "before" is request 1's "after" on those rows
    second = json.loads((out / "request-2" / "metrics.json").read_text())
    first = json.loads((out / "request-1" / "metrics.json").read_text())
    assert second["before"]["forget"]["ma"] < 0.9 < first["before"]["forget"]["ma"] or \
        second["before"]["forget"]["ma"] != pytest.approx(first["before"]["forget"]["ma"])
    assert "request 1: MA / EL10" in (out / "requests.md").read_text()
    # run again: both requests are finished, nothing is retrained, the summary is the same
    rerun = run_cli(*arguments)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((out / "requests.json").read_text())["after"] == summary["after"]


def test_requests_without_saved_models_are_refused_before_any_work():
    from unlearnkit.config import load_config
    from unlearnkit.errors import UnlearnkitError

    with pytest.raises(UnlearnkitError, match="output.save_model: true"):
        load_config(None, ["data.requests=[{source: jang, n: 32, set: 1}]", "output.save_model=false"])
    assert load_config(None, ["data.requests=[{source: jang, n: 32, set: 1}]"]).data.requests[0].set == 1
