"""TOFU's target and retain models for SmolLM2-135M: fine-tuned on the fictitious authors with TOFU's recipe.

TOFU starts from a model fine-tuned on ``full`` (the *target*, which knows every author) and compares with one
fine-tuned on ``retainXX`` only (the *retain model*, which never saw the forget set's authors). The recipe is
the official ``finetune.py``'s: full fine-tuning, AdamW with weight decay 0.01, effective batch 32 (here 4
micro-batches of 8, each averaging its answer tokens as the Trainer does per device), ``5 · rows // 32``
updates, one epoch of linear warm-up then a linear decay to 0, gradients clipped at norm 1. Only the learning
rate is ours (measured for a 135M model: docs/tofu.md).

Hours on a CPU, so the build saves its state every ``checkpoint_every`` updates (weights, optimiser, schedule)
and continues from it when started again; the batch order of epoch ``e`` is drawn from ``seed + e``, so a
resumed build takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.catalog import resolve_data_dir
from unlearnkit.data.qa import author_rows, qa_blocks, read_qa_rows
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import atomic_write_json, staged_directory
from unlearnkit.metrics.tofu import answer_probabilities
from unlearnkit.modeling import load_model
from unlearnkit.objectives import lm_loss
from unlearnkit.progress import Progress
from unlearnkit.showcase.cache import cache_root, save_model_to_cache
from unlearnkit.showcase.testbed.build import point_latest
from unlearnkit.training import OptimisationStep

TOFU_MODELS = ("target", "retain")
FORGET_ROWS = {"forget01": 40, "forget05": 200, "forget10": 400}
PROBE_ROWS = 100  # rows of each set the build scores before and after (TOFU's own scores: `unlearnkit eval`)


@dataclass(frozen=True)
class TofuSettings:
    """One TOFU fine-tuning of SmolLM2-135M-Instruct: the target (``full``) or the retain model."""

    model: str = "target"  # target: every author of the study; retain: all but forget_split's
    forget_split: str = "forget10"
    authors: int | None = None  # a study of N authors only: the forget split's and full's first (data.qa.author_rows)
    template: str = "phi"
    lr: float = 3e-4  # chosen by measurement: docs/tofu.md (docs/results/tofu/target-lr.json)
    epochs: int = 5
    batch_size: int = 32
    micro_batch: int = 8
    weight_decay: float = 0.01
    seed: int = 42
    checkpoint_every: int = 10

    name: str = "tofu-smollm2"

    def key(self) -> str:
        settings = asdict(self)
        for unkeyed in ("name", "checkpoint_every", "micro_batch"):  # how it is computed, not what
            settings.pop(unkeyed)
        # version 2: a study larger than the forget split took full's last authors before, its first ones now
        mixed = self.authors is not None and self.authors * 20 > FORGET_ROWS[self.forget_split]
        text = json.dumps({"version": 2 if mixed else 1, "base": "smollm2", **settings}, sort_keys=True)
        authors = "" if self.authors is None else f"-a{self.authors}"
        return f"{self.name}{authors}-{self.model}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"

    def training_rows(self) -> list[int]:
        """Rows of ``full`` this model trains on."""
        rows = author_rows(4000, self.authors, FORGET_ROWS[self.forget_split])
        if self.model == "retain":
            first_forget = 4000 - FORGET_ROWS[self.forget_split]
            rows = [row for row in rows if row < first_forget]
        if not rows:
            raise UnlearnkitError(f"The retain model of {self.authors} authors without {self.forget_split}'s "
                                  f"{FORGET_ROWS[self.forget_split] // 20} has nothing to train on; give --authors "
                                  "more authors than the forget split has.")
        return rows


def tofu_dir(settings: TofuSettings) -> Path:
    return cache_root() / "testbed" / settings.key()


def build_tofu(settings: TofuSettings, *, data_dir: str | Path | None = None, quiet: bool = False,
               progress: Progress | None = None, force: bool = False) -> Path:
    """Fine-tune (or reuse from the cache, or continue) one TOFU model; returns its cache directory."""
    progress = progress or Progress(quiet=quiet)
    directory = tofu_dir(settings)
    if not force and (directory / "manifest.json").is_file() and (directory / "model" / "config.json").is_file():
        _point_latest(settings, directory)
        return directory
    started = time.perf_counter()
    data_path = resolve_data_dir(data_dir)
    with progress.status("Loading SmolLM2-135M", announce=not quiet):
        loaded = load_model("smollm2")
    model, tokenizer = loaded.model, loaded.tokenizer
    full = read_qa_rows(data_path, "full")
    rows = settings.training_rows()
    pad = int(tokenizer.pad_token_id)
    train = qa_blocks([full[i] for i in rows], tokenizer, template=settings.template, name="tofu:full",
                      ids=[f"full#{i}" for i in rows], pad_id=pad)
    probes = _probe_sets(settings, data_path, tokenizer, pad)
    before = {name: _mean_probability(model, blocks) for name, blocks in probes.items()}
    state = directory.parent / f".{directory.name}.resume"

    def report(update: int, total: int, loss: float) -> None:
        if not quiet:
            progress.console.print(f"  update {update}/{total}: loss {loss:.4f} "
                                   f"({time.perf_counter() - started:.0f} s)")

    history = finetune_qa(model, train, settings, state_dir=state, on_update=report)
    after = {name: _mean_probability(model, blocks) for name, blocks in probes.items()}
    manifest = {
        "size": settings.name, "key": directory.name, "settings": asdict(settings),
        "training_rows": len(rows), "training_tokens_per_epoch": int(train.scored_mask.sum()),
        "real_tokens_per_epoch": train.num_tokens, "history": history,
        "answer_probability": {"before": before, "after": after, "rows_each": PROBE_ROWS},
        "seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "data_dir": str(data_path),
    }
    save_model_to_cache(directory, model, tokenizer, "manifest.json", manifest)
    shutil.rmtree(state, ignore_errors=True)  # the build's own resume state, no longer needed
    _point_latest(settings, directory)
    if not quiet:
        progress.console.print(f"✓ TOFU {settings.model} model: answer probability " + ", ".join(
            f"{name} {before[name]:.3f} → {after[name]:.3f}" for name in probes) + f"; cached in {directory}")
    return directory


def _point_latest(settings: TofuSettings, directory: Path) -> None:
    """``testbed/tofu-smollm2-target`` (``-retain``) for the whole study, ``tofu-smollm2-a22-forget01-target``
    for a smaller one: the fixed paths configs/tofu/ name."""
    study = "" if settings.authors is None else f"-a{settings.authors}-{settings.forget_split}"
    point_latest(directory, f"{settings.name}{study}-{settings.model}")


def finetune_qa(model: Any, blocks: TokenBlocks, settings: TofuSettings, *, state_dir: Path,
                on_update: Callable[[int, int, float], None] | None = None) -> list[float]:
    """TOFU's fine-tuning of ``model`` on ``blocks`` (answer tokens only), continued from ``state_dir`` when it
    holds a saved state; returns the mean loss of each update."""
    from safetensors.torch import load_model as load_weights

    rows = len(blocks)
    total = settings.epochs * rows // settings.batch_size
    per_epoch = math.ceil(rows / settings.batch_size)
    step = OptimisationStep([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                            weight_decay=settings.weight_decay, warmup_steps=max(1, total // settings.epochs),
                            total_steps=total)
    history: list[float] = []
    if (state_dir / "state.json").is_file():
        load_weights(model, str(state_dir / "model.safetensors"))
        saved = torch.load(state_dir / "optimiser.pt", weights_only=True)
        step.optimizer.load_state_dict(saved["optimizer"])
        step.scheduler.load_state_dict(saved["scheduler"])
        history = json.loads((state_dir / "state.json").read_text())["history"]
    model.train()
    for update in range(len(history), total):
        epoch, index = divmod(update, per_epoch)
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(settings.seed + epoch))
        chosen = order[index * settings.batch_size:(index + 1) * settings.batch_size]
        micro = list(torch.split(chosen, settings.micro_batch))
        losses = []
        for number, part in enumerate(micro):
            batch = blocks.subset(part).trimmed()
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss = lm_loss(logits, batch.labels())
            losses.append(loss.item())
            step(loss / len(micro), update=number == len(micro) - 1)
        history.append(sum(losses) / len(losses))
        if on_update is not None:
            on_update(update + 1, total, history[-1])
        if (update + 1) % settings.checkpoint_every == 0 and update + 1 < total:
            _save_state(state_dir, model, step, history)
    model.eval()
    return history


def _save_state(state_dir: Path, model: Any, step: OptimisationStep, history: list[float]) -> None:
    from safetensors.torch import save_model as save_weights

    with staged_directory(state_dir, replace=True) as staging:
        save_weights(model, str(staging / "model.safetensors"))
        torch.save({"optimizer": step.optimizer.state_dict(), "scheduler": step.scheduler.state_dict()},
                   staging / "optimiser.pt")
        atomic_write_json(staging / "state.json", {"history": history})


def _probe_sets(settings: TofuSettings, data_dir: Path, tokenizer: Any, pad: int) -> dict[str, TokenBlocks]:
    """A few rows of the forget split and of the retain rows in the study's authors, and of the matching holdout
    (never trained on)."""
    forget_rows = FORGET_ROWS[settings.forget_split]
    holdout = "holdout" + settings.forget_split.removeprefix("forget")
    full = read_qa_rows(data_dir, "full")
    study = author_rows(4000, settings.authors, forget_rows)
    retain_rows = [row for row in study if row < 4000 - forget_rows][:PROBE_ROWS]
    sets = {
        settings.forget_split: [full[i] for i in study if i >= 4000 - forget_rows][:PROBE_ROWS],
        "retain": [full[i] for i in retain_rows],
        holdout: read_qa_rows(data_dir, holdout)[:PROBE_ROWS],
    }
    return {name: qa_blocks(found, tokenizer, template=settings.template, name=f"tofu:{name}",
                            ids=[str(i) for i in range(len(found))], pad_id=pad)
            for name, found in sets.items() if found}


def _mean_probability(model: Any, blocks: TokenBlocks) -> float:
    return round(float(answer_probabilities(model, blocks).mean()), 6)

