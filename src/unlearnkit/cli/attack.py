"""The attack command: does the forgetting survive relearning and quantisation?"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from unlearnkit.cli.common import DataDir, Quiet, app, check_model_name, end_of_batch, parse_source
from unlearnkit.errors import UnlearnkitError

QUANT_PATTERN = re.compile(r"int([2-8])-(?:g(\d+)|channel)-(sym|asym)")
GGUF_PATTERN = re.compile(r"gguf-(Q8_0|Q4_0)")


@app.command(epilog="Example: `unlearnkit attack runs/ihl --relearn-steps 20 --quant int8-g128-sym,int4-g32-asym "
                    "--output runs/ihl-attack`; every run of a sweep: `unlearnkit attack runs/sweeps/table1 --output "
                    "runs/attacks/table1`; for any model: `unlearnkit attack MODEL --forget jang,n=32,set=0 "
                    "--holdout tdec,split=val,n=32`.")
def attack(
    model: Annotated[str, typer.Argument(help="a `run` output directory, a sweep's (every finished run is attacked "
                                              "into --output/NAME), or a hub id, directory, .gguf or smollm2")],
    forget: Annotated[str | None, typer.Option(help="forgotten text, a file or SOURCE[,k=v...] (default: the "
                                                    "run's forget set)")] = None,
    holdout: Annotated[str | None, typer.Option(help="text of the same kind never trained on (default: the run's "
                                                     "held-out set)")] = None,
    seq_len: Annotated[int | None, typer.Option(min=2, help="tokens per sequence (default: the run's)")] = None,
    relearn_steps: Annotated[int, typer.Option(min=0, help="fine-tuning steps of the relearning attack (0: none)")
                             ] = 20,
    relearn_lr: Annotated[float, typer.Option(min=0.0, help="its learning rate")] = 1e-4,
    relearn_fraction: Annotated[float, typer.Option(help="the share of forget rows it fine-tunes on (the others "
                                                         "are measured)")] = 0.5,
    lora_relearn_rank: Annotated[int, typer.Option(min=0, help="relearning with a LoRA adapter of this rank on the "
                                                               "same rows, a cheaper attacker (0: none)")] = 8,
    lora_relearn_lr: Annotated[float, typer.Option(min=0.0, help="its learning rate")] = 1e-3,
    unrelated: Annotated[str | None, typer.Option(help="text with nothing of the forget set, for the unrelated "
                                                       "fine-tuning attack (default: the run's retain set)")] = None,
    unrelated_steps: Annotated[int, typer.Option(min=0, help="its fine-tuning steps, at --relearn-lr (0: none)")
                               ] = 20,
    quant: Annotated[str, typer.Option(help="weight quantisations, comma-separated: intB-gG-sym|asym (B bits, "
                                            "groups of G inputs; e.g. int4-g32-asym), intB-channel-sym|asym, or "
                                            "gguf-Q8_0 / gguf-Q4_0 (llama.cpp's formats); '' for none")
                     ] = "int8-g128-sym,int4-g128-sym,int4-g32-asym",
    output: Annotated[Path | None, typer.Option(help="write attack.json and attack.md here (for a sweep: one "
                                                      "folder per run, runs already attacked there skipped)")] = None,
    select: Annotated[str | None, typer.Option(help="for a sweep: attack only the runs whose names match this "
                                                    "pattern, e.g. 'forget-set0__*'")] = None,
    el: Annotated[bool, typer.Option("--el/--no-el", help="score EL10 after every attack too (exact, the dearest "
                                     "score); --no-el: MA, extraction and membership inference only")] = True,
    data_dir: DataDir = None,
    quiet: Quiet = False,
) -> None:
    """Attack an unlearned model (relearning on part of the forget set, with every weight or a LoRA adapter;
    fine-tuning on unrelated text; weight quantisation) and measure MA,
    EL10, the extraction attack and membership inference after each, with how much of what unlearning removed
    came back."""
    quant_fields = [_quant_fields(text) for text in quant.split(",") if text.strip()]
    if not 0.0 < relearn_fraction < 1.0:
        raise UnlearnkitError(f"--relearn-fraction {relearn_fraction} must lie between 0 and 1 (exclusive).")
    if output is not None:  # a user's files of these names are refused, not replaced
        from unlearnkit.ownership import check_output_files

        check_output_files(output, ("attack.json", "attack.md"), [Path(model).expanduser()], option="--output")
    sweep_runs = _sweep_runs(Path(model).expanduser(), output, select)
    if sweep_runs is None:
        check_model_name(model)
    forget_source, holdout_source, unrelated_source = (parse_source(t) if t else None
                                                       for t in (forget, holdout, unrelated))
    from unlearnkit.attacks.quantize import QuantSpec  # torch: only once the input has been checked
    from unlearnkit.attacks.suite import AttackPlan

    specs = [QuantSpec(**fields) for fields in quant_fields]
    plan = AttackPlan(relearn_steps=relearn_steps, relearn_lr=relearn_lr, relearn_fraction=relearn_fraction,
                      lora_relearn_rank=lora_relearn_rank, lora_relearn_lr=lora_relearn_lr,
                      unrelated_steps=unrelated_steps, quantisations=tuple(specs), score_el=el)
    from unlearnkit.data.catalog import resolve_data_dir
    from unlearnkit.progress import Progress

    progress = Progress(quiet=quiet)
    data = resolve_data_dir(data_dir)
    console = Console(emoji=False)

    def attack_one(location: str) -> tuple[dict[str, Any], str]:
        return _attack_one(location, forget_source, holdout_source, unrelated_source, seq_len, data, plan, progress)

    if sweep_runs is not None and output is not None:
        _attack_sweep(sweep_runs, output, attack_one, console)
        return
    from unlearnkit.io import atomic_write_json, atomic_write_text
    from unlearnkit.ownership import MARKDOWN_MARK, marked

    record, markdown = attack_one(model)
    console.print(markdown, markup=False, highlight=False)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output / "attack.json", marked(record))
        atomic_write_text(output / "attack.md", f"{MARKDOWN_MARK}\n{markdown}\n")
        console.print(f"Wrote {output / 'attack.json'} and {output / 'attack.md'}", markup=False)


def _attack_sweep(runs: list[Path], output: Path, attack_one: Any, console: Console) -> None:
    """Every finished run of a sweep into ``output/NAME``, then the attack table; exit 5 if any failed."""
    from unlearnkit.experiments.attack_table import TABLE_FILE, attack_runs

    outcome = attack_runs(runs, output, lambda run: attack_one(str(run)),
                          say=lambda line: console.print(line, markup=False, highlight=False))
    elsewhere = f", {len(outcome.elsewhere)} being attacked elsewhere" if outcome.elsewhere else ""
    end_of_batch(f"{len(outcome.ran)} attacked, {len(outcome.skipped)} already attacked{elsewhere}, "
                 f"{len(outcome.failed)} failed; the table is {output / TABLE_FILE}", list(outcome.failed),
                 f"run(s) could not be attacked ({{names}}); the reasons are in {output}/NAME.failed.json. Fix "
                 "them and run the command again.")


def _attack_one(location: str, forget_source: Any, holdout_source: Any, unrelated_source: Any, seq_len: int | None,
                data: Path, plan: Any, progress: Any) -> tuple[dict[str, Any], str]:
    """The attack record (attack.json) and report (attack.md) of the model at ``location``."""
    from unlearnkit.attacks.suite import UNRELATED_MISSING, attack_markdown, run_attacks
    from unlearnkit.attacks.target import load_target
    from unlearnkit.config import EvalConfig

    with progress.status(f"Loading {location}"):
        target = load_target(location, forget_source, holdout_source, seq_len, data, unrelated_source)
    if plan.unrelated_steps > 0 and target.unrelated is None:
        progress.warn(f"{location}: {UNRELATED_MISSING}; name it with --unrelated SOURCE (e.g. wikitext) to run "
                      "that attack.")
    eval_config = target.run_config.eval if target.run_config is not None else EvalConfig()
    result = run_attacks(target.model, target.tokenizer, target.forget, target.holdout, plan, eval_config,
                         progress, before=target.before, adapted=target.adapted, unrelated=target.unrelated)
    record = {"model": location, "plan": _plan_dict(plan), "rows": result.rows, "details": result.details}
    if target.run_facts is not None:
        record["run"] = target.run_facts
    return record, attack_markdown(result, location)


def _sweep_runs(location: Path, output: Path | None, select: str | None = None) -> list[Path] | None:
    """The finished runs of a sweep's output directory whose names match ``select`` (``None`` when ``location``
    is no sweep's), checked up front."""
    from unlearnkit.experiments.report import RESULTS_FILE, read_rows, selected

    if not (location / RESULTS_FILE).is_file():
        if select is not None:
            raise UnlearnkitError(f"--select picks runs of a sweep, and {location} is none (no {RESULTS_FILE}); "
                                  "drop --select or point at a sweep's output directory.")
        return None
    if output is None:
        raise UnlearnkitError(f"{location} is a sweep's results; attacking all its runs needs --output DIR (each run's "
                              "attack goes into DIR/NAME, and DIR/attacks.md holds the table).")
    runs = [location / str(row["name"]) for row in selected(read_rows(location), select)
            if row.get("status") == "done" and (location / str(row["name"]) / "run.json").is_file()]
    if not runs:
        chosen = "" if select is None else f" named like {select}"
        raise UnlearnkitError(f"{location} has no finished run{chosen} to attack yet; run the sweep first"
                              f"{'' if select is None else ' or change --select'}.")
    return runs


def _quant_fields(text: str) -> dict[str, Any]:
    """One --quant item as QuantSpec's fields (read without importing torch)."""
    gguf = GGUF_PATTERN.fullmatch(text.strip())
    if gguf is not None:
        return {"bits": 8 if gguf.group(1) == "Q8_0" else 4, "gguf": gguf.group(1)}
    match = QUANT_PATTERN.fullmatch(text.strip())
    if match is None or match.group(2) is not None and int(match.group(2)) == 0:
        raise UnlearnkitError(f'--quant "{text}" is not int<bits>-g<group>-sym|asym, int<bits>-channel-sym|asym or '
                              "gguf-Q8_0|gguf-Q4_0 (bits 2-8, group over 0); write e.g. int4-g32-asym.")
    bits, group, kind = match.groups()
    return {"bits": int(bits), "group_size": int(group) if group else None, "symmetric": kind == "sym"}


def _plan_dict(plan: Any) -> dict[str, Any]:
    return {"relearn_steps": plan.relearn_steps, "relearn_lr": plan.relearn_lr,
            "relearn_fraction": plan.relearn_fraction, "lora_relearn_rank": plan.lora_relearn_rank,
            "lora_relearn_lr": plan.lora_relearn_lr, "unrelated_steps": plan.unrelated_steps,
            "quantisations": [s.label for s in plan.quantisations],
            "seed": plan.seed, "score_el": plan.score_el}
