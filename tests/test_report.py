"""The sweep report on a small synthetic results.jsonl: Table 1's rows and numbers, its files, Figures 2-4 and
the splicing of the report into a hand-written page."""

from __future__ import annotations

import csv
import itertools
import json
import random
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.markers import MarkerStyle

from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiments.figures import figure_compute, figure_modules, figure_rank, modules_label
from unlearnkit.experiments.report import (
    method_label,
    read_rows,
    table1_rows,
    update_page,
    write_report,
    write_table1,
)
from unlearnkit.ownership import MARKER, mark_directory

MODEL = "gpt-neo-125m"
PAPER_LABELS = ["GA", "GD", "LoRA", "LoRA+IHL", "FLoRA", "FLoRA+IHL"]
SETUPS = {"GA": ("ga", "none"), "GD": ("gd", "none"), "LoRA": ("gd", "lora"), "LoRA+IHL": ("ihl", "lora"),
          "FLoRA": ("gd", "flora"), "FLoRA+IHL": ("ihl", "flora")}
BEFORE = {"set1": {"el10_before": 0.30, "ma_before": 0.77}, "set2": {"el10_before": 0.34, "ma_before": 0.79}}
# adapter runs: a rank sweep on Q,V,FFN (ranks 4 and 8) and a module sweep at rank 8 (adds Q,V)
ADAPTER_POINTS = [(4, ["q", "v", "ffn"]), (8, ["q", "v", "ffn"]), (8, ["q", "v"])]
UNSUCCESSFUL = {("GA", "set1", None, None), ("GA", "set2", None, None), ("LoRA", "set1", 4, "q,v,ffn")}
FAILED = ("FLoRA+IHL", "set2", 8, "q,v")
# Table 1 has a row per configuration where a method's runs differ in rank or module set
VARIANTS = ["r4 Q,V,FFN", "r8 Q,V", "r8 Q,V,FFN"]
TABLE_LABELS = ["GA", "GD", *(f"{label} {variant}" for label in PAPER_LABELS[2:] for variant in VARIANTS)]


def _row(label: str, forget: str, rank: int | None, modules: list[str] | None, rng: random.Random) -> dict[str, Any]:
    method, adapter = SETUPS[label]
    key = (label, forget, rank, ",".join(modules) if modules else None)
    name = f"{label}-{forget}-r{rank}-{key[3]}"
    config = {"name": name, "axes": {"method": label, "forget": forget, "rank": rank}, "model": MODEL,
              "method": method, "adapter": adapter, "rank": rank, "modules": modules, "forget": forget,
              "seed": 0, "lr": 5e-5 if adapter == "none" else 2e-4}
    if key == FAILED:
        return {**config, "status": "failed", "error": "CUDA out of memory\nwhile training"}
    success = key not in UNSUCCESSFUL
    return {
        **config, "status": "done", "error": None, "success": success, "criterion_met": success,
        "diverged": label == "GA", "collapsed": False, "stop_reason": "criterion" if success else "max_epochs",
        "epochs": rng.randint(2, 12),
        "params_pct": 100.0 if adapter == "none" else 0.2 * (rank or 0) * len(modules or []),
        "trainable_params": 1000, "total_params": 1000,
        "el10": rng.uniform(0.0, 0.02), "ma": rng.uniform(0.2, 0.3), **BEFORE[forget],
        "threshold_el10": 0.02, "threshold_ma": 0.3,
        "reasoning_acc": rng.uniform(0.38, 0.44), "reasoning_acc_before": 0.434,
        "dialogue_f1": rng.uniform(0.02, 0.10), "dialogue_f1_before": 0.094,
        "pile_ppl": rng.uniform(18, 600), "pile_ppl_before": 17.8,
        "flops": {"train": 1e14, "flora_init": 0.0, "criterion": 1e13, "total": rng.uniform(1e13, 1e16)},
        "tokens": {"train": 6400}, "seconds": {"total": 12.5}, "output_dir": f"runs/sweeps/table1/{name}",
    }


def synthetic_rows() -> list[dict[str, Any]]:
    rng = random.Random(7)
    rows = []
    for label in PAPER_LABELS:
        points = [(None, None)] if SETUPS[label][1] == "none" else ADAPTER_POINTS
        for forget in ("set1", "set2"):
            rows += [_row(label, forget, rank, modules, rng) for rank, modules in points]
    return rows


def write_results(directory: Path, rows: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return synthetic_rows()


@pytest.fixture(scope="module")
def report(tmp_path_factory, rows) -> tuple[Path, list[Path]]:
    results = write_results(tmp_path_factory.mktemp("sweep"), rows)
    return results, write_report(results)


def _variant(row) -> str:
    label = method_label(row["method"], row["adapter"])
    return label if row["adapter"] == "none" else f"{label} r{row['rank']} {modules_label(row['modules'])}"


def _successful(rows, label, field, scale=100.0):
    return [row[field] * scale for row in rows if row["status"] == "done" and row["success"]
            and _variant(row) == label]


def test_method_labels_follow_the_paper():
    expected = {("ga", "none"): "GA", ("gd", "none"): "GD", ("gd", "lora"): "LoRA", ("ihl", "lora"): "LoRA+IHL",
                ("gd", "flora"): "FLoRA", ("ihl", "flora"): "FLoRA+IHL", ("npo", "none"): "NPO",
                ("npo", "lora"): "LoRA+NPO", ("simnpo", "flora"): "FLoRA+SimNPO", ("ga", "lora"): "LoRA+GA"}
    assert {key: method_label(*key) for key in expected} == expected


def test_table1_has_a_before_row_then_the_methods_in_the_papers_order(rows):
    shuffled = random.Random(1).sample(rows, len(rows))  # the order comes from the paper, not the file
    table = table1_rows(shuffled)
    assert [entry["method"] for entry in table] == ["Before", *TABLE_LABELS]
    assert {entry["model"] for entry in table} == {MODEL}
    by_label = {entry["method"]: entry for entry in table}
    odd = {"GA": "0/2", "LoRA r4 Q,V,FFN": "1/2", "FLoRA+IHL r8 Q,V": "1/2"}  # unsuccessful runs; a failed one
    assert {label: by_label[label]["success"] for label in TABLE_LABELS} == {
        label: odd.get(label, "2/2") for label in TABLE_LABELS}
    before = by_label["Before"]
    el10_before = statistics.mean(row["el10_before"] * 100 for row in rows if row["status"] == "done")
    assert 30 < el10_before < 34 and before["el10_pct_mean"] == pytest.approx(el10_before)
    assert before["el10_pct"] == f"{el10_before:.1f}" and before["runs"] == len(rows) - 1
    assert before["reasoning_acc_pct"] == "43.4" and before["pile_ppl"] == "17.8"
    assert before["params_pct"] == "—" and before["epochs"] == "—"


def test_other_methods_follow_the_papers(rows):
    extra = [{**row, "name": f"{row['name']}-{method}", "method": method} for method in ("simnpo", "npo")
             for row in rows if row["adapter"] == "none"]
    labels = [entry["method"] for entry in table1_rows(extra + rows)]
    assert labels == ["Before", *TABLE_LABELS, "NPO", "SimNPO"]


def test_methods_beyond_the_papers_are_grouped_by_adapter_then_objective_kl_after():
    from unlearnkit.experiments.figures import ordered_labels

    shuffled = ["FLoRA+SimNPO", "Custom", "NPO+KL", "LoRA+GA", "FLoRA+IHL+KL", "SimNPO", "GD", "IHL", "NPO",
                "FLoRA+GA", "LoRA+NPO", "FLoRA+IHL"]
    assert ordered_labels(shuffled) == ["GD", "FLoRA+IHL", "IHL", "NPO", "NPO+KL", "SimNPO", "LoRA+GA", "LoRA+NPO",
                                        "FLoRA+GA", "FLoRA+IHL+KL", "FLoRA+SimNPO", "Custom"]


def test_a_method_with_one_configuration_keeps_the_papers_name_and_a_rank_sweep_names_only_ranks(rows):
    one = [row for row in rows if row["adapter"] == "none" or (row["rank"], row["modules"]) == (8, ["q", "v", "ffn"])]
    assert [entry["method"] for entry in table1_rows(one)] == ["Before", *PAPER_LABELS]
    ranks = [row for row in rows if row["adapter"] != "none" and row["modules"] == ["q", "v", "ffn"]]
    assert [entry["method"] for entry in table1_rows(ranks)] == ["Before", *(
        f"{label} r{rank}" for label in PAPER_LABELS[2:] for rank in (4, 8))]


def test_runs_stopped_by_different_rules_get_their_own_rows_the_papers_first(rows):
    one = [row for row in rows if row["adapter"] == "none" or (row["rank"], row["modules"]) == (8, ["q", "v", "ffn"])]
    ga = [row for row in one if row["method"] == "ga"]
    ihl = [row for row in one if (row["method"], row["adapter"]) == ("ihl", "flora")]
    mia = [{**row, "rule": "paper+mia", "name": row["name"] + "-mia", "el10": 0.5} for row in ihl]
    labels = [entry["method"] for entry in table1_rows([*mia, *ihl, *ga])]
    assert labels == ["Before", "GA", "FLoRA+IHL rule=paper", "FLoRA+IHL rule=paper+mia"]
    mia_row = next(e for e in table1_rows([*mia, *ihl]) if e["method"] == "FLoRA+IHL rule=paper+mia")
    won = [row for row in mia if row["success"]]
    assert mia_row["el10_pct_mean"] == pytest.approx(50.0) and mia_row["success"] == f"{len(won)}/{len(mia)}"
    assert [e["method"] for e in table1_rows(mia)] == ["Before", "FLoRA+IHL"]  # one rule: the method's name


@pytest.mark.parametrize("label", ["GD", "LoRA r8 Q,V", "FLoRA+IHL r8 Q,V,FFN"])
@pytest.mark.parametrize(("key", "field", "scale", "decimals"), [
    ("el10_pct", "el10", 100.0, 1), ("ma_pct", "ma", 100.0, 1), ("reasoning_acc_pct", "reasoning_acc", 100.0, 1),
    ("dialogue_f1_pct", "dialogue_f1", 100.0, 1), ("pile_ppl", "pile_ppl", 1.0, 1), ("epochs", "epochs", 1.0, 1),
    ("params_pct", "params_pct", 1.0, 2),
])
def test_table1_cells_are_mean_and_sample_std_over_successful_runs(rows, label, key, field, scale, decimals):
    entry = next(e for e in table1_rows(rows) if e["method"] == label)
    values = _successful(rows, label, field, scale)
    mean, std = statistics.mean(values), statistics.stdev(values)
    assert entry[f"{key}_mean"] == pytest.approx(mean)
    assert entry[f"{key}_std"] == pytest.approx(std)
    assert entry[f"{key}_count"] == len(values)
    assert entry[key] == f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def test_table1_shows_a_dash_without_success_and_the_mean_alone_for_one(rows):
    ga = next(e for e in table1_rows(rows) if e["method"] == "GA")
    assert ga["success"] == "0/2" and ga["el10_pct"] == "—" and ga["el10_pct_mean"] is None
    one = [row for row in rows if row["method"] == "gd" and row["adapter"] == "none"][:1]
    gd = next(e for e in table1_rows(one) if e["method"] == "GD")
    assert gd["success"] == "1/1" and gd["ma_pct"] == f"{one[0]['ma'] * 100:.1f}" and gd["ma_pct_std"] is None
    unmeasured = [{**row, "dialogue_f1": None} for row in rows]
    assert {e["dialogue_f1_pct"] for e in table1_rows(unmeasured) if e["method"] != "Before"} == {"—"}


def test_write_table1_writes_a_captioned_markdown_table_and_a_csv(tmp_path, rows):
    markdown, table_csv = write_table1(rows, tmp_path)
    text = markdown.read_text(encoding="utf-8")
    assert "mean ± standard deviation" in text and f"{len(rows)} runs" in text and "1 failed" in text
    assert "| Model | Method | Params (%) |" in text and "| Success |" in text
    assert "a row per configuration (rN: rank N)" in text and "| LoRA r4 Q,V,FFN |" in text
    with table_csv.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        records = list(reader)
    assert reader.fieldnames is not None
    assert reader.fieldnames[:4] == ["model", "method", "runs", "successes"]
    assert {"el10_pct_mean", "el10_pct_std", "el10_pct_count", "pile_ppl_mean"} <= set(reader.fieldnames)
    assert [r["method"] for r in records] == ["Before", *TABLE_LABELS]
    gd = next(r for r in records if r["method"] == "GD")
    assert float(gd["ma_pct_mean"]) == pytest.approx(statistics.mean(_successful(rows, "GD", "ma")))
    assert gd["runs"] == "2" and gd["successes"] == "2"
    assert next(r for r in records if r["method"] == "GA")["ma_pct_mean"] == ""


def test_write_report_writes_the_table_valid_pngs_and_a_report_linking_them(report):
    results, written = report
    out = results / "report"
    names = sorted(path.name for path in written)
    assert names == ["figure2_compute.png", "figure3_rank.png", "figure4_modules.png", "report.md",
                     "table1.csv", "table1.md"]
    assert all(path.parent == out for path in written)
    for png in out.glob("*.png"):
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    text = (out / "report.md").read_text(encoding="utf-8")
    for stem in ("figure2_compute", "figure3_rank", "figure4_modules"):
        assert f"]({stem}.png)" in text
    assert "| FLoRA+IHL r8 Q,V |" in text and "`FLoRA+IHL-set2-r8-q,v`: CUDA out of memory while training" in text
    assert "skipped" not in text
    assert [p.name for p in out.glob(".*")] == [MARKER]  # no temporary files left behind, only the marker


def test_report_says_which_figures_were_skipped_and_why(tmp_path, rows):
    one_rank = [row for row in rows if row.get("rank") == 8 and row["modules"] == ["q", "v", "ffn"]]
    write_results(tmp_path, one_rank)
    stale = tmp_path / "out" / "figure3_rank.png"
    stale.parent.mkdir()
    stale.write_bytes(b"from an earlier report")
    mark_directory(stale.parent, "report")  # as that report left it
    written = write_report(tmp_path, tmp_path / "out")
    assert {path.name for path in written} == {"figure2_compute.png", "report.md", "table1.csv", "table1.md"}
    assert not stale.exists()
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "Figure 3: performance after unlearning vs. LoRA rank was skipped" in text
    assert "two or more LoRA ranks on one module set; found only rank 8 on Q,V,FFN" in text
    assert "two or more module sets at one rank; found only Q,V,FFN at rank 8" in text


def _series(ax) -> dict[str, int]:
    """Label -> number of points of each scatter and line drawn on ``ax``."""
    found = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    found |= {line.get_label(): len(line.get_xdata()) for line in ax.lines}
    return found


def _is_marker(collection, marker: str) -> bool:
    style = MarkerStyle(marker)
    expected = np.asarray(style.get_path().transformed(style.get_transform()).vertices)
    drawn = np.asarray(collection.get_paths()[0].vertices)
    return drawn.shape == expected.shape and np.allclose(drawn, expected)


def _before_lines(ax):
    return [line for line in ax.lines if line.get_label() == "before unlearning" and line.get_linestyle() == "--"]


def test_figure_compute_draws_every_run_with_crosses_for_the_unsuccessful(rows):
    figure = figure_compute(rows)
    assert figure is not None
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == ["Reasoning", "Dialogue", "Pile perplexity"]
    assert all(ax.get_xscale() == "log" and ax.get_xlabel() == "compute (FLOPs, log scale)" for ax in axes)
    assert "higher is better" in axes[0].get_ylabel() and "lower is better" in axes[2].get_ylabel()
    assert MODEL in figure.get_suptitle()
    series = _series(axes[0])
    assert series["GA: not successful"] == 2 and "GA: successful" not in series
    assert series["LoRA: successful"] == 5 and series["LoRA: not successful"] == 1
    assert series["FLoRA+IHL: successful"] == 5 and "FLoRA+IHL: not successful" not in series  # failed: no point
    crosses = next(c for c in axes[0].collections if c.get_label() == "LoRA: not successful")
    lora = next(r for r in rows if r["name"] == "LoRA-set1-r4-q,v,ffn")
    assert np.asarray(crosses.get_offsets())[0].tolist() == pytest.approx(
        [lora["flops"]["total"], lora["reasoning_acc"] * 100])
    circles = next(c for c in axes[0].collections if c.get_label() == "GD: successful")
    assert _is_marker(crosses, "x") and _is_marker(circles, "o") and not _is_marker(circles, "x")
    assert np.asarray(crosses.get_facecolor())[0].tolist() != np.asarray(circles.get_facecolor())[0].tolist()
    for ax, before in zip(axes, (43.4, 9.4, 17.8), strict=True):
        (line,) = _before_lines(ax)
        assert np.asarray(line.get_ydata())[0] == pytest.approx(before)
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend[:6] == PAPER_LABELS and {"not successful", "before unlearning"} <= set(legend)


def test_figure_compute_leaves_out_unmeasured_panels_and_returns_none_without_any(rows):
    no_dialogue = [{**row, "dialogue_f1": None} for row in rows]
    figure = figure_compute(no_dialogue)
    assert figure is not None and [ax.get_title() for ax in figure.axes] == ["Reasoning", "Pile perplexity"]
    nothing = [{**row, "dialogue_f1": None, "reasoning_acc": None, "pile_ppl": None} for row in rows]
    assert figure_compute(nothing) is None


@pytest.mark.parametrize("low", [4.2e11, 5.8e13, 2e9])
def test_figure_compute_labels_a_narrow_compute_range_with_short_labels_that_do_not_overlap(rows, low):
    """Real sweeps span half a decade of FLOPs or less; every labelled tick must be readable."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rng = random.Random(3)
    narrow = [{**row, "flops": {**row.get("flops", {}), "total": low * rng.uniform(1.0, 3.2)}} for row in rows]
    figure = figure_compute(narrow)
    assert figure is not None
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis) if ax.get_yscale() == "log" else (ax.xaxis,):
            labels = [tick.label1 for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]
                      if tick.label1.get_visible() and tick.label1.get_text()
                      and axis.get_view_interval()[0] <= tick.get_loc() <= axis.get_view_interval()[1]]
            texts = [label.get_text() for label in labels]
            assert len(texts) >= 2 and all(len(text) <= 5 and "times" not in text for text in texts), texts
            boxes = sorted((label.get_window_extent(renderer) for label in labels),
                           key=lambda box: box.x0 if axis is ax.xaxis else box.y0)
            for first, second in itertools.pairwise(boxes):
                assert (first.x1 <= second.x0) if axis is ax.xaxis else (first.y1 <= second.y0), texts


def test_figure_rank_draws_the_rank_sweep_with_mean_lines(rows):
    figure = figure_rank(rows)
    assert figure is not None
    ax = figure.axes[0]
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["4", "8"] and ax.get_xscale() == "log"
    assert "Q,V,FFN" in figure.get_suptitle()  # the rank sweep's module set, not the module sweep's
    series = _series(ax)
    assert "GA: successful" not in series and "GD: not successful" not in series  # adapter runs only
    assert series["LoRA: successful"] == 3 and series["LoRA: not successful"] == 1
    assert series["FLoRA+IHL: successful"] == 4 and series["FLoRA+IHL: mean of successful runs"] == 2
    mean = next(line for line in ax.lines if line.get_label() == "LoRA+IHL: mean of successful runs")
    at_rank_4 = [r["reasoning_acc"] * 100 for r in rows if r["method"] == "ihl" and r["adapter"] == "lora"
                 and r["rank"] == 4]
    assert mean.get_linestyle() == "-" and np.asarray(mean.get_ydata())[0] == pytest.approx(statistics.mean(at_rank_4))
    assert len(_before_lines(ax)) == 1
    assert figure_rank([row for row in rows if row.get("rank") != 4]) is None


def test_a_mean_line_breaks_where_every_run_of_the_method_failed(rows):
    failed_at_4 = [{**row, "success": False} if row.get("adapter") == "flora" and row.get("method") == "gd"
                   and row.get("rank") == 4 else row for row in rows]
    ax = figure_rank(failed_at_4).axes[0]
    mean = next(line for line in ax.lines if line.get_label() == "FLoRA: mean of successful runs")
    at_rank_8 = [r["reasoning_acc"] * 100 for r in rows if r["method"] == "gd" and r["adapter"] == "flora"
                 and r["rank"] == 8 and r.get("modules") == ["q", "v", "ffn"] and r.get("success")]
    ys = np.asarray(mean.get_ydata(), dtype=float)
    assert np.isnan(ys[0]) and ys[1] == pytest.approx(statistics.mean(at_rank_8))


def test_figure_modules_orders_the_module_sets_like_the_paper(rows):
    figure = figure_modules(rows)
    assert figure is not None
    ax = figure.axes[0]
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["Q,V", "Q,V,FFN"]
    assert "LoRA rank 8" in figure.get_suptitle()
    series = _series(ax)
    assert series["FLoRA+IHL: successful"] == 3  # the failed Q,V run has no point
    assert series["LoRA: successful"] == 4 and "LoRA: not successful" not in series  # rank 4 is not drawn
    assert len(_before_lines(ax)) == 1
    assert figure_modules([row for row in rows if row.get("modules") != ["q", "v"]]) is None


def test_update_page_replaces_only_its_section(tmp_path, rows):
    # full fine-tuning runs with one metric: one single-panel figure to draw keeps the two updates quick
    quick = [{**row, "dialogue_f1": None, "pile_ppl": None} for row in rows if row["adapter"] == "none"]
    results = write_results(tmp_path / "sweep", quick)
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    before, after = "# Results\n\nHand-written intro.\n\n", "\n\nHand-written conclusion.\n"
    page.write_text(f"{before}<!-- report:tdec -->\nold table\n<!-- /report:tdec -->{after}", encoding="utf-8")
    for _ in range(2):  # a second update replaces the first, it does not stack
        update_page(page, "tdec", results)
        text = page.read_text(encoding="utf-8")
        assert text.startswith(before + "<!-- report:tdec -->\n") and text.endswith("<!-- /report:tdec -->" + after)
        assert "old table" not in text and text.count("| GD |") == 1
    assert "](results/tdec/figure2_compute.png)" in text
    assert (page.parent / "results" / "tdec" / "figure2_compute.png").read_bytes().startswith(b"\x89PNG")
    # named after the folder the sweep wrote its runs into, wherever its results.jsonl is read from
    assert "Results of the sweep in `table1` (results.jsonl)." in text
    # the results travel with the page: regenerating the section from the copy gives the same section
    copied = page.parent / "results" / "tdec"
    assert (copied / "results.jsonl").read_text() == (results / "results.jsonl").read_text()
    update_page(page, "tdec", copied)
    assert page.read_text(encoding="utf-8") == text


def test_update_page_without_markers_says_to_add_them(tmp_path, report):
    results, _ = report
    page = tmp_path / "page.md"
    page.write_text("# Results\n<!-- report:other -->\n<!-- /report:other -->\n", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match=r"no <!-- report:tdec --> \.\.\. <!-- /report:tdec --> markers; add"):
        update_page(page, "tdec", results)
    assert page.read_text(encoding="utf-8") == "# Results\n<!-- report:other -->\n<!-- /report:other -->\n"


def test_read_rows_names_the_file_and_line_it_cannot_read(tmp_path, rows):
    with pytest.raises(UnlearnkitError, match="There is no .*results.jsonl"):
        read_rows(tmp_path)
    path = write_results(tmp_path, rows[:2]) / "results.jsonl"
    path.write_text(path.read_text(encoding="utf-8") + '{"name": "cut off', encoding="utf-8")
    with pytest.raises(UnlearnkitError, match=r"results\.jsonl line 3 is not JSON"):
        read_rows(tmp_path)
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps({**rows[0], "epochs": 99}) + "\n", encoding="utf-8")
    assert [row["epochs"] for row in read_rows(tmp_path)] == [99]  # a retried point: the last line wins


def test_report_select_keeps_only_the_runs_named_like_the_pattern(tmp_path, rows):
    quick = [{**row, "dialogue_f1": None, "pile_ppl": None, "reasoning_acc": None} for row in rows]
    results = write_results(tmp_path / "sweep", quick)
    written = write_report(results, tmp_path / "out", select="*-set1-*")
    table = written[0].read_text(encoding="utf-8")
    set1 = [row for row in quick if row["forget"] == "set1"]
    assert f"{len(set1)} runs" in table
    gd = next(line for line in table.splitlines() if line.startswith(f"| {MODEL} | GD |"))
    assert gd.endswith("| 1/1 |")  # GD's one run on set1, not the two over both sets
    assert "the runs named like `*-set1-*`" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="No run in .* is named like set9; change --select"):
        write_report(results, tmp_path / "none", select="set9")
    assert not (tmp_path / "none").exists()



def test_a_report_folder_of_the_users_is_not_written_over(tmp_path, rows):
    write_results(tmp_path, rows)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("# my own report\n")
    with pytest.raises(UnlearnkitError, match=r"did not write \(report.md\)"):
        write_report(tmp_path, out)
    assert (out / "report.md").read_text() == "# my own report\n"
    write_report(tmp_path, tmp_path / "ours")
    write_report(tmp_path, tmp_path / "ours")  # its own report: replaced


def test_a_rows_label_says_how_its_forget_gradient_was_taken():
    """Tables and figures tell apart runs that differ only in where or how the forget gradient is taken."""
    from unlearnkit.config import MethodConfig
    from unlearnkit.experiments.figures import row_label

    def row(method: str, adapter: str, **settings: object) -> dict:
        config = MethodConfig(name=method, **settings)
        return {"method": method, "adapter": adapter, "retain_kind": config.retain_kind, **config.gradient_point()}

    assert row_label(row("ihl", "flora")) == "FLoRA+IHL"
    assert row_label(row("ihl", "flora", sam_rho=0.05)) == "FLoRA+IHL+SAM"
    assert row_label(row("ihl", "flora", meta_relearn=0.05, disruption_mask=True)) == "FLoRA+IHL+meta+mask"
    assert row_label(row("npo", "none", retain_kind="kl")) == "NPO+KL"


def test_every_section_of_the_results_page_regenerates_from_the_records_committed_beside_it(tmp_path):
    """docs/results.md's generated sections come back word for word from `docs/results/SECTION/` (the results the
    page names), as `unlearnkit report docs/results/SECTION --page ... --section SECTION` makes them: a hand edit
    between the markers, or a report change that alters a committed section, fails here."""
    import re
    import shutil

    from conftest import REPO
    from unlearnkit.experiments.attack_table import holds_attack_records, update_page_with_attacks
    from unlearnkit.experiments.report import update_page

    docs = tmp_path / "docs"
    docs.mkdir()
    page = docs / "results.md"
    original = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    page.write_text(original, encoding="utf-8")
    sections = re.findall(r"<!-- report:([A-Za-z0-9_.-]+) -->", original)
    assert len(sections) >= 10
    for section in sections:
        records = docs / "results" / section
        shutil.copytree(REPO / "docs" / "results" / section, records)
        body = original.split(f"<!-- report:{section} -->")[1].split(f"<!-- /report:{section} -->")[0]
        if holds_attack_records(records) and not (records / "results.jsonl").is_file():
            update_page_with_attacks(page, section, records)
        else:
            selected = re.search(r"\(results\.jsonl, the runs named like `([^`]+)`\)", body)
            update_page(page, section, records, selected.group(1) if selected else None)
    assert page.read_text(encoding="utf-8") == original
