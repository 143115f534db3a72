"""Commands that change a model: run (unlearn), fisher (FLoRA's Fisher information), demo, testbed build."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from unlearnkit.cli.common import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FORGOTTEN,
    EXIT_OK,
    DataDir,
    Quiet,
    app,
    err,
    error_line,
)
from unlearnkit.errors import UnlearnkitError


@app.command(epilog="Example: `unlearnkit run paper/gpt-neo-125m-lora-ihl --set train.lr=2e-4 "
                     "--set output.dir=runs/ihl`. An interrupted run continues with `unlearnkit run --resume runs/ihl` "
                     "(or the same command again).")
def run(
    config: Annotated[Path | None, typer.Argument(help="a YAML config's path, or a shipped config's name "
                                                       "(`unlearnkit configs` lists them)")] = None,
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
    from unlearnkit.config.catalogue import find_config
    from unlearnkit.outputs import claim_output_dir
    from unlearnkit.preflight import check_run

    if resume is not None:
        if config is not None or set_ or overwrite or restart:
            raise UnlearnkitError("--resume continues a run with its own configuration; pass --resume OUTPUT_DIR "
                                  "alone, without CONFIG, --set, --overwrite or --restart.")
        cfg = Checkpoints(checkpoint_dir(resume)).saved_config()  # the configuration layer: no torch yet
    elif config is None:
        raise UnlearnkitError("Pass a config file or a shipped config's name (`unlearnkit configs` lists them), "
                              "or --resume OUTPUT_DIR to continue an interrupted run.")
    else:
        overrides = list(set_ or []) + (["output.overwrite=true"] if overwrite else [])
        config = find_config(config)
        cfg = load_config(config, overrides)  # the configuration layer imports no torch: bad input fails fast
    output_dir = check_run(cfg, config)  # every problem, before any expensive work
    if cfg.data.requests:  # several deletion requests, one after another
        with claim_output_dir(cfg):
            _run_requests(cfg, quiet)
        return
    _unlearn(cfg, output_dir, restart=restart, quiet=quiet)


def _unlearn(cfg: Any, output_dir: Path, *, restart: bool, quiet: bool) -> None:
    from unlearnkit.checkpoints import Checkpoints, launched_first
    from unlearnkit.reports import before_after_table
    from unlearnkit.runner import unlearn

    if (output_dir / "run.json").is_file():
        err.print(f"Replacing the previous unlearnkit output in {output_dir} (--overwrite).", markup=False,
                  highlight=False)
    console = Console(emoji=False, quiet=quiet)
    try:
        finished = unlearn(cfg, console=console, quiet=quiet, restart=restart)
        assert finished is not None  # returned whenever skip_finished is off
    except KeyboardInterrupt:
        if launched_first():  # of a distributed run's processes, the first one says it
            _say_interrupted(Checkpoints.of(cfg) if cfg.output.checkpoint else None, output_dir)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    result = finished.result
    if finished.directory is not None:
        Console(emoji=False).print(before_after_table(result))
        Console(emoji=False).print(f"Outputs in {finished.directory}", markup=False, highlight=False)
    code, message = EXIT_OK, ""
    if result.state.diverged_epoch is not None or result.state.collapsed_epoch is not None:
        advice = "lower train.lr" + ("" if cfg.train.max_grad_norm is not None else " or set train.max_grad_norm")
        code, message = EXIT_DIVERGED, f"{result.state.stop_reason}; {advice}."
    elif not result.state.criterion_met and cfg.output.fail_if_not_forgotten:
        code, message = EXIT_NOT_FORGOTTEN, (f"{result.state.stop_reason}; raise train.epochs or train.lr (or set "
                                             "output.fail_if_not_forgotten=false to exit 0).")
    if message and result.main_process:
        error_line(message)
    if result.processes > 1:  # torchrun stops all processes once one exits non-zero: wait for the main one's writing
        from accelerate import PartialState
        state = PartialState()
        state.wait_for_everyone()
        state.destroy_process_group()  # then all leave together: none while a peer still uses the group
    if code != EXIT_OK:
        raise typer.Exit(code)  # the same code on every process


def _say_interrupted(checkpoints: Any, output_dir: Path) -> None:
    saved = checkpoints.latest() if checkpoints is not None else None
    if saved is None:
        error_line("Interrupted before the first checkpoint; nothing was saved, run the command again.")
    else:
        done = f"after epoch {saved.epoch}" if saved.epoch else "after set-up, before the first epoch"
        error_line(f"Interrupted; the run is saved {done}. Resume it with: unlearnkit run --resume {output_dir}")


def _run_requests(cfg: Any, quiet: bool) -> None:
    from unlearnkit.sequential import SUMMARY_MD, run_requests

    summary = run_requests(cfg, quiet=quiet)
    Console(emoji=False).print((Path(cfg.output.dir) / SUMMARY_MD).read_text(encoding="utf-8"), markup=False,
                               highlight=False)
    missed = [after["request"] for after in summary["after"] if not after["criterion_met"]]
    if missed and cfg.output.fail_if_not_forgotten:
        error_line(f"the forgetting criterion was NOT met for request(s) {', '.join(map(str, missed))}; see "
                   f"{cfg.output.dir}/requests.md (or set output.fail_if_not_forgotten=false to exit 0).")
        raise typer.Exit(EXIT_NOT_FORGOTTEN)


@app.command(epilog="Example: `unlearnkit fisher paper/gpt-neo-125m-flora-ihl --out runs/fisher-125m`, "
                     "then `unlearnkit run ... --set adapter.flora.fisher_path=runs/fisher-125m`")
def fisher(
    config: Annotated[Path, typer.Argument(help="YAML config (or a shipped config's name) naming the model, data "
                                                "and target modules")],
    out: Annotated[Path, typer.Option(help="directory for forget.safetensors and retain.safetensors")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: key=value")] = None,
    quiet: Quiet = False,
) -> None:
    """Compute the forget and retain empirical Fisher (Eq. 2) of the target weights and save them for reuse."""
    from unlearnkit.config import load_config
    from unlearnkit.outputs import run_inputs
    from unlearnkit.ownership import check_replaceable

    cfg = load_config(config, list(set_ or []))
    check_replaceable(out, run_inputs(cfg), overwrite=False, option="--out", overwrite_flag=None)
    if cfg.data.retain is None:
        raise UnlearnkitError("The Fisher ratio needs a retain set; set data.retain (e.g. source: wikitext).")
    from rich.table import Table  # torch and the model: only for valid input

    from unlearnkit.adapters.flora.init import compute_fishers, fisher_retain_sample
    from unlearnkit.adapters.flora.maths import relative_importance, row_weights
    from unlearnkit.data.run_sets import load_run_data
    from unlearnkit.io import staged_directory
    from unlearnkit.modeling import load_configured_model, resolve_target_modules
    from unlearnkit.ownership import mark_directory
    from unlearnkit.progress import Progress
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
        mark_directory(staging, "fisher")
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


testbed_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                          help="A miniature TDEC testbed that runs on a CPU (GPT-Neo trained from scratch) and the "
                               "memorised SmolLM2 of the smollm2/ configs.")
app.add_typer(testbed_app, name="testbed")


# the testbeds' names, checked before torch is imported (tests/test_refusals.py holds them to the builders')
TESTBED_SIZES = ("tiny", "small", "smollm2", "smollm2-sets", "tofu-smollm2")


@testbed_app.command("build", epilog="Example: `unlearnkit run testbed/flora-ihl --set "
                                     "model.name=$(unlearnkit testbed build --size small --print-path)`")
def testbed_build(
    size: Annotated[str, typer.Option(help="tiny (for tests) | small (the miniature of Table 1) | smollm2 "
                                           "(SmolLM2-135M memorising jang 32_0) | smollm2-sets (jang 32_0-2, 100 "
                                           "tokens) | tofu-smollm2 (TOFU's target and retain models); "
                                           "what each is and costs: docs/testbeds.md")
                    ] = "small",
    data_dir: DataDir = None,
    print_path: Annotated[bool, typer.Option("--print-path", help="print only the model directory (for "
                                                                  "--set model.name=...); progress goes to stderr")
                          ] = False,
    force: Annotated[bool, typer.Option("--force", help="rebuild even when cached")] = False,
    authors: Annotated[int | None, typer.Option(help="tofu-smollm2: a study of N fictitious authors only, the "
                                                     "forget split's and the first of full (quick looks, tests, "
                                                     "a study that fits a CPU)", min=1, max=200)] = None,
    tofu_split: Annotated[str, typer.Option(help="tofu-smollm2: the forget split the retain model leaves out "
                                                 "(forget01 | forget05 | forget10)")] = "forget10",
    lr: Annotated[float | None, typer.Option(help="tofu-smollm2: the fine-tuning learning rate", min=0)] = None,
    tofu_model: Annotated[str, typer.Option(help="tofu-smollm2: target | retain | both")] = "both",
    quiet: Quiet = False,
) -> None:
    """Train (or reuse from the cache) a model that has memorised TDEC rows, and print where it is."""
    if size not in TESTBED_SIZES:
        raise UnlearnkitError(f'Unknown testbed size "{size}"; choose one of: {", ".join(TESTBED_SIZES)}.')
    if (authors is not None or lr is not None or tofu_model != "both" or tofu_split != "forget10") \
            and size != "tofu-smollm2":
        raise UnlearnkitError("--authors, --lr, --tofu-model and --tofu-split apply to --size tofu-smollm2 only; "
                              "remove them.")
    if tofu_model not in ("target", "retain", "both"):
        raise UnlearnkitError(f'Unknown --tofu-model "{tofu_model}"; choose target, retain or both.')
    from unlearnkit.progress import Progress
    from unlearnkit.showcase.testbed import SMOLLM2_SIZES, build_smollm2, build_testbed, read_manifest

    progress = Progress(console=Console(emoji=False, stderr=print_path, quiet=quiet), quiet=quiet)
    if size == "tofu-smollm2":
        _build_tofu(authors, lr, tofu_model, tofu_split, data_dir=data_dir, force=force, print_path=print_path,
                    progress=progress, quiet=quiet)
        return
    if size in SMOLLM2_SIZES:
        directory = build_smollm2(data_dir=data_dir, quiet=quiet, progress=progress, force=force,
                                  settings=SMOLLM2_SIZES[size])
    else:
        directory = build_testbed(size, data_dir=data_dir, quiet=quiet, progress=progress, force=force)
    if print_path:
        print(directory / "model")
        return
    manifest = read_manifest(directory)
    measured = manifest["measured"]
    if size in SMOLLM2_SIZES:
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


def _build_tofu(authors: int | None, lr: float | None, which: str, split: str, *, data_dir: Any, force: bool,
                print_path: bool, progress: Any, quiet: bool) -> None:
    from dataclasses import replace

    from unlearnkit.showcase.testbed.tofu import FORGET_ROWS, TofuSettings, build_tofu

    if split not in FORGET_ROWS:
        raise UnlearnkitError(f'Unknown --tofu-split "{split}"; choose one of: {", ".join(FORGET_ROWS)}.')
    base = TofuSettings(authors=authors, forget_split=split)
    base = base if lr is None else replace(base, lr=lr)
    models = ["target", "retain"] if which == "both" else [which]
    settings = [replace(base, model=model) for model in models]
    for each in settings:
        each.training_rows()  # refuses an empty study before the model loads
    directories = [build_tofu(each, data_dir=data_dir, quiet=quiet, progress=progress, force=force)
                   for each in settings]
    for model, directory in zip(models, directories, strict=True):
        if print_path:
            print(directory / "model")
        else:
            Console(emoji=False).print(f"TOFU {model} model in {directory / 'model'} (manifest.json beside it)")


@app.command(epilog="Example: `unlearnkit push runs/ihl me/smollm2-unlearned` (the token from `hf auth login` or "
                    "$HF_TOKEN).")
def push(
    run_dir: Annotated[Path, typer.Argument(help="a finished `run` output directory")],
    repo_id: Annotated[str, typer.Argument(help="the Hugging Face model repository, owner/name (created if "
                                                "missing)")],
    public: Annotated[bool, typer.Option(help="create the repository public (default: private)")] = False,
) -> None:
    """Upload an unlearned model with its model card, its adapter and the run's record (config, metrics, report)
    to the Hugging Face hub."""
    from unlearnkit.publish import check_push, push_run

    check_push(run_dir.expanduser(), repo_id)  # every problem before anything is uploaded
    url = push_run(run_dir.expanduser(), repo_id, private=not public)
    Console(emoji=False).print(f"Pushed {run_dir} to {url}", markup=False)
