"""Running a sweep: every point unlearned and written to its own directory, resumable, failures recorded.

A point whose directory holds a finished run (``run.json``) is skipped; one interrupted part-way continues
from its checkpoint (:mod:`unlearnkit.checkpoints`); one that failed is tried again and, if it fails again,
recorded in ``NAME.failed.json`` beside the points, and the sweep goes on. After every point the results of
all points on disk are collected again into ``results.jsonl`` and ``results.csv`` (one row per point, the
columns of :mod:`unlearnkit.experiments.report`), so several invocations (``--shard i/k``: other processes
or machines on the same directory) add up, and the report can be made at any time. A point is claimed while it
runs (:func:`unlearnkit.outputs.claim_output_dir`), so invocations that overlap pass by the points another one
holds instead of writing them twice.
"""

from __future__ import annotations

import csv
import io
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit.config.sweep import Sweep, SweepPoint
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import ClaimedElsewhere, atomic_write_json, atomic_write_text

RESULTS_JSONL, RESULTS_CSV = "results.jsonl", "results.csv"
CSV_COLUMNS = ("name", "status", "model", "method", "adapter", "rank", "modules", "forget", "seed", "lr", "success",
               "epochs", "params_pct", "el10", "ma", "el10_before", "ma_before", "reasoning_acc", "dialogue_f1",
               "pile_ppl", "flops_total", "flops_train", "flops_flora_init", "flops_criterion", "seconds", "error")


@dataclass
class SweepOutcome:
    """What one invocation did with the points of its shard."""

    ran: list[str] = field(default_factory=list)
    unsuccessful: list[str] = field(default_factory=list)  # ran, and did not forget (or diverged, or collapsed)
    skipped: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)  # held by another invocation while this one passed by
    failed: dict[str, str] = field(default_factory=dict)


def failure_file(sweep: Sweep, point: SweepPoint) -> Path:
    return sweep.output / f"{point.name}.failed.json"


def run_sweep(sweep: Sweep, points: list[SweepPoint], *, quiet: bool = True,
              say: Callable[[str], None] = lambda _: None) -> SweepOutcome:
    """Run ``points`` of ``sweep`` (a shard of it, or all), one after another, in this process."""
    from unlearnkit.config import load_config
    from unlearnkit.modeling import load_configured_model
    from unlearnkit.runner import unlearn

    outcome = SweepOutcome()
    held: dict[str, Any] = {}  # the last model loaded, reused by the next point on it (each run copies it)
    for number, point in enumerate(points, 1):
        if (sweep.output / point.name / "run.json").is_file():
            outcome.skipped.append(point.name)
            continue
        say(f"[{number}/{len(points)}] {point.name}")
        started = time.perf_counter()
        try:
            config = load_config(point.config, point.overrides)

            def model(config: Any = config) -> Any:
                key = config.model.model_dump_json()
                if key not in held:
                    held.clear()
                    held[key] = load_configured_model(config.model)
                return held[key]

            finished = unlearn(config, loaded=model, quiet=quiet, skip_finished=True)
            if finished is None:  # finished by another process meanwhile
                outcome.skipped.append(point.name)
                say("    already done")
                continue
            failure_file(sweep, point).unlink(missing_ok=True)
            outcome.ran.append(point.name)
            if not finished.metrics.success:
                outcome.unsuccessful.append(point.name)
            say(f"    {finished.metrics.stop_reason} ({time.perf_counter() - started:.0f} s)")
        except ClaimedElsewhere as elsewhere:  # another invocation is running this point: go on to the next
            outcome.elsewhere.append(point.name)
            say(f"    running elsewhere ({elsewhere.holder_text})")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # recorded, and the sweep goes on
            message = str(error) if isinstance(error, UnlearnkitError) else f"{type(error).__name__}: {error}"
            outcome.failed[point.name] = message
            sweep.output.mkdir(parents=True, exist_ok=True)
            atomic_write_json(failure_file(sweep, point), {
                "name": point.name, "axes": point.axes, "error": message,
                "traceback": traceback.format_exc(limit=-8), "config": str(point.config),
                "overrides": point.overrides})
            say(f"    FAILED: {message}")
        collect_results(sweep)
    collect_results(sweep)
    return outcome


def collect_results(sweep: Sweep) -> list[dict[str, Any]]:
    """The rows of every point on disk (finished or failed), written to results.jsonl and results.csv."""
    rows = []
    for point in sweep.points:
        directory = sweep.output / point.name
        if (directory / "run.json").is_file():
            rows.append(point_row(point, directory))
        elif failure_file(sweep, point).is_file():
            failed = json.loads(failure_file(sweep, point).read_text(encoding="utf-8"))
            rows.append({**_config_fields(_point_config(point)), "name": point.name, "status": "failed",
                         "error": failed["error"], "axes": point.axes})
    if rows or sweep.output.is_dir():
        sweep.output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sweep.output / RESULTS_JSONL, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        atomic_write_text(sweep.output / RESULTS_CSV, _csv(rows))
    return rows


def point_row(point: SweepPoint, directory: Path) -> dict[str, Any]:
    """One finished point as a results row: its settings, outcome, scores before and after, and compute."""
    from unlearnkit.outputs import RunDirectory

    run = RunDirectory(directory)
    config, metrics = run.config(), run.metrics()
    before, after = metrics.before.forget, metrics.after.forget
    assert before is not None and after is not None
    compute = metrics.compute
    return {
        **_config_fields(config), "name": point.name, "status": "done", "error": None, "axes": point.axes,
        "success": metrics.success, "criterion_met": metrics.criterion_met,
        "diverged": metrics.diverged_epoch is not None, "collapsed": metrics.collapsed_epoch is not None,
        "stop_reason": metrics.stop_reason, "epochs": metrics.epochs_run,
        "params_pct": compute.get("parameters", {}).get("percent"),
        "trainable_params": compute.get("parameters", {}).get("trainable"),
        "total_params": compute.get("parameters", {}).get("model"),
        "el10": after.el, "ma": after.ma, "el10_before": before.el, "ma_before": before.ma,
        "threshold_el10": metrics.thresholds["el"], "threshold_ma": metrics.thresholds["ma"],
        **{f"{key}{suffix}": value for suffix, kept in (("", metrics.after.kept()), ("_before", metrics.before.kept()))
           for key, value in kept.items()},
        "flops": {phase: compute.get("flops", {}).get(phase, 0.0)
                  for phase in ("train", "flora_init", "criterion", "total")},
        "tokens": compute.get("tokens", {}), "seconds": {"total": compute.get("seconds", {}).get("total_s")},
        "output_dir": str(directory), **_tofu_fields(metrics), **_membership_fields(config, metrics),
        **_reasoning_change_fields(metrics),
    }


def _reasoning_change_fields(metrics: Any) -> dict[str, Any]:
    """The paired change of reasoning (change, low, high, confidence, items, tasks), where both snapshots kept
    each item's result."""
    change = metrics.reasoning_change()
    return {} if change is None else {"reasoning_change": change}


def _membership_fields(config: Any, metrics: Any) -> dict[str, Any]:
    """A run under ``eval.rule: paper+mia``: its rule, the epoch the paper's rule was first met, and the membership
    verdict (AUCs with their intervals) of the last epoch whose model the run kept."""
    if config.eval.rule == "paper":
        return {}
    kept = metrics.kept_epochs
    verdicts = [e for e in kept if "mia" in e]
    paper_met = next((e["epoch"] for e in kept if e.get("forget_el") is not None
                      and e["forget_ma"] <= e["ma_threshold"] and e["forget_el"] <= e["el_threshold"]), None)
    return {"rule": config.eval.rule, "paper_rule_epoch": paper_met,
            "mia": verdicts[-1]["mia"] if verdicts else None}


SET_NUMBERS = ("prob", "rouge_l_recall", "truth_ratio", "extraction_strength")


def tofu_numbers(found: dict[str, Any]) -> dict[str, Any]:
    """TOFU's numbers of one scoring (a run's snapshot, or ``unlearnkit eval``'s eval.json) without the records:
    the aggregates, and each set's under its role (``forget``, ``retain``, ...)."""
    return {**{key: found.get(key) for key in ("forget_quality", "model_utility", "extraction_strength",
                                               "min_k_auc", "privacy_leak") if key in found},
            **{role: {k: v for k, v in each.items() if k in SET_NUMBERS} for role, each in found["sets"].items()}}


def _tofu_fields(metrics: Any) -> dict[str, Any]:
    """TOFU's numbers of a run scored with ``eval.tofu``: before, after and along the epochs (no records)."""
    after = (metrics.after.model_extra or {}).get("tofu")
    if after is None:
        return {}
    before = (metrics.before.model_extra or {}).get("tofu")
    return {"tofu": {"after": tofu_numbers(after), "before": tofu_numbers(before) if before else None,
                     "epochs": [{"epoch": e["epoch"], **tofu_numbers(e["tofu"])} for e in metrics.epochs
                                if "tofu" in e]}}


def _point_config(point: SweepPoint) -> Any:
    from unlearnkit.config import load_config

    try:
        return load_config(point.config, point.overrides)
    except UnlearnkitError:
        return None


def _config_fields(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    adapted = config.adapter.adapter_class().has_adapter
    return {"model": config.model.name, "method": config.method.name, "adapter": config.adapter.name,
            "retain_kind": config.method.retain_kind,
            "rank": config.adapter.rank if adapted else None,
            "modules": list(config.adapter.modules) if adapted else None,
            "forget": config.data.forget.label(), "seed": config.seed,
            "lr": config.train.lr, **config.method.gradient_point(),
            **({"method_options": config.method.given_options()} if config.method.given_options() else {})}


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {**row, "modules": "+".join(row.get("modules") or []),
                "seconds": (row.get("seconds") or {}).get("total"),
                **{f"flops_{k}": v for k, v in (row.get("flops") or {}).items()}}
        writer.writerow(flat)
    return out.getvalue()
