"""Several processes: ``torchrun`` (as ``accelerate launch`` does) with 2 CPU processes over gloo.

The same run on 2 processes with ``train.batch_size`` rows each must match 1 process with twice the rows per
step (the same effective batch): same stopping epoch, same scores, the same adapter within float tolerance;
the Fisher of FLoRA split over the processes must equal the single-process one; one process writes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, cli_env, memorised_run_overrides, run_cli
from distributed_fisher import fisher_inputs
from unlearnkit.adapters.fisher import empirical_fisher
from unlearnkit.parallel import SINGLE, Processes

pytestmark = pytest.mark.integration

CONFIG = REPO / "configs" / "paper" / "gpt-neo-125m-flora-ihl.yaml"
TESTS = Path(__file__).resolve().parent
FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp.yaml"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess[str]:
    """``args`` (a module run with -m, or a script) under torchrun on CPU, one thread per process."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               f"--master_port={_free_port()}", *args]
    env = {**cli_env(), "PYTHONPATH": str(TESTS)}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def accelerate_launch(config: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess[str]:
    """``accelerate launch --config_file CONFIG`` of tests/distributed_fsdp.py on CPU, one thread per process."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               f"--num_processes={processes}", f"--main_process_port={_free_port()}", *args]
    env = {**cli_env(), "PYTHONPATH": str(TESTS)}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_the_fisher_split_over_two_processes_equals_the_single_process_one(tmp_path):
    estimators = ["per_batch", "per_sequence"]
    done = torchrun(str(TESTS / "distributed_fisher.py"), str(tmp_path), *estimators)
    assert done.returncode == 0, done.stderr[-3000:]
    model, blocks = fisher_inputs()
    for estimator in estimators:
        split = load_file(tmp_path / f"{estimator}.safetensors")
        single = empirical_fisher(model, ["c_fc", "q_proj"], blocks, batch_size=2, estimator=estimator)
        assert int(split.pop("num_tokens")) == single.num_tokens
        assert split.keys() == single.sums.keys()
        for name, value in single.sums.items():
            torch.testing.assert_close(split[name], value, rtol=1e-5, atol=0, msg=f"{estimator} {name}")


def test_a_step_is_shared_between_processes_in_consecutive_nearly_equal_parts():
    rows = torch.arange(7)
    parts = [Processes(index, 3).share(rows) for index in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [Processes(index, 2).share(torch.arange(1)).tolist() for index in range(2)] == [[0], []]
    assert SINGLE.share(rows) is rows and list(Processes(1, 3).units(8)) == [1, 4, 7]
    assert SINGLE.mean({"loss": 2.5}) == {"loss": 2.5} and SINGLE.on_main(lambda: 3) == 3


def test_zero3_is_refused_with_what_to_use_instead_and_other_launches_pass():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.parallel import refuse_sharded_weights

    def launch(kind, stage=None):
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(
            deepspeed_plugin=SimpleNamespace(zero_stage=stage) if stage else None))

    with pytest.raises(UnlearnkitError, match="ZeRO-3 is not supported yet.*fsdp.yaml.*ZeRO-2"):
        refuse_sharded_weights(launch(DistributedType.DEEPSPEED, 3))
    for fine in (launch(DistributedType.NO), launch(DistributedType.MULTI_GPU), launch(DistributedType.MULTI_CPU),
                 launch(DistributedType.DEEPSPEED, 2), launch(DistributedType.FSDP)):
        refuse_sharded_weights(fine)


def _settings(model_dir: Path, out: Path, forget_rows: int, batch: int, retain_batch: int,
              extra: tuple[str, ...] = ()) -> list[str]:
    chosen = [*memorised_run_overrides(model_dir, out), f"data.forget.n={forget_rows}",
              "method.name=ihl", "adapter.name=flora", "train.lr=3e-2", "adapter.dropout=0", "train.epochs=2",
              f"train.batch_size={batch}", f"train.retain_batch_size={retain_batch}",
              "output.fail_if_not_forgotten=false", "eval.bootstrap=50", "eval.cache_scores=false",
              "eval.audit=false", *extra]
    return [part for setting in chosen for part in ("--set", setting)]


@pytest.fixture(scope="module")
def single_process_run(memorized_model_dir, tmp_path_factory):
    """The output directory of the one-process run with ``forget_rows`` rows, 2 per step when there are 4."""
    done: dict[int, Path] = {}

    def run(forget_rows: int) -> Path:
        if forget_rows not in done:
            out = tmp_path_factory.mktemp("single") / "one"
            per_process = max(1, forget_rows // 2)
            single = run_cli("run", str(CONFIG), "--quiet",
                             *_settings(memorized_model_dir, out, forget_rows, 2 * per_process, 4))
            assert single.returncode == 0, single.stderr[-3000:]
            done[forget_rows] = out
        return done[forget_rows]

    return run


def _assert_same_run(ours: Path, theirs: Path, weights: str = "adapter/adapter_model.safetensors") -> None:
    mine_metrics, reference_metrics = (json.loads((d / "metrics.json").read_text()) for d in (ours, theirs))
    assert len(mine_metrics["epochs"]) == len(reference_metrics["epochs"])
    assert mine_metrics["stop_reason"] == reference_metrics["stop_reason"]
    for mine, reference in zip(mine_metrics["epochs"], reference_metrics["epochs"], strict=True):
        assert mine["forget_ma"] == pytest.approx(reference["forget_ma"], abs=1e-3)  # the same tokens right
        assert mine["tokens_seen"] == reference["tokens_seen"]
        assert mine["loss"] == pytest.approx(reference["loss"], rel=1e-5)  # the processes' mean of weighted losses
    effective = [json.loads((d / "run.json").read_text())["batch"]["effective"] for d in (ours, theirs)]
    assert effective[0] == effective[1]
    adapter, reference = (load_file(d / weights) for d in (ours, theirs))
    assert adapter.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(adapter[name], reference[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("forget_rows", [4, 1])
def test_two_processes_train_as_one_with_the_same_effective_batch_and_one_writes(memorized_model_dir, tmp_path,
                                                                                   single_process_run, forget_rows):
    # 4 forget rows: steps of 2 + 2 rows; 1 row: 1 + 0 (the process without a row takes part with weight 0)
    per_process = max(1, forget_rows // 2)
    two = tmp_path / "two"
    double = torchrun("-m", "unlearnkit.cli", "run", str(CONFIG), "--quiet",
                      *_settings(memorized_model_dir, two, forget_rows, per_process, 2))
    assert double.returncode == 0, double.stderr[-3000:]
    assert json.loads((two / "run.json").read_text())["launch"]["distributed"] == "MULTI_CPU"
    _assert_same_run(two, single_process_run(forget_rows))
    # exactly one process wrote: one output, nothing half-written beside it, the table printed once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]
    assert double.stdout.count("Outputs in") == 1


def test_fsdp_shards_train_as_one_process_and_the_main_one_writes_the_gathered_model(memorized_model_dir, tmp_path,
                                                                                      single_process_run):
    # FSDP2 (fully_shard) launched with configs/accelerate/fsdp.yaml on 2 CPU processes; fp32 to compare
    sharded = tmp_path / "fsdp"
    done = accelerate_launch(FSDP_CONFIG, "--mixed_precision=no", str(TESTS / "distributed_fsdp.py"), "run",
                             str(CONFIG), "--quiet", *_settings(memorized_model_dir, sharded, 4, 2, 2))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((sharded / "run.json").read_text())["launch"] == {"distributed": "FSDP", "mixed_precision": "no"}
    _assert_same_run(sharded, single_process_run(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsdp"] and done.stdout.count("Outputs in") == 1


def test_a_collapse_under_fsdp_restores_every_shard_and_writes_the_model_from_before(memorized_model_dir, tmp_path):
    # FSDP, full fine-tuning: GA at lr 10 wrecks the model in epoch 1; the shards are restored
    # and the gathered model written is the one before unlearning, exactly; every process exits 3
    out = tmp_path / "fsdp"
    done = accelerate_launch(FSDP_CONFIG, "--mixed_precision=no",
                             str(TESTS / "distributed_fsdp.py"), "run", str(CONFIG), "--quiet",
                             *_settings(memorized_model_dir, out, 4, 2, 2, ("method.name=ga", "adapter.name=none",
                                                                            "train.lr=10", "train.epochs=4")))
    assert "collapsed in epoch 1" in done.stderr
    # torchrun names the first process to exit (3) and stops the others, once the main one has written
    assert "exitcode  : 3" in done.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["fsdp"]
    written, original = (load_file(d / "model.safetensors") for d in (out / "model", memorized_model_dir))
    assert written.keys() == original.keys()
    for name in original:
        torch.testing.assert_close(written[name], original[name], rtol=0, atol=0, msg=name)


def test_accelerates_bf16_mixed_precision_trains_fp32_adapters_under_autocast(memorized_model_dir, tmp_path,
                                                                              single_process_run):
    # `mixed_precision: bf16` in an accelerate config reaches the run as this variable (accelerate launch sets it)
    out = tmp_path / "bf16"
    done = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "run", str(CONFIG), "--quiet",
                           *_settings(memorized_model_dir, out, 4, 4, 4)], capture_output=True, text=True,
                          timeout=600, env={**cli_env(), "ACCELERATE_MIXED_PRECISION": "bf16"})
    assert done.returncode == 0, done.stderr[-3000:]
    reference = single_process_run(4)
    assert json.loads((out / "run.json").read_text())["launch"] == {"distributed": "NO", "mixed_precision": "bf16"}
    ours, theirs = (json.loads((d / "metrics.json").read_text())["epochs"] for d in (out, reference))
    for mine, fp32 in zip(ours, theirs, strict=True):  # bf16 matmuls: close to the fp32 run, not equal to it
        assert mine["loss"] != fp32["loss"] and mine["loss"] == pytest.approx(fp32["loss"], rel=1e-2)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert {str(value.dtype) for value in adapter.values()} == {"torch.float32"}  # the trained weights stay fp32
