"""Deletion requests that arrive one after another: each forget set unlearned on the model the one before left.

``data.forget`` is the first request and ``data.requests`` the later ones. Request ``k`` is an ordinary run
(its own criterion and outputs, in ``OUTPUT/request-k/``) that starts from request ``k-1``'s unlearned model,
adapter merged. Every request is held to the thresholds measured for the first, on the model as loaded:
held-out text under a model that earlier requests have already changed is no standard (it drifts with
them). After each, the forget sets of every request so far are scored again, so
``requests.json`` / ``requests.md`` show whether earlier forgetting holds (MUSE's sequential setting) and what
the model keeps, request by request. A request already finished (its ``run.json`` is there) is not run again:
the next one starts from the model it wrote, so an interrupted sequence continues where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unlearnkit.config import RunConfig
from unlearnkit.data.catalog import resolve_data_dir
from unlearnkit.data.sources import load_blocks
from unlearnkit.evaluation import evaluate_memorization
from unlearnkit.io import atomic_write_json, atomic_write_text
from unlearnkit.loop import run_unlearning
from unlearnkit.modeling import LoadedModel, load_configured_model, load_model
from unlearnkit.outputs import write_run_outputs
from unlearnkit.progress import Progress

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
    for number, single in enumerate(configs, 1):
        directory = Path(single.output.dir)
        if (directory / "run.json").is_file():
            progress.note(f"request {number} ({single.data.forget.label()}) finished before: continuing from "
                          f"{directory / 'model'}")
            metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
            loaded = load_model(str(directory / "model"), dtype=config.model.dtype)
        else:
            progress.note(f"request {number} of {len(configs)}: {single.data.forget.label()}")
            if number > 1:  # one standard for every request: held-out text under the model as it was first
                first = summary["after"][0]["thresholds"]
                single.eval.ma_threshold = single.eval.ma_threshold if single.eval.ma_threshold is not None \
                    else first["ma"]
                single.eval.el_threshold = single.eval.el_threshold if single.eval.el_threshold is not None \
                    else first["el"]
            result = run_unlearning(single, loaded=loaded, quiet=quiet)
            write_run_outputs(result)
            metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
            loaded = LoadedModel(result.plain_model().eval(), loaded.tokenizer, loaded.source, loaded.gguf_file)
        held = [evaluate_memorization(loaded.model, blocks, config.eval, progress, f"after request {number} · "
                                      f"request {earlier}") for earlier, blocks in enumerate(forget_sets[:number], 1)]
        summary["after"].append({
            "request": number, "criterion_met": metrics["criterion_met"], "stop_reason": metrics["stop_reason"],
            "thresholds": {"ma": metrics["thresholds"]["ma"], "el": metrics["thresholds"]["el"]},
            "forget_sets": [{"request": earlier, "ma": scores["ma"], "el": scores["el"],
                             "below_thresholds": bool(scores["ma"] <= metrics["thresholds"]["ma"] and
                                                      scores["el"] is not None and
                                                      scores["el"] <= metrics["thresholds"]["el"])}
                            for earlier, scores in enumerate(held, 1)],
            "kept": {key: metrics["after"].get("downstream", {}).get(key)
                     for key in ("reasoning_acc", "dialogue_f1", "pile_ppl")},
            "retain_check_loss": (metrics["epochs"][-1].get("retain_check_loss") if metrics["epochs"] else None),
        })
        atomic_write_json(Path(config.output.dir) / SUMMARY_JSON, summary)  # kept up to date as requests finish
    atomic_write_text(Path(config.output.dir) / SUMMARY_MD, requests_markdown(summary))
    return summary


def requests_markdown(summary: dict[str, Any]) -> str:
    """A request-by-request table: each earlier forget set's MA / EL10 after each request, and what was kept."""
    count = len(summary["requests"])
    header = ["after request", "criterion", *[f"request {k}: MA / EL10 (%)" for k in range(1, count + 1)],
              "reasoning", "dialogue F1", "Pile PPL"]
    lines = ["**Sequential deletion requests.** After each request, the forget set of every request so far, "
             "scored again on the current model (* above that request's thresholds: forgetting did not hold).",
             "", "| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for after in summary["after"]:
        cells = [str(after["request"]), "met" if after["criterion_met"] else "NOT met"]
        for k in range(count):
            if k < len(after["forget_sets"]):
                entry = after["forget_sets"][k]
                el = "—" if entry["el"] is None else f"{100 * entry['el']:.1f}"
                cells.append(f"{100 * entry['ma']:.1f} / {el}{'' if entry['below_thresholds'] else ' *'}")
            else:
                cells.append("")
        kept = after["kept"]
        cells += ["—" if kept[key] is None else f"{(100 if key != 'pile_ppl' else 1) * kept[key]:.1f}"
                  for key in ("reasoning_acc", "dialogue_f1", "pile_ppl")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
