"""The ``unlearnkit`` command line: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from unlearnkit.errors import UnlearnkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Make a causal LM forget memorised text, prove it forgot, and show what it kept.")
err = Console(emoji=False, stderr=True)

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3  # the loss became NaN/inf, or the model collapsed: restored to the last good epoch
EXIT_NOT_FORGOTTEN = 4  # the forgetting criterion was not met within the epoch budget
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); `run` saved a checkpoint to resume from

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or logs")]
ModelName = Annotated[str, typer.Argument(help="hub id, local directory, .gguf file or 'smollm2'")]
SeqLen = Annotated[int, typer.Option(min=2, help="tokens per sequence")]
ElN = Annotated[int, typer.Option("--n", min=1, help="n of EL_n")]
DataDir = Annotated[str | None, typer.Option(help="data directory (default $UNLEARNKIT_DATA)")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="also write the results here (JSON)")]


@app.command(epilog="Example: `unlearnkit run configs/paper/gpt-neo-125m-lora-ihl.yaml --set train.lr=2e-4 "
                     "--set output.dir=runs/ihl`. An interrupted run continues with `unlearnkit run --resume runs/ihl` "
                     "(or the same command again).")
def run(
    config: Annotated[Path | None, typer.Argument(help="YAML config (see configs/paper/)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: key=value")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a previous unlearnkit output in output.dir")] = False,
    resume: Annotated[Path | None, typer.Option(help="continue the interrupted run whose output.dir this is, from "
                                                     "its last checkpoint")] = None,
    restart: Annotated[bool, typer.Option(help="discard the checkpoint of an interrupted run of output.dir and "
                                               "start afresh")] = False,
    quiet: Quiet = False,
) -> None:
    """Unlearn the forget set of CONFIG and write the model, adapter, metrics and report."""
    from unlearnkit.checkpoints import Checkpoints, checkpoint_dir
    from unlearnkit.config import load_config
    from unlearnkit.outputs import write_run_outputs
    from unlearnkit.preflight import check_run

    if resume is not None:
        if config is not None or set_ or overwrite or restart:
            raise UnlearnkitError("--resume continues a run with its own configuration; pass --resume OUTPUT_DIR "
                                  "alone, without CONFIG, --set, --overwrite or --restart.")
        cfg = Checkpoints(checkpoint_dir(resume)).saved_config()  # the configuration layer: no torch yet
    elif config is None:
        raise UnlearnkitError("Pass a config file (see configs/paper/), or --resume OUTPUT_DIR to continue an "
                              "interrupted run.")
    else:
        overrides = list(set_ or []) + (["output.overwrite=true"] if overwrite else [])
        cfg = load_config(config, overrides)  # the configuration layer imports no torch: bad input fails fast
    output_dir = check_run(cfg)  # every problem, before any expensive work
    checkpoints = Checkpoints.of(cfg) if cfg.output.checkpoint else None
    if restart and checkpoints is not None:
        checkpoints.discard()
    if checkpoints is not None:
        checkpoints.resumable(cfg)  # a checkpoint of another configuration is refused here, before any work
    from unlearnkit.loop import run_unlearning
    from unlearnkit.progress import Progress
    from unlearnkit.reports import before_after_table

    if (output_dir / "run.json").is_file():
        err.print(f"Replacing the previous unlearnkit output in {output_dir} (--overwrite).", markup=False,
                  highlight=False)
    console = Console(emoji=False, quiet=quiet)
    try:
        result = run_unlearning(cfg, console=console, quiet=quiet, checkpoints=checkpoints)
    except KeyboardInterrupt:
        saved = checkpoints.latest() if checkpoints is not None else None
        if saved is None:
            _error("Interrupted before the first checkpoint; nothing was saved, run the command again.")
        else:
            done = f"after epoch {saved.epoch}" if saved.epoch else "after set-up, before the first epoch"
            _error(f"Interrupted; the run is saved {done}. Resume it with: unlearnkit run --resume {output_dir}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if result.main_process:  # on several processes (accelerate launch, torchrun) the main one writes and says
        with Progress(console=console, quiet=quiet).status("Writing outputs"):
            output_dir = write_run_outputs(result)
        Console(emoji=False).print(before_after_table(result))
        Console(emoji=False).print(f"Outputs in {output_dir}", markup=False, highlight=False)
    code, message = EXIT_OK, ""
    if result.state.diverged_epoch is not None or result.state.collapsed_epoch is not None:
        advice = "lower train.lr" + ("" if cfg.train.max_grad_norm is not None else " or set train.max_grad_norm")
        code, message = EXIT_DIVERGED, f"{result.state.stop_reason}; {advice}."
    elif not result.state.criterion_met and cfg.output.fail_if_not_forgotten:
        code, message = EXIT_NOT_FORGOTTEN, (f"{result.state.stop_reason}; raise train.epochs or train.lr (or set "
                                             "output.fail_if_not_forgotten=false to exit 0).")
    if message and result.main_process:
        _error(message)
    if result.processes > 1:  # torchrun stops all processes once one exits non-zero: wait for the main one's writing
        from accelerate import PartialState
        PartialState().wait_for_everyone()
    if code != EXIT_OK:
        raise typer.Exit(code)  # the same code on every process


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
    from unlearnkit.evaluation import evaluate_memorization
    from unlearnkit.io import atomic_write_json
    from unlearnkit.progress import Progress

    _check_json_out(json_out)
    progress = Progress(quiet=quiet)
    loaded, (blocks,) = _model_and_sources(model, [data], data_dir, seq_len, progress, n)
    scores = evaluate_memorization(loaded.model, blocks, EvalConfig(el_n=n), progress, label="scoring")
    table = Table(title=f"{model} on {blocks.name} ({len(blocks)} sequences × {blocks.seq_len} tokens)")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_row("MA", f"{scores['ma']:.4f}")
    table.add_row(f"EL{n}", f"{scores['el']:.4f}")
    Console(emoji=False).print(table)
    if json_out is not None:
        atomic_write_json(json_out, {"model": model, "data": data, "n": n, **scores})


@app.command(epilog="Example: `unlearnkit fisher configs/paper/gpt-neo-125m-flora-ihl.yaml --out runs/fisher-125m`, "
                     "then `unlearnkit run ... --set adapter.flora.fisher_path=runs/fisher-125m`")
def fisher(
    config: Annotated[Path, typer.Argument(help="YAML config naming the model, data and target modules")],
    out: Annotated[Path, typer.Option(help="directory for forget.safetensors and retain.safetensors")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: key=value")] = None,
    quiet: Quiet = False,
) -> None:
    """Compute the forget and retain empirical Fisher (Eq. 2) of the target weights and save them for reuse."""
    from rich.table import Table

    from unlearnkit.adapters.flora import compute_fishers, fisher_retain_sample, relative_importance, row_weights
    from unlearnkit.config import load_config
    from unlearnkit.data.run_sets import load_run_data
    from unlearnkit.io import staged_directory
    from unlearnkit.modeling import load_configured_model, resolve_target_modules
    from unlearnkit.progress import Progress

    cfg = load_config(config, list(set_ or []))
    if out.exists() and not out.is_dir():
        raise UnlearnkitError(f"The Fisher path {out} is a file; choose a directory with --out.")
    if out.exists() and any(out.iterdir()):
        raise UnlearnkitError(f"The Fisher directory {out} is not empty; choose another --out or delete it.")
    if cfg.data.retain is None:
        raise UnlearnkitError("The Fisher ratio needs a retain set; set data.retain (e.g. source: wikitext).")
    # The Fisher pass is FLoRA's first step: load the data a FLoRA run loads.
    cfg.adapter.name = "flora"
    progress = Progress(quiet=quiet)
    with progress.status(f"Loading {cfg.model.name}"):
        loaded = load_configured_model(cfg.model)
    data = load_run_data(cfg, loaded.tokenizer)
    assert data.retain is not None
    targets = resolve_target_modules(loaded.model, cfg.adapter.modules)
    options = cfg.adapter.flora
    retain = fisher_retain_sample(data.retain, len(data.forget), options, cfg.seed)
    with staged_directory(out, replace=True) as staging, progress.status(
            f"Fisher over the forget ({len(data.forget)}) and retain ({len(retain)}) sequences"):
        results = dict(zip(("forget", "retain"), compute_fishers(
            loaded.model, targets, data.forget, retain, options.model_copy(update={"fisher_path": str(staging)})),
            strict=True))
    forget_f, retain_f = results["forget"].normalised(), results["retain"].normalised()
    table = Table(title=f"Empirical Fisher ({options.estimator}) of {len(forget_f)} target weights")
    for column in ("weight", "shape", "mean F_forget", "mean F_retain", "row weight min / max"):
        table.add_column(column, justify="right" if column != "weight" else "left")
    for name in forget_f:
        weights = row_weights(relative_importance(forget_f[name], retain_f[name], options.eps))
        table.add_row(name, "×".join(map(str, forget_f[name].shape)), f"{float(forget_f[name].mean()):.3e}",
                      f"{float(retain_f[name].mean()):.3e}", f"{float(weights.min()):.3g} / {float(weights.max()):.3g}")
    Console(emoji=False).print(table)
    Console(emoji=False).print(f"Saved to {out}; reuse with --set adapter.flora.fisher_path={out}")


@app.command(epilog="Example: `unlearnkit demo --compare --output runs/demo`. The first run fine-tunes SmolLM2 "
                     "until it has memorised the records and caches that model (~/.cache/unlearnkit/demo, or "
                     "$UNLEARNKIT_CACHE); later runs start from the cache. `unlearnkit demo --tiny` runs the same "
                     "pipeline on a tiny model in well under a minute.")
def demo(
    output: Annotated[Path, typer.Option(help="where the demo writes its outputs (replaced if present)")] = Path(
        "runs/demo"),
    tiny: Annotated[bool, typer.Option("--tiny", help="a tiny randomly initialised GPT-Neo instead of SmolLM2 "
                                                       "(seconds; for tests)")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="also unlearn with gradient ascent (GA, full "
                                                             "fine-tuning) and show both side by side")] = False,
    customers: Annotated[int, typer.Option(help="customers whose records the model memorises")] = 32,
    forget: Annotated[int, typer.Option(help="customers who ask to be forgotten")] = 8,
    holdout: Annotated[int, typer.Option(help="never-seen customers that set the forgetting thresholds")] = 8,
    epochs: Annotated[int | None, typer.Option(help="maximum unlearning epochs (default: the preset's)")] = None,
    lr: Annotated[float | None, typer.Option(help="IHL + FLoRA learning rate (default: the preset's)")] = None,
    rank: Annotated[int | None, typer.Option(help="FLoRA rank (default: the preset's)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the synthetic customers and of training")] = 0,
    quiet: Quiet = False,
) -> None:
    """Memorise synthetic customer records, unlearn the ones whose owners asked, prove it, show what was kept."""
    from unlearnkit.showcase.demo import DemoSettings, demo_table, run_demo

    settings = DemoSettings(tiny=tiny, customers=customers, forget=forget, holdout=holdout, seed=seed,
                            epochs=epochs, lr=lr, rank=rank)
    result = run_demo(output, settings, compare=compare, quiet=quiet)
    console = Console(emoji=False)
    console.print(demo_table(result))
    console.print(f"Outputs in {result.output_dir}: demo.md, demo.png, demo.json, report.md, model/, adapter/")


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
    from unlearnkit.data.run_sets import RunData
    from unlearnkit.evaluation import evaluation_snapshot
    from unlearnkit.io import atomic_write_json
    from unlearnkit.progress import Progress
    from unlearnkit.reports import audit_table

    _check_json_out(json_out)
    progress = Progress(quiet=quiet)
    loaded, (forget_blocks, holdout_blocks) = _model_and_sources(model, [forget, holdout], data_dir, seq_len,
                                                                 progress, n)
    sets = RunData(forget=forget_blocks, validation=holdout_blocks)
    with progress.status(f"Auditing {len(forget_blocks)} forget and {len(holdout_blocks)} held-out sequences"):
        snapshot = evaluation_snapshot(loaded.model, sets, EvalConfig(el_n=n), progress, "audit",
                                       tokenizer=loaded.tokenizer)
    Console(emoji=False).print(audit_table(snapshot, n))
    if json_out is not None:
        atomic_write_json(json_out, {"model": model, "sources": {"forget": forget, "validation": holdout}, "n": n,
                                     "ids": {"forget": forget_blocks.ids, "validation": holdout_blocks.ids},
                                     **snapshot})


@app.command("eval", epilog="Example: `unlearnkit eval smollm2 --suite paper --limit 100 --output runs/eval-smollm2`; "
                            "`unlearnkit eval runs/ihl --suite quick` evaluates a run's unlearned model.")
def eval_(
    model: Annotated[str, typer.Argument(help="hub id, local directory, .gguf file, 'smollm2', or a `run` output "
                                              "directory (its model/)")],
    suite: Annotated[str, typer.Option(help="paper (Table 1: 9 reasoning tasks, 4 dialogue sets, Pile and "
                                            "WikiText perplexity) | quick (a few cheap tasks)")] = "paper",
    tasks: Annotated[str | None, typer.Option(help="comma-separated tasks instead of the suite's: reasoning tasks "
                                                   "(ours, or lm-eval's built-in where there is network), "
                                                   "dialogue sets, pile, wikitext")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="score the first N items of each task")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="sequences per forward pass")] = 16,
    output: Annotated[Path | None, typer.Option(help="write eval.json and eval.md here")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing eval.json / eval.md in --output")] = False,
    data_dir: DataDir = None,
    quiet: Quiet = False,
) -> None:
    """What a model knows: reasoning accuracy (lm-eval), dialogue F1 and perplexity, as in the paper's Table 1."""
    from unlearnkit.config import DownstreamConfig
    from unlearnkit.data.catalog import resolve_data_dir
    from unlearnkit.evaluation import downstream_scores
    from unlearnkit.io import atomic_write_json, atomic_write_text
    from unlearnkit.modeling import load_model
    from unlearnkit.progress import Progress
    from unlearnkit.reports import kept_table, render_kept_markdown

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    options = _validated(lambda: DownstreamConfig(suite=suite, tasks=names, limit=limit, batch_size=batch_size),
                         "The evaluation option")
    if output is not None and not overwrite and any((output / f).exists() for f in ("eval.json", "eval.md")):
        raise UnlearnkitError(f"{output} already holds eval.json or eval.md; choose another --output or pass "
                              "--overwrite.")
    if output is not None and output.exists() and not output.is_dir():
        raise UnlearnkitError(f"The output path {output} is a file; choose a directory with --output.")
    run_model = Path(model).expanduser() / "model"
    location = str(run_model) if (run_model / "config.json").is_file() else model
    progress = Progress(quiet=quiet)
    with progress.status(f"Loading {location}"):
        loaded = load_model(location)
    snapshot = downstream_scores(loaded.model, loaded.tokenizer, options, resolve_data_dir(data_dir), progress)
    Console(emoji=False).print(kept_table(snapshot, f"What {model} kept"))
    if output is not None:
        atomic_write_json(output / "eval.json", {"model": model, "loaded_from": location, **snapshot})
        atomic_write_text(output / "eval.md", render_kept_markdown(model, snapshot))
        Console(emoji=False).print(f"Wrote {output / 'eval.json'} and {output / 'eval.md'}")


def _validated(build: Any, what: str) -> Any:
    """``build()`` a config model; a validation error becomes one sentence naming ``what`` was wrong (exit 2)."""
    from pydantic import ValidationError

    try:
        return build()
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ").rstrip(".")
        where = f" at {'.'.join(map(str, first['loc']))}" if first["loc"] else ""
        raise UnlearnkitError(f"{what} is invalid{where}: {message}{'' if message.endswith(('?', '.')) else '.'}"
                              ) from None


testbed_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                          help="A miniature TDEC testbed that runs on a CPU (GPT-Neo trained from scratch) and the "
                               "memorised SmolLM2 of configs/smollm2/.")
app.add_typer(testbed_app, name="testbed")


@testbed_app.command("build", epilog="Example: `unlearnkit run configs/testbed/flora-ihl.yaml --set "
                                     "model.name=$(unlearnkit testbed build --size small --print-path)`")
def testbed_build(
    size: Annotated[str, typer.Option(help="tiny (for tests) | small (the miniature of Table 1) | smollm2 "
                                           "(SmolLM2-135M memorising jang 32_0); build times are in the README")
                    ] = "small",
    data_dir: DataDir = None,
    print_path: Annotated[bool, typer.Option("--print-path", help="print only the model directory (for "
                                                                  "--set model.name=...); progress goes to stderr")
                          ] = False,
    force: Annotated[bool, typer.Option("--force", help="rebuild even when cached")] = False,
    quiet: Quiet = False,
) -> None:
    """Train (or reuse from the cache) a model that has memorised TDEC rows, and print where it is."""
    from unlearnkit.progress import Progress
    from unlearnkit.showcase.testbed import SIZES, build_smollm2, build_testbed, read_manifest

    if size not in (*SIZES, "smollm2"):
        raise UnlearnkitError(f'Unknown testbed size "{size}"; choose one of: {", ".join((*SIZES, "smollm2"))}.')
    progress = Progress(console=Console(emoji=False, stderr=print_path, quiet=quiet), quiet=quiet)
    if size == "smollm2":
        directory = build_smollm2(data_dir=data_dir, quiet=quiet, progress=progress, force=force)
    else:
        directory = build_testbed(size, data_dir=data_dir, quiet=quiet, progress=progress, force=force)
    if print_path:
        print(directory / "model")
        return
    manifest = read_manifest(directory)
    measured = manifest["measured"]
    if size == "smollm2":
        measured = measured["after"]
        forget = measured["forget"]
    else:
        forget = measured.get("forget_set_0", measured["pool"])
    held = measured["heldout_tdec_val"]
    def scores(measured: dict[str, float]) -> str:
        return f"MA {measured['ma']:.3f}" + (f", EL10 {measured['el10']:.3f}" if "el10" in measured else "")

    Console(emoji=False).print(f"{size}: forget set {scores(forget)}; "
                    f"held-out TDEC {scores(held)}")
    Console(emoji=False).print(f"Model in {directory / 'model'} (manifest.json beside it)")


def _check_json_out(path: Path | None) -> None:
    """Refuse a --json path that cannot take a file, before the work whose results it would hold."""
    if path is not None and path.is_dir():
        raise UnlearnkitError(f"--json {path} is a directory; give a file name, e.g. {path / 'scores.json'}.")
    if path is not None and path.parent.exists() and not path.parent.is_dir():
        raise UnlearnkitError(f"--json {path} cannot be written: {path.parent} is a file; choose another path.")


def _model_and_sources(model: str, sources: list[str], data_dir: str | None, seq_len: int,
                       progress: Any, el_n: int) -> tuple[Any, list[Any]]:
    """Load ``model`` and each of ``sources`` (CLI source strings) as token blocks for its tokenizer."""
    if el_n + 1 > seq_len:
        raise UnlearnkitError(f"EL{el_n} needs sequences of at least {el_n + 1} tokens but --seq-len is {seq_len}; "
                              "lower --n or raise --seq-len.")
    from unlearnkit.data.sources import check_user_file, load_blocks, resolve_data_dir
    from unlearnkit.modeling import load_model

    specs = [parse_source(text) for text in sources]  # bad input fails before the model loads
    directory = resolve_data_dir(data_dir)
    for spec in specs:
        if spec.source == "file" and spec.path:
            check_user_file(spec.path, directory)
    with progress.status(f"Loading {model}"):
        loaded = load_model(model)
    return loaded, [load_blocks(spec, loaded.tokenizer, directory, seq_len=seq_len) for spec in specs]


def parse_source(text: str) -> Any:
    """``path/to/file.txt`` or ``SOURCE[,key=value...]`` → a data SourceConfig."""
    import yaml

    from unlearnkit.config import SourceConfig

    if Path(text).expanduser().is_file():
        return SourceConfig(source="file", path=str(Path(text).expanduser()))
    name, *pairs = [part.strip() for part in text.split(",")]
    if not pairs and (Path(name).suffix.lower() in (".txt", ".jsonl", ".csv") or "/" in name):
        where = Path(name).expanduser()
        problem = "is a directory" if where.is_dir() else "does not exist"
        raise UnlearnkitError(f"The data file {where} {problem}; give the path of a .txt, .jsonl or .csv file, or a "
                              "source such as jang,n=32,set=0.")
    fields: dict[str, Any] = {"source": name}
    for pair in pairs:
        if "=" not in pair:
            raise UnlearnkitError(f'The data option part "{pair}" is not key=value; write e.g. jang,n=32,set=0.')
        key, value = pair.split("=", 1)
        fields[key.strip()] = yaml.safe_load(value)
    return _validated(lambda: SourceConfig(**fields), f"The data option {text!r}")


def main() -> None:
    """Entry point: user errors become one red sentence and a non-zero exit, never a traceback."""
    try:
        # Outside standalone mode click returns a command's exit code (typer.Exit) instead of exiting.
        code = app(standalone_mode=False)
    except UnlearnkitError as error:
        _error(str(error))
        sys.exit(EXIT_BAD_INPUT)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        # Usage errors come from the click that typer bundles, whose classes are not click's own.
        if hasattr(error, "format_message") and hasattr(error, "exit_code"):
            context = getattr(error, "ctx", None)
            command = context.command_path if context is not None else "unlearnkit"
            _error(f"{error.format_message().rstrip('.')}; see `{command} --help`.")
            sys.exit(EXIT_BAD_INPUT)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _error(message: str) -> None:
    """One red ``error:`` and the message as plain text (paths and ``[q, v, ffn]`` are not rich markup)."""
    from rich.text import Text

    err.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
