"""Run under ``torchrun``: short unlearning runs of the memorised tiny model on per-document forget rows of unequal
length, one per (method, adapter[, how the forget gradient is taken]), their trained weights saved by the main
process.

    torchrun --nproc_per_node 2 tests/distributed_steps.py MODEL_DIR FORGET_FILE OUT_DIR METHOD-ADAPTER[-VARIANT]...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from conftest import DISTRIBUTED_CONFIG, leave_processes_together, memorised_run_overrides

# Lines of unequal length, one record each (as a deletion request's rows are): 6 rows, so a step of 4 rows is
# followed by a short one of 2.
RECORDS = [
    "Customer 1042: Jane Doe, 12 Elm Street, Springfield; card ending 4417.",
    "Ref 7: call back.",
    "Patient M. K. Ortega, born 3 March 1971, seen on 14 June for a follow-up of the fracture of the left wrist; "
    "the cast comes off in three weeks.",
    "Account 88-1930 closed at the holder's request.",
    "Order 5521 shipped to 4 Harbour Road, Portsmouth, with a note: leave at the back door, the dog is friendly "
    "but loud.",
    "SSN on file: 078-05-1120.",
]


def write_records(path: Path, count: int = len(RECORDS)) -> Path:
    """The first ``count`` records as a JSONL file, one ``{"text": ...}`` a line."""
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in RECORDS[:count]), encoding="utf-8")
    return path


# the forget gradient taken elsewhere than plainly at θ (docs/robust.md): the variants a run name may end with
VARIANTS = {"sam": "method.sam_rho=0.05", "meta": "method.meta_relearn=0.05", "mask": "method.disruption_mask=true"}


def parse_run(run: str) -> tuple[str, str, list[str]]:
    """``METHOD-ADAPTER[-VARIANT]`` as the method, the adapter and the variant's overrides."""
    method, adapter, *variant = run.split("-")
    return method, adapter, [VARIANTS[name] for name in variant]


def steps_config(model_dir: Path, forget_file: Path, out: Path, method: str, adapter: str, batch: int,
                 grad_accum: int, dtype: str = "float64", extra: tuple[str, ...] | list[str] = ()):
    """Two epochs of ``method`` with ``adapter`` on the records, ``batch`` forget and retain rows per process and
    micro-step. In float64 by default: float32's rounding, which differs with how rows are batched, is amplified
    by Adam for weights whose gradients are near 0, and would hide what the split changes."""
    from unlearnkit.config import load_config

    return load_config(DISTRIBUTED_CONFIG, [
        *memorised_run_overrides(model_dir, out), f"model.dtype={dtype}",
        f"data.forget={{source: file, path: {forget_file}, "
        "per_document: true}", f"method.name={method}", f"adapter.name={adapter}", "adapter.dropout=0",
        f"train.lr={1e-3 if adapter == 'none' else 1e-2}", "train.epochs=2", f"train.batch_size={batch}",
        f"train.grad_accum={grad_accum}", f"train.retain_batch_size={batch}", "eval.early_stop=false",
        "eval.audit=false", "eval.bootstrap=20", "eval.cache_scores=false", "eval.after_el=forget",
        "output.fail_if_not_forgotten=false", *extra])


def trained_weights(result) -> dict[str, torch.Tensor]:
    return {name: param.detach().to("cpu").contiguous() for name, param in result.model.named_parameters()
            if param.requires_grad}


def main(model_dir: str, forget_file: str, out: str, runs: list[str]) -> None:
    from unlearnkit.loop import run_unlearning

    for run in runs:
        method, adapter, extra = parse_run(run)
        result = run_unlearning(steps_config(Path(model_dir), Path(forget_file), Path(out) / run, method, adapter,
                                             batch=2, grad_accum=1, extra=extra), quiet=True)
        if result.main_process:
            save_file(trained_weights(result), f"{out}/{run}.safetensors")
    leave_processes_together()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
