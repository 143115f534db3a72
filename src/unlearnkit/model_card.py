"""The model card of an unlearned model (``model/README.md``, Hugging Face's format through
:class:`huggingface_hub.ModelCard`): what was unlearned (the forget set's source, size and fingerprint, never its
text), how (method, adapter, epochs, compute), and the evidence (the criterion and whether it was met, MA and EL_n
before and after, membership inference, what the model kept), with the package versions: the record a
data-protection officer files beside the model."""

from __future__ import annotations

import re
from typing import Any

from unlearnkit.config import RunConfig
from unlearnkit.results import KEPT_KEYS, RunMetrics

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # owner/name: a base model the hub can link to
TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}\n"
KEPT_NAMES = {"reasoning_acc": "reasoning accuracy", "dialogue_f1": "dialogue F1", "pile_ppl": "Pile perplexity"}


def model_card(config: RunConfig, metrics: RunMetrics, facts: dict[str, Any]) -> str:
    """The card's text: YAML metadata (base model where it is a hub id, library, tags), then the record."""
    from huggingface_hub import ModelCard, ModelCardData

    base = config.model.name if HUB_ID.match(config.model.name) else None
    tags = ["unlearning", "unlearnkit", f"method-{config.method.name}", f"adapter-{config.adapter.name}"]
    data = ModelCardData(base_model=base, library_name="transformers", tags=tags)
    card = ModelCard.from_template(data, template_str=TEMPLATE, body=_body(config, metrics, facts))
    return str(card.content)


def _body(config: RunConfig, metrics: RunMetrics, facts: dict[str, Any]) -> str:
    before, after = metrics.before, metrics.after
    forget_before, forget_after = before.forget, after.forget
    verdict = "met" if metrics.criterion_met else "NOT met"
    rule = "the paper's (forget MA and EL at or below the held-out set's)" if config.eval.rule == "paper" else \
        "the paper's, and forget rows indistinguishable from held-out rows by membership inference"
    flops = (metrics.compute.get("flops") or {}).get("total")
    lines = [
        f"# Unlearned: {config.model.name}",
        "",
        f"This model is `{config.model.name}` after unlearning with unlearnkit. **Forgetting criterion {verdict}.** "
        f"The run's own words: {metrics.stop_reason}.",
        "",
        "## What was unlearned",
        "",
        f"- forget set: `{config.data.forget.label()}`, {forget_before.sequences if forget_before else '?'} "
        f"sequences of up to {config.data.seq_len} tokens",
        "- its fingerprint (sha256 of its token ids and masks, `unlearnkit.data.sources.dataset_fingerprint`): "
        f"`{facts.get('data_fingerprints', {}).get('forget', '?')}`",
        "",
        "## How",
        "",
        f"- method `{config.method.name}`, adapter `{config.adapter.name}`"
        + (f" (rank {config.adapter.rank})" if config.adapter.adapter_class().has_adapter else ""),
        f"- {metrics.epochs_run} epoch{'' if metrics.epochs_run == 1 else 's'}, learning rate {config.train.lr}, "
        f"{metrics.tokens_seen} tokens"
        + (f", {flops:.3g} FLOPs in all" if flops else ""),
        "",
        "## Evidence",
        "",
        f"- criterion: {rule}; thresholds MA {_number(metrics.thresholds.get('ma'))}, EL{config.eval.el_n} "
        f"{_number(metrics.thresholds.get('el'))}",
    ]
    for name, scores in (("forget", (forget_before, forget_after)), ("held-out", (before.validation,
                                                                                   after.validation))):
        if scores[0] is not None and scores[1] is not None:
            lines.append(f"- {name} MA {scores[0].ma:.4f} → {scores[1].ma:.4f}; EL{config.eval.el_n} "
                         f"{_number(scores[0].el)} → {_number(scores[1].el)}")
    mia_before, mia_after = (before.privacy or {}).get("mia_auc"), (after.privacy or {}).get("mia_auc")
    if mia_before and mia_after:
        lines.append("- membership inference AUC, forget against held-out rows (0.5: indistinguishable): " + ", ".join(
            f"{name} {_number(mia_before.get(name))} → {_number(value)}" for name, value in mia_after.items()))
    kept_before, kept_after = before.kept(), after.kept()
    kept = [f"{KEPT_NAMES[key]} {_number(kept_before[key])} → {_number(kept_after[key])}" for key in KEPT_KEYS
            if kept_after[key] is not None]
    if kept:
        lines.append("- what the model kept: " + ", ".join(kept))
    lines += ["- attacks (relearning, quantisation): not part of a run; `unlearnkit attack` on the run directory",
              "", "## Versions", "",
              ", ".join(f"{name} {version}" for name, version in facts.get("versions", {}).items())]
    return "\n".join(lines)


def _number(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}"
