"""What TOFU's evaluation costs on SmolLM2-135M (`unlearnkit eval smollm2 --suite tofu`): per set, the
teacher-forced passes (answer, base answer, perturbed answers) and the greedy answers, timed apart, with the tokens
every forward pass processed (padding included) and the FLOP rate they reach against this machine's measured peak
(a float32 matrix product), and beside it the cost of one epoch of unlearning forget10 (IHL on forget + LM loss on
retain, forward and backward over the same rows a run takes).

Each set's time is scaled to the original code's 300-item convention (300 questions of forget and retain, all
100 real authors and 117 world facts), the epoch to the split's rows; the record holds both and the ratio that
matters: the evaluation a run makes after each epoch (every set's losses, the utility sets' greedy answers) over
one epoch of unlearning. Measure it on a model that answers and stops as the TOFU target does (``--model``: the
testbed's ``tofu-smollm2`` target, or its ``--authors 10`` variant), not on the untuned SmolLM2, which rambles to the
200-token limit.

Usage: ``python benchmarks/tofu_eval.py [--model DIR] [--limit 40] [--epoch-rows 64] [--split forget10]
[--threads 2]``; results go to ``benchmarks/results/tofu_eval.json`` (rewritten after each part).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from unlearnkit.config import EvalConfig, SourceConfig
from unlearnkit.data.catalog import resolve_data_dir
from unlearnkit.data.sources import load_blocks
from unlearnkit.evaluation import evaluate_memorization
from unlearnkit.io import atomic_write_json
from unlearnkit.metrics.memorization import _teacher_forced_argmax
from unlearnkit.metrics.tofu import UTILITY_SETS, greedy_answers, teacher_forced_records, tofu_rows
from unlearnkit.modeling import load_model
from unlearnkit.objectives import inverted_hinge_loss, lm_loss
from unlearnkit.progress import Progress

RESULTS = Path(__file__).resolve().parent / "results" / "tofu_eval.json"


class TokenCounter:
    """Counts the input tokens of every forward pass of a model (a forward pre-hook)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.tokens = 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor):
            self.tokens += ids.numel()


def peak_flops(size: int = 1024, repeats: int = 20) -> float:
    """Measured float32 matrix-product FLOP/s of this machine (the best of a few)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--epoch-rows", type=int, default=64)
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--model", default="smollm2", help="a model directory, name or the testbed's tofu-smollm2 "
                                                         "target (what a run evaluates: it answers and stops)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = resolve_data_dir(None)
    loaded = load_model(args.model)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    parameters = sum(p.numel() for p in model.parameters())
    counter = TokenCounter(model)
    peak = peak_flops()
    config = model.config
    print(f"SmolLM2-135M: {config.num_hidden_layers} layers, hidden {config.hidden_size}, {parameters / 1e6:.1f}M "
          f"parameters; {args.threads} threads; peak float32 matmul {peak / 1e9:.0f} GFLOP/s; {args.limit} "
          "questions a set")
    results: dict[str, Any] = {"model": args.model, "parameters": parameters, "layers": config.num_hidden_layers,
                               "hidden": config.hidden_size, "threads": args.threads, "limit": args.limit,
                               "split": args.split, "batch_size": args.batch_size, "peak_flops": peak,
                               "machine": platform.machine(), "torch": torch.__version__, "sets": {}}
    results["unlearning_epoch"] = _unlearning_epoch(model, tokenizer, data_dir, args)
    epoch = results["unlearning_epoch"]
    print(f"unlearning: {epoch['forget_rows']} of {epoch['split_rows']} forget rows (and as many retain) in "
          f"{epoch['seconds']:.0f} s; the whole epoch {epoch['epoch_seconds']:.0f} s (batches padded to the set's "
          f"longest row: {epoch['padded_epoch_seconds']:.0f} s, {epoch['speedup_of_cut_batches']:.2f} x)")
    results["criterion"] = _criterion(model, tokenizer, data_dir, args.split)
    found = results["criterion"]
    print(f"the paper's criterion after an epoch, MA on the {found['rows']} {args.split} answers: "
          f"{found['ma_seconds']:.0f} s (rows batched by length; on padded batches {found['padded_ma_seconds']:.0f} s, "
          f"{found['speedup_of_length_batches']:.2f} x)")
    atomic_write_json(args.out, results)
    sizes = {role: len(rows) for role, rows in tofu_rows(data_dir, args.split).items()}  # the 300-item convention
    for role, rows in tofu_rows(data_dir, args.split, limit=args.limit).items():
        counter.tokens, started = 0, time.perf_counter()
        teacher_forced_records(model, tokenizer, rows, role=role, template="phi")
        forced = {"seconds": time.perf_counter() - started, "tokens": counter.tokens}
        counter.tokens, started = 0, time.perf_counter()
        greedy_answers(model, tokenizer, [row["question"] for row in rows], template="phi",
                       batch_size=args.batch_size)
        generation = {"seconds": time.perf_counter() - started, "tokens": counter.tokens}
        rate = forced["tokens"] / forced["seconds"]
        forced.update(tokens_per_s=rate, peak_fraction=2 * parameters * rate / peak)
        scale = sizes[role] / len(rows)
        results["sets"][role] = {"questions": len(rows), "questions_300": sizes[role], "teacher_forced": forced,
                                 "generation": generation,
                                 "seconds_300": {"teacher_forced": forced["seconds"] * scale,
                                                 "generation": generation["seconds"] * scale},
                                 # forward FLOPs 2 · parameters · tokens (attention's share left out)
                                 "flops_300": {"teacher_forced": 2 * parameters * forced["tokens"] * scale,
                                               "generation": 2 * parameters * generation["tokens"] * scale}}
        print(f"{role:12s} losses {forced['seconds']:6.1f} s ({forced['tokens']} tokens, {rate:.0f} tok/s, "
              f"{100 * forced['peak_fraction']:.0f} % of peak); greedy answers {generation['seconds']:6.1f} s "
              f"({generation['tokens']} tokens)")
        atomic_write_json(args.out, results)
    at_300 = {role: found["seconds_300"] for role, found in results["sets"].items()}
    whole = sum(part["teacher_forced"] + part["generation"] for part in at_300.values())
    # after each epoch: every set's losses, the greedy answers of the utility sets (the forget set's come after)
    per_epoch = sum(part["teacher_forced"] + (part["generation"] if role in UTILITY_SETS else 0)
                    for role, part in at_300.items())
    results["evaluation_seconds_300"] = whole
    results["evaluation_flops_300"] = {part: sum(found["flops_300"][part] for found in results["sets"].values())
                                       for part in ("teacher_forced", "generation")}
    results["per_epoch_evaluation_seconds_300"] = per_epoch
    results["per_epoch_evaluation_to_epoch"] = per_epoch / epoch["epoch_seconds"]
    print(f"TOFU evaluation at the 300-item convention ({', '.join(f'{r} {n}' for r, n in sizes.items())}): "
          f"{whole:.0f} s; after each epoch {per_epoch:.0f} s = {per_epoch / epoch['epoch_seconds']:.2f} × one "
          f"unlearning epoch ({epoch['epoch_seconds']:.0f} s)")
    atomic_write_json(args.out, results)


def _unlearning_epoch(model: Any, tokenizer: Any, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """IHL + LM loss on ``epoch_rows`` forget rows of the split and as many retain rows, full fine-tuning, batch 8,
    each batch cut to its longest row as the loop does, and the whole epoch's time scaled from it; beside it the
    same passes on batches padded to the set's longest row (what the loop did before cutting them)."""
    whole = load_blocks(SourceConfig(source="tofu", split=args.split), tokenizer, data_dir)
    forget = whole.subset(list(range(min(args.epoch_rows, len(whole)))))
    retain_split = "retain" + str(100 - int(args.split.removeprefix("forget"))).zfill(2)
    retain = load_blocks(SourceConfig(source="tofu", split=retain_split), tokenizer, data_dir)
    retain = retain.subset(list(range(len(forget))))  # padded to the retain split's longest row, as in a run
    seconds = {cut: _epoch_seconds(model, forget, retain, cut) for cut in (True, False)}
    return {"forget_rows": len(forget), "split_rows": len(whole), "seconds": seconds[True],
            "epoch_seconds": seconds[True] * len(whole) / len(forget),
            "padded_epoch_seconds": seconds[False] * len(whole) / len(forget),
            "speedup_of_cut_batches": seconds[False] / seconds[True]}


def _criterion(model: Any, tokenizer: Any, data_dir: Path, split: str) -> dict[str, Any]:
    """The MA pass of the paper's criterion after an epoch, as a run makes it (``eval.batch_size`` 32): every
    answer of the split, rows batched by length and each batch cut to its longest row; beside it the same pass on
    batches padded to the split's longest row (how it ran before). EL10, which an epoch adds once MA is under its
    threshold, is left out: its cost depends on how far the answers are forgotten."""
    whole = load_blocks(SourceConfig(source="tofu", split=split), tokenizer, data_dir)
    quiet = Progress(console=Console(quiet=True), quiet=True)
    started = time.perf_counter()
    evaluate_memorization(model, whole, EvalConfig(batch_size=32), quiet, with_el=False)
    ma_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with torch.no_grad():
        _teacher_forced_argmax(model, whole.input_ids, whole.attention_mask, 32)
    padded = time.perf_counter() - started
    return {"rows": len(whole), "ma_seconds": ma_seconds, "padded_ma_seconds": padded,
            "speedup_of_length_batches": padded / ma_seconds}


def _epoch_seconds(model: Any, forget: Any, retain: Any, cut: bool) -> float:
    model.train()
    started = time.perf_counter()
    for start in range(0, len(forget), 8):
        rows = list(range(start, min(start + 8, len(forget))))
        f, r = forget.subset(rows), retain.subset(rows)
        if cut:
            f, r = f.trimmed(), r.trimmed()
        loss = inverted_hinge_loss(model(input_ids=f.input_ids, attention_mask=f.attention_mask).logits, f.labels()) \
            + lm_loss(model(input_ids=r.input_ids, attention_mask=r.attention_mask).logits, r.labels())
        loss.backward()
        model.zero_grad(set_to_none=True)
    model.eval()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
