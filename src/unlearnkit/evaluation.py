"""The evaluation snapshot: what "evaluate the model now" means, before and after unlearning and in an audit.

MA and EL_n (Appendix B) on the forget, held-out and (optionally) retain sets, plus the privacy
checks (TDEC extraction attack, membership inference); with ``eval.downstream``, what the model kept
(:func:`downstream_scores`: reasoning accuracy, dialogue F1, perplexity) under the key ``downstream``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearnkit.config import DownstreamConfig, EvalConfig, resolve_suite
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.run_sets import RunData
from unlearnkit.io import atomic_write_json, cache_root
from unlearnkit.metrics.memorization import (
    extraction_likelihood,
    extraction_likelihood_reference,
    memorization_accuracy,
    valid_lengths,
)
from unlearnkit.metrics.privacy import extraction_attack, extraction_layout, membership_inference
from unlearnkit.progress import Progress


def evaluate_memorization(model: Any, blocks: TokenBlocks, config: EvalConfig, progress: Progress,
                          label: str = "", thresholds: tuple[float, float] | None = None,
                          with_el: bool = True) -> dict[str, Any]:
    """Mean and per-sequence MA (Eq. 8) and EL_n (Eq. 7) of ``blocks``.

    With ``thresholds = (τ_MA, τ_EL)`` only what the stopping rule "mean MA ≤ τ_MA and mean EL_n ≤ τ_EL"
    needs is computed, and the rule's answer is the same as with every score: EL_n is not scored while the
    mean MA is above τ_MA (``el`` is ``None``); otherwise it is scored a group of sequences at a time, the
    highest MA first, and stops as soon as the running sum over all sequences proves the mean above τ_EL
    (each term is ≥ 0): ``el`` is then ``None`` and ``el_lower_bound`` / ``el_scored`` say how it was
    decided. When the criterion can be met, every sequence is scored and ``el`` is the full value.
    ``with_el=False`` scores MA alone (``el`` is ``None``).
    """
    scored = f"MA and EL{config.el_n}" if with_el else "MA"
    with progress.status(f"{label}: {scored} on {len(blocks)} sequences", announce=False):
        ma = memorization_accuracy(model, blocks.input_ids, blocks.attention_mask, batch_size=config.batch_size)
        scores: dict[str, Any] = {"name": blocks.name, "sequences": len(blocks), "ma": float(ma.mean()), "el": None,
                                  "ma_per_sequence": [round(float(v), 6) for v in ma], "el_per_sequence": None}
        if not with_el or (thresholds is not None and float(ma.mean()) > thresholds[0]):
            return scores
        el = _decided_el(model, blocks, ma, config, thresholds[1] if thresholds is not None else None, scores)
    if el is not None:
        scores.update(el=float(el.mean()), el_per_sequence=[round(float(v), 6) for v in el])
    return scores


def _decided_el(model: Any, blocks: TokenBlocks, ma: torch.Tensor, config: EvalConfig, above: float | None,
                scores: dict[str, Any]) -> torch.Tensor | None:
    """EL_n per sequence, or ``None`` once the scored part proves the mean above ``above`` (recorded in
    ``scores``)."""
    order = sorted(range(len(blocks)), key=lambda row: -float(ma[row])) if above is not None else \
        list(range(len(blocks)))
    # Groups of a quarter batch keep the branch decoding batched (branches of several prefix lengths share
    # a batch) while an epoch that has not forgotten is decided on a few sequences.
    group = len(order) if above is None else max(1, config.batch_size // 4)
    values = torch.zeros(len(blocks), dtype=torch.float64)
    total = 0.0
    for start in range(0, len(order), group):
        rows = order[start:start + group]
        part = blocks.subset(rows)
        if config.el_method == "fast":
            el = extraction_likelihood(model, part.input_ids, n=config.el_n, attention_mask=part.attention_mask,
                                       batch_size=config.batch_size)
        else:
            el = extraction_likelihood_reference(model, part.input_ids, n=config.el_n,
                                                 attention_mask=part.attention_mask)
        values[rows] = el
        total += float(el.sum())
        # the unscored terms are >= 0, so the mean is at least total / N; a hair of slack for float sums
        if above is not None and start + group < len(order) and total / len(order) > above + 1e-12:
            scores.update(el_lower_bound=total / len(order), el_scored=start + group)
            return None
    return values


def privacy_checks(model: Any, forget: TokenBlocks, holdout: TokenBlocks, config: EvalConfig,
                   tokenizer: Any = None) -> dict[str, Any]:
    """The TDEC extraction attack on both sets and membership-inference AUCs, forget (members) vs held-out."""
    layout = extraction_layout(min(valid_lengths(forget.input_ids, forget.attention_mask)
                                   + valid_lengths(holdout.input_ids, holdout.attention_mask)))
    checks: dict[str, Any] = {"extraction_layout": layout}
    if layout is not None:
        for role, blocks in (("forget", forget), ("validation", holdout)):
            attack = extraction_attack(model, blocks.input_ids, blocks.attention_mask,
                                       prefix_start=layout["prefix_start"], prefix_len=layout["prefix_len"],
                                       suffix_len=layout["suffix_len"], batch_size=config.batch_size)
            attack.pop("layout")
            checks[f"extraction_{role}"] = attack
    mia = membership_inference(model, forget, holdout, tokenizer=tokenizer)
    checks["mia_auc"] = {name: (None if math.isnan(value) else value) for name, value in mia["auc"].items()}
    return checks


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every weight and buffer (name, dtype, shape, bytes): equal exactly for the same weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class ScoreCache:
    """MA and EL_n of a set under a model that has not changed (the held-out thresholds, the forget set before
    unlearning, an attacked copy of an unlearned model), and what it kept (the downstream suite), kept as JSON
    under ``directory`` by the model's and the set's (or the suite options') fingerprints, so that runs, sweeps
    and attacks on the same weights compute them once."""

    directory: Path
    model: str  # :func:`model_fingerprint`

    @classmethod
    def of(cls, model: torch.nn.Module, config: EvalConfig) -> ScoreCache | None:
        """The cache of these weights in ``$UNLEARNKIT_CACHE/scores``; ``None`` when ``eval.cache_scores`` is off."""
        return cls(cache_root() / "scores", model_fingerprint(model)) if config.cache_scores else None

    def _path(self, blocks: TokenBlocks, config: EvalConfig) -> Path:
        from unlearnkit.data.sources import dataset_fingerprint

        key = f"{self.model}|{dataset_fingerprint(blocks)}|el{config.el_n}|{config.el_method}"
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def load(self, blocks: TokenBlocks, config: EvalConfig) -> dict[str, Any] | None:
        path = self._path(blocks, config)
        try:
            scores: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return scores

    def store(self, blocks: TokenBlocks, config: EvalConfig, scores: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs the recomputation
            atomic_write_json(self._path(blocks, config), scores)

    def _downstream_path(self, options: DownstreamConfig) -> Path:
        key = f"{self.model}|downstream|{options.model_dump_json()}"
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def load_downstream(self, options: DownstreamConfig) -> dict[str, Any] | None:
        """What these weights kept, as :func:`downstream_scores` measured it with the same options before."""
        try:
            scores: dict[str, Any] = json.loads(self._downstream_path(options).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return scores

    def store_downstream(self, options: DownstreamConfig, scores: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            atomic_write_json(self._downstream_path(options), scores)


def cached_memorization(model: Any, blocks: TokenBlocks, config: EvalConfig, progress: Progress, label: str,
                        cache: ScoreCache | None, with_el: bool = True) -> dict[str, Any]:
    """:func:`evaluate_memorization` of ``blocks``, taken from ``cache`` when these weights scored them before,
    and kept there otherwise (complete scores only: an MA-only score would pass for a complete one later)."""
    cached = cache.load(blocks, config) if cache is not None else None
    if cached is not None:
        progress.note(f"{label}: MA and EL{config.el_n} of these weights and sequences from the score cache")
        return cached
    scores = evaluate_memorization(model, blocks, config, progress, label, with_el=with_el)
    if cache is not None and with_el:
        cache.store(blocks, config, scores)
    return scores


def evaluation_snapshot(model: Any, sets: RunData, config: EvalConfig, progress: Progress,
                        label: str, tokenizer: Any = None, known: dict[str, Any] | None = None,
                        data_dir: str | Path | None = None, cache: ScoreCache | None = None,
                        el_roles: tuple[str, ...] = ("forget", "validation", "retain")) -> dict[str, Any]:
    """Scores of every set by role (``forget``, ``validation``, ``retain``: what the model should keep), and
    the privacy checks of forget against held-out text; ``known`` supplies scores already measured on this
    very model, ``cache`` those measured on the same weights before (and keeps the new ones). The roles not in
    ``el_roles`` get MA alone (``el`` is ``None``)."""
    snapshot: dict[str, Any] = dict(known or {})
    for role in ("forget", "validation", "retain"):
        blocks = getattr(sets, role)
        if blocks is None or role in snapshot:
            continue
        snapshot[role] = cached_memorization(model, blocks, config, progress, f"{label} · {role}", cache,
                                             with_el=role in el_roles)
    if config.audit and sets.validation is not None:
        with progress.status(f"{label}: extraction attack and membership inference", announce=False):
            snapshot["privacy"] = privacy_checks(model, sets.forget, sets.validation, config, tokenizer)
    if config.downstream is not None and "downstream" not in snapshot:
        if tokenizer is None or data_dir is None:
            raise ValueError("the downstream evaluation needs the tokenizer and the data directory")
        cached = cache.load_downstream(config.downstream) if cache is not None else None
        if cached is not None:
            progress.note(f"{label}: what these weights kept, from the score cache")
            snapshot["downstream"] = cached
        else:
            snapshot["downstream"] = downstream_scores(model, tokenizer, config.downstream, data_dir, progress,
                                                       label)
            if cache is not None:
                cache.store_downstream(config.downstream, snapshot["downstream"])
    return snapshot


def downstream_scores(model: Any, tokenizer: Any, options: DownstreamConfig, data_dir: str | Path,
                      progress: Progress, label: str = "") -> dict[str, Any]:
    """What the model kept (the paper's Table 1 columns): accuracy on reasoning tasks through lm-eval, F1 on
    dialogue sets, perplexity on document sets, each task's details and the means (``reasoning_acc``: mean
    accuracy; ``dialogue_f1``: mean F1; ``pile_ppl``), and the seconds each kind took."""
    from unlearnkit.data.sources import load_documents
    from unlearnkit.metrics.dialogue import dialogue_f1, mean_dialogue_f1
    from unlearnkit.metrics.harness import reasoning_mean, reasoning_scores
    from unlearnkit.metrics.perplexity import default_window, document_perplexity

    suite = resolve_suite(options.suite, options.tasks)
    prefix = f"{label}: " if label else ""
    result: dict[str, Any] = {"suite": options.suite, "tasks": list(suite.tasks), "limit": options.limit}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if suite.reasoning:
        reasoning = reasoning_scores(model, tokenizer, suite.reasoning, data_dir=data_dir, limit=options.limit,
                                     batch_size=options.batch_size, progress=progress)
        result["reasoning"] = reasoning
        result["reasoning_acc"] = reasoning_mean(reasoning)
        seconds["reasoning"] = time.perf_counter() - t0
    if suite.dialogue:
        t0 = time.perf_counter()
        dialogue = dialogue_f1(model, tokenizer, suite.dialogue, data_dir=data_dir, limit=options.limit,
                               batch_size=options.batch_size, progress=progress)
        result["dialogue"] = dialogue
        result["dialogue_f1"] = mean_dialogue_f1(dialogue)
        seconds["dialogue"] = time.perf_counter() - t0
    if suite.perplexity:
        t0 = time.perf_counter()
        result["perplexity"] = {}
        for name in suite.perplexity:
            documents = load_documents(name, data_dir, options.limit)
            with progress.status(f"{prefix}perplexity on {len(documents)} {name} documents", announce=False):
                # Windows are long: batch about batch_size x 256 tokens at a time (the logits are tokens x vocabulary).
                window = options.ppl_window or default_window(model)
                result["perplexity"][name] = document_perplexity(
                    model, tokenizer, documents, window=window, stride=options.ppl_stride,
                    batch_size=max(1, options.batch_size * 256 // window))
        if "pile" in result["perplexity"]:
            result["pile_ppl"] = result["perplexity"]["pile"]["perplexity"]
        seconds["perplexity"] = time.perf_counter() - t0
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return result
