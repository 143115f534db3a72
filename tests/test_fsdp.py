"""FSDP and mixed precision: ``accelerate launch`` with configs/accelerate/fsdp.yaml on 2 CPU processes (gloo).

FSDP shards every weight, so the main process evaluates and writes a whole copy the shards are gathered
into (:class:`unlearnkit.parallel.WholeModel`); the run must match one process with the same effective
batch (with its checkpoints saved: saving must not change the training), a run wrecked under FSDP must be
restored on every shard, and a killed one resumed from its sharded state as if never interrupted. A separate file from
tests/test_distributed.py so that the two share the test workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    DISTRIBUTED_CONFIG,
    REPO,
    accelerate_launch,
    accelerate_launch_command,
    assert_same_run,
    cli_env,
    distributed_settings,
    kill_after_checkpoint,
    same_history,
)
from unlearnkit.checkpoints import Checkpoints, checkpoint_dir

pytestmark = pytest.mark.integration

CONFIG = DISTRIBUTED_CONFIG
TESTS = Path(__file__).resolve().parent
FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp.yaml"


def test_fsdp_shards_train_as_one_process_and_the_main_one_writes_the_gathered_model(memorized_model_dir, tmp_path,
                                                                                      single_process_run):
    # FSDP2 (fully_shard) launched with configs/accelerate/fsdp.yaml on 2 CPU processes; fp32 to compare
    sharded = tmp_path / "fsdp"
    done = accelerate_launch(FSDP_CONFIG, "--mixed_precision=no", str(TESTS / "distributed_fsdp.py"), "run",
                             str(CONFIG), "--quiet", *distributed_settings(memorized_model_dir, sharded, 4, 2, 2))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((sharded / "run.json").read_text())["launch"] == {"distributed": "FSDP", "mixed_precision": "no"}
    assert_same_run(sharded, single_process_run(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsdp"] and done.stdout.count("Outputs in") == 1


def test_sam_under_fsdp_is_refused_before_any_work_and_nothing_is_written(memorized_model_dir, tmp_path):
    # under FSDP the forget gradient's own gradients never reach the sharded weights: SAM trained as plain IHL
    out = tmp_path / "fsdp-sam"
    done = accelerate_launch(FSDP_CONFIG, "--mixed_precision=no", str(TESTS / "distributed_fsdp.py"), "run",
                             str(CONFIG), "--quiet", *distributed_settings(memorized_model_dir, out, 4, 2, 2,
                                                                            ("method.sam_rho=0.05",)))
    # each process exits 2 with the sentence (the launcher then reports its child's failure in its own words)
    assert done.returncode != 0 and "(exitcode: 2)" in done.stderr, done.stderr[-3000:]
    assert "error: method.sam_rho cannot run under FSDP yet" in " ".join(done.stderr.split())
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # 30 s; `make test-slow` (make test stays under 6 minutes on 2 cores)
def test_a_collapse_under_fsdp_restores_every_shard_and_writes_the_model_from_before(memorized_model_dir, tmp_path):
    # FSDP, full fine-tuning: GA at lr 10 wrecks the model in epoch 1; the shards are restored
    # and the gathered model written is the one before unlearning, exactly; every process exits 3
    out = tmp_path / "fsdp"
    done = accelerate_launch(FSDP_CONFIG, "--mixed_precision=no",
                             str(TESTS / "distributed_fsdp.py"), "run", str(CONFIG), "--quiet",
                             *distributed_settings(memorized_model_dir, out, 4, 2, 2, (
                                 "method.name=ga", "adapter.name=none", "train.lr=10", "train.epochs=4")))
    assert "collapsed in epoch 1" in done.stderr
    # torchrun names the first process to exit (3) and stops the others, once the main one has written
    assert "exitcode  : 3" in done.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["fsdp"]
    written, original = (load_file(d / "model.safetensors") for d in (out / "model", memorized_model_dir))
    assert written.keys() == original.keys()
    for name in original:
        torch.testing.assert_close(written[name], original[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow  # 15 s; `make test-slow`
def test_accelerates_bf16_mixed_precision_trains_fp32_adapters_under_autocast(memorized_model_dir, tmp_path,
                                                                              single_process_run):
    # `mixed_precision: bf16` in an accelerate config reaches the run as this variable (accelerate launch sets it)
    out = tmp_path / "bf16"
    done = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "run", str(CONFIG), "--quiet",
                           *distributed_settings(memorized_model_dir, out, 4, 4, 4)], capture_output=True, text=True,
                          timeout=600, env={**cli_env(), "ACCELERATE_MIXED_PRECISION": "bf16"})
    assert done.returncode == 0, done.stderr[-3000:]
    reference = single_process_run(4)
    assert json.loads((out / "run.json").read_text())["launch"] == {"distributed": "NO", "mixed_precision": "bf16"}
    ours, theirs = (json.loads((d / "metrics.json").read_text())["epochs"] for d in (out, reference))
    for mine, fp32 in zip(ours, theirs, strict=True):  # bf16 matmuls: close to the fp32 run, not equal to it
        assert mine["loss"] != fp32["loss"] and mine["loss"] == pytest.approx(fp32["loss"], rel=1e-2)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert {str(value.dtype) for value in adapter.values()} == {"torch.float32"}  # the trained weights stay fp32


@pytest.mark.slow  # two runs under FSDP (about a minute): `make test-slow`
def test_a_killed_fsdp_run_resumes_from_its_sharded_state_as_if_never_interrupted(memorized_model_dir, tmp_path):
    # every update is cut short at the epoch's end (2 micro-steps an epoch, 3 an update)
    def command(out: Path) -> tuple[list[str], dict[str, str]]:
        return accelerate_launch_command(FSDP_CONFIG, "--mixed_precision=no", str(TESTS / "distributed_fsdp.py"),
                                         "run", str(CONFIG), "--quiet", *distributed_settings(
                                             memorized_model_dir, out, 4, 1, 2,
                                             ("train.epochs=6", "train.grad_accum=3", "eval.early_stop=false")))

    launch, env = command(tmp_path / "reference")
    reference = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "run"
    kill_after_checkpoint(*command(out), out)
    saved = Checkpoints(checkpoint_dir(out)).latest()
    assert not out.exists() and saved is not None and (saved.directory / "loop.safetensors").is_file()

    launch, env = command(out)
    resumed = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[:3000]
    assert json.loads((out / "metrics.json").read_text())["resumed_after_epochs"] == [saved.epoch]
    assert same_history(out, tmp_path / "reference")
    mine, uninterrupted = (load_file(d / "adapter/adapter_model.safetensors") for d in (out, tmp_path / "reference"))
    assert mine.keys() == uninterrupted.keys() and all(torch.equal(mine[k], uninterrupted[k]) for k in mine)
