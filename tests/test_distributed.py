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


def test_launches_that_shard_the_weights_are_refused_with_what_to_use_instead():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.parallel import refuse_sharded_weights

    def launch(kind, stage=None):
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(
            deepspeed_plugin=SimpleNamespace(zero_stage=stage) if stage else None))

    for sharded in (launch(DistributedType.FSDP), launch(DistributedType.DEEPSPEED, 3)):
        with pytest.raises(UnlearnkitError, match="not supported yet.*ddp.yaml.*ZeRO-2"):
            refuse_sharded_weights(sharded)
    for fine in (launch(DistributedType.NO), launch(DistributedType.MULTI_GPU), launch(DistributedType.MULTI_CPU),
                 launch(DistributedType.DEEPSPEED, 2)):
        refuse_sharded_weights(fine)


@pytest.mark.parametrize("forget_rows", [4, 1])
def test_two_processes_train_as_one_with_the_same_effective_batch_and_one_writes(memorized_model_dir, tmp_path,
                                                                                   forget_rows):
    # 4 forget rows: steps of 2 + 2 rows; 1 row: 1 + 0 (the process without a row takes part with weight 0)
    per_process = max(1, forget_rows // 2)

    def settings(out: Path, batch: int, retain_batch: int) -> list[str]:
        chosen = [*memorised_run_overrides(memorized_model_dir, out), f"data.forget.n={forget_rows}",
                  "method.name=ihl", "adapter.name=flora", "train.lr=3e-2", "adapter.dropout=0", "train.epochs=2",
                  f"train.batch_size={batch}", f"train.retain_batch_size={retain_batch}",
                  "output.fail_if_not_forgotten=false", "eval.bootstrap=50", "eval.cache_scores=false",
                  "eval.audit=false"]
        return [part for setting in chosen for part in ("--set", setting)]

    one, two = tmp_path / "one", tmp_path / "two"
    single = run_cli("run", str(CONFIG), "--quiet", *settings(one, 2 * per_process, 4))
    assert single.returncode == 0, single.stderr[-3000:]
    double = torchrun("-m", "unlearnkit.cli", "run", str(CONFIG), "--quiet", *settings(two, per_process, 2))
    assert double.returncode == 0, double.stderr[-3000:]

    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert len(ours["epochs"]) == len(theirs["epochs"]) and ours["stop_reason"] == theirs["stop_reason"]
    for mine, reference in zip(ours["epochs"], theirs["epochs"], strict=True):
        assert mine["forget_ma"] == pytest.approx(reference["forget_ma"], abs=1e-3)  # the same tokens right
        assert mine["tokens_seen"] == reference["tokens_seen"]
        assert mine["loss"] == pytest.approx(reference["loss"], rel=1e-5)  # the processes' mean of weighted losses
    assert [json.loads((d / "run.json").read_text())["batch"]["effective"] for d in (one, two)] == [2 * per_process] * 2
    adapter, reference = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (two, one))
    assert adapter.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(adapter[name], reference[name], rtol=0, atol=1e-5, msg=name)
    # exactly one process wrote: one output, nothing half-written beside it, the table printed once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert double.stdout.count("Outputs in") == 1
