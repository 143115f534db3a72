"""docs/extending.md's method of one's own, run exactly as the page shows it: its code block saved to a file outside
the package, named by `method.name: my_method.py:CappedAscent`, through `unlearnkit run`."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import REPO, memorised_run_overrides, run_cli


def _blocks(language: str) -> list[str]:
    page = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", page, flags=re.DOTALL)


def test_the_method_of_the_extending_page_runs_from_a_file_outside_the_package(memorized_model_dir, tmp_path):
    code, settings = _blocks("python")[0], yaml.safe_load(_blocks("yaml")[0])
    assert len(code.strip().splitlines()) <= 40  # "a user-defined method in under ~40 lines"
    (tmp_path / "my_method.py").write_text(code, encoding="utf-8")
    base = REPO / "configs" / "paper" / "gpt-neo-125m-lora-ihl.yaml"
    overrides = [*memorised_run_overrides(memorized_model_dir, tmp_path / "run"), "adapter.name=none",
                 "train.lr=3e-3", "eval.audit=false", "output.fail_if_not_forgotten=false",
                 f"method={json.dumps(settings['method'])}"]
    done = run_cli("run", str(base), *[part for o in overrides for part in ("--set", o)], "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert resolved["method"] == {"name": "my_method.py:CappedAscent", "retain_weight": 1.0, "retain_kind": "lm",
                                  "sam_rho": 0.0, "meta_relearn": 0.0, "disruption_mask": False,
                                  "ceiling": 4.0}
    history = metrics["epochs"]
    # its loss ran: capped ascent is minus a mean of per-token losses each at most the ceiling
    assert all(-4.0 <= epoch["forget_loss"] < 0 for epoch in history)
    assert history[-1]["forget_ma"] < metrics["before"]["forget"]["ma"]

    refused = run_cli("run", str(base), *[part for o in overrides for part in ("--set", o)],
                      "--set", "method.ceilng=2", cwd=tmp_path)
    assert refused.returncode == 2 and "method.ceilng is not an option of my_method.py:CappedAscent" in \
        refused.stderr and "Traceback" not in refused.stderr, refused.stderr

    (tmp_path / "not_a_method.py").write_text("class Plain:\n    pass\n", encoding="utf-8")
    refused = run_cli("run", str(base), *[part for o in overrides for part in ("--set", o)],
                      "--set", "method={name: not_a_method.py:Plain}", cwd=tmp_path)
    assert refused.returncode == 2 and "not_a_method.py:Plain is not an unlearning method" in refused.stderr \
        and "Traceback" not in refused.stderr, refused.stderr


def test_the_adapter_metric_and_data_source_of_the_extending_page_run(memorized_model_dir, tmp_path, monkeypatch):
    """BitFit trains the biases alone, the forget-perplexity metric lands in metrics.json with the value a direct
    computation gives, and the records file unlearns as a per-document forget set."""
    import torch
    from safetensors.torch import load_file

    from unlearnkit.config import load_config
    from unlearnkit.data.sources import load_blocks

    _, adapter_code, metric_code = _blocks("python")
    (tmp_path / "bitfit.py").write_text(adapter_code, encoding="utf-8")
    (tmp_path / "forget_ppl.py").write_text(metric_code, encoding="utf-8")
    (tmp_path / "records.jsonl").write_text(_blocks("json")[0], encoding="utf-8")
    base = REPO / "configs" / "paper" / "gpt-neo-125m-lora-ihl.yaml"
    overrides = [*memorised_run_overrides(memorized_model_dir, tmp_path / "run"), "adapter.name=bitfit.py:BitFit",
                 "method.name=gd", "train.lr=0.05", "train.epochs=3", "eval.audit=false",
                 "eval.metrics=[forget_ppl.py:ForgetPerplexity]", "output.fail_if_not_forgotten=false"]
    monkeypatch.chdir(tmp_path)
    assert load_config(base, [*overrides, "train.lr=null"]).train.lr == 1e-3  # the adapter's own default
    done = run_cli("run", str(base), *[part for o in overrides for part in ("--set", o)], "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    before = load_file(memorized_model_dir / "model.safetensors")
    after = load_file(tmp_path / "run" / "model" / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.endswith(".bias") for name in changed), changed  # only biases trained

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    config = load_config(tmp_path / "run" / "config.yaml")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(memorized_model_dir).eval()
    forget = load_blocks(config.data.forget, AutoTokenizer.from_pretrained(memorized_model_dir), config.data.dir,
                         seq_len=config.data.seq_len)
    with torch.no_grad():  # the perplexity of the forget set under the model as loaded, computed directly
        logits = model(input_ids=forget.input_ids, attention_mask=forget.attention_mask).logits[:, :-1]
        targets, real = forget.input_ids[:, 1:], forget.attention_mask[:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")[real]
    assert metrics["before"]["forget_ppl"]["perplexity"] == pytest.approx(float(torch.exp(nll.mean())), rel=1e-4)
    assert metrics["after"]["forget_ppl"]["perplexity"] > metrics["before"]["forget_ppl"]["perplexity"]

    records = [*overrides[:-4], "output.dir=records-run", "train.epochs=1", "eval.ma_threshold=0",
               "eval.el_threshold=0", "data.validation=null", "eval.audit=false", "output.fail_if_not_forgotten=false",
               "data.forget={source: file, path: records.jsonl, per_document: true}"]
    done = run_cli("run", str(base), *[part for o in records for part in ("--set", o)], "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((tmp_path / "records-run" / "run.json").read_text(encoding="utf-8"))
    assert run["data_ids"]["forget"] == ["doc0", "doc1"]  # one sequence per record
