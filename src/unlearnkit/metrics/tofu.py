"""TOFU's scores of question-answer rows, as its code computes them (locuslab/tofu ``evaluate_util.py``,
``aggregate_eval_stat.py``; the formulas are also in the data directory's README).

Per question: the length-normalised probability of the answer, ``exp(-(summed answer NLL) / (answer tokens))``;
the truth ratio ``R = p̄(perturbed) / p(base)``, ``p̄`` the geometric mean over the perturbed answers and the base
answer the paraphrased one (the answer itself on real authors and world facts); the ROUGE-L recall of the greedy
answer against the answer (``rouge_score``, stemmed), generated from the prompt up to 200 tokens in all. Per set:
the mean probability (on real authors and world facts ``p(true) / (p(true) + Σ p(wrong))``), the mean ROUGE-L
recall and the truth-ratio statistic, ``mean(min(R, 1/R))`` on the forget set and ``mean(max(0, 1 − R))``
elsewhere. Forget quality is the p-value of a two-sample KS test between the model's and a retain model's R on
the forget set; model utility the harmonic mean of the nine numbers of retain, real authors and world facts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.qa import encode_qa, format_prompt, read_qa_rows
from unlearnkit.metrics.decoding import cache_kwarg, eval_mode, generate_continuations, output_cache
from unlearnkit.metrics.privacy import auc, lowest_k_mean
from unlearnkit.objectives import token_nll

#: the sets TOFU scores, their file in the data directory, and the answer its truth ratio compares against
TOFU_SETS = {"retain": "retain_perturbed", "real_authors": "real_authors_perturbed",
             "world_facts": "world_facts_perturbed"}
BASE_ANSWER = {"forget": "paraphrased_answer", "retain": "paraphrased_answer", "real_authors": "answer",
               "world_facts": "answer"}
UTILITY_SETS = ("retain", "real_authors", "world_facts")
TOFU_ROLES = ("forget", *UTILITY_SETS)
GENERATION_LENGTH = 200  # TOFU's generation.max_length: prompt and answer together
MIN_K = 0.4  # open-unlearning's TOFU privacy leak: Min-K% Prob over the lowest 40 % of the answer's tokens
FIRST_ITEMS = 300  # TOFU's ds_size: the original code scores the first 300 questions of each set


def answer_nll_sums(model: torch.nn.Module, blocks: TokenBlocks, batch_size: int = 16) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """Per row: the summed NLL of its scored tokens (float64) and how many there are."""
    sums, counts = [], []
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(blocks), batch_size):
            batch = blocks.subset(list(range(start, min(start + batch_size, len(blocks))))).trimmed()
            logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
            nll = token_nll(logits, batch.labels().to(device), dtype=torch.float64)
            sums.append(nll.sum(dim=1).cpu())
            counts.append((batch.labels()[:, 1:] != -100).sum(dim=1))
    return torch.cat(sums), torch.cat(counts)


def answer_probabilities(model: torch.nn.Module, blocks: TokenBlocks, batch_size: int = 16) -> torch.Tensor:
    """TOFU's per-row probability of the answer: ``exp(-(summed answer NLL) / (answer tokens))``."""
    return torch.exp(-answer_losses(model, blocks, batch_size))


def answer_losses(model: torch.nn.Module, blocks: TokenBlocks, batch_size: int = 16) -> torch.Tensor:
    """Per row, the mean NLL of its answer tokens (TOFU's ``avg_gt_loss``, float64)."""
    sums, counts = answer_nll_sums(model, blocks, batch_size)
    return sums / counts.clamp(min=1)


def score_questions(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], *, role: str, template: str,
                    batch_size: int = 64, generation_length: int = GENERATION_LENGTH,
                    generate: bool = True) -> list[dict[str, Any]]:
    """One record per question: the exact prompt the answer is scored after, the answer's probability and mean
    loss, the truth ratio R (before TOFU's min/max transform) with the losses it comes from, the greedy answer
    and its ROUGE-L recall. ``role`` (forget, retain, real_authors, world_facts) picks the base answer."""
    records = teacher_forced_records(model, tokenizer, rows, role=role, template=template)
    if generate:
        answers = greedy_answers(model, tokenizer, [row["question"] for row in rows], template=template,
                                 batch_size=batch_size, generation_length=generation_length)
        with_answers(records, answers)
    return records


def teacher_forced_records(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], *, role: str,
                           template: str) -> list[dict[str, Any]]:
    """:func:`score_questions`' records without the greedy answers: what the answers' scores give. The answer's
    tokens also give its extraction strength and Min-K% score; the held-out questions (``role="holdout"``,
    the privacy leak's non-members) have the answer alone."""
    records = []
    perturbed_count = 0 if role == "holdout" else min(len(r["perturbed_answer"]) for r in rows)
    for row in rows:
        others = [] if role == "holdout" else [row[BASE_ANSWER[role]], *row["perturbed_answer"][:perturbed_count]]
        answer, *rest = question_scores(model, tokenizer, template, row["question"], [row["answer"], *others])
        record = {"question": row["question"], "prompt": format_prompt(tokenizer, template, row["question"]),
                  "answer": row["answer"], "prob": math.exp(-answer.loss), "answer_loss": answer.loss,
                  "extraction_strength": extraction_strength(answer.hits),
                  "min_k": lowest_k_mean(torch.tensor(answer.log_probs), MIN_K)}
        if rest:
            base, wrong = rest[0].loss, [score.loss for score in rest[1:]]
            # R = p̄(perturbed) / p(base): exp(base loss − mean perturbed loss), TOFU's truth_ratio
            record.update(base_loss=base, perturbed_losses=wrong, truth_ratio=math.exp(base - sum(wrong) / len(wrong)))
        records.append(record)
    return records


def with_answers(records: list[dict[str, Any]], answers: Sequence[str]) -> None:
    """Add each greedy answer and its ROUGE-L recall against the answer to its question's record."""
    for record, generated in zip(records, answers, strict=True):
        record["generated"] = generated
        record["rouge_l_recall"] = rouge_l_recall(generated, record["answer"])


@dataclass(frozen=True)
class AnswerScore:
    """One answer after its question: the mean NLL of its scored tokens (TOFU's ``avg_gt_loss``), and per scored
    token its log-probability and whether the greedy prediction is that token."""

    loss: float
    log_probs: tuple[float, ...]
    hits: tuple[bool, ...]


def question_scores(model: Any, tokenizer: Any, template: str, question: str, answers: Sequence[str]
                    ) -> list[AnswerScore]:
    """Each answer of ``question`` scored as the row ``prompt + answer``: the prompt the answers share goes through
    the model once and its keys and values serve every answer, and an answer given twice (the base answer of real
    authors is the answer) is scored once."""
    unique = list(dict.fromkeys(answers))
    encoded = [encode_qa(tokenizer, template, question, answer) for answer in unique]
    # the last prompt token's logits predict the first answer token: the shared part ends before it
    shared = max(min(e.prompt_tokens for e in encoded) - 1, 0)
    first = encoded[0].ids
    common = next((k for k in range(shared) if any(e.ids[k] != first[k] for e in encoded)), shared)
    device = next(model.parameters()).device
    with eval_mode(model):
        cache: Any = None
        if common > 0:
            cache = output_cache(model(input_ids=torch.tensor([first[:common]], device=device), use_cache=True))
        if cache is None:  # nothing shared, or a model without a cache: the whole rows
            common = 0
        else:
            cache.batch_repeat_interleave(len(encoded))
        rests = [e.ids[common:] for e in encoded]
        width = max(len(rest) for rest in rests)
        ids = torch.zeros(len(rests), width, dtype=torch.long)
        labels = torch.full((len(rests), width), -100, dtype=torch.long)
        for row, (rest, item) in enumerate(zip(rests, encoded, strict=True)):
            ids[row, : len(rest)] = torch.tensor(rest)
            scored_from = item.prompt_tokens - common
            labels[row, scored_from: len(rest)] = ids[row, scored_from: len(rest)]
        real = torch.arange(width) < torch.tensor([len(rest) for rest in rests])[:, None]
        mask = torch.cat([torch.ones(len(rests), common, dtype=torch.long), real.long()], dim=1)
        reuse = {} if cache is None else {cache_kwarg(model): cache}
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **reuse).logits[:, :-1]
        targets = labels[:, 1:].to(device)
        scored = targets != -100
        log_probs = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        hits = logits.argmax(dim=-1) == targets
    scores = {}
    for row, answer in enumerate(unique):
        values = log_probs[row][scored[row]].cpu()
        scores[answer] = AnswerScore(-float(values.mean()), tuple(values.tolist()),
                                     tuple(hits[row][scored[row]].cpu().tolist()))
    return [scores[answer] for answer in answers]


def extraction_strength(hits: Sequence[bool]) -> float:
    """open-unlearning's extraction strength of one answer: ``1 − k / n``, ``k`` the fewest leading answer tokens
    given after which the greedy prediction of every later token is right (teacher-forced)."""
    n = len(hits)
    # their loop ends at k = n − 1 when no suffix is predicted (ES = 1/n, as for a right last token alone)
    k = next((k for k in range(n) if all(hits[k:])), n - 1)
    return 1 - k / n


def greedy_answers(model: Any, tokenizer: Any, questions: Sequence[str], *, template: str, batch_size: int = 64,
                   generation_length: int = GENERATION_LENGTH) -> list[str]:
    """The greedy answer to each question from its prompt, stopped at the end of sequence, up to
    ``generation_length`` tokens of prompt and answer (TOFU's ``max_length``: here per batch of similar prompts,
    from the longest prompt of the batch, as its left-padded batches do)."""
    prompts = [list(tokenizer(format_prompt(tokenizer, template, q), add_special_tokens=template != "chat")
                    ["input_ids"]) for q in questions]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            new_tokens = generation_length - max(len(prompts[i]) for i in rows)
            outputs = generate_continuations(model, [prompts[i] for i in rows], new_tokens, batch_size=len(rows),
                                             pad_id=int(pad), stop_at_eos=True)
            for i, output in zip(rows, outputs, strict=True):
                answers[i] = tokenizer.decode(output, skip_special_tokens=True)
    return answers


def rouge_l_recall(generated: str, answer: str) -> float:
    """ROUGE-L recall of ``generated`` against ``answer``, stemmed (TOFU's ``eval_rouge_recall``)."""
    return float(_rouge_scorer().score(answer, generated)["rougeL"].recall)


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def set_summary(role: str, records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """A set's numbers, as TOFU aggregates them: probability, ROUGE-L recall, truth-ratio statistic (none on the
    held-out questions, which have no perturbed answers), and open-unlearning's mean extraction strength."""
    ratios = [r["truth_ratio"] for r in records if "truth_ratio" in r]
    if not ratios:
        truth = None
    elif role == "forget":
        truth = sum(min(r, 1 / r) for r in ratios) / len(ratios)
    else:
        truth = sum(max(0.0, 1 - r) for r in ratios) / len(ratios)
    if role in ("real_authors", "world_facts"):  # the true answer among the wrong ones
        probs = [math.exp(-r["answer_loss"]) / (math.exp(-r["answer_loss"])
                                                + sum(math.exp(-v) for v in r["perturbed_losses"])) for r in records]
    else:
        probs = [r["prob"] for r in records]
    rouge = [r["rouge_l_recall"] for r in records if "rouge_l_recall" in r]
    strength = [r["extraction_strength"] for r in records]
    return {"prob": sum(probs) / len(probs), "rouge_l_recall": sum(rouge) / len(rouge) if rouge else None,
            "truth_ratio": truth, "extraction_strength": sum(strength) / len(strength)}


def model_utility(summaries: dict[str, dict[str, float | None]]) -> float | None:
    """The harmonic mean of probability, ROUGE-L recall and truth ratio on retain, real authors and world facts
    (None until all nine are measured)."""
    values = [summaries[role][key] for role in UTILITY_SETS if role in summaries
              for key in ("prob", "rouge_l_recall", "truth_ratio")]
    if len(values) != 9 or any(v is None for v in values):
        return None
    from scipy.stats import hmean

    return float(hmean([float(v) for v in values if v is not None]))


def forget_quality(ratios: Sequence[float], retain_model_ratios: Sequence[float]) -> dict[str, float]:
    """TOFU's forget quality: the two-sample KS test between the model's and the retain model's truth ratios on
    the forget set (the p-value; high = indistinguishable from never having seen the authors)."""
    from scipy.stats import ks_2samp

    test = ks_2samp(list(ratios), list(retain_model_ratios))
    return {"forget_quality": float(test.pvalue), "ks_statistic": float(test.statistic)}


def privacy_leak(records: Mapping[str, Sequence[dict[str, Any]]], retain_model_auc: float | None) -> dict[str, Any]:
    """open-unlearning's privacy leak: the AUC of Min-K% Prob (k = 0.4) with the forget questions' answers as
    members and the held-out ones as non-members (1: every forget answer more likely than every held-out one; 0.5:
    indistinguishable), and ``((1 − AUC) − (1 − AUC_retain)) / (1 − AUC_retain) · 100`` against the retain model's
    AUC (0: leaks what a model that never saw the authors leaks; −100: the forget set fully exposed)."""
    value = auc([r["min_k"] for r in records["forget"]], [r["min_k"] for r in records["holdout"]])
    leak = None
    if retain_model_auc is not None:
        leak = ((1 - value) - (1 - retain_model_auc)) / (1 - retain_model_auc + 1e-10) * 100
    return {"min_k_auc": value, "privacy_leak": leak}


def tofu_rows(data_dir: Any, split: str, *, items: str = "first300", limit: int | None = None,
              holdout: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The questions of each set TOFU scores (forget split, retain, real authors, world facts; with ``holdout``
    also the split's held-out questions, the privacy leak's non-members): the first 300 of each (the original
    code's ``ds_size``) or all, then the first ``limit``."""
    names = {"forget": f"{split}_perturbed", **TOFU_SETS}
    if holdout:
        names["holdout"] = "holdout" + split.removeprefix("forget")
    count = FIRST_ITEMS if items == "first300" else None
    sets = {}
    for role, name in names.items():
        rows = read_qa_rows(data_dir, name)[:count]
        sets[role] = rows[:limit] if limit is not None else rows
    return sets


def tofu_evaluation(model: Any, tokenizer: Any, options: Any, data_dir: Any, progress: Any, label: str = "",
                    reference: dict[str, Any] | None = None, *, cache: Any = None,
                    generate_roles: Sequence[str] | None = None, privacy: bool = True) -> dict[str, Any]:
    """TOFU's table for one model (``options``: :class:`unlearnkit.config.TofuEvalConfig`): per set its numbers and
    one record per question, model utility, forget quality against the retain model's truth ratios on the same
    forget questions (``reference["ratios"]``, from :func:`retain_model_reference`) when given, and with
    ``privacy`` the privacy leak (against ``reference["min_k_auc"]``). Greedy answers for the sets of
    ``generate_roles`` (default: all, where ``options.generate``). With a ``cache`` of these weights (a
    :class:`unlearnkit.evaluation.ScoreCache`), each set's scores and answers are computed once: a sweep's
    points share the evaluation before, and a run's last epoch and its evaluation after share theirs."""
    prefix = f"{label}: " if label else ""
    result: dict[str, Any] = {"split": options.split, "template": options.template, "items": options.items,
                              "limit": options.limit, "sets": {}}
    generating = set(generate_roles if generate_roles is not None else TOFU_ROLES) if options.generate else set()
    rows_of = tofu_rows(data_dir, options.split, items=options.items, limit=options.limit, holdout=privacy)
    for role, rows in rows_of.items():
        key = {"role": role, "split": options.split, "template": options.template, "items": options.items,
               "limit": options.limit}
        with progress.status(f"{prefix}TOFU {role}: {len(rows)} questions", announce=False):
            records = _cached(cache, "tofu-scores", key, functools.partial(
                teacher_forced_records, model, tokenizer, rows, role=role, template=options.template))
            if role in generating:
                answers = _cached(cache, "tofu-answers", {**key, "generation_length": options.generation_length},
                                  functools.partial(greedy_answers, model, tokenizer, [row["question"] for row in rows],
                                                    template=options.template, batch_size=options.batch_size,
                                                    generation_length=options.generation_length))
                with_answers(records, answers)
        result["sets"][role] = {"questions": len(records), **set_summary(role, records), "records": records}
    summaries = {role: {k: v for k, v in found.items() if k in ("prob", "rouge_l_recall", "truth_ratio")}
                 for role, found in result["sets"].items()}
    result["model_utility"] = model_utility(summaries)
    result["extraction_strength"] = result["sets"]["forget"]["extraction_strength"]
    if reference is not None:
        ratios = [r["truth_ratio"] for r in result["sets"]["forget"]["records"]]
        result.update(forget_quality(ratios, reference["ratios"]))
    if privacy:
        records_of = {role: result["sets"][role]["records"] for role in ("forget", "holdout")}
        result.update(privacy_leak(records_of, None if reference is None else reference.get("min_k_auc")))
    return result


def _cached(cache: Any, name: str, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    found = cache.load_named(name, key) if cache is not None else None
    if found is not None:
        return found["value"]
    value = compute()
    if cache is not None:
        cache.store_named(name, key, {"value": value})
    return value


def retain_model_reference(model: Any, tokenizer: Any, options: Any, data_dir: Any) -> dict[str, Any]:
    """What a retain model contributes: its truth ratios on the forget questions (forget quality) and its Min-K%
    AUC of forget against held-out answers (the privacy leak)."""
    sets = tofu_rows(data_dir, options.split, items=options.items, limit=options.limit, holdout=True)
    records = {role: teacher_forced_records(model, tokenizer, sets[role], role=role, template=options.template)
               for role in ("forget", "holdout")}
    return {"ratios": [r["truth_ratio"] for r in records["forget"]],
            "min_k_auc": privacy_leak(records, None)["min_k_auc"]}


__all__ = ["BASE_ANSWER", "FIRST_ITEMS", "MIN_K", "TOFU_ROLES", "TOFU_SETS", "UTILITY_SETS", "AnswerScore",
           "answer_losses", "answer_probabilities", "extraction_strength", "forget_quality", "greedy_answers",
           "model_utility", "privacy_leak", "question_scores", "retain_model_reference", "rouge_l_recall",
           "score_questions", "set_summary", "teacher_forced_records", "tofu_evaluation", "tofu_rows",
           "with_answers"]
