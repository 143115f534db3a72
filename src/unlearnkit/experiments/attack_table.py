"""Attacks over many runs: attack every finished run of a sweep (resumable), and the attack table that compares
them — one line per attacked run, with what unlearning removed and how much of it each attack brought back.

An attack record is what ``unlearnkit attack --output`` writes as ``attack.json``: the model, the plan, the
measured rows (:func:`unlearnkit.attacks.suite.run_attacks`) and, for a run directory, the run's facts (method,
adapter, retain term, forget set, success). The table reads records from a directory's own ``attack.json``, its
subdirectories' ``*/attack.json`` (a sweep attacked), or flat ``*.json`` copies (a results page's folder).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

from unlearnkit.attacks import HELD_OUT_ROWS, specific_recovery
from unlearnkit.errors import UnlearnkitError
from unlearnkit.experiments.figures import ordered_labels, row_label
from unlearnkit.experiments.report import marked_page, replace_section, section_folder
from unlearnkit.experiments.sweep import SweepOutcome
from unlearnkit.io import ClaimedElsewhere, atomic_write_json, atomic_write_text, claimed

__all__ = ["ATTACK_FILE", "attack_runs", "read_attack_records", "attack_table_markdown", "goal_markdown",
           "holds_attack_records", "recovery_figure", "recovery_points", "write_attack_report",
           "update_page_with_attacks"]

ATTACK_FILE = "attack.json"
RECOVERY_FIGURE = "figure_recovery.png"
TABLE_FILE = "attacks.md"
NO_VALUE = "—"
Record = dict[str, Any]
#: forgetting that holds (docs/robust.md): membership AUCs after unlearning within 0.5 ± GOAL_AUC_MARGIN (the
#: goal's "at most 0.6" read both ways: an AUC far below 0.5 tells the forgotten rows apart too, as the less
#: familiar ones), relearning's specific recovery of MA at most GOAL_RECOVERY, reasoning at most
#: GOAL_REASONING_LOSS points below the model before
GOAL_AUC_MARGIN, GOAL_RECOVERY, GOAL_REASONING_LOSS = 0.1, 0.2, 1.0


def attack_runs(run_dirs: Sequence[Path], output: Path, attack_one: Callable[[Path], tuple[Record, str]],
                say: Callable[[str], None] = lambda _: None) -> SweepOutcome:
    """Attack each run directory with ``attack_one`` (returning the record and its Markdown) into
    ``output/NAME/``; runs already attacked there are skipped, so the command can be run again until all are
    done; a run another invocation is attacking is passed by (its claim, :func:`unlearnkit.io.claimed`). A
    failing run is recorded in ``output/NAME.failed.json`` and the others go on. The attack table of
    everything attacked so far is rewritten into ``output/attacks.md`` after each run."""
    outcome = SweepOutcome()
    for number, run_dir in enumerate(run_dirs, 1):
        target, failure = output / run_dir.name, output / f"{run_dir.name}.failed.json"
        if (target / ATTACK_FILE).is_file():
            outcome.skipped.append(run_dir.name)
            continue
        say(f"[{number}/{len(run_dirs)}] {run_dir.name}")
        try:
            with claimed(target):  # another invocation attacking this run: pass it by
                if (target / ATTACK_FILE).is_file():  # attacked by another invocation meanwhile
                    outcome.skipped.append(run_dir.name)
                    continue
                record, markdown = attack_one(run_dir)
                atomic_write_json(target / ATTACK_FILE, record)
                atomic_write_text(target / "attack.md", markdown + "\n")
        except ClaimedElsewhere as elsewhere:
            outcome.elsewhere.append(run_dir.name)
            say(f"    running elsewhere ({elsewhere.holder_text})")
            continue
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # recorded, and the other runs go on
            message = str(error) if isinstance(error, UnlearnkitError) else f"{type(error).__name__}: {error}"
            outcome.failed[run_dir.name] = message
            atomic_write_json(failure, {"run": str(run_dir), "error": message})
            say(f"    FAILED: {message}")
            continue
        failure.unlink(missing_ok=True)
        outcome.ran.append(run_dir.name)
        write_attack_report(output)
    return outcome


def read_attack_records(directory: str | Path) -> list[Record]:
    """The attack records under ``directory`` (see the module docstring), each with its ``name`` (the folder or
    file it came from)."""
    root = Path(directory)
    candidates = ([root / ATTACK_FILE] if (root / ATTACK_FILE).is_file() else
                  sorted(root.glob(f"*/{ATTACK_FILE}")) or sorted(root.glob("*.json")))
    records = []
    for path in candidates:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise UnlearnkitError(f"{path} is not JSON ({error.msg}); attack it again or delete it.") from None
        if not isinstance(record, dict) or not {"model", "plan", "rows"} <= record.keys():
            continue  # another JSON file lying beside the records
        name = path.parent.name if path.name == ATTACK_FILE else path.stem
        records.append({**record, "name": name})
    if not records:
        raise UnlearnkitError(f"{root} holds no attack records ({ATTACK_FILE}); write them with `unlearnkit attack "
                              f"RUN --output DIR`.")
    return records


def holds_attack_records(directory: str | Path) -> bool:
    """Whether ``directory`` is one for the attack table rather than a sweep's results."""
    try:
        return bool(read_attack_records(directory))
    except UnlearnkitError:
        return False


def write_attack_report(directory: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the attack table of the records under ``directory`` to ``out_dir/attacks.md`` (default
    ``DIRECTORY/attacks.md``)."""
    records = read_attack_records(directory)
    out = Path(out_dir) if out_dir is not None else Path(directory)
    figure = recovery_figure(records, out / RECOVERY_FIGURE)
    table = _report_body(records) + (_figure_markdown(RECOVERY_FIGURE) if figure else "")
    return [atomic_write_text(out / TABLE_FILE, table + "\n"), *([figure] if figure else [])]


def update_page_with_attacks(page: Path, section: str, directory: str | Path) -> None:
    """Put the attack table of the records under ``directory`` between the ``report:SECTION`` markers of
    ``page``, and copy each record to ``<page dir>/results/SECTION/NAME.json`` so that the section can be
    regenerated from the repository alone (``unlearnkit report <page dir>/results/SECTION ...``)."""
    text = marked_page(page, section)
    records = read_attack_records(directory)
    folder = section_folder(page, section)
    for record in records:
        copy = folder / f"{record['name']}.json"
        if not copy.exists() or copy.resolve() != (Path(directory) / f"{record['name']}.json").resolve():
            atomic_write_json(copy, {key: value for key, value in record.items() if key != "name"})
    figure = recovery_figure(records, folder / RECOVERY_FIGURE)
    body = _report_body(records) + (_figure_markdown(f"results/{section}/{RECOVERY_FIGURE}") if figure else "")
    replace_section(page, section, body, text)


def _report_body(records: Sequence[Record]) -> str:
    goal = goal_markdown(records)
    return attack_table_markdown(records) + (f"\n\n{goal}" if goal else "")


def _figure_markdown(link: str) -> str:
    return (f"\n\n![Relearning's specific recovery against the reasoning kept]({link})\n\n*Relearning's specific "
            "recovery of the unseen rows' MA against the reasoning accuracy kept, one point per run (a cross: the run "
            "did not meet its forgetting criterion): the goal of forgetting that holds is below the dashed line "
            "(0.2) and right of the dotted one (within a point of the model before unlearning).*")


def record_label(record: Record) -> str:
    """The method as Table 1 names it (LoRA+IHL, NPO+KL, ...), or the attacked model when it was no run."""
    facts = record.get("run")
    if not facts:
        return str(record["model"])
    return row_label(facts)


#: the fine-tuning attacks beside relearning, by the start of their row's name, and their column
OTHER_ATTACKS = {"LoRA relearn": "LoRA relearning", "fine-tune on unrelated text": "unrelated fine-tuning"}


def attack_table_markdown(records: Sequence[Record]) -> str:
    """The attack table with its caption: per record the forget rows' MA and EL10 before unlearning, after it
    and after relearning (on the rows the attack never saw), and the recovery fraction of each attack."""
    quantisations = list(dict.fromkeys(q for r in records for q in r["plan"].get("quantisations", [])))
    relearned = any(r["plan"].get("relearn_steps", 0) > 0 for r in records)
    others = [name for prefix, name in OTHER_ATTACKS.items()
              if any(str(row["attack"]).startswith(prefix) for r in records for row in r["rows"])]
    headers = ["Method", "Run", "Success"]
    if relearned:
        headers += ["unseen MA (%): before → unlearned → relearned", "unseen EL10 (%): before → unlearned → "
                    "relearned", "relearning recovery MA / EL10", "held-out MA (%): unlearned → relearned",
                    "relearning specific recovery MA / EL10"]
    headers += [f"{name}: recovery / specific MA" for name in others]
    headers += [f"{q} recovery MA" for q in quantisations]
    lines = [_caption(records, quantisations), "", "| " + " | ".join(headers) + " |",
             "|" + "|".join([":---", ":---", ":---", *("---:" for _ in headers[3:])]) + "|"]
    for record in _in_table_order(records):
        cells = [record_label(record), f"`{record['name']}`", _success(record)]
        if relearned:
            states, control, specific = _relearning(record)
            cells += [" → ".join(_percent(s.get(key)) for s in states) for key in ("ma", "el")]
            recovery = states[2].get("recovery", {})
            cells.append(f"{_fraction(recovery.get('ma'))} / {_fraction(recovery.get('el'))}")
            cells.append(" → ".join(_percent(r.get("ma")) for r in control))
            cells.append(f"{_fraction(specific['ma'])} / {_fraction(specific['el'])}")
        for name in others:
            prefix = next(p for p, n in OTHER_ATTACKS.items() if n == name)
            row: Record = next((r for r in record["rows"] if str(r["attack"]).startswith(prefix)
                                and r["rows"] != HELD_OUT_ROWS), {})
            cells.append(f"{_fraction(row.get('recovery', {}).get('ma'))} / "
                         f"{_fraction(row.get('specific_recovery', {}).get('ma'))}" if row else NO_VALUE)
        for label in quantisations:
            whole = _attack_row(record, f"quantise {label}")
            base = _attack_row(record, f"quantise base {label}, adapter kept")
            text = _fraction(whole.get("recovery", {}).get("ma")) if whole else NO_VALUE
            if base:
                text += f" (base only: {_fraction(base.get('recovery', {}).get('ma'))})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _in_table_order(records: Sequence[Record]) -> list[Record]:
    """Methods in the paper's order (Table 1's), runs by name within a method."""
    order = {label: index for index, label in enumerate(ordered_labels(record_label(r) for r in records))}
    return sorted(records, key=lambda r: (order[record_label(r)], r["name"]))


def _success(record: Record) -> str:
    facts = record.get("run") or {}
    return NO_VALUE if "success" not in facts else "yes" if facts["success"] else "no"


def _relearning(record: Record) -> tuple[list[Record], list[Record], dict[str, float | None]]:
    """Relearning's rows of a record: the unseen rows before unlearning, unlearned and relearned; the held-out
    control unlearned and relearned; and the specific recovery of MA and EL10 they give."""
    unseen = [r for r in record["rows"] if str(r["rows"]).endswith("not attacked")]
    relearn: Record = next((r for r in unseen if r["attack"].startswith("relearn")), {})
    states: list[Record] = [next((r for r in unseen if r["attack"] == a), {}) for a in ("before unlearning",
                                                                              "none (unlearned)")] + [relearn]
    held_out = [r for r in record["rows"] if r["rows"] == HELD_OUT_ROWS]
    control: list[Record] = [next((r for r in held_out if r["attack"].startswith(a)), {}) for a in ("none", "relearn")]
    specific = {key: specific_recovery(states[0].get(key), states[1].get(key), relearn.get(key),
                                       control[0].get(key), control[1].get(key)) for key in ("ma", "el")}
    return states, control, specific


def goal_markdown(records: Sequence[Record]) -> str:
    """Each attacked run against the goal of forgetting that holds (docs/robust.md), part by part: the forget
    rows' LOSS and Min-K% membership AUCs after unlearning and relearning's specific recovery of MA, judged by
    their values, and the reasoning accuracy kept, judged by its paired interval where the run kept each item's
    result (met when the whole interval lies above the bound, missed when it lies below, else undecided);
    "" when no record measured any of them."""
    lines = []
    for record in _in_table_order(records):
        auc = next((row.get("mia_auc") or {} for row in record["rows"]
                    if row["attack"] == "none (unlearned)" and row["rows"] == "all"), {})
        aucs = [auc.get(key) for key in ("loss", "min_k")]
        measured = [a for a in aucs if _finite(a)]
        specific = _relearning(record)[2]["ma"]
        kept, change = _reasoning_kept(record), (record.get("run") or {}).get("reasoning_change")
        bound = -GOAL_REASONING_LOSS / 100
        parts = {"membership": (max(abs(a - 0.5) for a in measured) <= GOAL_AUC_MARGIN
                                if len(measured) == len(aucs) else None),
                 "relearning": specific <= GOAL_RECOVERY if _finite(specific) else None,
                 "reasoning": None if not change else True if change["low"] >= bound else
                 False if change["high"] < bound else None}
        if all(part is None for part in parts.values()) and kept is None:
            continue
        missed = [name for name, part in parts.items() if part is False]
        open_parts = [name for name, part in parts.items() if part is None]
        verdict = (f"no: {', '.join(missed)}" if missed else f"undecided: {', '.join(open_parts)}" if open_parts
                   else "yes")
        reasoning = NO_VALUE if kept is None else f"{kept:+.1f}"
        if change:
            reasoning += f" [{100 * change['low']:+.1f}, {100 * change['high']:+.1f}]"
        lines.append(f"| {record_label(record)} | `{record['name']}` | {_success(record)} | "
                     f"{' / '.join(_fraction(a) for a in aucs)} | {_fraction(specific)} | {reasoning} | {verdict} |")
    if not lines:
        return ""
    return "\n".join([
        f"**Against the goal** of forgetting that holds: both membership AUCs of the forget rows after unlearning "
        f"within 0.5 ± {GOAL_AUC_MARGIN:g} (at most {0.5 + GOAL_AUC_MARGIN:g}, and not below "
        f"{0.5 - GOAL_AUC_MARGIN:g}, where the rows stand out as less familiar than unseen text) and relearning's "
        f"specific recovery of MA at most {GOAL_RECOVERY:g}, judged by their values; reasoning accuracy at most "
        f"{GOAL_REASONING_LOSS:g} point below the model before unlearning, on the items the run scored, judged by "
        f"its paired 95 % interval (in brackets, where the run kept each item's result): met when all of it lies "
        f"above the bound, missed when all of it lies below, otherwise undecided (a few hundred items rarely "
        f"decide a point: score more with `unlearnkit eval --baseline`). — marks a part not measured, which leaves "
        f"it undecided.", "",
        "| Method | Run | Success | LOSS / Min-K% AUC | relearning specific recovery MA | reasoning kept (points) "
        "| goal met |", "|:---|:---|:---|---:|---:|---:|:---|", *lines])


def _reasoning_kept(record: Record) -> float | None:
    """The reasoning accuracy after − before unlearning, in points, when the run's facts carry both."""
    facts = record.get("run") or {}
    after, before = (facts.get(key, {}).get("reasoning_acc") for key in ("kept", "kept_before"))
    return None if after is None or before is None else 100 * (after - before)


class RecoveryPoint(NamedTuple):
    """One run in the recovery figure."""

    label: str  # the method as Table 1 names it
    name: str  # the run
    kept: float  # reasoning accuracy after − before unlearning, in points
    specific: float  # relearning's specific recovery of the unseen rows' MA
    success: bool  # the run met its forgetting criterion


def recovery_points(records: Sequence[Record]) -> list[RecoveryPoint]:
    """One point per run whose record carries what the model kept (attack records since the run facts have
    ``kept``) and relearning's specific recovery."""
    points = []
    for record in records:
        kept, specific = _reasoning_kept(record), _relearning(record)[2]["ma"]
        if kept is not None and specific is not None:
            success = bool((record.get("run") or {}).get("success"))
            points.append(RecoveryPoint(record_label(record), record["name"], kept, specific, success))
    return points


def recovery_figure(records: Sequence[Record], path: Path) -> Path | None:
    """Relearning's specific recovery against the reasoning kept, one point per run (the goal of docs/robust.md:
    recovery at most 0.2 with reasoning within a point of the model before unlearning); runs that missed their
    criterion are crosses, as in Figure 2. None without points."""
    points = recovery_points(records)
    if not points:
        return None
    from matplotlib.figure import Figure

    from unlearnkit.experiments.figures import save_figure

    figure = Figure(figsize=(7, 4.5))  # no pyplot: nothing global changes, no display needed (as figures.py)
    axes = figure.subplots()
    labels = ordered_labels(point.label for point in points)
    for index, label in enumerate(labels):
        mine = [point for point in points if point.label == label]
        for success in (True, False):
            chosen = [point for point in mine if point.success == success]
            if chosen:
                axes.scatter([p.kept for p in chosen], [p.specific for p in chosen], color=f"C{index % 10}",
                             marker="o" if success else "x", label=label if chosen[0] is mine[0] else None)
        for point in mine:
            short = point.name.replace("__", " ")  # the grid's values only
            for axis in ("forget-", "method-", "rule-"):
                short = short.replace(axis, "")
            axes.annotate(short, (point.kept, point.specific), fontsize=6, xytext=(3, 3), textcoords="offset points")
    axes.axhline(GOAL_RECOVERY, color="grey", linestyle="--", linewidth=0.8)
    axes.axvline(-GOAL_REASONING_LOSS, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xlabel(f"reasoning kept: after − before unlearning (points); dotted: −{GOAL_REASONING_LOSS:g}")
    axes.set_ylabel(f"relearning: specific recovery of MA; dashed: {GOAL_RECOVERY:g}")
    axes.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def _attack_row(record: Record, attack: str) -> Record:
    return next((row for row in record["rows"] if row["attack"] == attack), {})


def _caption(records: Sequence[Record], quantisations: list[str]) -> str:
    plans = {json.dumps({k: v for k, v in r["plan"].items() if k != "quantisations"}, sort_keys=True)
             for r in records}
    plan = records[0]["plan"]
    relearn = "no relearning"
    if plan.get("relearn_steps", 0) > 0:
        relearn = (f"relearning fine-tunes the unlearned model for {plan['relearn_steps']} steps at lr "
                   f"{plan['relearn_lr']:g} on {100 * plan['relearn_fraction']:.0f} % of the forget rows and is "
                   f"measured on the others ('unseen'), and on held-out text never memorised, as a control (if that "
                   f"rises as much, relearning taught the kind of text, not the rows)")
    mixed = " (the plans differ between runs: see each attack.json)" if len(plans) > 1 else ""
    quantised = (f"; quantisation rounds the weights ({', '.join(quantisations)}), of the merged model and, in "
                 f"brackets, of the base alone under the adapter kept in full precision" if quantisations else "")
    runs = f"{len(records)} attacked run" + ("s" if len(records) != 1 else "")
    return (f"**Attacks.** {runs}: {relearn}{quantised}{mixed}. Recovery is the share of "
            f"what unlearning removed that came back (0 nothing, 1 everything; negative: the attack removed "
            f"more); it needs the run's scores before unlearning. Specific recovery counts only what rose beyond "
            f"the held-out control: ((attacked − unlearned) − (control attacked − control unlearned)) / (before − "
            f"unlearned). Success: the run met its forgetting criterion.")


def _percent(value: Any) -> str:
    return NO_VALUE if not _finite(value) else f"{100 * value:.1f}"


def _fraction(value: Any) -> str:
    if not _finite(value):
        return NO_VALUE
    return f"{0.0 if round(value, 2) == 0 else value:.2f}"  # no "-0.00"


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
