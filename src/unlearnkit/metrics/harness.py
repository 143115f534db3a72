"""Reasoning through EleutherAI's lm-evaluation-harness: the paper's nine tasks on the in-memory model.

:func:`reasoning_scores` wraps the model once in lm-eval's ``HFLM`` and runs each task through
``lm_eval.evaluator.evaluate``, zero-shot, as lm-eval scores it: a ``multiple_choice`` task compares the
summed log-probability of each choice continuation (after lm-eval's target delimiter ``" "``) given the
context; ``acc`` takes the argmax, ``acc_norm`` the argmax of log-probability per character of the choice;
LAMBADA scores the last word (``acc``: greedy decoding reproduces it; ``perplexity``: exp of the mean
negative log-likelihood of the word). :func:`reasoning_mean` is the paper's "Reasoning (Acc)": the mean
``acc`` over the tasks. ``limit=N`` scores the first N documents of each task in file order (lm-eval's
``limit``), so every call with the same N scores the same items. Each task also keeps which items it got
right (``correct``, 0/1 in document order), so that two models scored on the same items can be compared item
by item: :func:`reasoning_change` gives the change of the mean accuracy with a paired confidence interval,
far narrower than two separate intervals where the models agree on most items.

The tasks are YAML files in ``tasks/`` (named ``unlearnkit_<task>`` so they never shadow lm-eval's own),
read from the data directory (``tasks/*.jsonl``, llm-foundry's copies, and HellaSwag's 6-line text file)
by the ``custom_dataset`` helpers of ``tasks/loaders.py``. Their prompts, choices and metrics are those of
lm-eval 0.4's built-in task of the same name (``lm_eval/tasks/...``); the loaders turn the files back into
the fields those definitions read. Where the result still differs from lm-eval's built-in task, and why:

* **MathQA** -- llm-foundry's file keeps four of each problem's five options (one distractor dropped, the
  rest shuffled and relabelled A-D, with the letters as answers). We score the option texts after
  ``"Question: {Problem}\\nAnswer:"`` as lm-eval does, over those four options: chance is 1/4, not 1/5.
  The conversion also lost some options' text (empty or repeated options, 77 of 2983 rows; elsewhere
  e.g. ``"s . 17"`` for ``"rs . 17"``): rows without four distinct non-empty options are skipped.
* **PubMedQA** -- all 1000 expert-labelled questions (lm-eval: the 500 of bigbio's fold-0 test split,
  which the file does not mark); the file's ``LABEL. paragraph`` lines lose their section labels to give
  lm-eval's ``Abstract:`` text, and its "A. yes / B. no / C. maybe" listing is dropped.
* **HellaSwag** -- the file (klosax/hellaswag_text_data) holds ``activity_label: ctx`` already partly
  preprocessed and with HellaSwag's ``ctx_b`` (the unfinished last sentence of ActivityNet items) in lower
  case; the loader applies lm-eval's preprocessing again (it removes bracketed markup the file kept) and
  capitalises that last fragment, as lm-eval's ``ctx_b.capitalize()`` does, so a few whitespace or
  capitalisation details of individual items may still differ.
* **COPA** -- none: the file's ``"premise, because"`` loses its comma to give lm-eval's prompt, and the
  choices are given as lm-eval gives them (``" " + choice``, first letter lower-cased), so after the default
  delimiter the continuation starts with two spaces, as in lm-eval.
* ARC, PIQA, WinoGrande, LAMBADA (OpenAI) -- none: the same splits (ARC test, PIQA and WinoGrande-xl
  validation, the 5153 LAMBADA passages) and prompts.

Any other task name is passed to lm-eval's ``TaskManager`` as one of its built-in tasks, which needs the
network to download its dataset; lm-eval's own task files are indexed only then (it takes a while).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearnkit.config import REASONING_TASKS
from unlearnkit.errors import UnlearnkitError, did_you_mean
from unlearnkit.metrics.decoding import eval_mode

if TYPE_CHECKING:
    import torch

    from unlearnkit.progress import Progress

#: Our YAML task files, each naming its task ``TASK_PREFIX + <public name>``.
TASK_DIR = Path(__file__).resolve().parent / "tasks"
TASK_PREFIX = "unlearnkit_"
#: The metrics lm-eval reports that we keep, in this order.
METRICS = ("acc", "acc_norm", "perplexity")


def reasoning_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    data_dir: str | Path,
    limit: int | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """Zero-shot lm-eval scores of ``model`` per task: ``{"acc", "acc_norm" (where lm-eval gives it),
    "perplexity" (LAMBADA), "n" (documents scored), "correct" (each document's acc, 0 or 1, in document
    order)}``.

    ``model`` (a transformers causal LM, PEFT-wrapped or not) is evaluated where it is, without gradients
    and in eval mode; its mode, weights and the caller's tokenizer are left as they were. ``limit=N``
    scores the first N documents of each task.
    """
    names = _check_tasks(tasks)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UnlearnkitError(f"limit must be a number of documents of at least 1 (or None for all), not {limit!r}.")
    from lm_eval.evaluator import evaluate

    manager = _task_manager(data_dir, builtin=any(name not in REASONING_TASKS for name in names))
    for name in names:
        if name not in REASONING_TASKS and name not in manager.all_tasks:
            raise _unknown_task(name, manager.all_subtasks)
    scores: dict[str, dict[str, Any]] = {}
    with _quiet_lm_eval(), eval_mode(model):
        lm = _wrap(model, tokenizer, batch_size)
        for name in names:
            registered = TASK_PREFIX + name if name in REASONING_TASKS else name
            status = progress.status(f"lm-eval: {name}") if progress else contextlib.nullcontext()
            with status:
                loaded = manager.load([registered])
                for task in loaded["tasks"].values():
                    if task.get_config("num_fewshot") is None:
                        task.set_config(key="num_fewshot", value=0)
                    task.set_fewshot_seed(seed=1234)
                results = evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=0, log_samples=True)
            if results is None:  # lm-eval answers None on ranks other than 0; we run one process
                raise RuntimeError("lm-eval returned no results")
            for key in loaded["tasks"]:  # one task, or each task of an lm-eval group
                scores[key.removeprefix(TASK_PREFIX)] = _task_scores(results, key)
    return scores


def reasoning_mean(scores: Mapping[str, Mapping[str, float | int]]) -> float:
    """The paper's "Reasoning (Acc)": the mean of ``acc`` over the tasks in ``scores``."""
    accs = [float(task["acc"]) for task in scores.values() if "acc" in task]
    if not accs:
        raise ValueError("no task with an acc to average")
    return sum(accs) / len(accs)


def items_kept(reasoning: Mapping[str, Mapping[str, Any]] | None) -> bool:
    """Whether every task of ``reasoning`` kept each item's result (scores stored before they were kept did not),
    so that :func:`reasoning_change` can compare it."""
    return reasoning is not None and bool(reasoning) and all("correct" in task for task in reasoning.values())


def reasoning_change(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
                     confidence: float = 0.95) -> dict[str, float | int]:
    """How :func:`reasoning_mean` changed from ``before`` to ``after`` (two models' :func:`reasoning_scores` on
    the same items), with a paired confidence interval: ``{"change", "low", "high", "confidence", "items",
    "tasks"}``, in accuracy units (0.01 is one point).

    The change is the mean over tasks of the mean per-item difference (after − before, each -1, 0 or 1), which
    is the difference of the two means exactly; its standard error sums each task's sample variance of the
    differences over its items, divided by the square of the number of tasks (the tasks are independent
    samples, weighted equally as the mean weights them). The interval is the normal one, ±z·SE. Items both
    models got right, or both wrong, add no variance: that is why a paired interval is narrow.
    """
    from scipy.stats import norm

    tasks = list(before)
    if not (items_kept(before) and items_kept(after)) or set(before) != set(after):
        raise UnlearnkitError("The two evaluations do not score the same reasoning tasks item by item (both need "
                              "each task's 'correct'); evaluate both with the same --tasks and --limit.")
    change, variance, items = 0.0, 0.0, 0
    for task in tasks:
        first, second = before[task]["correct"], after[task]["correct"]
        if len(first) != len(second) or len(first) < 2:
            raise UnlearnkitError(f"{task} was scored on {len(first)} items before and {len(second)} after; "
                                  "evaluate both with the same --limit.")
        differences = [b - a for a, b in zip(first, second, strict=True)]
        mean = sum(differences) / len(differences)
        change += mean / len(tasks)
        variance += sum((d - mean) ** 2 for d in differences) / (len(differences) - 1) / len(differences)
        items += len(differences)
    half = float(norm.ppf(0.5 + confidence / 2)) * (variance ** 0.5) / len(tasks)
    return {"change": change, "low": change - half, "high": change + half, "confidence": confidence,
            "items": items, "tasks": len(tasks)}


def change_where_kept(before: Mapping[str, Mapping[str, Any]] | None,
                      after: Mapping[str, Mapping[str, Any]] | None) -> dict[str, float | int] | None:
    """:func:`reasoning_change` from ``before`` to ``after``, or None where either is missing or did not keep each
    item's result (scores stored before items were kept)."""
    if before is None or after is None or not (items_kept(before) and items_kept(after)):
        return None
    return reasoning_change(before, after)


def _check_tasks(tasks: Sequence[str]) -> list[str]:
    if isinstance(tasks, str):
        tasks = [tasks]
    names = list(dict.fromkeys(tasks))
    if not names:
        raise UnlearnkitError(f"No reasoning task named; choose from: {', '.join(REASONING_TASKS)}.")
    for name in names:
        if name.startswith(TASK_PREFIX):
            raise UnlearnkitError(f'Name the task "{name}" without its prefix: "{name[len(TASK_PREFIX):]}".')
    return names


def _task_manager(data_dir: str | Path, *, builtin: bool) -> Any:
    """Our task files (and lm-eval's own only when a task not ours is asked for); ``data_dir`` reaches the
    loaders through the tasks' metadata, which lm-eval passes to ``custom_dataset``."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=builtin,
                          metadata={"data_dir": str(Path(data_dir).expanduser())})
    return manager


def _wrap(model: torch.nn.Module, tokenizer: Any, batch_size: int) -> Any:
    """One ``HFLM`` around the caller's model. HFLM ties the model's embeddings and may add a pad
    token to the tokenizer: the tokenizer is a copy, and re-tying is switched off while HFLM is built, so
    the caller's objects stay as they were."""
    from lm_eval.models.huggingface import HFLM

    with _no_retie(model):  # HFLM feeds its inputs to ``model.device``: the model is used where it is
        lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
    # lm-eval's per-request bar has a switch only as an argument of this method
    lm.loglikelihood = functools.partial(lm.loglikelihood, disable_tqdm=True)
    return lm


@contextlib.contextmanager
def _no_retie(model: torch.nn.Module) -> Iterator[None]:
    had = "tie_weights" in vars(model)
    original = vars(model).get("tie_weights")
    model.tie_weights = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        if had:
            model.tie_weights = original  # type: ignore[assignment]
        else:
            del model.tie_weights


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval's INFO/WARNING logging off (errors still show) and its per-task "building requests" bar off."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    task_module = importlib.import_module("lm_eval.api.task")
    bar = getattr(task_module, "tqdm", None)
    if bar is not None:
        setattr(task_module, "tqdm", functools.partial(bar, disable=True))  # noqa: B010
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is not None:
            setattr(task_module, "tqdm", bar)  # noqa: B010


def _task_scores(results: Mapping[str, Any], registered: str) -> dict[str, Any]:
    """``{"acc": .., "acc_norm": .., "perplexity": .., "n": .., "correct": [..]}`` of one task from lm-eval's
    results and its logged samples."""
    found = results["results"][registered]
    row: dict[str, Any] = {}
    for metric in METRICS:
        value = found.get(f"{metric},none")
        if isinstance(value, (int, float)):
            row[metric] = float(value)
    row["n"] = int(results["n-samples"][registered]["effective"])
    samples = sorted(results["samples"][registered], key=lambda sample: sample["doc_id"])
    row["correct"] = [int(sample["acc"]) for sample in samples]
    return row


def _unknown_task(name: str, known: Sequence[str]) -> UnlearnkitError:
    """The error for a task neither ours nor lm-eval's."""
    return UnlearnkitError(
        f'Unknown reasoning task "{name}"; choose from {", ".join(REASONING_TASKS)} or a task lm-eval knows '
        f"(`lm-eval ls tasks`).{did_you_mean(name, [*REASONING_TASKS, *known])}"
    )
