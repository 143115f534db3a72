"""Figures 2-4 of the paper from a sweep's results: downstream performance after unlearning against compute,
LoRA rank and the adapted module groups, one colour per method, circles for successful runs, crosses for the rest.

Everything is drawn on ``matplotlib.figure.Figure`` objects directly, never through pyplot, so nothing here
touches matplotlib's global state or needs a display (PNG output goes through the Agg canvas). The paper's
method names live here rather than in ``report.py`` because both the legends and Table 1 use them and the
report imports the figures, not the other way round.
"""

from __future__ import annotations

import functools
import math
import statistics
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from unlearnkit.config.plugins import load_plugin
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import atomic_write

Row = dict[str, Any]

PAPER_ORDER = ("GA", "GD", "LoRA", "LoRA+IHL", "FLoRA", "FLoRA+IHL")
_OBJECTIVE_NAMES = {"ga": "GA", "gd": "GD", "ihl": "IHL", "npo": "NPO", "simnpo": "SimNPO", "level": "Level",
                    "rmu": "RMU"}
# One hue per method in every figure of a report; the paper's own colours are not stated.
_PAPER_COLOURS = {"GA": "tab:purple", "GD": "tab:brown", "LoRA": "tab:blue", "LoRA+IHL": "tab:orange",
                  "FLoRA": "tab:green", "FLoRA+IHL": "tab:red"}
_OTHER_COLOURS = ("tab:pink", "tab:olive", "tab:cyan", "black")  # grey stays the legend's "any method"
# Figure 4's x axis, in the paper's order; other module sets follow alphabetically.
MODULE_SET_ORDER = ("Q,V", "Q,V,FFN", "Q,K,V,O", "Q,K,V,O,FFN")
_GROUP_ORDER = ("q", "k", "v", "o", "ffn")
_DEFAULT_MODULES, _DEFAULT_RANK = "Q,V,FFN", 16  # the paper's defaults, preferred when a sweep is balanced


def model_name(model: str) -> str:
    """A model as a reader knows it: a testbed's ``.../testbed/tiny/model`` is "tiny", a hub id stays whole."""
    path = Path(model)
    if path.name == "model" and path.parent.name:
        return path.parent.name
    return model if not model.startswith(("/", "~", ".")) else path.name


def method_label(method: str, adapter: str) -> str:
    """The paper's name for an objective with an adapter: GA, GD, LoRA, LoRA+IHL, FLoRA, FLoRA+IHL (Table 1).

    With an adapter GD is the default loss and goes unnamed (LoRA = LoRA with GD); any other objective is
    appended, e.g. LoRA+GA, FLoRA+SimNPO.
    """
    objective = _OBJECTIVE_NAMES.get(method.lower(), method.upper())
    found = _adapter_class(adapter)
    if found is not None and not found.has_adapter:
        return objective
    adapter_name = (found.label if found is not None else "") or adapter
    return adapter_name if method.lower() == "gd" else f"{adapter_name}+{objective}"


def _adapter_class(adapter: str) -> Any:
    """The class a results row's adapter names (its label and kind), or None for one this installation lacks."""
    try:
        return load_plugin("adapter", adapter.lower() if ":" not in adapter else adapter)
    except UnlearnkitError:
        return None


def row_label(row: Row) -> str:
    """A row's method label; a KL retain term (``method.retain_kind: kl``) is named, e.g. NPO+KL."""
    label = method_label(str(row["method"]), str(row["adapter"]))
    label = f"{label}+KL" if row.get("retain_kind") == "kl" else label
    label = f"{label}+SAM" if row.get("sam_rho") else label
    label = f"{label}+meta" if row.get("meta_relearn") else label
    return f"{label}+mask" if row.get("disruption_mask") else label


def ordered_labels(labels: Iterable[str]) -> list[str]:
    """The paper's order (GA, GD, LoRA, LoRA+IHL, FLoRA, FLoRA+IHL), then the other labels by adapter (none,
    LoRA, FLoRA) and objective (GA, GD, IHL, NPO, SimNPO), each before its KL-retain variant; unknown ones last,
    alphabetically."""
    unique = set(labels)
    # the adapters in the paper's order (none, LoRA, FLoRA): those its combined labels begin with
    adapters = ["", *dict.fromkeys(label.split("+")[0] for label in PAPER_ORDER if "+" in label)]
    objectives = list(_OBJECTIVE_NAMES.values())

    def family(label: str) -> tuple[int, int, int, str]:
        parts = label.split("+")
        kl = parts[-1] == "KL" and len(parts) > 1
        parts = parts[:-1] if kl else parts
        adapter = parts[0] if parts[0] in adapters else ""
        objective = parts[1] if adapter and len(parts) > 1 else "GD" if adapter else parts[0]
        known = (len(parts) <= (2 if adapter else 1)) and objective in objectives
        if not known:
            return (len(adapters), 0, 0, label)
        return (adapters.index(adapter), objectives.index(objective), int(kl), label)

    return [label for label in PAPER_ORDER if label in unique] + sorted(unique - set(PAPER_ORDER), key=family)


def modules_label(modules: Sequence[str] | None) -> str | None:
    """``["v", "q", "ffn"]`` -> ``"Q,V,FFN"``: groups in attention-then-FFN order, as in Figure 4."""
    if not modules:
        return None
    rank = {group: index for index, group in enumerate(_GROUP_ORDER)}
    return ",".join(g.upper() for g in sorted(modules, key=lambda g: (rank.get(g.lower(), len(rank)), g)))


def finite_value(row: Row, field: str) -> float | None:
    """The row's number for ``field``, or None when it was not measured (null, absent, NaN or infinite)."""
    value = row.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def done_rows(rows: Iterable[Row]) -> list[Row]:
    return [row for row in rows if row.get("status") == "done"]


@dataclass(frozen=True)
class Panel:
    """One downstream metric drawn as one column of panels."""

    field: str
    title: str
    axis_label: str
    scale: float  # fractions are drawn as percentages
    log_y: bool = False


PANELS = (
    Panel("reasoning_acc", "Reasoning", "accuracy (%), higher is better", 100.0),
    Panel("dialogue_f1", "Dialogue", "F1 (%), higher is better", 100.0),
    # a diverged run's perplexity is orders of magnitude above the rest (GA: 578 vs 18 in Table 1)
    Panel("pile_ppl", "Pile perplexity", "perplexity (log scale), lower is better", 1.0, log_y=True),
)


@dataclass(frozen=True)
class PaperFigure:
    """One of Figures 2-4 for a report: the drawing, or why it could not be drawn."""

    stem: str
    title: str
    caption: str
    figure: Figure | None
    skipped_because: str | None = None


_ENCODING = ("Each point is one finished run, coloured by method; filled circles met the forgetting criterion, "
             "crosses did not (runs that failed with an error are not shown). Dashed lines: the model before "
             "unlearning.")


def figure_compute(rows: Sequence[Row]) -> Figure | None:
    """Figure 2: reasoning, dialogue and Pile perplexity after unlearning against total FLOPs (log scale)."""
    return _draw(rows, _flops, "compute (FLOPs, log scale)", _log_x,
                 "Performance after unlearning vs. compute", with_means=False)


def figure_rank(rows: Sequence[Row]) -> Figure | None:
    """Figure 3: the same panels against LoRA rank, for the adapter runs on the most common module set;
    None with fewer than two ranks."""
    runs, modules = _fix(_adapter_runs(rows), "modules", _DEFAULT_MODULES)
    ranks = sorted({int(row["rank"]) for row in runs})
    if len(ranks) < 2:
        return None

    def log2_axis(ax: Axes) -> None:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(rank) for rank in ranks])
        ax.minorticks_off()

    return _draw(runs, lambda row: float(row["rank"]), "LoRA rank (log scale)", log2_axis,
                 "Performance after unlearning vs. LoRA rank", with_means=True,
                 note=f"adapted modules: {modules}" if modules else "",
                 spread=lambda x, shift: x * 2 ** (0.06 * shift))


def figure_modules(rows: Sequence[Row]) -> Figure | None:
    """Figure 4: the same panels against the adapted module groups, for the adapter runs at the most common
    rank; None with fewer than two module sets."""
    runs, rank = _fix(_adapter_runs(rows), "rank", _DEFAULT_RANK)
    present = {label for row in runs if (label := modules_label(row["modules"]))}
    order = [s for s in MODULE_SET_ORDER if s in present] + sorted(present - set(MODULE_SET_ORDER))
    if len(order) < 2:
        return None

    def categories(ax: Axes) -> None:
        ax.set_xticks(range(len(order)), order)
        ax.set_xlim(-0.5, len(order) - 0.5)

    position = {label: float(index) for index, label in enumerate(order)}
    return _draw(runs, lambda row: position.get(modules_label(row["modules"]) or ""), "adapted modules",
                 categories, "Performance after unlearning vs. adapted modules", with_means=True,
                 note=f"LoRA rank {rank}" if rank is not None else "", spread=lambda x, shift: x + 0.07 * shift)


def paper_figures(rows: Sequence[Row]) -> list[PaperFigure]:
    """Figures 2, 3 and 4 for a report, each drawn or with the reason it was left out."""
    measured = any(finite_value(row, p.field) is not None for row in done_rows(rows) for p in PANELS)
    no_metric = "no finished run measured reasoning, dialogue or Pile perplexity"
    rank_runs, modules = _fix(_adapter_runs(rows), "modules", _DEFAULT_MODULES)
    module_runs, rank = _fix(_adapter_runs(rows), "rank", _DEFAULT_RANK)
    ranks = sorted({int(row["rank"]) for row in rank_runs})
    module_sets = sorted({modules_label(row["modules"]) or "" for row in module_runs})
    made = [
        ("figure2_compute", "Figure 2: performance after unlearning vs. compute", figure_compute(rows),
         no_metric if not measured else "no finished run recorded its compute (flops.total)",
         "x: total FLOPs of the run (training, FLoRA's Fisher pass and the forgetting checks)."),
        ("figure3_rank", "Figure 3: performance after unlearning vs. LoRA rank", figure_rank(rows),
         no_metric if not measured else "it needs adapter runs at two or more LoRA ranks on one module set; "
         f"found only rank {_found(ranks)}" + (f" on {modules}" if modules else "") if len(ranks) == 1 else
         f"found {_found(ranks)}",
         f"Solid lines: mean over the successful runs at each rank. Only adapter runs on {modules} (the most "
         f"common module set), so that a module sweep does not mix in."),
        ("figure4_modules", "Figure 4: performance after unlearning vs. adapted modules", figure_modules(rows),
         no_metric if not measured else "it needs adapter runs on two or more module sets at one rank; found only "
         f"{_found(module_sets)}" + (f" at rank {rank}" if rank is not None else ""),
         f"Solid lines: mean over the successful runs for each module set. Only adapter runs at rank {rank} (the "
         f"most common rank), so that a rank sweep does not mix in."),
    ]
    return [PaperFigure(stem, title, f"{_ENCODING} {extra}", figure, None if figure else reason)
            for stem, title, figure, reason, extra in made]


def save_figure(figure: Figure, path: str | Path, dpi: int = 130) -> Path:
    """Write ``figure`` as a PNG at ``path`` atomically (a temporary file renamed into place)."""
    return atomic_write(path, lambda temp: figure.savefig(temp, dpi=dpi, format="png"))


def _found(values: Sequence[object]) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def _flops(row: Row) -> float | None:
    total = (row.get("flops") or {}).get("total")
    return float(total) if isinstance(total, int | float) and math.isfinite(total) and total > 0 else None


def _log_x(ax: Axes) -> None:
    ax.set_xscale("log")
    _short_log_labels(ax.xaxis)


class _ShortLogFormatter(ticker.LogFormatter):
    """Log-axis labels as short plain numbers (40, 6e13): matplotlib's default, 6×10¹³ on every minor tick
    of a range under a decade, runs the labels into each other. A 9 is left unlabelled: it sits against the
    next decade's label."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        if round(x / 10 ** math.floor(math.log10(x) + 1e-9)) == 9:
            return ""
        return f"{x:g}" if 1e-3 <= x < 1e4 else f"{x:.0e}".replace("e+", "e")


def _short_log_labels(axis: Axis) -> None:
    """Label a log axis with short numbers, the minor ticks only while they have room: none over a decade,
    a subset (2, 3, 4, 6) over 0.6 of one, all of them (9 aside) below that."""
    axis.set_major_formatter(_ShortLogFormatter())
    axis.set_minor_formatter(_ShortLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.6)))


def _adapter_runs(rows: Sequence[Row]) -> list[Row]:
    def adapted(row: Row) -> bool:
        found = _adapter_class(str(row.get("adapter")))
        return found is None or bool(found.has_adapter)

    return [row for row in done_rows(rows) if adapted(row) and row.get("rank") is not None and row.get("modules")]


def _fix(runs: list[Row], field: str, preferred: object) -> tuple[list[Row], Any]:
    """Keep the runs sharing the most common value of ``field`` (the paper's default on a tie), so that a
    rank sweep is not mixed with a module sweep and vice versa; returns them with that value."""
    def key(row: Row) -> Any:
        return modules_label(row["modules"]) if field == "modules" else row[field]

    counts = Counter(key(row) for row in runs)
    if not counts:
        return [], None
    top = max(counts.values())
    tied = [value for value, count in counts.items() if count == top]
    chosen = preferred if preferred in tied else tied[0]
    return [row for row in runs if key(row) == chosen], chosen


def _draw(rows: Sequence[Row], x_of: Callable[[Row], float | None], x_label: str,
          configure_x: Callable[[Axes], None], title: str, *, with_means: bool, note: str = "",
          spread: Callable[[float, float], float] = lambda x, shift: x) -> Figure | None:
    """Draw a grid of panels (a row per model, a column per measured metric) of the runs against ``x_of``."""
    finished = done_rows(rows)
    plotted = [row for row in finished if x_of(row) is not None]
    panels = [p for p in PANELS if any(finite_value(row, p.field) is not None for row in plotted)]
    if not plotted or not panels:
        return None
    models = list(dict.fromkeys(str(row["model"]) for row in plotted))
    labels = ordered_labels(row_label(row) for row in plotted)
    colours = _colours(ordered_labels(row_label(row) for row in rows))
    figure = Figure(figsize=(4.0 * len(panels) + 2.0, 3.3 * len(models) + 0.6), layout="constrained")
    grid = figure.subplots(len(models), len(panels), squeeze=False)
    for model, axes_row in zip(models, grid, strict=True):
        for panel, ax in zip(panels, axes_row, strict=True):
            for index, label in enumerate(labels):
                runs = [row for row in plotted if row["model"] == model and row_label(row) == label]
                shift = index - (len(labels) - 1) / 2  # side by side, so crosses at one x stay apart
                _draw_method(ax, runs, x_of, panel, label, colours[label], with_means,
                             functools.partial(_place, spread, shift))
            before = [v for row in finished if row["model"] == model
                      if (v := finite_value(row, f"{panel.field}_before")) is not None]
            if before:
                ax.axhline(statistics.fmean(before) * panel.scale, color="black", linestyle="--", linewidth=1,
                           label="before unlearning")
            ax.set_title(panel.title if len(models) == 1 else f"{panel.title}: {model_name(model)}")
            ax.set_xlabel(x_label)
            ax.set_ylabel(panel.axis_label)
            configure_x(ax)
            if panel.log_y:
                ax.set_yscale("log")
                _short_log_labels(ax.yaxis)
            ax.grid(alpha=0.3)
    heading = f"{title}: {', '.join(map(model_name, models))}" + (f"\n({note})" if note else "")
    # wrapped to the axes' width: a one-panel figure has a title longer than its plot, and the legend to its right
    width = int(4.0 * len(panels) * 9)
    figure.suptitle("\n".join(textwrap.fill(line, width) for line in heading.split("\n")), fontsize=11)
    figure.legend(handles=_legend(labels, colours, with_means), loc="outside right center", fontsize=8)
    return figure


def _draw_method(ax: Axes, runs: list[Row], x_of: Callable[[Row], float | None], panel: Panel, label: str,
                 colour: str, with_means: bool, place: Callable[[float], float]) -> None:
    points = [(x, v * panel.scale, row.get("success") is True) for row in runs
              if (x := x_of(row)) is not None and (v := finite_value(row, panel.field)) is not None]
    won = [(x, y) for x, y, success in points if success]
    lost = [(x, y) for x, y, success in points if not success]
    if won:
        ax.scatter([place(x) for x, _ in won], [y for _, y in won], marker="o", color=colour, zorder=3,
                   label=f"{label}: successful")
    if lost:
        ax.scatter([place(x) for x, _ in lost], [y for _, y in lost], marker="x", color=colour, zorder=3,
                   label=f"{label}: not successful")
    if with_means and won:
        # a gap where this method's runs all failed: a line across it would claim a mean that does not exist
        xs = sorted({x for x, _, _ in points})
        means = [statistics.fmean(ys) if (ys := [y for x, y in won if x == at]) else math.nan for at in xs]
        ax.plot([place(x) for x in xs], means, "-", color=colour, linewidth=1.5,
                label=f"{label}: mean of successful runs")


def _place(spread: Callable[[float, float], float], shift: float, x: float) -> float:
    return spread(x, shift)


def _colours(labels: list[str]) -> dict[str, str]:
    others = [label for label in labels if label not in _PAPER_COLOURS]
    extra = {label: _OTHER_COLOURS[i % len(_OTHER_COLOURS)] for i, label in enumerate(others)}
    return {**extra, **{label: colour for label, colour in _PAPER_COLOURS.items() if label in labels}}


def _legend(labels: list[str], colours: dict[str, str], with_means: bool) -> list[Line2D]:
    return [
        *(Line2D([], [], color=colours[label], marker="o", linestyle="-" if with_means else "none", label=label)
          for label in labels),
        Line2D([], [], color="grey", marker="o", linestyle="none", label="successful run"),
        Line2D([], [], color="grey", marker="x", linestyle="none", label="not successful"),
        *([Line2D([], [], color="grey", linestyle="-", label="mean of successful runs")] if with_means else []),
        Line2D([], [], color="black", linestyle="--", label="before unlearning"),
    ]
