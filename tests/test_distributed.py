"""Several processes: ``torchrun`` (as ``accelerate launch`` does) with 2 CPU processes over gloo.

The same run on 2 processes with ``train.batch_size`` rows each must match 1 process with twice the rows per
step (the same effective batch): same stopping epoch, same scores, the same adapter within float tolerance;
the Fisher of FLoRA split over the processes must equal the single-process one; one process writes; a
killed 2-process run resumes from its checkpoint as if never interrupted.
FSDP and mixed precision: tests/test_fsdp.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    DATA,
    DISTRIBUTED_CONFIG,
    MEMORISED_SEQ_LEN,
    assert_same_run,
    distributed_settings,
    kill_after_checkpoint,
    run_cli,
    same_history,
    torchrun,
    torchrun_command,
)
from distributed_fisher import fisher_inputs
from unlearnkit.adapters.fisher import empirical_fisher
from unlearnkit.checkpoints import Checkpoints, checkpoint_dir
from unlearnkit.io import claimed
from unlearnkit.parallel import SINGLE, Processes

pytestmark = pytest.mark.integration

CONFIG = DISTRIBUTED_CONFIG
TESTS = Path(__file__).resolve().parent


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


def test_zero3_and_a_moved_forget_gradient_under_sharding_are_refused_with_what_to_use_instead():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.parallel import refuse_unsupported_launch

    def launch(kind, stage=None):
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(
            deepspeed_plugin=SimpleNamespace(zero_stage=stage) if stage else None))

    with pytest.raises(UnlearnkitError, match="ZeRO-3 is not supported yet.*fsdp.yaml.*ZeRO-2"):
        refuse_unsupported_launch(launch(DistributedType.DEEPSPEED, 3))
    sam = {"sam_rho": 0.01, "disruption_mask": True}
    for sharded, name in ((launch(DistributedType.FSDP), "FSDP"), (launch(DistributedType.DEEPSPEED, 2), "DeepSpeed")):
        with pytest.raises(UnlearnkitError, match=f"method.sam_rho, method.disruption_mask cannot run under {name}"
                                                  " yet.*ddp.yaml"):
            refuse_unsupported_launch(sharded, sam)
    for fine in (launch(DistributedType.NO), launch(DistributedType.MULTI_GPU), launch(DistributedType.MULTI_CPU),
                 launch(DistributedType.DEEPSPEED, 2), launch(DistributedType.FSDP)):
        refuse_unsupported_launch(fine)
        refuse_unsupported_launch(fine, {})
    for data_parallel in (launch(DistributedType.NO), launch(DistributedType.MULTI_GPU),
                          launch(DistributedType.MULTI_CPU)):
        refuse_unsupported_launch(data_parallel, sam)


@pytest.mark.parametrize("forget_rows", [4, pytest.param(1, marks=pytest.mark.slow)])  # 1 row: `make test-slow`
def test_two_processes_train_as_one_with_the_same_effective_batch_and_one_writes(memorized_model_dir, tmp_path,
                                                                                   single_process_run, forget_rows):
    # 4 forget rows: steps of 2 + 2 rows; 1 row: 1 + 0 (the process without a row takes part with weight 0)
    # with a tracker: its log written once, and closed without taking down the group the processes still need
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    per_process = max(1, forget_rows // 2)
    two = tmp_path / "two"
    double = torchrun("-m", "unlearnkit.cli", "run", str(CONFIG), "--quiet",
                      *distributed_settings(memorized_model_dir, two, forget_rows, per_process, 2,
                                            ("log.to=[tensorboard]",)))
    assert double.returncode == 0, double.stderr[-3000:]
    assert json.loads((two / "run.json").read_text())["launch"]["distributed"] == "MULTI_CPU"
    assert_same_run(two, single_process_run(forget_rows))
    # exactly one process wrote: one output, nothing half-written beside it, the table printed once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "two"]
    assert double.stdout.count("Outputs in") == 1
    assert len(list((tmp_path / "logs" / "two").glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(tmp_path / "logs" / "two"))
    events.Reload()
    steps = json.loads((two / "metrics.json").read_text())["steps"]
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, steps + 1))




STEP_RUNS = [f"{method}-{adapter}" for method in ("ga", "gd", "ihl", "npo") for adapter in ("lora", "none")]


def test_a_step_is_the_same_on_two_processes_with_accumulation_and_in_one_batch_on_rows_of_unequal_length(
        memorized_model_dir, tmp_path):
    # per-document rows of unequal length, 6 of them: a step of 4 rows, then a short one of 2 (one row each on
    # 2 processes); each micro-step's loss is divided by the whole step's tokens (rows for NPO)
    from distributed_steps import steps_config, trained_weights, write_records
    from unlearnkit.loop import run_unlearning

    records = write_records(tmp_path / "records.jsonl")
    done = torchrun(str(TESTS / "distributed_steps.py"), str(memorized_model_dir), str(records), str(tmp_path),
                    *STEP_RUNS)
    assert done.returncode == 0, done.stderr[-3000:]
    lengths = {int(n) for n in load_blocks_lengths(memorized_model_dir, records)}
    assert len(lengths) >= 4, lengths  # the rows really are of unequal length
    differences = {}
    for run in STEP_RUNS:
        method, adapter = run.split("-")
        two = load_file(tmp_path / f"{run}.safetensors")
        for batch, grad_accum in ((4, 1), (2, 2)):
            one = trained_weights(run_unlearning(steps_config(memorized_model_dir, records, tmp_path / "one", method,
                                                              adapter, batch, grad_accum), quiet=True))
            assert one.keys() == two.keys()
            # relative to each weight's scale: an element near 0 has no meaningful relative error of its own
            worst = max(float((two[n] - w).abs().max() / w.abs().max()) for n, w in one.items())
            differences[f"{run}, 1 process x {batch} rows x accumulation {grad_accum}"] = worst
    print("\n".join(f"{name}: {value:.1e}" for name, value in differences.items()))
    # each batch is cut to its longest row, so the split changes the batches' widths, and GPT-Neo rounds its
    # attention in float32 even in a float64 model, differently for each width; two epochs of Adam amplify that
    # to about 2e-5 (GA and NPO with LoRA); a row counted twice or a wrong normaliser is off by percents
    assert max(differences.values()) <= 1e-4, differences


VARIANT_RUNS = ["ihl-lora-sam", "gd-none-meta", "ihl-none-mask"]


def test_sam_meta_unlearning_and_disruption_masking_take_each_micro_batch_alike_on_two_processes_and_one(
        memorized_model_dir, tmp_path):
    # each takes the forget gradient elsewhere than at θ from one micro-batch's own gradients (SAM's ascent
    # direction, the simulated relearning step, the sign mask): 2 processes of 2 rows each must train as 1 process
    # accumulating 2 micro-batches of 2 rows, the processes' gradients reduced once per update like any step's.
    # 4 records: every step is whole, so the micro-batches hold the same rows both ways (a short last step of 2
    # rows is shared 1 + 1 between the processes but 2 + 0 between one process's micro-steps)
    from distributed_steps import parse_run, steps_config, trained_weights, write_records
    from unlearnkit.loop import run_unlearning

    records = write_records(tmp_path / "records.jsonl", 4)
    done = torchrun(str(TESTS / "distributed_steps.py"), str(memorized_model_dir), str(records), str(tmp_path),
                    *VARIANT_RUNS)
    assert done.returncode == 0, done.stderr[-3000:]
    differences = {}
    for run in VARIANT_RUNS:
        method, adapter, extra = parse_run(run)
        two = load_file(tmp_path / f"{run}.safetensors")
        one = trained_weights(run_unlearning(steps_config(memorized_model_dir, records, tmp_path / "one", method,
                                                          adapter, 2, 2, extra=extra), quiet=True))
        plain = trained_weights(run_unlearning(steps_config(memorized_model_dir, records, tmp_path / "plain",
                                                            method, adapter, 2, 2), quiet=True))
        assert one.keys() == two.keys()
        differences[run] = max(float((two[n] - w).abs().max() / w.abs().max()) for n, w in one.items())
        # and the variant changed the training: the comparison would pass if it were ignored on both sides
        assert max(float((plain[n] - w).abs().max() / w.abs().max()) for n, w in one.items()) > 1e-3, run
    print("\n".join(f"{name}: {value:.1e}" for name, value in differences.items()))
    assert max(differences.values()) <= 1e-5, differences


def load_blocks_lengths(model_dir: Path, records: Path) -> list[int]:
    from transformers import AutoTokenizer

    from unlearnkit.config import SourceConfig
    from unlearnkit.data.sources import load_blocks

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    blocks = load_blocks(SourceConfig(source="file", path=str(records), per_document=True), tokenizer, DATA,
                         seq_len=MEMORISED_SEQ_LEN)
    return blocks.attention_mask.sum(dim=1).tolist()


@pytest.mark.slow  # three runs on 2 processes (about a minute): `make test-slow`
def test_a_killed_two_process_run_resumes_on_two_processes_as_if_never_interrupted(memorized_model_dir, tmp_path):
    # 1 row per process and micro-step, 2 micro-steps an epoch, 3 an update: every update is cut short at the
    # epoch's end, and LoRA dropout draws from each process's own RNG
    def command(out: Path) -> list[str]:
        return ["-m", "unlearnkit.cli", "run", str(CONFIG), "--quiet", *distributed_settings(
            memorized_model_dir, out, 4, 1, 2, ("train.epochs=6", "train.grad_accum=3", "adapter.dropout=0.1",
                                                "eval.early_stop=false"))]

    reference = torchrun(*command(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "run"
    kill_after_checkpoint(*torchrun_command(*command(out)), out)  # torchrun and both processes
    checkpoints = Checkpoints(checkpoint_dir(out))
    saved = checkpoints.latest()
    assert not out.exists() and saved is not None and (saved.directory / "loop.safetensors").is_file()

    # on one process each step would take other rows: refused before any work, the checkpoint kept
    alone = run_cli(*command(out)[2:])  # the same command without torchrun
    assert alone.returncode == 2, alone.stderr
    assert "of this run on 2 processes and this one has 1 process" in " ".join(alone.stderr.split())
    assert checkpoints.latest() == saved

    resumed = torchrun(*command(out))
    assert resumed.returncode == 0, resumed.stderr[:3000]
    assert json.loads((out / "metrics.json").read_text())["resumed_after_epochs"] == [saved.epoch]
    assert same_history(out, tmp_path / "reference")
    mine, uninterrupted = (load_file(d / "adapter/adapter_model.safetensors") for d in (out, tmp_path / "reference"))
    assert mine.keys() == uninterrupted.keys() and all(torch.equal(mine[k], uninterrupted[k]) for k in mine)
    assert not checkpoint_dir(out).exists()


@pytest.mark.slow  # one launch on 2 processes: `make test-slow`
def test_restart_on_two_processes_leaves_the_checkpoint_of_a_run_still_writing_it(memorized_model_dir, tmp_path):
    # the first process is refused by the claim; the second, which holds no claim, must not remove anything
    out = tmp_path / "run"
    checkpoint = checkpoint_dir(out)
    checkpoint.mkdir()
    (checkpoint / "latest.json").write_text('{"epoch": 3, "directory": "epoch-3"}')
    with claimed(out):
        launched = torchrun("-m", "unlearnkit.cli", "run", str(CONFIG), "--quiet", "--restart",
                            *distributed_settings(memorized_model_dir, out, 4, 2, 2))
    assert launched.returncode != 0 and "is being written by" in " ".join(launched.stderr.split())
    assert (checkpoint / "latest.json").read_text() == '{"epoch": 3, "directory": "epoch-3"}'
