"""Commands for studies over many runs: sweep (a grid of runs, resumable) and report (Table 1, Figures 2-4, or the
attack table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from unlearnkit.cli.common import EXIT_INTERRUPTED, Quiet, app, end_of_batch, error_line
from unlearnkit.errors import UnlearnkitError


@app.command(epilog="Example: `unlearnkit sweep testbed/sweeps/table1 --shard 0/2` in one shell and "
                    "`--shard 1/2` in another; then `unlearnkit report runs/sweeps/table1`.")
def sweep(
    file: Annotated[Path, typer.Argument(help="sweep YAML: a base config and a grid; or a shipped sweep's name "
                                              "(`unlearnkit configs` lists them: */sweeps/*)")],
    shard: Annotated[str, typer.Option(help="run only shard I of K (I from 0): every K-th point, from the I-th")
                     ] = "0/1",
    select: Annotated[str | None, typer.Option(help="run only the points whose names match this pattern, e.g. "
                                                    "'forget-set1__*' (shell-style; see the names with --dry-run)")
                      ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the points and their state; run nothing")
                       ] = False,
    quiet: Quiet = False,
) -> None:
    """Run every point of a grid of configs, each into its own directory; finished points are skipped and
    interrupted ones resumed, so the command can be run again (or in several shards) until all are done."""
    from unlearnkit.config.sweep import load_sweep

    index, count = _shard(shard)
    plan = load_sweep(file)
    points = plan.shard(index, count, select)
    console = Console(emoji=False, quiet=quiet and not dry_run)
    chosen = "" if select is None else f" of those named like {select}"
    console.print(f"{plan.path}: {len(plan.points)} points into {plan.output}; this shard ({index}/{count}) runs "
                  f"{len(points)}{chosen}.", markup=False, highlight=False)
    if dry_run:
        from unlearnkit.experiments.sweep import failure_file
        from unlearnkit.io import claim_holder, describe_holder

        for point in points:
            holder = claim_holder(plan.output / point.name)
            state = ("done" if (plan.output / point.name / "run.json").is_file() else
                     f"running: {describe_holder(holder)}"
                     if holder is not None else
                     "failed before" if failure_file(plan, point).is_file() else "to run")
            console.print(f"  {point.name}  [{state}]", markup=False, highlight=False)
        return
    from unlearnkit.config import load_config

    problems: dict[str, list[str]] = {}  # every point's config is read and checked before the first one trains
    for point in points:
        try:
            load_config(point.config, point.overrides)
        except UnlearnkitError as error:
            for line in str(error).splitlines():
                problems.setdefault(line.rstrip("."), []).append(point.name)
    if problems:
        raise UnlearnkitError("\n".join(f"{message} (in {_points(names)})." for message, names in problems.items()))
    from unlearnkit.experiments.sweep import RESULTS_JSONL, run_sweep

    if quiet:
        from unlearnkit.progress import silence_library_progress

        silence_library_progress()
    try:
        outcome = run_sweep(plan, points, quiet=True, say=lambda line: console.print(line, markup=False,
                                                                                      highlight=False))
    except KeyboardInterrupt:
        error_line(f"Interrupted; finished points are kept and the running one is saved at its last checkpoint. "
                   f"Continue with the same command: unlearnkit sweep {file}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    elsewhere = f", {len(outcome.elsewhere)} running elsewhere" if outcome.elsewhere else ""
    unsuccessful = (f" ({len(outcome.unsuccessful)} without success: {', '.join(outcome.unsuccessful)})"
                    if outcome.unsuccessful else "")
    end_of_batch(f"{len(outcome.ran)} run{unsuccessful}, {len(outcome.skipped)} already done{elsewhere}, "
                 f"{len(outcome.failed)} failed; "
                 f"results in {plan.output / RESULTS_JSONL}", list(outcome.failed),
                 f"point(s) failed ({{names}}); the reasons are in {plan.output}/NAME.failed.json and results.jsonl. "
                 "Fix them and run the sweep again.")


@app.command(epilog="Example: `unlearnkit report runs/sweeps/table1`, or `unlearnkit report runs/sweeps/table1 "
                    "--page docs/results.md --section testbed` to update that section of a Markdown page.")
def report(
    results: Annotated[Path, typer.Argument(help="a sweep's output directory (holding results.jsonl), or attack "
                                                 "records (`DIR/*/attack.json` or `DIR/*.json`)")],
    out: Annotated[Path | None, typer.Option(help="where to write the report (default RESULTS/report; with "
                                                   "--page only when given)")] = None,
    page: Annotated[Path | None, typer.Option(help="a Markdown page whose marked section to replace")] = None,
    section: Annotated[str | None, typer.Option(help="the section of --page: between `<!-- report:SECTION -->` "
                                                     "and `<!-- /report:SECTION -->`")] = None,
    select: Annotated[str | None, typer.Option(help="report only the runs whose names match this pattern, e.g. "
                                                    "'forget-set0__*' (a sweep's results only)")] = None,
) -> None:
    """Table 1 (Markdown and CSV) and Figures 2-4 (PNG) of a sweep's results, in the paper's shape; or, for a
    directory of attack records (`unlearnkit attack ... --output`), the attack table."""
    from unlearnkit.experiments.attack_table import holds_attack_records, update_page_with_attacks, write_attack_report
    from unlearnkit.experiments.report import update_page, write_report

    if (page is None) != (section is None):
        raise UnlearnkitError("--page and --section go together: pass both to update a page, or neither.")
    attacks = holds_attack_records(results) and not (results / "results.jsonl").is_file()
    if attacks and select is not None:
        raise UnlearnkitError("--select picks runs of a sweep's results; for attack records, attack only the runs "
                              "to show (unlearnkit attack SWEEP --select ...).")
    written: list[Path] = []
    # with --page only the page is written, unless --out asks for the report directory too
    if page is None or out is not None:
        written = write_attack_report(results, out) if attacks else write_report(results, out, select)
    if page is not None and section is not None:
        if attacks:
            update_page_with_attacks(page, section, results)
        else:
            update_page(page, section, results, select)
        written.append(page)
    Console(emoji=False).print("Wrote " + ", ".join(str(p) for p in written), markup=False, highlight=False)


def _points(names: list[str]) -> str:
    """Points named in a sentence: each one's name holds its value of every axis."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"point {shown}" if len(names) == 1 else f"points {shown}"


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise UnlearnkitError(f'--shard "{text}" is not I/K with 0 <= I < K; write e.g. --shard 0/2 and --shard 1/2.')
    return index, count
