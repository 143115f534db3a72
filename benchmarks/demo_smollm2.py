"""The default demo (``unlearnkit demo``) on SmolLM2-135M-Instruct: timings and figures, cold and warm.

Runs :func:`unlearnkit.showcase.demo.run_demo` twice by default: first with an empty cache (``cold``: step 1
memorises the customer records and caches the model), then again with that cache (``warm``). The
budget the demo is designed for, on 2 CPU cores: cold ≤ 10 minutes, warm ≤ 5 minutes. Other work on
the machine slows everything down, so the load average is recorded with the timings.

Usage: ``python benchmarks/demo_smollm2.py [--compare] [--warm-only] [--customers N] [--forget N]``.
Results go to ``benchmarks/results/demo_smollm2.json`` (written atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from unlearnkit.io import atomic_write_json
from unlearnkit.reports import package_versions
from unlearnkit.showcase.cache import cache_root
from unlearnkit.showcase.demo import DemoSettings, demo_document, demo_table, run_demo

RESULTS = Path(__file__).resolve().parent / "results" / "demo_smollm2.json"


def one_run(label: str, cache: Path, out: Path, settings: DemoSettings, compare: bool) -> dict[str, Any]:
    os.environ["UNLEARNKIT_CACHE"] = str(cache)
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = run_demo(out, settings, compare=compare, quiet=False)
    wall = time.perf_counter() - started
    Console(emoji=False).print(demo_table(result))
    Console(emoji=False).print(f"[bold]{label}[/bold]: {wall:.0f}s wall; " +
                    ", ".join(f"{k} {v:.0f}s" for k, v in result.timings.items()))
    return {"wall_s": round(wall, 1), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            **demo_document(result)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", action="store_true", help="also run gradient ascent side by side")
    parser.add_argument("--warm-only", action="store_true", help="use $UNLEARNKIT_CACHE (or the default cache)")
    parser.add_argument("--customers", type=int, default=DemoSettings.customers)
    parser.add_argument("--forget", type=int, default=DemoSettings.forget)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = DemoSettings(customers=args.customers, forget=args.forget)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                           "platform": platform.platform()},
                               "versions": package_versions(), "compare": args.compare, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="unlearnkit-demo-bench-") as temp:
        out = Path(temp) / "out"
        if args.warm_only:
            cache = cache_root()
            results["runs"]["warm"] = one_run("warm", cache, out, settings, args.compare)
        else:
            cache = Path(temp) / "cache"
            for label in ("cold", "warm"):
                results["runs"][label] = one_run(label, cache, out, settings, args.compare)
                atomic_write_json(args.out, results)  # after each run, so a long run keeps what it measured
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
