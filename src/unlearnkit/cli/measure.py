"""Commands that measure a model: memorization (MA, EL), audit (privacy), eval (what the model kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from unlearnkit.cli.common import (
    DataDir,
    ElN,
    JsonOut,
    ModelName,
    Quiet,
    SeqLen,
    app,
    check_json_out,
    check_model_name,
    err,
    model_and_sources,
    validated,
)
from unlearnkit.errors import UnlearnkitError
from unlearnkit.ownership import MARKDOWN_MARK, marked


@app.command(epilog="Example: `unlearnkit memorization smollm2 --data tdec,split=val,n=8 --seq-len 64`")
def memorization(
    model: ModelName,
    data: Annotated[str, typer.Option(help="a file path, or SOURCE[,key=value...] e.g. jang,n=32,set=0")],
    seq_len: SeqLen = 200,
    n: ElN = 10,
    data_dir: DataDir = None,
    json_out: JsonOut = None,
    quiet: Quiet = False,
) -> None:
    """Memorisation accuracy (MA) and extraction likelihood (EL_n) of any model on any source."""
    from rich.table import Table

    from unlearnkit.config import EvalConfig
    from unlearnkit.io import atomic_write_json
    from unlearnkit.progress import Progress

    check_json_out(json_out, model, [data], data_dir)
    progress = Progress(quiet=quiet)
    loaded, (blocks,) = model_and_sources(model, [data], data_dir, seq_len, progress, n)
    from unlearnkit.evaluation import evaluate_memorization  # torch: only once the input has been checked

    scores = evaluate_memorization(loaded.model, blocks, EvalConfig(el_n=n), progress, label="scoring")
    table = Table(title=f"{model} on {blocks.name} ({len(blocks)} sequences × {blocks.seq_len} tokens)")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_row("MA", f"{scores['ma']:.4f}")
    table.add_row(f"EL{n}", f"{scores['el']:.4f}")
    Console(emoji=False).print(table)
    if json_out is not None:
        atomic_write_json(json_out, marked({"model": model, "data": data, "n": n, **scores}))


@app.command(epilog="Example: `unlearnkit audit runs/ihl/model --forget jang,n=32,set=0 "
                     "--holdout tdec,split=val,n=32 --json audit.json`")
def audit(
    model: ModelName,
    forget: Annotated[str, typer.Option(help="the text that should be forgotten: a file or SOURCE[,k=v...]")],
    holdout: Annotated[str, typer.Option(help="text of the same kind the model never saw")],
    seq_len: SeqLen = 200,
    n: ElN = 10,
    data_dir: DataDir = None,
    json_out: JsonOut = None,
    quiet: Quiet = False,
) -> None:
    """Privacy audit of any model: MA, EL_n, the TDEC extraction attack and membership-inference AUCs."""
    from unlearnkit.config import EvalConfig
    from unlearnkit.io import atomic_write_json
    from unlearnkit.progress import Progress

    check_json_out(json_out, model, [forget, holdout], data_dir)
    progress = Progress(quiet=quiet)
    loaded, (forget_blocks, holdout_blocks) = model_and_sources(model, [forget, holdout], data_dir, seq_len,
                                                                 progress, n)
    from unlearnkit.data.run_sets import RunData  # torch: only once the input has been checked
    from unlearnkit.evaluation import evaluation_snapshot
    from unlearnkit.reports import audit_table

    shared = _shared_rows(forget_blocks, holdout_blocks)
    warnings = [f"{shared} of the {len(holdout_blocks)} held-out sequences are also forget sequences: there the "
                "membership tests compare the set with itself, so an AUC near 0.5 says nothing about forgetting; "
                "choose held-out text the model never saw."] if shared else []
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False)
    sets = RunData(forget=forget_blocks, validation=holdout_blocks)
    with progress.status(f"Auditing {len(forget_blocks)} forget and {len(holdout_blocks)} held-out sequences"):
        snapshot = evaluation_snapshot(loaded.model, sets, EvalConfig(el_n=n), progress, "audit",
                                       tokenizer=loaded.tokenizer)
    Console(emoji=False).print(audit_table(snapshot, n))
    if json_out is not None:
        atomic_write_json(json_out, marked({"model": model, "sources": {"forget": forget, "validation": holdout},
                                            "n": n, "ids": {"forget": forget_blocks.ids,
                                                            "validation": holdout_blocks.ids}, "warnings": warnings,
                                            **snapshot}))


def _shared_rows(forget: Any, holdout: Any) -> int:
    """How many held-out rows are also forget rows (the same tokens)."""
    def rows(blocks: Any) -> list[tuple[int, ...]]:
        return [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(blocks.input_ids, blocks.attention_mask,
                                                                        strict=True)]
    forgotten = set(rows(forget))
    return sum(row in forgotten for row in rows(holdout))


@app.command("eval", epilog="Example: `unlearnkit eval smollm2 --suite paper --limit 100 --output runs/eval-smollm2`; "
                            "`unlearnkit eval runs/ihl --suite quick` evaluates a run's unlearned model.")
def eval_(
    model: Annotated[str, typer.Argument(help="hub id, local directory, .gguf file, 'smollm2', or a `run` output "
                                              "directory (its model/)")],
    suite: Annotated[str, typer.Option(help="paper (Table 1: 9 reasoning tasks, 4 dialogue sets, Pile and "
                                            "WikiText perplexity) | quick (a few cheap tasks) | tofu (TOFU's "
                                            "forget quality, model utility and per-question scores)")] = "paper",
    tasks: Annotated[str | None, typer.Option(help="comma-separated tasks instead of the suite's: reasoning tasks "
                                                   "(ours, or lm-eval's built-in where there is network), "
                                                   "dialogue sets, pile, wikitext")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="score the first N items of each task")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="sequences per forward pass")] = 16,
    output: Annotated[Path | None, typer.Option(help="write eval.json and eval.md here")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing eval.json / eval.md in --output")] = False,
    tofu_split: Annotated[str, typer.Option(help="tofu: the forget split (forget01 | forget05 | forget10)")
                          ] = "forget10",
    retain_model: Annotated[str | None, typer.Option(help="tofu: the model fine-tuned without the split's authors "
                                                          "(forget quality)")] = None,
    template: Annotated[str, typer.Option(help="tofu: phi | llama2 | chat | text with {question} and {answer}")
                        ] = "phi",
    all_items: Annotated[bool, typer.Option("--all-items", help="tofu: every question of each set (open-unlearning), "
                                                                "not the first 300 (the original code)")] = False,
    baseline: Annotated[Path | None, typer.Option(help="an earlier eval.json (or its folder) of the model before "
                                                       "unlearning, with the same --suite, --tasks and --limit: "
                                                       "says how reasoning changed, item by item")] = None,
    data_dir: DataDir = None,
    quiet: Quiet = False,
) -> None:
    """What a model knows: reasoning accuracy (lm-eval), dialogue F1 and perplexity, as in the paper's Table 1; or
    TOFU's scores (--suite tofu)."""
    from unlearnkit.config import DownstreamConfig, TofuEvalConfig

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None
    if names is not None and not names:
        raise UnlearnkitError(f"--tasks {tasks!r} names no task; give comma-separated names, e.g. --tasks "
                              "arc_easy,piqa,pile (or leave it out for the whole --suite).")
    tofu: TofuEvalConfig | None = None
    if suite == "tofu":
        if names is not None or baseline is not None:
            raise UnlearnkitError(f"{'--tasks' if names is not None else '--baseline'} does not apply to --suite "
                                  "tofu; remove it.")
        if retain_model is not None:
            check_model_name(retain_model)
        tofu = validated(lambda: TofuEvalConfig(split=tofu_split, template=template, retain_model=retain_model,
                                                limit=limit, batch_size=batch_size,
                                                items="all" if all_items else "first300"), "The TOFU option")
    else:
        options = validated(lambda: DownstreamConfig(suite=suite, tasks=names, limit=limit, batch_size=batch_size),
                            "The evaluation option")
    before = (baseline, _read_baseline(baseline, suite, names, limit)) if baseline is not None else None
    if output is not None:
        from unlearnkit.data.catalog import resolve_data_dir
        from unlearnkit.ownership import check_output_files

        check_output_files(output, ("eval.json", "eval.md"), [Path(model).expanduser(), resolve_data_dir(data_dir),
                                                               *([baseline.expanduser()] if baseline else [])],
                           option="--output")
        if not overwrite and any((output / f).exists() for f in ("eval.json", "eval.md")):
            raise UnlearnkitError(f"{output} already holds eval.json or eval.md; choose another --output or pass "
                                  "--overwrite.")
    check_model_name(model)
    from unlearnkit.data.catalog import resolve_data_dir  # torch and the model: only for valid input
    from unlearnkit.modeling import load_model
    from unlearnkit.progress import Progress

    run_model = Path(model).expanduser() / "model"
    location = str(run_model) if (run_model / "config.json").is_file() else model
    progress = Progress(quiet=quiet)
    with progress.status(f"Loading {location}"):
        loaded = load_model(location)
    if tofu is not None:
        _eval_tofu(model, location, loaded, tofu, resolve_data_dir(data_dir), progress, output)
    else:
        _eval_downstream(model, location, loaded, options, resolve_data_dir(data_dir), progress, output, before)


def _eval_downstream(model: str, location: str, loaded: Any, options: Any, data_dir: Path, progress: Any,
                     output: Path | None, baseline: tuple[Path, dict[str, Any]] | None) -> None:
    from unlearnkit.evaluation import downstream_scores
    from unlearnkit.io import atomic_write_json, atomic_write_text
    from unlearnkit.metrics.harness import reasoning_change
    from unlearnkit.reports import kept_table, reasoning_change_sentence, render_kept_markdown

    snapshot = downstream_scores(loaded.model, loaded.tokenizer, options, data_dir, progress)
    Console(emoji=False).print(kept_table(snapshot, f"What {model} kept"))
    if baseline is not None:
        path, before = baseline
        snapshot["reasoning_change"] = {"baseline": str(path), **reasoning_change(before, snapshot["reasoning"])}
        Console(emoji=False).print(reasoning_change_sentence(snapshot["reasoning_change"]), markup=False,
                                   highlight=False)
    if output is not None:
        atomic_write_json(output / "eval.json", marked({"model": model, "loaded_from": location, **snapshot}))
        atomic_write_text(output / "eval.md", f"{MARKDOWN_MARK}\n{render_kept_markdown(model, snapshot)}")
        Console(emoji=False).print(f"Wrote {output / 'eval.json'} and {output / 'eval.md'}")


def _read_baseline(baseline: Path, suite: str, tasks: list[str] | None, limit: int | None) -> dict[str, Any]:
    """The reasoning scores of ``--baseline``, or one sentence why they cannot be compared with this evaluation
    (checked before the model is loaded)."""
    import json

    from unlearnkit.config import resolve_suite

    wanted = list(resolve_suite(suite, tasks).reasoning)
    if not wanted:
        raise UnlearnkitError("--baseline compares reasoning accuracy, and these --tasks name no reasoning task; "
                              "add one or leave --baseline out.")
    path = baseline.expanduser()
    path = path / "eval.json" if path.is_dir() else path
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UnlearnkitError(f"--baseline {baseline} is not a readable eval.json ({error}); give the eval.json "
                              "that `unlearnkit eval --output` wrote for the model before unlearning.") from None
    reasoning = found.get("reasoning") if isinstance(found, dict) else None
    if not isinstance(reasoning, dict) or sorted(reasoning) != sorted(wanted) or found.get("limit") != limit:
        raise UnlearnkitError(f"--baseline {path} did not score the same reasoning tasks and --limit as this "
                              "evaluation; evaluate both with the same --suite, --tasks and --limit.")
    if not all(isinstance(scores, dict) and "correct" in scores for scores in reasoning.values()):
        raise UnlearnkitError(f"--baseline {path} keeps no per-item results (it was written before unlearnkit kept "
                              "them); evaluate the model before unlearning again.")
    return reasoning


def _eval_tofu(model: str, location: str, loaded: Any, options: Any, data_dir: Path, progress: Any,
               output: Path | None) -> None:
    from unlearnkit.evaluation import retain_model_reference
    from unlearnkit.io import atomic_write_json, atomic_write_text
    from unlearnkit.metrics.tofu import tofu_evaluation
    from unlearnkit.reports import render_tofu_markdown, tofu_table

    reference = None
    if options.retain_model is not None:
        with progress.status(f"The retain model's truth ratios and Min-K% AUC ({options.retain_model})"):
            reference = retain_model_reference(options, data_dir)
    result = tofu_evaluation(loaded.model, loaded.tokenizer, options, data_dir, progress, reference=reference)
    Console(emoji=False).print(tofu_table(result, f"TOFU: {model}"))
    if output is not None:
        atomic_write_json(output / "eval.json", marked({"model": model, "loaded_from": location, "suite": "tofu",
                                                        "retain_model": options.retain_model, **result}))
        atomic_write_text(output / "eval.md", f"{MARKDOWN_MARK}\n{render_tofu_markdown(model, result)}")
        Console(emoji=False).print(f"Wrote {output / 'eval.json'} and {output / 'eval.md'}")
