"""Checkpoint and resume: a run killed at any moment continues to the same result as an uninterrupted one.

The reference is the same configuration run in this process without interruption; the interrupted run is
the CLI in a subprocess, killed with SIGKILL during an epoch, re-run with the same command, interrupted
with SIGINT (Ctrl-C: exit 130 and the resume command), and finished with ``--resume``. Its final adapter
weights must equal the reference's bit for bit (CPU) and its per-epoch history the reference's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, cli_env, memorised_run_config, memorised_run_overrides, run_cli, wait_for_checkpoint
from unlearnkit.checkpoints import Checkpoints, checkpoint_dir
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import claim_holder, claimed
from unlearnkit.loop import run_unlearning
from unlearnkit.outputs import write_run_outputs

pytestmark = pytest.mark.integration

CONFIG = REPO / "configs" / "paper" / "gpt-neo-125m-flora-ihl.yaml"
# FLoRA (its residual base is re-derived on resume), LoRA dropout (the global RNG), a retain batch per step
# (the loop's generator) and gradient accumulation with a short last update per epoch (4 micro-steps per epoch, 3
# per update).
RESUME_SETTINGS = ["method.name=ihl", "adapter.name=flora", "train.lr=3e-2", "adapter.dropout=0.1",
                   "train.batch_size=1", "train.grad_accum=3", "train.epochs=9", "eval.early_stop=false",
                   "output.fail_if_not_forgotten=false", "eval.audit=false", "eval.bootstrap=50"]


def _overrides(model_dir: Path, out: Path) -> list[str]:
    settings = [*memorised_run_overrides(model_dir, out), *RESUME_SETTINGS]
    return [part for setting in settings for part in ("--set", setting)]


def _start(*args: str) -> subprocess.Popen[str]:
    # Ctrl-C as in a terminal: a suite started in the background of a shell without job control (`make test &` in a
    # script) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt for it
    return subprocess.Popen([sys.executable, "-m", "unlearnkit.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _history(metrics: dict) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "elapsed_s"} for record in metrics["epochs"]]


def test_a_killed_and_interrupted_run_resumes_bit_identical(memorized_model_dir, tmp_path):
    reference_dir = tmp_path / "reference"
    config = memorised_run_config(memorized_model_dir, reference_dir, "ihl", "flora", 3e-2,
                                  [*RESUME_SETTINGS, f"output.dir={reference_dir}"])
    reference = run_unlearning(config, quiet=True)
    write_run_outputs(reference)

    out = tmp_path / "run"
    checkpoints = Checkpoints(checkpoint_dir(out))
    command = ["run", str(CONFIG), "--quiet", *_overrides(memorized_model_dir, out)]
    killed = _start(*command)
    wait_for_checkpoint(out, 1, killed)
    assert claim_holder(out)["pid"] == killed.pid  # while it runs, no other run writes there
    time.sleep(0.15)  # into the next epoch (or its checkpoint): any moment must do
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    left = checkpoints.latest()
    assert not out.exists() and left is not None and left.epoch < 7, left

    # The same command again continues from the checkpoint; Ctrl-C saves nothing new but says how to resume.
    # It is interrupted once it has saved an epoch of its own (so it is past start-up, where Ctrl-C is
    # Python's), and 9 epochs leave it running while the poll below may see that checkpoint late.
    again = _start(*command)
    saved_epoch = wait_for_checkpoint(out, left.epoch + 1, again)
    again.send_signal(signal.SIGINT)
    _, stderr = again.communicate(timeout=120)
    assert again.returncode == 130, (again.returncode, stderr)
    assert f"unlearnkit run --resume {out.resolve()}" in stderr and "Traceback" not in stderr
    assert checkpoints.latest().epoch >= saved_epoch and not out.exists()

    finished = run_cli("run", "--resume", str(out))
    assert finished.returncode == 0, finished.stderr
    # the evaluation after unlearning is kept by the final weights: these are the reference's, so it is not redone
    said = " ".join((finished.stdout + finished.stderr).split())
    assert "after · validation: MA and EL10 of these weights and sequences from the score cache" in said
    assert not checkpoint_dir(out).exists()  # removed once the outputs are in place

    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (out, reference_dir))
    assert ours["resumed_after_epochs"][0] >= 1 and len(ours["resumed_after_epochs"]) == 2
    assert _history(ours) == _history(theirs) and len(ours["epochs"]) == 9
    assert ours["after"]["forget"] == theirs["after"]["forget"]
    assert ours["after"]["validation"] == theirs["after"]["validation"]
    for weights in ("adapter/adapter_model.safetensors", "model/model.safetensors"):
        resumed, uninterrupted = load_file(out / weights), load_file(reference_dir / weights)
        assert resumed.keys() == uninterrupted.keys()
        assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed), weights


def test_a_checkpoint_of_another_configuration_is_refused_not_replaced(memorized_model_dir, tmp_path):
    out = tmp_path / "run"
    config = memorised_run_config(memorized_model_dir, out, "ihl", "lora", 1e-2, ["train.epochs=1"])
    run_unlearning(config, quiet=True, checkpoints=Checkpoints.of(config))  # finished, outputs not written
    saved = Checkpoints.of(config).latest()
    assert saved is not None and saved.epoch == 1
    changed = memorised_run_config(memorized_model_dir, out, "ihl", "lora", 2e-2, ["train.epochs=1"])
    with pytest.raises(UnlearnkitError, match="another configuration.*--resume.*--restart"):
        run_unlearning(changed, quiet=True, checkpoints=Checkpoints.of(changed))
    assert Checkpoints.of(config).latest() == saved
    # how the evaluation after unlearning is scored changes nothing that was trained: that checkpoint resumes
    lighter = config.model_copy(update={"eval": config.eval.model_copy(update={"after_el": "forget"})})
    assert Checkpoints.of(lighter).resumable(lighter) == saved
    # while another process writes the directory, neither resuming nor --restart touches its checkpoint
    with claimed(out):
        busy = run_cli("run", str(CONFIG), "--restart", *_overrides(memorized_model_dir, out))
    assert busy.returncode == 2 and f"being written by process {os.getpid()}" in busy.stderr, busy.stderr
    assert Checkpoints.of(config).latest() == saved and not out.exists()
    refused = run_cli("run", "--resume", str(tmp_path / "elsewhere"))
    assert refused.returncode == 2 and "no checkpoint" in refused.stderr and "Traceback" not in refused.stderr


def test_reading_the_latest_checkpoint_while_a_run_moves_on_is_not_an_error(tmp_path, monkeypatch):
    # The writer names epoch-1 and removes epoch-0 between the reader's two reads (seen once in CI).
    directory = tmp_path / ".run.checkpoint"
    for epoch in (0, 1):
        (directory / f"epoch-{epoch}").mkdir(parents=True)
        (directory / f"epoch-{epoch}" / "state.json").write_text(json.dumps({"epoch": epoch}))
    pointer = directory / "latest.json"
    pointer.write_text(json.dumps({"epoch": 0, "directory": "epoch-0"}))
    read_text = Path.read_text

    def racing_read(path: Path, *args, **kwargs):
        if path == directory / "epoch-0" / "state.json":
            pointer.write_text(json.dumps({"epoch": 1, "directory": "epoch-1"}))
            (directory / "epoch-0" / "state.json").unlink()
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", racing_read)
    saved = Checkpoints(directory).latest()
    assert saved is not None and saved.epoch == 1 and saved.payload == {"epoch": 1}
    monkeypatch.undo()
    pointer.write_text(json.dumps({"epoch": 2, "directory": "epoch-2"}))  # a pointer that stays broken
    with pytest.raises(UnlearnkitError, match="cannot be read.*--restart"):
        Checkpoints(directory).latest()


def test_a_broken_checkpoint_names_the_command_that_starts_afresh(tmp_path):
    checkpoints = Checkpoints(tmp_path / ".run.checkpoint")
    checkpoints.directory.mkdir()
    (checkpoints.directory / "latest.json").write_text('{"epoch": 3, "directory": "epoch-3"}')  # epoch-3 is gone
    with pytest.raises(UnlearnkitError, match=r"cannot be read .* start the run afresh with its config and "
                                              r"--restart \(unlearnkit run CONFIG --restart\)"):
        checkpoints.latest()
