"""The attack table: attack records of many runs (`unlearnkit attack --output`) as one table, and in a page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiments.attack_table import (
    attack_table_markdown,
    goal_markdown,
    read_attack_records,
    recovery_points,
    update_page_with_attacks,
    write_attack_report,
)

PLAN = {"relearn_steps": 20, "relearn_lr": 0.001, "relearn_fraction": 0.5,
        "quantisations": ["int4-g32-sym", "gguf-Q4_0"], "seed": 0}


def record(method: str, adapter: str, success: bool, ma: tuple[float, float, float], quant: float,
           base: float | None = None, retain_kind: str = "lm") -> dict[str, Any]:
    """An attack record as `unlearnkit attack` writes it: MA before / unlearned / relearned on the unseen rows."""
    before, unlearned, relearned = ma
    rows: list[dict[str, Any]] = [
        {"attack": "before unlearning", "rows": "all", "ma": before, "el": 0.4},
        {"attack": "none (unlearned)", "rows": "all", "ma": unlearned, "el": 0.0},
        {"attack": "before unlearning", "rows": "16 not attacked", "ma": before, "el": 0.4},
        {"attack": "none (unlearned)", "rows": "16 not attacked", "ma": unlearned, "el": 0.0},
        {"attack": "relearn 20 steps (lr 0.001)", "rows": "16 not attacked", "ma": relearned, "el": 0.2,
         "recovery": {"ma": (relearned - unlearned) / (before - unlearned), "el": 0.5, "extraction": None}},
        {"attack": "none (unlearned)", "rows": "held-out (control)", "ma": 0.27, "el": 0.03},
        {"attack": "relearn 20 steps (lr 0.001)", "rows": "held-out (control)", "ma": 0.3, "el": 0.04}]
    for label in PLAN["quantisations"]:
        rows.append({"attack": f"quantise {label}", "rows": "all", "ma": unlearned,
                     "recovery": {"ma": quant, "el": 0.0, "extraction": None}})
        if base is not None:
            rows.append({"attack": f"quantise base {label}, adapter kept", "rows": "all", "ma": unlearned,
                         "recovery": {"ma": base, "el": 0.0, "extraction": None}})
    return {"model": f"runs/{method}-{adapter}", "plan": PLAN, "rows": rows, "details": {},
            "run": {"method": method, "adapter": adapter, "retain_kind": retain_kind, "forget": "jang-32-0",
                    "seed": 42, "epochs": 12, "criterion_met": success, "success": success}}


@pytest.fixture()
def attacked(tmp_path) -> Path:
    records = {"flora-ihl": record("ihl", "flora", True, (0.9, 0.2, 0.8), -0.004, base=0.031),
               "ga": record("ga", "none", False, (0.9, 0.1, 0.5), 0.0),
               "npo-kl": record("npo", "none", True, (0.9, 0.3, 0.6), 0.25, retain_kind="kl"),
               "gd": record("gd", "none", True, (0.8, 0.2, 0.7), 0.1)}
    for name, content in records.items():
        (tmp_path / "attacks" / name).mkdir(parents=True)
        (tmp_path / "attacks" / name / "attack.json").write_text(json.dumps(content), encoding="utf-8")
    return tmp_path / "attacks"


def _table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_the_attack_table_orders_methods_like_the_paper_and_computes_each_cell(attacked):
    table = attack_table_markdown(read_attack_records(attacked))
    rows = _table_rows(table)
    assert [row[0] for row in rows] == ["GA", "GD", "FLoRA+IHL", "NPO+KL"]
    ga, gd, flora_ihl, npo_kl = rows
    assert ga[1:3] == ["`ga`", "no"] and gd[2] == "yes"
    assert gd[3] == "80.0 → 20.0 → 70.0" and gd[4] == "40.0 → 0.0 → 20.0"
    assert gd[5] == "0.83 / 0.50"  # (0.7 - 0.2) / (0.8 - 0.2)
    assert ga[5] == "0.50 / 0.50" and npo_kl[5] == "0.50 / 0.50"  # (0.6 - 0.3) / (0.9 - 0.3)
    assert gd[6] == "27.0 → 30.0"  # the control: held-out rows under the unlearned and the relearned model
    # specific recovery: beyond the control's rise, ((0.7 - 0.2) - (0.30 - 0.27)) / (0.8 - 0.2) and
    # ((0.2 - 0.0) - (0.04 - 0.03)) / (0.4 - 0.0), computed from the rows (records written before it existed too)
    assert gd[7] == "0.78 / 0.47"
    # quantisation: the merged model, and in brackets the base alone under its adapter; no "-0.00"
    assert flora_ihl[8:] == ["0.00 (base only: 0.03)"] * 2 and npo_kl[8:] == ["0.25"] * 2
    assert "20 steps at lr 0.001 on 50 % of the forget rows" in table and "4 attacked runs" in table


def test_a_record_without_a_run_or_relearning_shows_dashes_and_the_model(tmp_path):
    plain = record("gd", "none", True, (0.8, 0.2, 0.7), 0.1)
    del plain["run"]
    plain["plan"] = {**PLAN, "relearn_steps": 0}
    plain["rows"] = [row for row in plain["rows"] if row["rows"] == "all"]
    (tmp_path / "attack.json").write_text(json.dumps(plain), encoding="utf-8")
    table = attack_table_markdown(read_attack_records(tmp_path))
    assert "relearn" not in table.split("\n\n", 1)[1] and "no relearning" in table
    assert _table_rows(table) == [["runs/gd-none", f"`{tmp_path.name}`", "—", "0.10", "0.10"]]
    assert goal_markdown(read_attack_records(tmp_path)) == ""  # nothing of the goal measured: no goal table


def test_the_report_command_writes_the_attack_table_and_a_page_section_that_regenerates(attacked, tmp_path):
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text("# R\n\n<!-- report:attacks -->\nold\n<!-- /report:attacks -->\n\nReading.\n", encoding="utf-8")
    done = run_cli("report", str(attacked), "--page", str(page), "--section", "attacks", "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "attacks.md").read_text(encoding="utf-8").startswith("**Attacks.** 4 attacked runs")
    text = page.read_text(encoding="utf-8")
    assert "\nold\n" not in text and text.endswith("<!-- /report:attacks -->\n\nReading.\n") and "| GD | `gd` |" in text
    copies = page.parent / "results" / "attacks"
    assert sorted(p.name for p in copies.glob("*.json")) == ["flora-ihl.json", "ga.json", "gd.json", "npo-kl.json"]
    update_page_with_attacks(page, "attacks", copies)  # from the page's own copies: the same section
    assert page.read_text(encoding="utf-8") == text


def test_a_page_without_the_section_is_refused_before_anything_is_copied(attacked, tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# R\n", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="no <!-- report:attacks -->"):
        update_page_with_attacks(page, "attacks", attacked)
    assert not (tmp_path / "results").exists() and page.read_text(encoding="utf-8") == "# R\n"


def test_a_directory_without_attack_records_is_named_with_the_command_that_writes_them(tmp_path):
    (tmp_path / "other.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="holds no attack records.*unlearnkit attack"):
        read_attack_records(tmp_path)


def test_the_recovery_figure_plots_specific_recovery_against_the_reasoning_kept(attacked, tmp_path):
    records = read_attack_records(attacked)
    assert recovery_points(records) == []  # records without what the model kept: no figure, no link
    assert [p.name for p in write_attack_report(attacked, tmp_path / "plain")] == ["attacks.md"]
    kept = {"flora-ihl": (0.47, 0.48), "ga": (0.40, 0.48)}  # reasoning after, before
    for name, (after, before) in kept.items():
        file = attacked / name / "attack.json"
        content = json.loads(file.read_text(encoding="utf-8"))
        content["run"].update(kept={"reasoning_acc": after}, kept_before={"reasoning_acc": before})
        file.write_text(json.dumps(content), encoding="utf-8")
    points = {point.name: point[2:] for point in recovery_points(read_attack_records(attacked))}
    # FLoRA + IHL: (0.8 - 0.2) - (0.3 - 0.27) over 0.9 - 0.2 of MA came back beyond the control; GA likewise,
    # and it missed its criterion (a cross)
    assert points == {"flora-ihl": (pytest.approx(-1.0), pytest.approx((0.6 - 0.03) / 0.7), True),
                      "ga": (pytest.approx(-8.0), pytest.approx((0.4 - 0.03) / 0.8), False)}
    written = write_attack_report(attacked, tmp_path / "figure")
    assert [p.name for p in written] == ["attacks.md", "figure_recovery.png"]
    assert written[1].read_bytes().startswith(b"\x89PNG") and "(figure_recovery.png)" in written[0].read_text()



def test_the_goal_table_judges_each_run_part_by_part(attacked):
    """Membership AUCs after unlearning within 0.5 ± 0.1 (both) and specific relearning recovery at most 0.2 by their
    values; reasoning at most a point below the model before by its paired interval: met when all of it is above
    -1 point, missed when all of it is below, else undecided; a part not measured is undecided."""
    level = record("level", "flora", True, (0.9, 0.3, 0.4), 0.0)
    (attacked / "flora-level").mkdir()
    (attacked / "flora-level" / "attack.json").write_text(json.dumps(level), encoding="utf-8")
    interval = {"flora-level": (0.003, -0.008, 0.014), "ga": (-0.08, -0.11, -0.05)}  # change, low, high
    # (0.6, 0.4): the band's edges are within it
    measured = {"flora-level": ((0.6, 0.4), (0.478, 0.475)), "flora-ihl": ((0.55, 0.58), (0.47, 0.475)),
                "ga": ((0.49, 0.36), (0.40, 0.48)), "npo-kl": ((0.70, 0.50), (0.48, 0.48))}

    def write(name: str, change: tuple[float, float, float] | None) -> None:
        (loss, min_k), (after, before) = measured[name]
        file = attacked / name / "attack.json"
        content = json.loads(file.read_text(encoding="utf-8"))
        unlearned = next(r for r in content["rows"] if r["attack"] == "none (unlearned)" and r["rows"] == "all")
        unlearned["mia_auc"] = {"loss": loss, "min_k": min_k}
        content["run"].update(kept={"reasoning_acc": after}, kept_before={"reasoning_acc": before})
        content["run"].pop("reasoning_change", None)
        if change:
            content["run"]["reasoning_change"] = dict(zip(("change", "low", "high"), change, strict=True))
        file.write_text(json.dumps(content), encoding="utf-8")

    def goal_rows() -> dict[str, list[str]]:
        return {row[1].strip("`"): row for row in _table_rows(goal_markdown(read_attack_records(attacked)))}

    for name in measured:
        write(name, interval.get(name))
    rows = goal_rows()
    # specific recovery ((relearned - unlearned) - (0.30 - 0.27)) / (before - unlearned), as in the attack table
    assert rows["flora-level"][3:] == ["0.60 / 0.40", f"{(0.1 - 0.03) / 0.6:.2f}", "+0.3 [-0.8, +1.4]", "yes"]
    assert rows["flora-ihl"][3:] == ["0.55 / 0.58", f"{(0.6 - 0.03) / 0.7:.2f}", "-0.5", "no: relearning"]
    # an AUC far below 0.5 tells the rows apart too (as the less familiar); an interval wholly below -1 point
    # misses the reasoning bound
    assert rows["ga"][3:] == ["0.49 / 0.36", f"{(0.4 - 0.03) / 0.8:.2f}", "-8.0 [-11.0, -5.0]",
                              "no: membership, relearning, reasoning"]
    assert rows["npo-kl"][6] == "no: membership, relearning"
    # GD's record measured neither membership nor reasoning: what it measured decides no "yes"
    assert rows["gd"][3:] == ["— / —", f"{(0.5 - 0.03) / 0.6:.2f}", "—", "no: relearning"]
    table_order = _table_rows(attack_table_markdown(read_attack_records(attacked)))
    assert list(rows) == [row[1].strip("`") for row in table_order]
    # within the goal by the point estimate, but the interval reaches below -1 point; or no interval at all
    write("flora-level", (0.003, -0.03, 0.036))
    assert goal_rows()["flora-level"][5:] == ["+0.3 [-3.0, +3.6]", "undecided: reasoning"]
    write("flora-level", None)
    assert goal_rows()["flora-level"][5:] == ["+0.3", "undecided: reasoning"]
