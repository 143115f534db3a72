"""End to end: a tiny GPT-Neo memorises a few TDEC sequences, then each method unlearns them.

Checks what a user relies on: forget-set MA falls to the held-out threshold, the output
directory is complete and reloads to the same logits, and bad input fails cleanly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import MEMORISED_SEQ_LEN, assert_no_near_ties, memorised_run_config, run_cli
from unlearnkit.config import load_config
from unlearnkit.data.sources import load_blocks
from unlearnkit.errors import UnlearnkitError
from unlearnkit.loop import run_unlearning
from unlearnkit.outputs import RunDirectory, check_output_dir, write_run_outputs
from unlearnkit.reports import render_report

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SEQ_LEN = MEMORISED_SEQ_LEN
_config = memorised_run_config
_cli = run_cli
pytestmark = pytest.mark.integration


# IHL's push on a token is bounded (its gradient in probability is at most 1), so with full fine-tuning at
# GA's 3e-3 a few stubborn tokens can hold MA one token (of 124) above the threshold for many epochs.
CASES = [("ga", "none", 3e-3), ("gd", "none", 3e-3), ("ihl", "none", 1e-2),
         ("ga", "lora", 1e-1), ("gd", "lora", 1e-1), ("ihl", "lora", 1e-1), ("ihl", "flora", 1e-1)]


@pytest.mark.parametrize(("method", "adapter", "lr"), CASES)
def test_each_method_unlearns_and_outputs_reload(memorized_model_dir, tmp_path, method, adapter, lr):
    out = tmp_path / "run"
    config = _config(memorized_model_dir, out, method, adapter, lr)
    result = run_unlearning(config, quiet=True)
    assert not out.exists()  # the loop returns; the caller writes
    write_run_outputs(result)

    before, after = result.before["forget"], result.after["forget"]
    assert before["ma"] >= 0.95
    assert result.state.criterion_met, result.state.history
    assert after["ma"] <= result.thresholds.ma and after["el"] <= result.thresholds.el
    assert result.thresholds.n_sequences == 8

    # the output directory is complete and self-describing, and reads back typed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["criterion_met"] and len(metrics["epochs"]) == len(result.state.history) >= 1
    assert load_config(out / "config.yaml") == config
    run = RunDirectory(out)
    assert run.finished and run.config() == config and run.metrics().success and result.success
    assert run.metrics().after.forget is not None and run.metrics().after.forget.ma == after["ma"]
    assert run.metrics().model_dump(exclude_unset=True) == metrics  # every key of the file, as written
    assert "Forgetting criterion met" in (out / "report.md").read_text()
    assert not list(tmp_path.glob(".run.partial-*"))
    # what it cost: training FLOPs as the analytic 6 N (full) or 4 N + 6 A (LoRA) per token (tests/test_flops.py)
    compute = metrics["compute"]
    assert compute["tokens"]["train"] == result.state.tokens_seen > 0
    original = AutoModelForCausalLM.from_pretrained(memorized_model_dir)
    matmul = sum(m.weight.numel() for m in original.modules() if isinstance(m, torch.nn.Linear))
    trainable = compute["parameters"]["trainable"]
    per_token = 6 * matmul if adapter == "none" else 4 * matmul + 6 * trainable
    assert compute["flops"]["train"] == pytest.approx(per_token * compute["tokens"]["train"], rel=0.15)
    assert compute["flops"]["criterion"] > 0 and (compute["flops"].get("flora_init", 0) > 0) == (adapter == "flora")
    assert compute["parameters"]["percent"] == pytest.approx(
        100.0 if adapter == "none" else 100 * trainable / sum(p.numel() for p in original.parameters()))

    # the merged model reloads to the unlearned logits; the adapter applies to the original base
    tokenizer = AutoTokenizer.from_pretrained(memorized_model_dir)
    ids = load_blocks(config.data.forget, tokenizer, DATA, seq_len=SEQ_LEN).input_ids
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    with torch.no_grad():
        merged_logits = merged(ids).logits
        # the result carries the unlearned model: no reload needed (writing merged it)
        torch.testing.assert_close(result.plain_model().eval()(ids).logits, merged_logits, rtol=0, atol=0)
        from unlearnkit.metrics.memorization import memorization_accuracy

        assert_no_near_ties(merged, ids)  # merged and unmerged logits differ by rounding: the same argmaxes
        assert float(memorization_accuracy(merged, ids).mean()) == pytest.approx(after["ma"])
        if adapter != "none":
            base = AutoModelForCausalLM.from_pretrained(memorized_model_dir).eval()
            adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
            torch.testing.assert_close(adapted(ids).logits, merged_logits, rtol=1e-4, atol=1e-4)
        else:
            assert not (out / "adapter").exists()


@pytest.mark.parametrize(("early_stop", "says"), [
    (True, "forgetting criterion NOT met within 2 epochs"),
    # a fixed number of epochs (TOFU's protocol): the criterion was only recorded, and the reason says so
    (False, "all 2 epochs ran (eval.early_stop off: the forgetting criterion is recorded, not used to stop); it "
            "was NOT met after any epoch")])
def test_a_run_that_used_all_its_epochs_says_why(memorized_model_dir, tmp_path, early_stop, says):
    config = _config(memorized_model_dir, tmp_path / "run", "ihl", "lora", 1e-6,
                     ["train.epochs=2", f"eval.early_stop={str(early_stop).lower()}"])
    result = run_unlearning(config, quiet=True)
    assert not result.state.criterion_met and len(result.state.history) == 2
    assert result.state.stop_reason.startswith(says)
    assert says in render_report(result)


def test_warmup_raises_the_learning_rate_linearly_over_updates(memorized_model_dir, tmp_path):
    # 4 forget sequences in batches of 2: 2 updates per epoch; warm-up over 3 updates.
    config = _config(memorized_model_dir, tmp_path / "run", "ihl", "lora", 1e-3,
                     ["train.epochs=2", "train.warmup_steps=3", "eval.early_stop=false"])
    history = run_unlearning(config, quiet=True).state.history
    assert history[0]["lr"] == pytest.approx(1e-3 * 3 / 4)  # the lr the next update would use
    assert history[1]["lr"] == pytest.approx(1e-3)


def test_deciding_the_criterion_early_stops_at_the_same_epoch_with_the_same_metrics(memorized_model_dir, tmp_path):
    runs = {}
    for scoring in ("full", "decide"):
        # thresholds given: with the held-out ones (MA 4.5 tokens of 124, EL10 0) the stop epoch sat on a plateau
        # 1.5-2.5 tokens above the MA threshold for five epochs, and came anywhere from epoch 6 to never
        config = _config(memorized_model_dir, tmp_path / f"run-{scoring}", "ihl", "lora", 5e-2,
                         [f"eval.per_epoch_el={scoring}", "eval.ma_threshold=0.2", "eval.el_threshold=0.05"])
        runs[scoring] = run_unlearning(config, quiet=True)
    full, decided = runs["full"], runs["decide"]
    assert decided.state.history[-1]["epoch"] == full.state.history[-1]["epoch"]
    assert decided.state.criterion_met and full.state.criterion_met
    assert full.state.history[-1]["epoch"] <= 8, "the criterion should be met with epochs to spare"
    skipped = 0
    for eager, lazy in zip(full.state.history, decided.state.history, strict=True):
        assert lazy["forget_ma"] == eager["forget_ma"]
        if lazy["forget_ma"] > lazy["ma_threshold"]:
            assert lazy["forget_el"] is None
            skipped += 1
        elif "el_scored" in lazy:  # decided on part of the set: a true lower bound, above the threshold
            assert lazy["forget_el"] is None and lazy["el_threshold"] < lazy["el_lower_bound"] <= eager["forget_el"]
        else:
            assert lazy["forget_el"] == eager["forget_el"]
    assert skipped >= 1, "choose a learning rate that takes more than one epoch"
    assert decided.after["forget"] == full.after["forget"] and decided.before == full.before


def test_an_epoch_that_has_not_forgotten_is_decided_on_part_of_the_set(memorized_model_dir):
    from unlearnkit.config import EvalConfig
    from unlearnkit.data.run_sets import load_run_data
    from unlearnkit.evaluation import evaluate_memorization
    from unlearnkit.modeling import load_model
    from unlearnkit.progress import Progress

    loaded = load_model(str(memorized_model_dir))
    forget = load_run_data(_config(memorized_model_dir, memorized_model_dir.parent / "x", "ihl", "lora", 1e-2),
                           loaded.tokenizer).forget
    options, quiet = EvalConfig(batch_size=4), Progress(quiet=True)
    full = evaluate_memorization(loaded.model, forget, options, quiet)
    # a memorised set against an EL threshold below its first sequence's EL: decided after one sequence
    low = min(full["el_per_sequence"]) / len(forget) / 2
    decided = evaluate_memorization(loaded.model, forget, options, quiet, thresholds=(1.0, low))
    assert decided["el"] is None and decided["el_scored"] == 1
    assert low < decided["el_lower_bound"] <= full["el"]
    # a threshold the mean may meet: every sequence is scored, the full value
    exact = evaluate_memorization(loaded.model, forget, options, quiet, thresholds=(1.0, full["el"]))
    assert exact["el"] == full["el"] and exact["el_per_sequence"] == full["el_per_sequence"]
    assert evaluate_memorization(loaded.model, forget, options, quiet, thresholds=(0.0, 1.0))["el"] is None


def test_non_finite_loss_keeps_last_good_state(memorized_model_dir, tmp_path):
    config = _config(memorized_model_dir, tmp_path / "run", "ga", "none", 1e30,
                     ["train.epochs=6", "train.max_grad_norm=null", "eval.ma_threshold=0", "eval.el_threshold=0"])
    result = run_unlearning(config, quiet=True)
    assert result.state.diverged_epoch is not None
    assert "NaN or infinite in epoch" in result.state.stop_reason
    assert all(torch.isfinite(p).all() for p in result.plain_model().parameters())


def test_a_diverging_run_exits_3_and_says_why(memorized_model_dir, tmp_path):
    done = _cli("run", str(REPO / "configs/paper/gpt-neo-125m-ga.yaml"), "--quiet",
                "--set", f"model.name={memorized_model_dir}", "--set", f"output.dir={tmp_path / 'run'}",
                "--set", f"data.seq_len={SEQ_LEN}", "--set", "data.forget.n=4", "--set", "train.lr=1e30",
                "--set", "train.max_grad_norm=null", "--set", "train.epochs=3", "--set", "train.grad_accum=1",
                "--set", "train.batch_size=1",
                "--set", "eval.ma_threshold=0", "--set", "eval.el_threshold=0", "--set", "eval.downstream=null",
                "--set", "eval.audit=false")
    assert done.returncode == 3, done.stderr
    assert "NaN or infinite" in done.stderr and "set train.max_grad_norm" in done.stderr


def test_a_wrecked_model_is_stopped_as_collapsed_not_called_a_success(memorized_model_dir, tmp_path):
    """GA at lr 10 keeps a finite loss that runs off to huge negative values while the model forgets
    everything; the collapse guard stops it, restores the last good epoch and exits 3."""
    config = _config(memorized_model_dir, tmp_path / "run", "ga", "none", 10.0, ["train.epochs=4"])
    result = run_unlearning(config, quiet=True)
    assert result.state.collapsed_epoch == 1 and not result.state.criterion_met
    assert "collapsed in epoch 1" in result.state.stop_reason
    report = render_report(result)
    assert report.index("the model was being wrecked") < 400  # said in the report's first lines
    # restored to the model before unlearning: it still knows the forget set
    from unlearnkit.metrics.memorization import memorization_accuracy

    assert float(memorization_accuracy(result.model, result.data.forget.input_ids).mean()) == pytest.approx(
        result.before["forget"]["ma"])
    write_run_outputs(result)
    metrics = RunDirectory(tmp_path / "run").metrics()
    assert metrics.collapsed_epoch == 1 and metrics.criterion_met is False and not metrics.success


def test_the_cli_exits_3_for_a_collapsed_run_and_says_why_first(memorized_model_dir, tmp_path, monkeypatch, capsys):
    from conftest import memorised_run_overrides
    from unlearnkit import cli

    settings = [*memorised_run_overrides(memorized_model_dir, tmp_path / "run"), "method.name=ga",
                "adapter.name=none", "train.lr=10", "train.epochs=4", "eval.audit=false"]
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "run", str(REPO / "configs/paper/gpt-neo-125m-lora-ihl.yaml"), "-q",
                                      *[part for setting in settings for part in ("--set", setting)]])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 3
    assert "collapsed in epoch 1" in capsys.readouterr().err
    assert (tmp_path / "run" / "report.md").read_text().index("the model was being wrecked") < 400
    assert not any(p.name.startswith(f".{'run'}.") for p in tmp_path.iterdir())  # no checkpoint left behind


def test_nothing_to_forget_is_said_not_hidden(memorized_model_dir, tmp_path, capsys):
    config = _config(memorized_model_dir, tmp_path / "run", "ihl", "lora", 1e-3,
                     ["train.epochs=1", "eval.ma_threshold=1.0", "eval.el_threshold=1.0", "eval.audit=false"])
    result = run_unlearning(config, quiet=True)
    assert result.state.criterion_met and len(result.state.warnings) == 1
    assert "nothing to forget" in " ".join(capsys.readouterr().err.split())  # shown even with quiet=True
    assert "**Warning:** the forget set already meets the forgetting criterion" in render_report(result)
    # with early stopping nothing is trained: training could only damage the model
    assert result.state.epoch == 0 and result.state.history == [] and "nothing was trained" in result.state.stop_reason
    assert result.after["forget"]["ma"] == pytest.approx(result.before["forget"]["ma"])
    trained = run_unlearning(config.model_copy(update={"eval": config.eval.model_copy(update={"early_stop": False})},
                                               deep=True), quiet=True)
    assert trained.state.epoch == 1  # without early stopping the epochs asked for are run


def test_bad_input_writes_nothing(memorized_model_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(UnlearnkitError, match="not empty.*--overwrite"):
        check_output_dir(_config(memorized_model_dir, out, "ihl", "lora", 1e-2))
    # --overwrite replaces only a previous unlearnkit output, never a folder of the user's or an input
    with pytest.raises(UnlearnkitError, match=r"holds files unlearnkit did not write \(keep.txt\)"):
        check_output_dir(_config(memorized_model_dir, out, "ihl", "lora", 1e-2, ["output.overwrite=true"]))
    for target in (memorized_model_dir, memorized_model_dir.parent):
        with pytest.raises(UnlearnkitError, match="an input of this command"):
            check_output_dir(_config(memorized_model_dir, target, "ihl", "lora", 1e-2, ["output.overwrite=true"]))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UnlearnkitError, match="cannot be created: .*a-file is a file"):
        check_output_dir(_config(memorized_model_dir, tmp_path / "a-file" / "run", "ihl", "lora", 1e-2))
    previous = tmp_path / "previous"
    (previous / "model").mkdir(parents=True)
    (previous / "run.json").write_text("{}")  # a run.json is not enough: its content names unlearnkit
    with pytest.raises(UnlearnkitError, match=r"did not write \(model, run.json\)"):
        check_output_dir(_config(memorized_model_dir, previous, "ihl", "lora", 1e-2, ["output.overwrite=true"]))
    (previous / "run.json").write_text('{"versions": {"unlearnkit": "0.1.0"}}')  # written before the marker
    assert check_output_dir(_config(memorized_model_dir, previous, "ihl", "lora", 1e-2,
                                    ["output.overwrite=true"])) == previous.resolve()
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with pytest.raises(UnlearnkitError, match="rank"):
        run_unlearning(_config(memorized_model_dir, tmp_path / "r2", "ihl", "lora", 1e-2, ["adapter.rank=1000"]),
                       quiet=True)
    with pytest.raises(UnlearnkitError, match="EL40 needs sequences of at least 41 tokens"):
        _config(memorized_model_dir, tmp_path / "r3", "ihl", "lora", 1e-2, ["eval.el_n=40"])
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_a_staging_directory_left_by_a_killed_writer_is_removed_with_a_message(tmp_path):
    from unlearnkit.io import remove_stale_staging, staged_directory

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".run.partial-{dead.stdout.strip()}-x1y2"
    (stale / "model").mkdir(parents=True)
    mine = tmp_path / f".run.partial-{os.getpid()}-abcd"  # a live writer's (this process): left alone
    mine.mkdir()
    with staged_directory(tmp_path / "run", replace=False) as staging:
        assert staging.name.startswith(f".run.partial-{os.getpid()}-")
    assert remove_stale_staging(tmp_path / "run") == [stale] and not stale.exists() and mine.exists()


def test_scores_before_unlearning_are_cached_by_model_and_data(memorized_model_dir, tmp_path, monkeypatch):
    from unlearnkit import evaluation

    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    config = _config(memorized_model_dir, tmp_path / "run", "ihl", "lora", 5e-2, ["train.epochs=1"])
    first = run_unlearning(config, quiet=True)
    stored = sorted((tmp_path / "cache" / "scores").glob("*.json"))
    assert len(stored) == 4  # forget and held-out sets, before and after unlearning
    calls: list[str] = []
    measured = evaluation.evaluate_memorization
    def counted(model, blocks, config, progress, label="", **kwargs):
        if label.startswith("before"):
            calls.append(blocks.name)
        return measured(model, blocks, config, progress, label, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_memorization", counted)
    second = run_unlearning(config, quiet=True)
    assert calls == [] and second.before == first.before and second.thresholds == first.thresholds
    # other weights are other scores: the cache is not used
    other = _config(memorized_model_dir, tmp_path / "run", "ihl", "lora", 5e-2, ["train.epochs=1", "eval.el_n=5"])
    run_unlearning(other, quiet=True)
    assert len(calls) == 2 and len(list((tmp_path / "cache" / "scores").glob("*.json"))) == 8


def test_after_el_forget_scores_the_held_out_set_by_ma_alone_after_unlearning(memorized_model_dir, tmp_path,
                                                                           monkeypatch):
    from unlearnkit.metrics.memorization import memorization_accuracy
    from unlearnkit.reports import summary_rows

    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))
    config = _config(memorized_model_dir, tmp_path / "run", "ihl", "lora", 5e-2,
                     ["train.epochs=1", "eval.after_el=forget"])
    result = run_unlearning(config, quiet=True)
    assert result.before["validation"]["el"] is not None  # the thresholds need it
    assert result.after["forget"]["el"] is not None and result.after["validation"]["el"] is None
    held_out = result.data.validation
    assert result.after["validation"]["ma"] == pytest.approx(float(memorization_accuracy(
        result.plain_model(), held_out.input_ids, held_out.attention_mask).mean()))
    assert ("held-out EL10", f"{result.before['validation']['el']:.4f}", "not scored (eval.after_el)") in \
        summary_rows(result)
    # an MA-only score never enters the cache, where a later run would take it for a complete one
    assert len(list((tmp_path / "cache" / "scores").glob("*.json"))) == 3
