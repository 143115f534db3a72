"""Experiment tracking (``log.to``) through accelerate's trackers, checked by reading TensorBoard's event file
back: every update's loss and learning rate, every epoch's MA, the scores after; a missing tracker package is
refused before any work."""

from __future__ import annotations

import json

import pytest

from conftest import memorised_run_overrides, run_cli

REPO_CONFIG = "configs/paper/gpt-neo-125m-lora-ihl.yaml"


def test_a_run_reports_to_tensorboard(memorized_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    overrides = [*memorised_run_overrides(memorized_model_dir, out), "method.name=ihl", "adapter.name=flora",
                 "train.lr=0.1", "train.epochs=3", "eval.early_stop=false", "eval.audit=false",
                 "log.to=[tensorboard]"]
    done = run_cli("run", REPO_CONFIG, *[part for o in overrides for part in ("--set", o)], "-q")
    assert done.returncode in (0, 4), done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    run = tmp_path / "logs" / "run"  # logs/ beside the output directory, a folder per run
    assert list(run.glob("events.out.tfevents.*"))
    hparams = [path for path in run.rglob("events.out.tfevents.*") if path.parent != run]  # the config, apart
    assert hparams
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "epoch/forget_ma", "after/forget/ma", "after/criterion_met"} <= tags
    assert len(events.Scalars("train/loss")) == metrics["steps"]  # one point per optimiser update
    assert [round(e.value, 5) for e in events.Scalars("epoch/forget_ma")] == [
        round(e["forget_ma"], 5) for e in metrics["epochs"]]
    assert [e.step for e in events.Scalars("epoch/forget_ma")][-1] == metrics["steps"]
    assert events.Scalars("after/forget/ma")[0].value == pytest.approx(metrics["after"]["forget"]["ma"], rel=1e-6)


def test_a_tracker_that_is_not_installed_is_refused_before_any_work(memorized_model_dir, tmp_path):
    import importlib.util

    if importlib.util.find_spec("aim") is not None:
        pytest.skip("aim is installed here")
    out = tmp_path / "run"
    overrides = [*memorised_run_overrides(memorized_model_dir, out), "log.to=[aim]"]
    done = run_cli("run", REPO_CONFIG, *[part for o in overrides for part in ("--set", o)], "-q")
    assert done.returncode == 2 and "log.to names aim, which is not installed; pip install aim" in done.stderr
    assert not out.exists()
