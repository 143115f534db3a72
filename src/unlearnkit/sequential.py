"""Deletion requests that arrive one after another: each forget set unlearned on the model the one before left.

``data.forget`` is the first request and ``data.requests`` the later ones. Request ``k`` is an ordinary run
(its own criterion and outputs, in ``OUTPUT/request-k/``) that starts from request ``k-1``'s unlearned model,
adapter merged. Every request is held to the thresholds measured for the first, on the model as loaded:
held-out text under a model that earlier requests have already changed is no standard (it drifts with
them). Every request's forget set is scored on the model as loaded and after each request, later ones too,
so ``requests.json`` / ``requests.md`` show whether earlier forgetting holds (MUSE's sequential setting), which
sets earlier requests had already removed before their turn, and what the model keeps, request by request.
A request already finished (its ``run.json`` is there) is not run again: the next one starts from the model
it wrote, so an interrupted sequence continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlearnkit.config import RunConfig
from unlearnkit.data.catalog import resolve_data_dir
from unlearnkit.data.sources import load_blocks
from unlearnkit.evaluation import ScoreCache, cached_memorization
from unlearnkit.io import atomic_write_json, atomic_write_text
from unlearnkit.modeling import LoadedModel, load_configured_model, load_model
from unlearnkit.outputs import RunDirectory
from unlearnkit.progress import Progress
from unlearnkit.results import KEPT_KEYS
from unlearnkit.runner import unlearn

SUMMARY_JSON, SUMMARY_MD = "requests.json", "requests.md"


def request_configs(config: RunConfig) -> list[RunConfig]:
    """One run config per request, in order, each writing to ``OUTPUT/request-k``."""
    configs = []
    for number, forget in enumerate([config.data.forget, *config.data.requests], 1):
        single = config.model_copy(deep=True)
        single.data.forget, single.data.requests = forget, []
        single.output.dir = str(Path(config.output.dir) / f"request-{number}")
        configs.append(single)
    return configs


def run_requests(config: RunConfig, *, quiet: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Unlearn every request in turn, write each run's outputs and the summary; returns the summary."""
    progress = progress or Progress(quiet=quiet)
    configs = request_configs(config)
    loaded = load_configured_model(config.model)
    data_dir = resolve_data_dir(config.data.dir)
    forget_sets = [load_blocks(c.data.forget, loaded.tokenizer, data_dir, seq_len=c.data.seq_len) for c in configs]
    summary: dict[str, Any] = {"requests": [c.data.forget.label() for c in configs], "after": []}
    Path(config.output.dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(config.output.dir) / SUMMARY_JSON, summary)  # marks the directory as this sequence's

    def score_every_set(label: str) -> list[dict[str, Any]]:
        # every request's set, later ones too: unlearning one set may already have removed another. Through the
        # score cache, since each request's run scores its own set on the same weights before and after.
        cache = ScoreCache.of(loaded.model, config.eval)
        return [cached_memorization(loaded.model, blocks, config.eval, progress, f"{label} · request {number}",
                                    cache) for number, blocks in enumerate(forget_sets, 1)]

    summary["as_loaded"] = [{"request": number, "ma": scores["ma"], "el": scores["el"]}
                            for number, scores in enumerate(score_every_set("as loaded"), 1)]
    for number, single in enumerate(configs, 1):
        run = RunDirectory(Path(single.output.dir))
        if run.finished:
            progress.note(f"request {number} ({single.data.forget.label()}) finished before: continuing from "
                          f"{run.model_dir}")
            metrics = run.metrics()
            loaded = load_model(str(run.model_dir), dtype=config.model.dtype)
        else:
            progress.note(f"request {number} of {len(configs)}: {single.data.forget.label()}")
            if number > 1:  # one standard for every request: held-out text under the model as it was first
                first = summary["after"][0]["thresholds"]
                single.eval.ma_threshold = single.eval.ma_threshold if single.eval.ma_threshold is not None \
                    else first["ma"]
                single.eval.el_threshold = single.eval.el_threshold if single.eval.el_threshold is not None \
                    else first["el"]
            finished = unlearn(single, loaded=loaded, quiet=quiet)
            assert finished is not None  # returned whenever skip_finished is off
            metrics = finished.metrics
            loaded = LoadedModel(finished.result.plain_model().eval(), loaded.tokenizer, loaded.source,
                                 loaded.gguf_file)
        thresholds = {"ma": metrics.thresholds["ma"], "el": metrics.thresholds["el"]}
        if number == 1:  # what the model as loaded kept: scored by the first request before it unlearned
            summary["kept_as_loaded"] = metrics.before.kept()
        summary["after"].append({
            "request": number, "criterion_met": metrics.criterion_met, "stop_reason": metrics.stop_reason,
            "thresholds": thresholds,
            "forget_sets": [{"request": each, "ma": scores["ma"], "el": scores["el"],
                             "below_thresholds": _below(scores, thresholds)}
                            for each, scores in enumerate(score_every_set(f"after request {number}"), 1)],
            "kept": metrics.after.kept(),
            "retain_check_loss": (metrics.kept_epochs[-1].get("retain_check_loss") if metrics.kept_epochs else None),
        })
        atomic_write_json(Path(config.output.dir) / SUMMARY_JSON, summary)  # kept up to date as requests finish
    atomic_write_text(Path(config.output.dir) / SUMMARY_MD, requests_markdown(summary))
    return summary


def _below(scores: dict[str, Any], thresholds: dict[str, float]) -> bool:
    return bool(scores["ma"] <= thresholds["ma"] and scores["el"] is not None and scores["el"] <= thresholds["el"])


def requests_markdown(summary: dict[str, Any]) -> str:
    """A request-by-request table: every forget set's MA / EL10 as loaded and after each request (sets whose turn
    has not come in brackets), and what was kept; then the sets that earlier requests had already removed."""
    count = len(summary["requests"])
    header = ["after request", "criterion", *[f"request {k}: MA / EL10 (%)" for k in range(1, count + 1)],
              "reasoning", "dialogue F1", "Pile PPL"]
    lines = ["**Sequential deletion requests.** Every request's forget set scored on the model as loaded and after "
             "each request (* above the thresholds after its own turn: forgetting did not hold; in brackets: sets "
             "whose turn has not come yet).",
             "", "| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]

    def score(entry: dict[str, Any]) -> str:
        el = "—" if entry["el"] is None else f"{100 * entry['el']:.1f}"
        return f"{100 * entry['ma']:.1f} / {el}"

    def kept_cells(kept: dict[str, Any]) -> list[str]:
        return ["—" if kept.get(key) is None else f"{(100 if key != 'pile_ppl' else 1) * kept[key]:.1f}"
                for key in KEPT_KEYS]

    if "as_loaded" in summary:
        lines.append("| " + " | ".join(["as loaded", "", *(score(e) for e in summary["as_loaded"]),
                                         *kept_cells(summary.get("kept_as_loaded", {}))]) + " |")
    for after in summary["after"]:
        cells = [str(after["request"]), "met" if after["criterion_met"] else "NOT met"]
        for entry in after["forget_sets"]:
            if entry["request"] > after["request"]:
                cells.append(f"({score(entry)})")
            else:
                cells.append(score(entry) + ("" if entry["below_thresholds"] else " *"))
        cells += [""] * (count + 2 - len(cells))
        cells += kept_cells(after["kept"])
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for after, previous in zip(summary["after"][1:], summary["after"], strict=False):
        ahead = next((e for e in previous["forget_sets"] if e["request"] == after["request"]), None)
        if ahead is not None and ahead["below_thresholds"]:
            loaded = summary.get("as_loaded", [])[after["request"] - 1:after["request"]]
            was = f"; as loaded, {100 * loaded[0]['ma']:.1f} %" if loaded else ""
            notes.append(f"- Request {after['request']}'s set was already below the thresholds when its turn came "
                         f"(MA {100 * ahead['ma']:.1f} %{was}): the requests before it removed it too.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
