"""What an attack is aimed at: a model, or a run's output directory with what the run knew.

From a run directory (``run.json`` in it) the attack takes the unlearned model (``model/``), the run's forget
and held-out sets unless others are given, the per-sequence scores of the model before unlearning
(``metrics.json``, when the forget rows are the run's own: same fingerprint) and, for an adapter run, a way
to load the original base with the adapter (``adapter/``) for quantising the base alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit.attacks.suite import Before
from unlearnkit.config import RunConfig, SourceConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.errors import UnlearnkitError
from unlearnkit.outputs import RunDirectory


@dataclass
class AttackTarget:
    model: Any
    tokenizer: Any
    forget: TokenBlocks
    holdout: TokenBlocks
    before: Before | None = None
    adapted: Callable[[], Any] | None = None
    unrelated: TokenBlocks | None = None  # text the unrelated fine-tuning attack trains on
    run_config: RunConfig | None = None
    run_facts: dict[str, Any] | None = None  # what an attack table shows of the run: method, set, success


def run_config_of(location: str | Path) -> RunConfig | None:
    """The config of the run whose output directory ``location`` is, or ``None`` for anything else."""
    run = RunDirectory(Path(location).expanduser())
    return run.config() if run.finished else None


def load_target(location: str, forget: SourceConfig | None, holdout: SourceConfig | None, seq_len: int | None,
                data_dir: str | Path, unrelated: SourceConfig | None = None) -> AttackTarget:
    """Load the model at ``location`` (a run directory, hub id, directory, GGUF file or 'smollm2') and the sets;
    the unrelated text is ``unrelated``, else the run's retain set (none for a bare model)."""
    from unlearnkit.data.sources import dataset_fingerprint, load_blocks
    from unlearnkit.modeling import load_configured_model, load_model

    config = run_config_of(location)
    directory = Path(location).expanduser()
    if config is None and (forget is None or holdout is None):
        raise UnlearnkitError(f"{location} is not a run directory (no run.json), so name the sets: --forget SOURCE "
                              "and --holdout SOURCE.")
    forget_source = forget or (config.data.forget if config else None)
    holdout_source = holdout or (config.data.validation if config else None)
    if forget_source is None or holdout_source is None:
        raise UnlearnkitError("The run has no held-out set in its config; pass --holdout SOURCE.")
    length = seq_len or (config.data.seq_len if config else 200)
    # a run directory: its model in the dtype it was trained in
    run = RunDirectory(directory)
    loaded = (load_model(str(run.model_dir), dtype=config.model.dtype) if config is not None
              else load_model(location))
    forget_blocks = load_blocks(forget_source, loaded.tokenizer, data_dir, seq_len=length)
    holdout_blocks = load_blocks(holdout_source, loaded.tokenizer, data_dir, seq_len=length)
    unrelated_source = unrelated or (config.data.retain if config else None)
    unrelated_blocks = (load_blocks(unrelated_source, loaded.tokenizer, data_dir, seq_len=length)
                        if unrelated_source is not None else None)
    target = AttackTarget(loaded.model.eval(), loaded.tokenizer, forget_blocks, holdout_blocks, run_config=config,
                          unrelated=unrelated_blocks)
    if config is None:
        return target
    metrics = run.metrics()
    if run.run_facts().get("data_fingerprints", {}).get("forget") == dataset_fingerprint(forget_blocks):
        scores = metrics.before.forget
        assert scores is not None and scores.el_per_sequence is not None  # scored in full before unlearning
        extraction = (metrics.before.privacy or {}).get("extraction_forget", {}).get("exact_match_rate")
        target.before = Before(scores.ma_per_sequence, scores.el_per_sequence, extraction)
    target.run_facts = {
        "method": config.method.name, "adapter": config.adapter.name, "retain_kind": config.method.retain_kind,
        "forget": config.data.forget.label(), "seed": config.seed, "epochs": metrics.epochs_run,
        "criterion_met": metrics.criterion_met, "success": metrics.success,
        "kept": metrics.after.kept(), "kept_before": metrics.before.kept(),  # the recovery figure's other axis
        **({"reasoning_change": change} if (change := metrics.reasoning_change()) is not None else {}),
        **config.method.gradient_point()}
    if config.adapter.adapter_class().has_adapter and (run.adapter_dir / "adapter_config.json").is_file():
        def adapted() -> Any:
            from unlearnkit.adapters.lora import load_adapter

            return load_adapter(load_configured_model(config.model).model, str(run.adapter_dir)).eval()

        target.adapted = adapted
    return target
