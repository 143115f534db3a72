"""The paper-style report of a sweep: read its results.jsonl, build Table 1, and write the table with Figures 2-4
as Markdown, CSV and PNG files, or splice them into a hand-written Markdown page between two markers.

Table 1 groups the runs per model and method (the paper's names, :func:`method_label`); every number is the
mean ± standard deviation over the group's successful runs, as in the paper, which reports results "after
performing unlearning until these criteria are met".
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiments.figures import (
    done_rows,
    finite_value,
    method_label,
    model_name,
    modules_label,
    ordered_labels,
    paper_figures,
    row_label,
    save_figure,
)
from unlearnkit.experiments.robust_report import membership_markdown, membership_rows
from unlearnkit.experiments.tofu_report import (
    CAPTION,
    RETAIN_MODEL_EVAL,
    TITLE,
    retain_model_aggregates,
    retain_model_scores,
    tofu_figure,
    tofu_markdown,
    tofu_rows,
)
from unlearnkit.io import atomic_write_text
from unlearnkit.ownership import check_replaceable, mark_directory

__all__ = ["read_rows", "method_label", "table1_rows", "write_table1", "write_report", "update_page",
           "replace_section", "section_folder", "marked_page", "selected"]

Row = dict[str, Any]
RESULTS_FILE = "results.jsonl"
_REQUIRED = ("name", "status", "model", "method", "adapter")
NO_VALUE = "—"


@dataclass(frozen=True)
class Column:
    """A numeric column of Table 1: which result field it averages, in which unit, and its header."""

    key: str
    header: str
    field: str
    scale: float  # fractions are shown as percentages, like the paper
    decimals: int
    before_field: str | None = None


COLUMNS = (
    Column("params_pct", "Params (%)", "params_pct", 1.0, 2),
    Column("epochs", "Epochs", "epochs", 1.0, 1),
    Column("el10_pct", "EL10 (%) ↓", "el10", 100.0, 1, "el10_before"),
    Column("ma_pct", "MA (%) ↓", "ma", 100.0, 1, "ma_before"),
    Column("reasoning_acc_pct", "Reasoning (Acc %) ↑", "reasoning_acc", 100.0, 1, "reasoning_acc_before"),
    Column("dialogue_f1_pct", "Dialogue (F1 %) ↑", "dialogue_f1", 100.0, 1, "dialogue_f1_before"),
    Column("pile_ppl", "Pile PPL ↓", "pile_ppl", 1.0, 1, "pile_ppl_before"),
)
CSV_HEADER = ["model", "method", "runs", "successes",
              *(f"{c.key}_{part}" for c in COLUMNS for part in ("mean", "std", "count"))]


def read_rows(results_dir: str | Path) -> list[Row]:
    """The runs recorded in ``RESULTS_DIR/results.jsonl``, one dict per point; when a point appears twice (a
    resumed sweep retried it) its last line wins."""
    path = Path(results_dir) / RESULTS_FILE
    if not path.is_file():
        raise UnlearnkitError(f"There is no {path}; point the report at a sweep's results directory, the one "
                              f"holding {RESULTS_FILE}.")
    rows: dict[str, Row] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UnlearnkitError(f"{path} is not a sweep's results (byte {error.start} is not UTF-8 text); point the "
                              "report at the directory `unlearnkit sweep` wrote.") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UnlearnkitError(f"{path} line {number} is not JSON ({error.msg}); fix or delete that line.") from None
        missing = [key for key in _REQUIRED if key not in row] if isinstance(row, dict) else list(_REQUIRED)
        if missing:
            raise UnlearnkitError(f"{path} line {number} is not a run record (it lacks {', '.join(missing)}); "
                                  f"fix or delete that line.")
        rows.pop(str(row["name"]), None)
        rows[str(row["name"])] = row
    return list(rows.values())


def table1_rows(rows: Sequence[Row]) -> list[Row]:
    """Table 1: per model a "Before" row, then one row per method in the paper's order.

    Each row holds ``model``, ``method``, ``runs`` (n: finished and failed), ``successes`` (k), ``success``
    ("k/n"), and per column of :data:`COLUMNS` the shown text under its key plus ``KEY_mean``, ``KEY_std`` and
    ``KEY_count`` (the successful runs that measured it) in the shown unit.
    """
    table = []
    for model in dict.fromkeys(str(row["model"]) for row in rows):
        runs = [row for row in rows if row["model"] == model]
        finished = done_rows(runs)
        before: Row = {"model": model, "method": "Before", "runs": len(finished), "successes": None,
                       "success": NO_VALUE}
        for column in COLUMNS:
            field = column.before_field
            values = [v * column.scale for row in finished if field and (v := finite_value(row, field)) is not None]
            mean = statistics.fmean(values) if values else None
            before |= _cells(column, mean, None, len(values))
        table.append(before)
        variants = _variant_labels(runs)
        for label in _ordered_variants(variants.values()):
            group = [row for row in runs if variants[id(row)] == label]
            won = [row for row in group if row.get("status") == "done" and row.get("success") is True]
            entry: Row = {"model": model, "method": label, "runs": len(group), "successes": len(won),
                          "success": f"{len(won)}/{len(group)}"}
            for column in COLUMNS:
                values = [v * column.scale for row in won if (v := finite_value(row, column.field)) is not None]
                mean = statistics.fmean(values) if values else None
                std = statistics.stdev(values) if len(values) > 1 else None
                entry |= _cells(column, mean, std, len(values))
            table.append(entry)
    return table


def write_table1(rows: Sequence[Row], out_dir: str | Path) -> list[Path]:
    """Write Table 1 of the runs ``rows`` as ``table1.md`` (with its caption) and ``table1.csv``."""
    table = table1_rows(rows)
    out = Path(out_dir)
    markdown = atomic_write_text(out / "table1.md", table1_markdown(rows, table) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_HEADER, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in entry.items()} for entry in table)
    return [markdown, atomic_write_text(out / "table1.csv", buffer.getvalue())]


def table1_markdown(rows: Sequence[Row], table: Sequence[Row] | None = None) -> str:
    """Table 1 as a Markdown table preceded by its caption."""
    table = table1_rows(rows) if table is None else table
    headers = ["Model", "Method", *(c.header for c in COLUMNS), "Success"]
    caption = _caption(rows)
    if any(" " in str(entry["method"]) for entry in table):
        caption += (" A method whose runs differ in LoRA rank, adapted modules, options or stopping rule has a row "
                    "per configuration (rN: rank N).")
    lines = [caption, "", "| " + " | ".join(headers) + " |",
             "|" + "|".join([":---", ":---", *("---:" for _ in COLUMNS), "---:"]) + "|"]
    for entry in table:
        cells = [model_name(entry["model"]), entry["method"], *(entry[c.key] for c in COLUMNS), entry["success"]]
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def write_report(results_dir: str | Path, out_dir: str | Path | None = None, select: str | None = None
                 ) -> list[Path]:
    """Write Table 1 (``table1.md``, ``table1.csv``), Figures 2-4 (PNG) and ``report.md`` showing them all into
    ``out_dir`` (default ``RESULTS_DIR/report``); returns the files written."""
    results = Path(results_dir)
    rows = _rows_or_fail(results, select)
    out = Path(out_dir) if out_dir is not None else results / "report"
    # a folder of the user's, or a report they edited, is refused; the results are never written over
    check_replaceable(out, [results / RESULTS_FILE, results / "results.csv"], overwrite=True, option="--out")
    written = write_table1(rows, out)
    body, figures = _report_body(rows, results, out, link_prefix="", select=select)
    report = atomic_write_text(out / "report.md", f"# Unlearning report: {sweep_name(rows, results)}\n\n{body}\n")
    mark_directory(out, "report")
    return [*written, *figures, report]


def update_page(page: Path, section: str, results_dir: Path, select: str | None = None) -> None:
    """Replace what stands between ``<!-- report:SECTION -->`` and ``<!-- /report:SECTION -->`` in the Markdown
    ``page`` with the report of ``results_dir`` (Table 1 and Figures 2-4), leaving the rest of the page as it was;
    the figures are written to ``<page dir>/results/SECTION/`` and linked relatively."""
    text = marked_page(page, section)
    rows = _rows_or_fail(Path(results_dir), select)
    figure_dir = section_folder(page, section)
    body, _ = _report_body(rows, Path(results_dir), figure_dir, link_prefix=f"results/{section}/", select=select)
    # the results themselves beside the figures: the section can be regenerated from the repository alone
    for name in (RESULTS_FILE, "results.csv"):
        source = Path(results_dir) / name
        if source.is_file() and source.resolve() != (figure_dir / name).resolve():
            atomic_write_text(figure_dir / name, source.read_text(encoding="utf-8"))
    retain_model = retain_model_aggregates(Path(results_dir))  # TOFU's retain model: its numbers, not its answers
    if retain_model is not None:
        atomic_write_text(figure_dir / RETAIN_MODEL_EVAL, retain_model)
    replace_section(page, section, body, text)


def section_folder(page: Path, section: str) -> Path:
    """Where a page section's files go: ``<page dir>/results/SECTION/``."""
    return Path(page).parent / "results" / section


def replace_section(page: Path, section: str, body: str, text: str | None = None) -> None:
    """Write ``body`` between the ``report:SECTION`` markers of ``page`` (checked by :func:`marked_page`)."""
    text = marked_page(page, section) if text is None else text
    start, end = f"<!-- report:{section} -->", f"<!-- /report:{section} -->"
    opened = text.find(start)
    closed = text.find(end, opened + len(start))
    generated = f"<!-- generated by `unlearnkit report`: edits between the markers are overwritten -->\n{body}"
    atomic_write_text(page, f"{text[: opened + len(start)]}\n{generated}\n{text[closed:]}")


def marked_page(page: Path, section: str) -> str:
    """The text of ``page``, refused unless it holds one pair of ``report:SECTION`` markers."""
    page = Path(page)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", section):
        raise UnlearnkitError(f'The section name "{section}" names a folder too; use letters, digits, "-", "_" '
                              f'and "." only.')
    if not page.is_file():
        raise UnlearnkitError(f"There is no page {page}; create it (with the report markers) or point at an "
                              f"existing Markdown file.")
    text = page.read_text(encoding="utf-8")
    start, end = f"<!-- report:{section} -->", f"<!-- /report:{section} -->"
    opened = text.find(start)
    closed = text.find(end, opened + len(start)) if opened >= 0 else -1
    if opened < 0 or closed < 0:
        raise UnlearnkitError(f"{page} has no {start} ... {end} markers; add both lines where the report "
                              f"should go (what lies between them is replaced).")
    if text.count(start) > 1 or text.count(end) > 1:
        raise UnlearnkitError(f"{page} has the {start} markers more than once; keep one pair.")
    return text


def _variant_labels(runs: Sequence[Row]) -> dict[int, str]:
    """Each run's Table 1 row label: its method (:func:`row_label`), with the LoRA rank, the adapted modules, the
    method's options and the stopping rule added where the method's runs differ in them (a rank or module sweep,
    the two rules of eval.rule), e.g. "FLoRA+IHL r4 Q,V" or "FLoRA+IHL rule=paper+mia"."""
    by_method: dict[str, list[Row]] = {}
    for row in runs:
        by_method.setdefault(row_label(row), []).append(row)
    labels = {}
    for label, group in by_method.items():
        ranks = {row.get("rank") for row in group}
        module_sets = {modules_label(row.get("modules")) for row in group}
        options = {json.dumps(row.get("method_options") or {}, sort_keys=True) for row in group}
        rules = {row.get("rule") or "paper" for row in group}
        for row in group:
            parts = [label]
            if len(ranks) > 1 and row.get("rank") is not None:
                parts.append(f"r{row['rank']}")
            if len(module_sets) > 1 and row.get("modules"):
                parts.append(str(modules_label(row["modules"])))
            if len(options) > 1 and row.get("method_options"):  # e.g. level_from=current
                parts.append(",".join(f"{k}={v}" for k, v in sorted(row["method_options"].items())))
            if len(rules) > 1:  # runs stopped by different rules are not averaged together
                parts.append(f"rule={row.get('rule') or 'paper'}")
            labels[id(row)] = " ".join(parts)
    return labels


def _ordered_variants(labels: Iterable[str]) -> list[str]:
    """Methods in the paper's order (:func:`ordered_labels`); a method's variants by stopping rule (the paper's
    first), then rank, then module set."""
    unique = set(labels)
    methods = ordered_labels(label.split(" ")[0] for label in unique)

    def variant_key(label: str) -> tuple[int, str, int, int, str]:
        parts = label.split(" ")[1:]
        rule = next((p for p in parts if p.startswith("rule=")), "")
        rank = next((int(p[1:]) for p in parts if re.fullmatch(r"r\d+", p)), 0)
        modules = next((p for p in parts if not re.fullmatch(r"r\d+", p) and p != rule), "")
        return (methods.index(label.split(" ")[0]), rule, rank, len(modules.split(",")) if modules else 0, modules)

    return sorted(unique, key=variant_key)


def _cells(column: Column, mean: float | None, std: float | None, count: int) -> Row:
    if mean is None:
        text = NO_VALUE
    elif std is None:
        text = f"{mean:.{column.decimals}f}"
    else:
        text = f"{mean:.{column.decimals}f} ± {std:.{column.decimals}f}"
    return {column.key: text, f"{column.key}_mean": mean, f"{column.key}_std": std, f"{column.key}_count": count}


def sweep_name(rows: Sequence[Row], results: Path) -> str:
    """The folder the sweep wrote its runs into, read from the runs' own output directories, so that a copy of
    its results (a page's ``results/SECTION/``) reports under the sweep's name; else ``results``' own name."""
    parents = {Path(str(row["output_dir"])).parent.name for row in rows if row.get("output_dir")}
    return parents.pop() if len(parents) == 1 and "" not in parents else results.resolve().name


def _caption(rows: Sequence[Row]) -> str:
    finished = len(done_rows(rows))
    failed = len(rows) - finished
    runs = "1 run" if len(rows) == 1 else f"{len(rows)} runs"
    return (f"**Table 1.** {runs} ({finished} finished, {failed} failed with an error). Each cell is the "
            f"mean ± standard deviation (n−1) over the method's successful runs, the k of Success k/n (n counts "
            f"every run of the method); one successful run shows its value alone, and {NO_VALUE} marks no "
            f"successful run or an unmeasured metric. EL10, MA, reasoning accuracy and dialogue F1 are "
            f"percentages; ↓ lower is better, ↑ higher is better. Before: the model before unlearning, the mean "
            f"over its finished runs.")


def _report_body(rows: Sequence[Row], results: Path, figure_dir: Path, link_prefix: str,
                 select: str | None = None) -> tuple[str, list[Path]]:
    """The Markdown shared by report.md and a page section; saves the figures into ``figure_dir``."""
    chosen = "" if select is None else f", the runs named like `{select}`"
    parts = [f"Results of the sweep in `{sweep_name(rows, results)}` ({RESULTS_FILE}{chosen}).", "",
             table1_markdown(rows)]
    written, skipped = [], []
    for made in paper_figures(rows):
        target = figure_dir / f"{made.stem}.png"
        if made.figure is None:
            target.unlink(missing_ok=True)  # a figure of an earlier report would otherwise look current
            skipped.append(f"- {made.title} was skipped: {made.skipped_because}.")
            continue
        written.append(save_figure(made.figure, target))
        parts += ["", f"![{made.title}]({link_prefix}{target.name})", "", f"*{made.title}.* {made.caption}"]
    if skipped:
        parts += ["", "Figures not drawn:", "", *skipped]
    if membership_rows(rows):  # runs judged by the indistinguishability rule (eval.rule: paper+mia)
        parts += ["", membership_markdown(rows)]
    if tofu_rows(rows):  # runs scored with TOFU (eval.tofu): its table and its figure
        retain_model = retain_model_scores(results)
        parts += ["", "**TOFU** (after unlearning; docs/tofu.md says how each number is computed):", "",
                  tofu_markdown(rows, retain_model)]
        figure, why = tofu_figure(rows, retain_model)
        target = figure_dir / "tofu_utility_vs_forget_quality.png"
        if figure is None:
            parts += ["", f"The TOFU figure was not drawn: {why}."]
        else:
            written.append(save_figure(figure, target))
            parts += ["", f"![{TITLE}]({link_prefix}{target.name})", "", f"*{TITLE}.* {CAPTION}"]
    failures = [row for row in rows if row.get("status") != "done"]
    if failures:
        parts += ["", "Runs that failed with an error (counted in n, not in k):", ""]
        for row in failures:
            message = " ".join(str(row.get("error") or "no message recorded").split())  # one bullet per run
            parts.append(f"- `{row['name']}`: {message}")
    return "\n".join(parts), written


def selected(rows: Sequence[Row], select: str | None) -> list[Row]:
    """The runs whose names match the shell-style pattern ``select`` (all of them for ``None``)."""
    return [row for row in rows if select is None or fnmatchcase(str(row["name"]), select)]


def _rows_or_fail(results: Path, select: str | None = None) -> list[Row]:
    rows = selected(read_rows(results), select)
    if select is not None and not rows:
        raise UnlearnkitError(f"No run in {results / RESULTS_FILE} is named like {select}; change --select.")
    if not rows:
        raise UnlearnkitError(f"{results / RESULTS_FILE} holds no runs yet; report once the sweep has finished one.")
    return rows
