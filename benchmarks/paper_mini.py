"""Table 1 in miniature: the paper's six methods on the CPU testbed, as a sweep.

The grid is a sweep file (``configs/testbed/sweeps/table1.yaml``: six methods x five forget sets of the tiny
testbed, paper learning rates x 10); this script builds the testbed if it is not cached, runs the sweep
(points already finished are skipped, an interrupted one resumes) and writes its report, printing Table 1.
It is the same as

    unlearnkit testbed build --size tiny
    unlearnkit sweep configs/testbed/sweeps/table1.yaml
    unlearnkit report runs/sweeps/table1

    python benchmarks/paper_mini.py                       # all 30 points (about 90 min on one core)
    python benchmarks/paper_mini.py --shard 0/2 &         # on two cores: two shards, then the report
    python benchmarks/paper_mini.py --shard 1/2
    python benchmarks/paper_mini.py --sweep configs/testbed/sweeps/ranks.yaml   # Figure 3's grid

Writes the sweep's results.jsonl / results.csv and report/ (table1.md, table1.csv, figures), and
benchmarks/results/paper_mini.json (the rows and Table 1, atomically).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from unlearnkit.config.sweep import load_sweep
from unlearnkit.experiments.report import read_rows, table1_markdown, table1_rows, write_report
from unlearnkit.experiments.sweep import RESULTS_JSONL, run_sweep
from unlearnkit.io import atomic_write_json
from unlearnkit.showcase.testbed import build_testbed

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "paper_mini.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, default=ROOT / "configs" / "testbed" / "sweeps" / "table1.yaml")
    parser.add_argument("--shard", default="0/1", help="run only shard I of K (I from 0)")
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny", help="the testbed the sweep names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on busy 2-core machines)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    index, count = (int(part) for part in args.shard.split("/"))
    started = time.perf_counter()
    build_testbed(args.size)
    sweep = load_sweep(args.sweep)
    outcome = run_sweep(sweep, sweep.shard(index, count), say=print)
    rows = read_rows(sweep.output)
    written = write_report(sweep.output)
    table = table1_rows(rows)
    print(table1_markdown(rows, table))
    atomic_write_json(args.out, {
        "benchmark": "paper_mini", "sweep": str(args.sweep),
        "complete": len(rows) == len(sweep.points) and not outcome.failed, "rows": rows, "table1": table,
        "results": str(sweep.output / RESULTS_JSONL), "report": [str(p) for p in written],
        "seconds": round(time.perf_counter() - started, 1), "threads": args.threads,
        "machine": platform.machine(), "torch": torch.__version__,
    })
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
