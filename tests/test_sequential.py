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
                "train.lr=0.1", "eval.audit=false", "eval.bootstrap=50", "train.epochs=15",
                f"data.forget={{source: file, path: {files[0]}, per_document: true}}",
                f"data.requests=[{{source: file, path: {files[1]}, per_document: true}}]"]
    arguments = ["run", str(REPO / "configs/paper/gpt-neo-125m-lora-ihl.yaml"),
                 *[part for setting in settings for part in ("--set", setting)]]
    done = run_cli(*arguments)
    assert done.returncode == 0, done.stderr[-3000:]
    # each request's run finds its set scored on its starting weights by the summary, and does not score it again
    said = " ".join((done.stdout + done.stderr).split())
    assert said.count("before · forget: MA and EL10 of these weights and sequences from the score cache") == 2
    summary = json.loads((out / "requests.json").read_text())
    # every request's set is scored as loaded and after every request, later ones too
    assert [e["request"] for e in summary["as_loaded"]] == [1, 2]
    assert [[e["request"] for e in after["forget_sets"]] for after in summary["after"]] == [[1, 2], [1, 2]]
    assert all(e["ma"] > summary["after"][0]["thresholds"]["ma"] for e in summary["as_loaded"])  # memorised
    assert summary["kept_as_loaded"].keys() == summary["after"][0]["kept"].keys()
    # each request met the criterion (measured: by epoch 2-6 of 15, depending on the CPU's kernels)
    assert all(after["criterion_met"] for after in summary["after"])
    # the second request trained on other rows: nothing guarantees the first set stays below the thresholds (it
    # did, within 2 tokens, on the CPUs measured), so the summary says where it is, and it stays far from where
    # it started
    first_after_second = summary["after"][1]["forget_sets"][0]
    thresholds = summary["after"][1]["thresholds"]
    assert first_after_second["below_thresholds"] == (first_after_second["ma"] <= thresholds["ma"] and
                                                      first_after_second["el"] <= thresholds["el"])
    assert first_after_second["ma"] < 0.5 * summary["as_loaded"][0]["ma"]
    # request 2 started from request 1's unlearned model: its "before" is request 1's "after" on those rows
    second = json.loads((out / "request-2" / "metrics.json").read_text())
    first = json.loads((out / "request-1" / "metrics.json").read_text())
    assert second["before"]["forget"]["ma"] < 0.9 < first["before"]["forget"]["ma"] or \
        second["before"]["forget"]["ma"] != pytest.approx(first["before"]["forget"]["ma"])
    # request 2's set just before its turn, as the summary scored it, is what request 2 started from
    assert second["before"]["forget"]["ma"] == pytest.approx(summary["after"][0]["forget_sets"][1]["ma"])
    table = (out / "requests.md").read_text()
    assert "request 1: MA / EL10" in table and "| as loaded |" in table
    ahead = summary["after"][0]["forget_sets"][1]
    assert f"({100 * ahead['ma']:.1f} / " in table  # a set whose turn has not come: in brackets
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


@pytest.mark.parametrize("removed", [True, False])
def test_the_summary_says_when_earlier_requests_had_already_removed_a_later_set(removed):
    from unlearnkit.sequential import requests_markdown

    def scores(request, ma, below):
        return {"request": request, "ma": ma, "el": 0.0, "below_thresholds": below}

    later = scores(2, 0.25 if removed else 0.8, removed)
    summary = {"requests": ["a", "b"], "as_loaded": [{"request": 1, "ma": 0.9, "el": 0.4},
                                                     {"request": 2, "ma": 0.88, "el": 0.4}],
               "kept_as_loaded": {"reasoning_acc": None, "dialogue_f1": None, "pile_ppl": 100.0},
               "after": [{"request": 1, "criterion_met": True, "forget_sets": [scores(1, 0.2, True), later],
                          "kept": {"reasoning_acc": None, "dialogue_f1": None, "pile_ppl": 120.0}},
                         {"request": 2, "criterion_met": True,
                          "forget_sets": [scores(1, 0.5, False), scores(2, 0.2, True)],
                          "kept": {"reasoning_acc": None, "dialogue_f1": None, "pile_ppl": 130.0}}]}
    table = requests_markdown(summary)
    assert "| as loaded |  | 90.0 / 40.0 | 88.0 / 40.0 | — | — | 100.0 |" in table
    assert f"| 1 | met | 20.0 / 0.0 | ({100 * later['ma']:.1f} / 0.0) | — | — | 120.0 |" in table
    assert "| 2 | met | 50.0 / 0.0 * | 20.0 / 0.0 | — | — | 130.0 |" in table  # request 1's forgetting did not hold
    note = "Request 2's set was already below the thresholds when its turn came (MA 25.0 %; as loaded, 88.0 %)"
    assert (note in table) is removed
