"""The reasoning tasks through lm-eval: task files against the raw data and lm-eval's own definitions, scoring
against an independent log-likelihood argmax, and the caller's model left as it was."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, tiny_gpt_neo, tiny_tokenizer
from unlearnkit.errors import UnlearnkitError
from unlearnkit.metrics.harness import (
    REASONING_TASKS,
    TASK_DIR,
    TASK_PREFIX,
    reasoning_change,
    reasoning_mean,
    reasoning_scores,
)
from unlearnkit.metrics.tasks import loaders

pytest.importorskip("lm_eval")

# documents per task, and choices per document
SIZES = {"lambada_openai": (5153, None), "hellaswag": (10042, 4), "winogrande": (1267, 2), "copa": (100, 2),
         "arc_easy": (2376, 4), "arc_challenge": (1172, 4), "piqa": (1838, 2), "mathqa": (2906, 4),
         "pubmedqa": (1000, 3)}


@pytest.fixture(autouse=True)
def _quiet():
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def our_tasks():
    """Every task of ours, built by lm-eval from our YAML files (documents of the offline data pack)."""
    from lm_eval.tasks import TaskManager

    if not SHARED_DATA.exists():
        pytest.skip("the offline data pack ../shared/data is not present")
    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata={"data_dir": str(SHARED_DATA)})
    loaded = manager.load([TASK_PREFIX + name for name in REASONING_TASKS])["tasks"]
    return {name.removeprefix(TASK_PREFIX): task for name, task in loaded.items()}


def _requests(task, n: int = 1) -> list[tuple[str, str]]:
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=n)
    return [instance.args for instance in task.instances]


def _gold(task, doc) -> int:
    target = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    return task.doc_to_choice(doc).index(target) if isinstance(target, str) else target


def test_every_task_file_parses_with_its_documents_choices_and_gold(our_tasks):
    assert set(our_tasks) == set(REASONING_TASKS) == set(SIZES)
    assert sorted(p.stem for p in TASK_DIR.glob("*.yaml")) == sorted(REASONING_TASKS)
    for name, task in our_tasks.items():
        docs, choices = SIZES[name]
        assert len(task.eval_docs) == docs, name
        if choices is None:  # LAMBADA: one context, one target word
            assert task.OUTPUT_TYPE == "loglikelihood"
            continue
        assert task.OUTPUT_TYPE == "multiple_choice"
        for doc in task.eval_docs:
            assert len(task.doc_to_choice(doc)) == choices, (name, doc)
            assert 0 <= _gold(task, doc) < choices, (name, doc)


def test_first_items_by_hand_against_the_raw_files(our_tasks, data_dir):
    """Item 0 of each task as lm-eval will score it, written out from the raw files by hand."""
    by_hand = {
        "arc_easy": ("Question: Which statement best explains why photosynthesis is the foundation of most food "
                     "webs?\nAnswer:", " Sunlight is the source of energy for nearly all ecosystems.", 0),
        "arc_challenge": ("Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
                          "Which is the most likely effect of this increase in rotation?\nAnswer:",
                          " Planetary days will become shorter.", 2),
        "piqa": ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
                 " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
                 "you will also need to supply it with a water bottle and a food dish.", 0),
        "copa": ("The man turned on the faucet therefore", "  water flowed from the spout.", 1),
        "hellaswag": ("Roof shingle removal: A man is sitting on a roof. He",
                      " starts pulling up roofing on a roof.", 3),
        "mathqa": ("Question: a shopkeeper sold an article offering a discount of 5 % and earned a profit of 31.1 % . "
                   "what would have been the percentage of profit earned if no discount had been offered ?\nAnswer:",
                   " 38", 3),
        "winogrande": ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.", 1),
    }
    for name, (context, gold_continuation, gold) in by_hand.items():
        task = our_tasks[name]
        requests = _requests(task)
        assert requests[gold] == (context, gold_continuation), name
        assert _gold(task, task.eval_docs[0]) == gold, name
    (context, word), = _requests(our_tasks["lambada_openai"])
    assert word == " signs" and context.endswith("his mouth curved in a confident grin, I don't care about")
    pubmed = _requests(our_tasks["pubmedqa"])
    assert [c for _, c in pubmed] == [" yes", " no", " maybe"] and _gold(our_tasks["pubmedqa"],
                                                                          our_tasks["pubmedqa"].eval_docs[0]) == 0
    context = pubmed[0][0]
    assert context.startswith("Abstract: Programmed cell death (PCD) is the regulated death of cells")
    assert context.endswith("\nQuestion: Do mitochondria play a role in remodelling lace plant leaves during "
                            "programmed cell death?\nAnswer:")
    assert "BACKGROUND." not in context and "\nThe following paper elucidates" in context and "A. yes" not in context
    # the raw files say the same
    assert loaders.read_jsonl(data_dir, "copa.jsonl")[0]["query"] == "The man turned on the faucet, therefore"
    assert loaders.read_jsonl(data_dir, "math_qa.jsonl")[0]["query"].endswith("D. 38\nAnswer: ")


def _builtin_requests(path: str, row: dict) -> list[tuple[str, str]]:
    """lm-eval's own task (its YAML under lm_eval/tasks) on one document in the original dataset's fields."""
    import datasets
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / path)
    config["task"] = "builtin_" + config["task"]
    config["custom_dataset"] = lambda **_: datasets.DatasetDict(
        {split: datasets.Dataset.from_list([row]) for split in ("train", "validation", "test")})
    (task,) = TaskManager(include_defaults=False).load([config])["tasks"].values()
    return _requests(task)


def test_our_prompts_are_lm_evals_builtin_prompts(our_tasks):
    """Item 0 in the original datasets' fields through lm-eval's built-in task gives our requests."""
    ours = {name: _requests(our_tasks[name]) for name in our_tasks}
    arc = {"question": ours["arc_easy"][0][0][len("Question: "):-len("\nAnswer:")],
           "choices": {"text": [c[1:] for _, c in ours["arc_easy"]], "label": list("ABCD")}, "answerKey": "A"}
    assert _builtin_requests("arc/arc_easy.yaml", arc) == ours["arc_easy"]
    piqa = {"goal": "How do I ready a guinea pig cage for it's new occupants?",
            "sol1": ours["piqa"][0][1][1:], "sol2": ours["piqa"][1][1][1:], "label": 0}
    assert _builtin_requests("piqa/piqa.yaml", piqa) == ours["piqa"]
    copa = {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
            "choice2": "Water flowed from the spout.", "question": "effect", "label": 1, "idx": 0}
    assert _builtin_requests("super_glue/copa/default.yaml", copa) == ours["copa"]
    wino = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
            "option1": "Sarah", "option2": "Maria", "answer": "2"}
    assert _builtin_requests("winogrande/default.yaml", wino) == ours["winogrande"]
    hellaswag = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
                 "ctx_b": "he", "ctx": "A man is sitting on a roof. he", "label": "3",
                 "endings": [c[1:] for _, c in ours["hellaswag"]]}
    assert _builtin_requests("hellaswag/hellaswag.yaml", hellaswag) == ours["hellaswag"]
    lambada = {"text": ours["lambada_openai"][0][0] + ours["lambada_openai"][0][1]}
    assert _builtin_requests("lambada/lambada_openai.yaml", lambada) == ours["lambada_openai"]
    # MathQA: the file kept four of the five options (27.675 dropped); same prompt, same option texts
    mathqa = {"Problem": ours["mathqa"][0][0][len("Question: "):-len("\nAnswer:")],
              "options": "a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these", "correct": "a"}
    theirs = _builtin_requests("mathqa/mathqa.yaml", mathqa)
    assert {c for _, c in theirs} - {c for _, c in ours["mathqa"]} == {" 27.675"}
    assert {ctx for ctx, _ in theirs} == {ctx for ctx, _ in ours["mathqa"]}
    abstract = ours["pubmedqa"][0][0][len("Abstract: "):].split("\nQuestion: ")[0]
    pubmed = {"QUESTION": "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?",
              "CONTEXTS": abstract.split("\n"), "final_decision": "yes"}
    assert _builtin_requests("pubmedqa/pubmedqa.yaml", pubmed) == ours["pubmedqa"]


def _sequence_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context) summed over its tokens, tokenised as (context + continuation) split after
    the context's tokens."""
    context_ids = tokenizer.encode(context)
    ids = tokenizer.encode(context + continuation)
    assert ids[:len(context_ids)] == context_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(float(logprobs[i - 1, ids[i]]) for i in range(len(context_ids), len(ids)))


@pytest.fixture(scope="module")
def tiny():
    if not SHARED_DATA.exists():
        pytest.skip("the offline data pack ../shared/data is not present")
    rows = loaders.read_jsonl(SHARED_DATA, "arc_easy.jsonl")[:300]
    tokenizer = tiny_tokenizer([r["query"] + " " + " ".join(r["choices"]) for r in rows], vocab_size=400)
    return tiny_gpt_neo(vocab_size=len(tokenizer), seed=1), tokenizer


def test_accuracy_equals_an_independent_loglikelihood_argmax(tiny, data_dir):
    model, tokenizer = tiny
    n = 30
    scores = reasoning_scores(model, tokenizer, ["arc_easy"], data_dir=data_dir, limit=n, batch_size=7)
    correct, acc_norm = [], 0
    for row in loaders.read_jsonl(data_dir, "arc_easy.jsonl")[:n]:
        context = row["query"] + "\nAnswer:"
        lls = [_sequence_logprob(model, tokenizer, context, " " + choice) for choice in row["choices"]]
        per_char = [ll / len(choice) for ll, choice in zip(lls, row["choices"], strict=True)]
        correct.append(int(max(range(len(lls)), key=lls.__getitem__) == row["gold"]))
        acc_norm += max(range(len(lls)), key=per_char.__getitem__) == row["gold"]
    assert 0 < sum(correct) < n  # some right, some wrong: the item order is checked
    assert scores["arc_easy"] == {"acc": pytest.approx(sum(correct) / n), "acc_norm": pytest.approx(acc_norm / n),
                                  "n": n, "correct": correct}


def test_limit_takes_the_first_documents_and_a_peft_model_is_scored_like_its_base_and_left_alone(tiny, data_dir):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    tasks = ["winogrande", "copa", "lambada_openai"]
    base = reasoning_scores(model, tokenizer, tasks, data_dir=data_dir, limit=12)
    assert {name: s["n"] for name, s in base.items()} == dict.fromkeys(tasks, 12)
    assert set(base["lambada_openai"]) == {"acc", "perplexity", "n", "correct"}
    assert set(base["copa"]) == {"acc", "n", "correct"}
    assert all(len(s["correct"]) == 12 and sum(s["correct"]) / 12 == pytest.approx(s["acc"]) for s in base.values())
    assert base["lambada_openai"]["perplexity"] > 1

    twin = tiny_gpt_neo(vocab_size=len(tokenizer), seed=1)
    wrapped = get_peft_model(twin, LoraConfig(r=2, target_modules=["q_proj"]))
    wrapped.train()
    weights = {k: v.clone() for k, v in wrapped.state_dict().items()}
    trainable = {k: p.requires_grad for k, p in wrapped.named_parameters()}
    pad = tokenizer.pad_token_id
    # LoRA starts as the identity (B = 0): the same items give the same scores
    assert reasoning_scores(wrapped, tokenizer, tasks, data_dir=data_dir, limit=12) == base
    assert wrapped.training and "tie_weights" not in vars(wrapped)
    assert all(torch.equal(weights[k], v) for k, v in wrapped.state_dict().items())
    assert {k: p.requires_grad for k, p in wrapped.named_parameters()} == trainable
    assert all(p.grad is None for p in wrapped.parameters()) and tokenizer.pad_token_id == pad
    copa_all = reasoning_scores(model, tokenizer, ["copa"], data_dir=data_dir, limit=500)
    assert copa_all["copa"]["n"] == 100


def _bootstrap_interval(before: dict, after: dict, draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    """The paired bootstrap's 95 % percentile interval of the change of the mean accuracy: the items of each
    task resampled together (the same item for both models), an independent route to the interval."""
    rng = np.random.default_rng(seed)
    changes = np.zeros(draws)
    for task in before:
        differences = np.array(after[task]["correct"]) - np.array(before[task]["correct"])
        picks = rng.integers(0, len(differences), size=(draws, len(differences)))
        changes += differences[picks].mean(axis=1) / len(before)
    return float(np.quantile(changes, 0.025)), float(np.quantile(changes, 0.975))


def test_the_reasoning_change_is_the_difference_of_the_means_with_the_paired_bootstraps_interval():
    rng = np.random.default_rng(1)
    before, after = {}, {}
    for task, (n, accuracy, flips) in {"a": (400, 0.6, 0.05), "b": (250, 0.4, 0.12), "c": (100, 0.8, 0.02)}.items():
        first = (rng.random(n) < accuracy).astype(int)
        second = np.where(rng.random(n) < flips, 1 - first, first)  # a model that changed on a few items
        before[task] = {"acc": first.mean(), "n": n, "correct": first.tolist()}
        after[task] = {"acc": second.mean(), "n": n, "correct": second.tolist()}
    found = reasoning_change(before, after)
    assert found["change"] == pytest.approx(reasoning_mean(after) - reasoning_mean(before))
    assert (found["items"], found["tasks"], found["confidence"]) == (750, 3, 0.95)
    low, high = _bootstrap_interval(before, after)
    width = high - low
    assert found["low"] == pytest.approx(low, abs=0.08 * width)
    assert found["high"] == pytest.approx(high, abs=0.08 * width)
    # the half-width two independent samples of these sizes would give, each model's binomial variance
    unpaired = 1.96 * sum(s[t]["acc"] * (1 - s[t]["acc"]) / s[t]["n"] for s in (before, after) for t in s) ** 0.5 / 3
    assert found["high"] - found["change"] < unpaired / 2
    same = reasoning_change(before, before)
    assert (same["change"], same["low"], same["high"]) == (0.0, 0.0, 0.0)


def test_a_reasoning_change_needs_the_same_tasks_and_items():
    scored = {"copa": {"acc": 0.5, "n": 4, "correct": [1, 0, 1, 0]}}
    with pytest.raises(UnlearnkitError, match="same --limit"):
        reasoning_change(scored, {"copa": {"acc": 0.5, "n": 2, "correct": [1, 0]}})
    with pytest.raises(UnlearnkitError, match="same --tasks"):
        reasoning_change(scored, {**scored, "piqa": scored["copa"]})
    with pytest.raises(UnlearnkitError, match="item by item"):
        reasoning_change({"copa": {"acc": 0.5, "n": 4}}, scored)  # scored before items were kept


def test_cached_scores_without_each_items_result_are_measured_again(tmp_path):
    from unlearnkit.config import DownstreamConfig
    from unlearnkit.evaluation import ScoreCache

    cache, options = ScoreCache(tmp_path, "weights"), DownstreamConfig(suite="quick", limit=2)
    cache.store_downstream(options, {"reasoning": {"copa": {"acc": 0.5, "n": 2}}, "reasoning_acc": 0.5})
    assert cache.load_downstream(options) is None  # stored by an earlier version: no paired comparison possible
    kept = {"reasoning": {"copa": {"acc": 0.5, "n": 2, "correct": [0, 1]}}, "reasoning_acc": 0.5}
    cache.store_downstream(options, kept)
    assert cache.load_downstream(options) == kept


def test_mean_and_errors():
    scores = {"a": {"acc": 0.5, "acc_norm": 0.9, "n": 3}, "b": {"acc": 0.25, "perplexity": 9.0, "n": 3}}
    assert reasoning_mean(scores) == pytest.approx(0.375)
    with pytest.raises(ValueError):
        reasoning_mean({})
    with pytest.raises(UnlearnkitError, match="limit"):
        reasoning_scores(torch.nn.Linear(1, 1), None, ["copa"], data_dir=".", limit=0)
    with pytest.raises(UnlearnkitError, match='"copa"'):
        reasoning_scores(torch.nn.Linear(1, 1), None, ["unlearnkit_copa"], data_dir=".")


def test_a_missing_task_file_is_one_sentence_naming_where_to_get_it(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    monkeypatch.setenv("UNLEARNKIT_OFFLINE", "1")
    with pytest.raises(UnlearnkitError, match="tasks/copa.jsonl is missing and downloads are off; download https://"):
        reasoning_scores(model, tokenizer, ["copa"], data_dir=tmp_path)


@pytest.mark.slow  # indexes all of lm-eval's built-in tasks (~15 s); `pytest -m slow` runs it
def test_a_name_neither_ours_nor_lm_evals_is_one_sentence_with_a_suggestion(tiny):
    model, tokenizer = tiny
    with pytest.raises(UnlearnkitError, match='Did you mean "arc_easy"'):
        reasoning_scores(model, tokenizer, ["arc_easyy"], data_dir=".")


def test_catalogue_lists_every_task_file():
    from unlearnkit.data.catalog import CATALOG

    used = {"arc_easy.jsonl", "arc_challenge.jsonl", "piqa.jsonl", "copa.jsonl", "winogrande.jsonl",
            "lambada_openai.jsonl", "math_qa.jsonl", "pubmed_qa_labeled.jsonl", "hellaswag_val_full.txt.bz2"}
    assert {f"tasks/{name}" for name in used} <= set(CATALOG)
    source = (TASK_DIR / "loaders.py").read_text(encoding="utf-8")
    assert all(json.dumps(name) in source for name in used)
