"""The commands on a tiny memorised GPT-Neo, as a user runs them: run (a paper config, offline), memorization,
fisher, audit and eval, their outputs and their plain errors. (Split from test_end_to_end.py, which tests the
loop's behaviour, so that the two halves run on both workers.)"""

from __future__ import annotations

import json
import os

import pytest

from conftest import DATA, MEMORISED_SEQ_LEN, REPO, memorised_run_config, run_cli
from unlearnkit.loop import run_unlearning
from unlearnkit.metrics.harness import reasoning_change
from unlearnkit.reports import reasoning_change_sentence

SEQ_LEN = MEMORISED_SEQ_LEN
_config = memorised_run_config
_cli = run_cli
pytestmark = pytest.mark.integration


def test_cli_runs_a_paper_config_offline_and_reports_errors_cleanly(memorized_model_dir, tmp_path):
    out = tmp_path / "cli-run"
    done = _cli("run", str(REPO / "configs/paper/gpt-neo-125m-lora-ihl.yaml"), "--quiet",
                "--set", f"model.name={memorized_model_dir}", "--set", f"output.dir={out}",
                "--set", f"data.seq_len={SEQ_LEN}", "--set", "data.forget.n=4", "--set", "data.retain.n=16",
                "--set", "data.validation.n=4", "--set", "train.epochs=1", "--set", "train.grad_accum=1",
                "--set", "adapter.rank=4", "--set", "train.batch_size=2", "--set", "train.retain_batch_size=4",
                # what the model kept, before and after: a few items of each kind of task
                "--set", "eval.downstream.suite=quick", "--set", "eval.downstream.limit=2",
                "--set", "output.fail_if_not_forgotten=false")
    assert done.returncode == 0, done.stderr
    assert "forget MA" in done.stdout and (out / "model" / "config.json").exists()
    assert "Reasoning (Acc %)" in done.stdout and "Pile (PPL)" in done.stdout
    assert "Loading weights" not in done.stderr and "Writing model shards" not in done.stderr  # --quiet is quiet
    umask = os.umask(0)
    os.umask(umask)
    for written in (out / "model" / "model.safetensors", out / "metrics.json", out / "model"):
        expected = (0o777 if written.is_dir() else 0o666) & ~umask
        assert written.stat().st_mode & 0o777 == expected, written  # ordinary files, not 0600
    metrics = json.loads((out / "metrics.json").read_text())
    for when in ("before", "after"):
        kept = metrics[when]["downstream"]
        assert set(kept["reasoning"]) == {"arc_easy", "piqa", "copa"}
        assert all(task["n"] == 2 and 0 <= task["acc"] <= 1 for task in kept["reasoning"].values())
        assert kept["dialogue"]["wizard_of_wikipedia"]["n"] == 2 and kept["perplexity"]["pile"]["documents"] == 2
    report = (out / "report.md").read_text()
    assert "## What the model kept" in report
    change = reasoning_change(*(metrics[when]["downstream"]["reasoning"] for when in ("before", "after")))
    assert change["change"] == pytest.approx(metrics["after"]["downstream"]["reasoning_acc"]
                                             - metrics["before"]["downstream"]["reasoning_acc"])
    assert change["items"] == 6 and reasoning_change_sentence(change) in report
    from unlearnkit.config.sweep import SweepPoint
    from unlearnkit.experiments.sweep import point_row

    assert point_row(SweepPoint("cli-run", {}, None), out)["reasoning_change"] == change  # a sweep's row has it
    from unlearnkit.attacks.target import load_target

    # and so has what `unlearnkit attack` records of the run (the attack table's goal judges reasoning by it)
    assert load_target(str(out), None, None, None, DATA).run_facts["reasoning_change"] == change

    bad = _cli("run", str(REPO / "configs/paper/gpt-neo-125m-lora-ihl.yaml"), "--set", "train.lrr=1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert 'Did you mean "lr"' in bad.stderr and len(bad.stderr.strip().splitlines()) <= 3

    scored = _cli("memorization", str(memorized_model_dir), "--data", "jang,n=4,set=0", "--seq-len", str(SEQ_LEN),
                  "--quiet", "--json", str(tmp_path / "scores.json"))
    assert scored.returncode == 0, scored.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["ma"] >= 0.95 and len(scores["el_per_sequence"]) == 4


def test_eval_against_a_baseline_says_how_reasoning_changed_item_by_item(memorized_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    changed = tmp_path / "changed"  # the memorised model with its weights disturbed: some answers change
    model = AutoModelForCausalLM.from_pretrained(memorized_model_dir)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for weight in model.parameters():
            weight.add_(0.5 * weight.std() * torch.randn(weight.shape, generator=generator))
    model.save_pretrained(changed)
    AutoTokenizer.from_pretrained(memorized_model_dir).save_pretrained(changed)
    tasks = ("--tasks", "copa,piqa", "--limit", "40", "--quiet")
    assert _cli("eval", str(memorized_model_dir), *tasks, "--output", str(tmp_path / "before")).returncode == 0
    done = _cli("eval", str(changed), *tasks, "--baseline", str(tmp_path / "before"),
                "--output", str(tmp_path / "after"))
    assert done.returncode == 0, done.stderr
    before, after = (json.loads((tmp_path / when / "eval.json").read_text()) for when in ("before", "after"))
    found = after["reasoning_change"]
    assert found == {"baseline": str(tmp_path / "before"), **reasoning_change(before["reasoning"], after["reasoning"])}
    assert found["change"] == pytest.approx(after["reasoning_acc"] - before["reasoning_acc"]) and found["items"] == 80
    assert any(a != b for task in ("copa", "piqa") for a, b in zip(before["reasoning"][task]["correct"],
                                                                     after["reasoning"][task]["correct"], strict=True))
    assert found["low"] < found["change"] < found["high"]
    sentence = reasoning_change_sentence(found)
    assert sentence in " ".join(done.stdout.split()) and sentence in (tmp_path / "after" / "eval.md").read_text()
    # refused before the model is loaded, nothing written: another --limit, or the baseline's own folder as output
    other = _cli("eval", str(changed), "--tasks", "copa,piqa", "--limit", "20", "--baseline", str(tmp_path / "before"),
                 "--output", str(tmp_path / "other"))
    assert other.returncode == 2 and "same --suite, --tasks and --limit" in other.stderr
    assert not (tmp_path / "other").exists()
    kept = (tmp_path / "before" / "eval.json").read_bytes()
    into = _cli("eval", str(changed), *tasks, "--baseline", str(tmp_path / "before" / "eval.json"),
                "--output", str(tmp_path / "before"), "--overwrite")
    assert into.returncode == 2 and "input" in into.stderr and (tmp_path / "before" / "eval.json").read_bytes() == kept


def test_fisher_command_saves_a_reusable_fisher(memorized_model_dir, tmp_path, recwarn):
    out = tmp_path / "fisher"
    # the same forget and retain sets as _config's run below, so that run reuses both Fishers
    common = ["--set", f"model.name={memorized_model_dir}", "--set", f"data.seq_len={SEQ_LEN}",
              "--set", "data.forget.n=4", "--set", "data.retain.n=32", "--set", "data.validation.n=8",
              "--set", "adapter.rank=4"]
    done = _cli("fisher", str(REPO / "configs/paper/gpt-neo-125m-flora-ihl.yaml"), "--out", str(out), "--quiet",
                *common)
    assert done.returncode == 0, done.stderr
    assert (out / "forget.safetensors").exists() and (out / "retain.safetensors").exists()
    assert "mean F_forget" in done.stdout
    config = _config(memorized_model_dir, tmp_path / "run", "ihl", "flora", 3e-2,
                     ["train.epochs=1", f"adapter.flora.fisher_path={out}"])
    result = run_unlearning(config, quiet=True)
    assert result.adapter_summary is not None
    assert not [w for w in recwarn if "computing it afresh" in str(w.message)]  # the cache was reused
    again = _cli("fisher", str(REPO / "configs/paper/gpt-neo-125m-flora-ihl.yaml"), "--out", str(out), *common)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_audit_command_and_run_report_privacy(memorized_model_dir, tmp_path):
    done = _cli("audit", str(memorized_model_dir), "--forget", "jang,n=4,set=0", "--holdout", "tdec,split=val,n=4",
                "--seq-len", str(SEQ_LEN), "--quiet", "--json", str(tmp_path / "audit.json"))
    assert done.returncode == 0, done.stderr
    assert "MIA AUC" in done.stdout and "exact suffix extraction" in done.stdout
    report = json.loads((tmp_path / "audit.json").read_text())
    # a memorised forget set against unseen text: the loss attack separates them perfectly
    assert report["privacy"]["mia_auc"]["loss"] == 1.0
    forget, holdout = report["privacy"]["extraction_forget"], report["privacy"]["extraction_validation"]
    # memorisation stops at MA 0.95, so which rows are reproduced whole depends on the training trajectory
    # (measured: 3 of 4); at least one is, and none of the held-out ones
    assert forget["exact_match_rate"] >= 0.25 and holdout["exact_match_rate"] == 0.0
    assert forget["mean_matched_tokens"] > holdout["mean_matched_tokens"]
    assert report["forget"]["ma"] >= 0.95 and len(report["ids"]["forget"]) == 4
    assert report["written_by"] == "unlearnkit" and report["warnings"] == []

    # held-out text that is the forget set itself: an AUC of 0.5 would say nothing, and the audit says so
    same = _cli("audit", str(memorized_model_dir), "--forget", "jang,n=4,set=0", "--holdout", "jang,n=4,set=0",
                "--seq-len", str(SEQ_LEN), "--quiet", "--json", str(tmp_path / "audit.json"))
    assert same.returncode == 0, same.stderr
    assert "warning: 4 of the 4 held-out sequences are also forget sequences" in " ".join(same.stderr.split())
    again = json.loads((tmp_path / "audit.json").read_text())  # its own earlier file: replaced
    assert again["privacy"]["mia_auc"]["loss"] == 0.5 and again["warnings"][0].startswith("4 of the 4")


def test_eval_command_prints_and_writes_what_the_model_kept(memorized_model_dir, tmp_path):
    out = tmp_path / "eval"
    run_dir = tmp_path / "a-run"  # `unlearnkit eval` takes a run's output directory and evaluates its model/
    run_dir.mkdir()
    (run_dir / "model").symlink_to(memorized_model_dir)
    args = ("eval", str(run_dir), "--tasks", "copa,empathetic_dialogues,wikitext", "--limit", "3",
            "--output", str(out), "--quiet")
    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    for shown in ("Reasoning (Acc %)", "Dialogue (F1 %)", "copa", "empathetic_dialogues", "wikitext"):
        assert shown in done.stdout
    report = json.loads((out / "eval.json").read_text())
    assert report["reasoning"]["copa"]["n"] == 3 and 0 <= report["reasoning_acc"] <= 1
    assert report["dialogue"]["empathetic_dialogues"]["n"] == 3 and 0 <= report["dialogue_f1"] <= 1
    assert report["perplexity"]["wikitext"]["documents"] == 3 and report["perplexity"]["wikitext"]["perplexity"] > 1
    assert "| copa" in (out / "eval.md").read_text()
    again = _cli(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    bad = _cli("eval", str(memorized_model_dir), "--suite", "papr")
    assert bad.returncode == 2 and 'Did you mean "paper"?' in bad.stderr
    # error text is printed as it is: brackets in a path are not rich markup
    missing = _cli("run", str(tmp_path / "[q, v].yaml"))
    assert missing.returncode == 2 and "[q, v].yaml does not exist" in missing.stderr
