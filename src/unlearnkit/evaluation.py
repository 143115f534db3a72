"""The evaluation snapshot: what "evaluate the model now" means, before and after unlearning and in an audit.

MA and EL_n (Appendix B) on the forget, held-out and (optionally) retain sets, then each registered
:class:`Metric` that applies: the privacy checks (TDEC extraction attack, membership inference) under
``privacy``, what the model kept with ``eval.downstream`` (:func:`downstream_scores`: reasoning accuracy,
dialogue F1, perplexity — the suite's kinds, registered in :data:`SUITE_KINDS`) under ``downstream``, and a
user's metrics named by ``eval.metrics`` (``file.py:Class``, docs/extending.md) under their own keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from unlearnkit.config import DownstreamConfig, EvalConfig, resolve_suite
from unlearnkit.config.plugins import load_plugin
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.run_sets import RunData
from unlearnkit.io import atomic_write_json, cache_root
from unlearnkit.metrics.memorization import (
    extraction_likelihood,
    extraction_likelihood_reference,
    teacher_forced_pass,
    valid_lengths,
)
from unlearnkit.metrics.privacy import (
    MIN_K_FRACTION,
    extraction_attack,
    extraction_layout,
    likelihood_scores,
    membership_inference,
)
from unlearnkit.progress import Progress


def evaluate_memorization(model: Any, blocks: TokenBlocks, config: EvalConfig, progress: Progress,
                          label: str = "", thresholds: tuple[float, float] | None = None,
                          with_el: bool = True, membership: bool = False,
                          el_skipped: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """Mean and per-sequence MA (Eq. 8) and EL_n (Eq. 7) of ``blocks``.

    With ``thresholds = (τ_MA, τ_EL)`` only what the stopping rule "mean MA ≤ τ_MA and mean EL_n ≤ τ_EL"
    needs is computed, and the rule's answer is the same as with every score: EL_n is not scored while the
    mean MA is above τ_MA (``el`` is ``None``); otherwise it is scored a group of sequences at a time, the
    highest MA first, and stops as soon as the running sum over all sequences proves the mean above τ_EL
    (each term is ≥ 0): ``el`` is then ``None`` and ``el_lower_bound`` / ``el_scored`` say how it was
    decided. When the criterion can be met, every sequence is scored and ``el`` is the full value.
    ``with_el=False`` scores MA alone (``el`` is ``None``). ``membership`` adds each sequence's LOSS and Min-K%
    scores from the same pass (``membership``: :func:`unlearnkit.metrics.privacy.likelihood_scores`).
    ``el_skipped``, asked with the scores of that pass, may name a reason the stopping rule is decided without
    EL_n (recorded as ``el_skipped``, ``el`` ``None``).
    """
    scored = f"MA and EL{config.el_n}" if with_el else "MA"
    with progress.status(f"{label}: {scored} on {len(blocks)} sequences", announce=False):
        passed = teacher_forced_pass(model, blocks.input_ids, blocks.attention_mask, batch_size=config.batch_size,
                                     scored_mask=blocks.loss_mask, with_log_probs=membership)
        ma = passed.ma
        scores: dict[str, Any] = {"name": blocks.name, "sequences": len(blocks), "ma": float(ma.mean()), "el": None,
                                  "ma_per_sequence": [round(float(v), 6) for v in ma], "el_per_sequence": None}
        if passed.log_probs is not None:
            scores["membership"] = likelihood_scores(passed.log_probs, MIN_K_FRACTION)
        if not with_el or (thresholds is not None and float(ma.mean()) > thresholds[0]):
            return scores
        reason = el_skipped(scores) if el_skipped is not None else None
        if reason is not None:
            return {**scores, "el_skipped": reason}
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
        part = blocks.subset(rows).trimmed()  # EL_n of a row does not depend on the padding after it
        if config.el_method == "fast":
            el = extraction_likelihood(model, part.input_ids, n=config.el_n, attention_mask=part.attention_mask,
                                       batch_size=config.batch_size, scored_mask=part.loss_mask)
        else:
            el = extraction_likelihood_reference(model, part.input_ids, n=config.el_n,
                                                 attention_mask=part.attention_mask, scored_mask=part.loss_mask)
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
        """What these weights kept, as :func:`downstream_scores` measured it with the same options before (None
        for scores stored before each reasoning item's result was kept: a report compares models item by item)."""
        try:
            scores: dict[str, Any] = json.loads(self._downstream_path(options).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        from unlearnkit.metrics.harness import items_kept

        return scores if "reasoning" not in scores or items_kept(scores["reasoning"]) else None

    def store_downstream(self, options: DownstreamConfig, scores: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            atomic_write_json(self._downstream_path(options), scores)

    def _named_path(self, name: str, key: dict[str, Any]) -> Path:
        text = f"{self.model}|{name}|{json.dumps(key, sort_keys=True)}"
        return self.directory / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"

    def load_named(self, name: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """Scores of these weights stored under ``name`` and the options ``key`` (e.g. a retain model's)."""
        try:
            found: dict[str, Any] = json.loads(self._named_path(name, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return found

    def store_named(self, name: str, key: dict[str, Any], scores: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            atomic_write_json(self._named_path(name, key), scores)


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


@dataclass(frozen=True)
class SnapshotContext:
    """What a metric may use beside the model and the sets: the snapshot's label ("before", "after", ...), the
    tokenizer, the data directory, the evaluation options, the score cache and the progress display."""

    config: EvalConfig
    progress: Progress
    label: str
    tokenizer: Any = None
    data_dir: str | Path | None = None
    cache: ScoreCache | None = None


class Metric:
    """A part of the evaluation snapshot: its ``key`` in the snapshot (and in ``metrics.json``), whether it applies
    to a run, and its measurement (a JSON-ready dict) of the model on the run's sets (forget / validation /
    retain)."""

    key: ClassVar[str] = ""

    def applies(self, config: EvalConfig, sets: RunData) -> bool:
        return True

    def measure(self, model: Any, sets: RunData, context: SnapshotContext) -> dict[str, Any]:
        raise NotImplementedError


class PrivacyMetric(Metric):
    """The TDEC extraction attack and membership inference, forget against held-out (``eval.audit``)."""

    key = "privacy"

    def applies(self, config: EvalConfig, sets: RunData) -> bool:
        return config.audit and sets.validation is not None

    def measure(self, model: Any, sets: RunData, context: SnapshotContext) -> dict[str, Any]:
        assert sets.validation is not None
        with context.progress.status(f"{context.label}: extraction attack and membership inference",
                                     announce=False):
            return privacy_checks(model, sets.forget, sets.validation, context.config, context.tokenizer)


class DownstreamMetric(Metric):
    """What the model kept (``eval.downstream``): :func:`downstream_scores`, kept in the score cache by weights."""

    key = "downstream"

    def applies(self, config: EvalConfig, sets: RunData) -> bool:
        return config.downstream is not None

    def measure(self, model: Any, sets: RunData, context: SnapshotContext) -> dict[str, Any]:
        options, cache = context.config.downstream, context.cache
        assert options is not None
        if context.tokenizer is None or context.data_dir is None:
            raise ValueError("the downstream evaluation needs the tokenizer and the data directory")
        cached = cache.load_downstream(options) if cache is not None else None
        if cached is not None:
            context.progress.note(f"{context.label}: what these weights kept, from the score cache")
            return cached
        scores = downstream_scores(model, context.tokenizer, options, context.data_dir, context.progress,
                                   context.label)
        if cache is not None:
            cache.store_downstream(options, scores)
        return scores


class TofuMetric(Metric):
    """TOFU's table (``eval.tofu``): forget quality against the retain model, model utility, and per question the
    probability, truth ratio and ROUGE-L recall (:mod:`unlearnkit.metrics.tofu`)."""

    key = "tofu"

    def applies(self, config: EvalConfig, sets: RunData) -> bool:
        return config.tofu is not None

    def measure(self, model: Any, sets: RunData, context: SnapshotContext) -> dict[str, Any]:
        from unlearnkit.metrics.tofu import tofu_evaluation

        options = context.config.tofu
        assert options is not None
        if context.tokenizer is None or context.data_dir is None:
            raise ValueError("the TOFU evaluation needs the tokenizer and the data directory")
        reference = retain_model_reference(options, context.data_dir) if options.retain_model else None
        return tofu_evaluation(model, context.tokenizer, options, context.data_dir, context.progress,
                               context.label, reference, cache=context.cache)


def retain_model_reference(options: Any, data_dir: str | Path) -> dict[str, Any]:
    """The retain model's truth ratios on the forget questions and its Min-K% AUC (forget quality's and the privacy
    leak's reference), kept in the score cache by its weights and, within a process, by the options (a run asks
    before, after and every epoch: the model is loaded once)."""
    key = (str(options.retain_model), str(data_dir), options.split, options.template, options.items, options.limit)
    if key not in _RETAIN_REFERENCES:
        _RETAIN_REFERENCES[key] = _retain_model_reference(options, data_dir)
    return dict(_RETAIN_REFERENCES[key])


_RETAIN_REFERENCES: dict[tuple[Any, ...], dict[str, Any]] = {}


def _retain_model_reference(options: Any, data_dir: str | Path) -> dict[str, Any]:
    from unlearnkit.metrics.tofu import retain_model_reference as measure
    from unlearnkit.modeling import load_model

    loaded = load_model(str(options.retain_model))
    cache = ScoreCache(cache_root() / "scores", model_fingerprint(loaded.model))
    key = {k: getattr(options, k) for k in ("split", "template", "items", "limit")}
    found = cache.load_named("tofu-retain-reference", key)
    if found is None:
        found = measure(loaded.model, loaded.tokenizer, options, data_dir)
        cache.store_named("tofu-retain-reference", key, found)
    return found


#: the snapshot's metrics after the memorisation scores of each set, in the order they are measured
METRICS: tuple[Metric, ...] = (PrivacyMetric(), DownstreamMetric(), TofuMetric())


def snapshot_metrics(config: EvalConfig) -> list[Metric]:
    """The registered metrics, then the user's (``eval.metrics``: ``module:Class`` or ``file.py:Class``)."""
    return [*METRICS, *(load_plugin("metric", reference)() for reference in config.metrics)]


def evaluation_snapshot(model: Any, sets: RunData, config: EvalConfig, progress: Progress,
                        label: str, tokenizer: Any = None, known: dict[str, Any] | None = None,
                        data_dir: str | Path | None = None, cache: ScoreCache | None = None,
                        el_roles: tuple[str, ...] = ("forget", "validation", "retain")) -> dict[str, Any]:
    """Scores of every set by role (``forget``, ``validation``, ``retain``: what the model should keep), then
    every metric of :func:`snapshot_metrics` that applies; ``known`` supplies scores already measured on this
    very model, ``cache`` those measured on the same weights before (and keeps the new ones). The roles not in
    ``el_roles`` get MA alone (``el`` is ``None``)."""
    snapshot: dict[str, Any] = dict(known or {})
    for role in ("forget", "validation", "retain"):
        blocks = getattr(sets, role)
        if blocks is None or role in snapshot:
            continue
        snapshot[role] = cached_memorization(model, blocks, config, progress, f"{label} · {role}", cache,
                                             with_el=role in el_roles)
    context = SnapshotContext(config, progress, label, tokenizer, data_dir, cache)
    for metric in snapshot_metrics(config):
        if metric.key not in snapshot and metric.applies(config, sets):
            snapshot[metric.key] = metric.measure(model, sets, context)
    return snapshot


def downstream_scores(model: Any, tokenizer: Any, options: DownstreamConfig, data_dir: str | Path,
                      progress: Progress, label: str = "") -> dict[str, Any]:
    """What the model kept (the paper's Table 1 columns): accuracy on reasoning tasks through lm-eval, F1 on
    dialogue sets, perplexity on document sets, each task's details and the means (``reasoning_acc``: mean
    accuracy; ``dialogue_f1``: mean F1; ``pile_ppl``), and the seconds each kind took."""

    suite = resolve_suite(options.suite, options.tasks)
    result: dict[str, Any] = {"suite": options.suite, "tasks": list(suite.tasks), "limit": options.limit}
    seconds: dict[str, float] = {}
    for kind, measure in SUITE_KINDS.items():
        names = getattr(suite, kind)
        if names:
            started = time.perf_counter()
            result.update(measure(model, tokenizer, names, options, data_dir, progress, label))
            seconds[kind] = time.perf_counter() - started
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return result


def _reasoning(model: Any, tokenizer: Any, tasks: tuple[str, ...], options: DownstreamConfig,
               data_dir: str | Path, progress: Progress, label: str) -> dict[str, Any]:
    from unlearnkit.metrics.harness import reasoning_mean, reasoning_scores

    reasoning = reasoning_scores(model, tokenizer, list(tasks), data_dir=data_dir, limit=options.limit,
                                 batch_size=options.batch_size, progress=progress)
    return {"reasoning": reasoning, "reasoning_acc": reasoning_mean(reasoning)}


def _dialogue(model: Any, tokenizer: Any, sets: tuple[str, ...], options: DownstreamConfig, data_dir: str | Path,
              progress: Progress, label: str) -> dict[str, Any]:
    from unlearnkit.metrics.dialogue import dialogue_f1, mean_dialogue_f1

    dialogue = dialogue_f1(model, tokenizer, list(sets), data_dir=data_dir, limit=options.limit,
                           batch_size=options.batch_size, progress=progress)
    return {"dialogue": dialogue, "dialogue_f1": mean_dialogue_f1(dialogue)}


def _perplexity(model: Any, tokenizer: Any, sets: tuple[str, ...], options: DownstreamConfig,
                data_dir: str | Path, progress: Progress, label: str) -> dict[str, Any]:
    from unlearnkit.data.sources import load_documents
    from unlearnkit.metrics.perplexity import default_window, document_perplexity

    prefix = f"{label}: " if label else ""
    perplexities: dict[str, Any] = {}
    for name in sets:
        documents = load_documents(name, data_dir, options.limit)
        with progress.status(f"{prefix}perplexity on {len(documents)} {name} documents", announce=False):
            # Windows are long: batch about batch_size x 256 tokens at a time (the logits are tokens x vocabulary).
            window = options.ppl_window or default_window(model)
            perplexities[name] = document_perplexity(
                model, tokenizer, documents, window=window, stride=options.ppl_stride,
                batch_size=max(1, options.batch_size * 256 // window))
    found: dict[str, Any] = {"perplexity": perplexities}
    if "pile" in perplexities:
        found["pile_ppl"] = perplexities["pile"]["perplexity"]
    return found


SuiteKind = Callable[[Any, Any, tuple[str, ...], DownstreamConfig, "str | Path", Progress, str], dict[str, Any]]
#: the kinds of a downstream suite (config/suites.py's Suite fields), each measured by its function, in order
SUITE_KINDS: dict[str, SuiteKind] = {"reasoning": _reasoning, "dialogue": _dialogue, "perplexity": _perplexity}
