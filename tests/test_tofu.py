"""TOFU: question-answer rows scored on the answer only, TOFU's answer probability, and the target model's
fine-tuning (schedule, exact resume)."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from conftest import tiny_gpt_neo, tiny_tokenizer
from unlearnkit.config import SourceConfig
from unlearnkit.data.qa import encode_qa, qa_blocks
from unlearnkit.data.sources import load_blocks, load_gpt2_tokenizer
from unlearnkit.metrics.tofu import answer_probabilities
from unlearnkit.showcase.testbed.tofu import TofuSettings, finetune_qa
from unlearnkit.training import warmup_factor

# TOFU's config/model_config.yaml: (question_start_tag, question_end_tag, answer_tag)
OFFICIAL_TAGS = {"phi": ("Question: ", "\n", "Answer: "), "llama2": ("[INST] ", " [/INST]", "")}


def official_labels(tokenizer, question: str, answer: str, tags: tuple[str, str, str]) -> list[int]:
    """A transcription of TOFU's ``convert_raw_data_to_model_format`` (data_module.py), without the padding: the
    whole text's ids, the end of sequence after them, and -100 over as many tokens as the question alone has."""
    start, end, answer_tag = tags
    new_question = start + question + end
    full_text = new_question + answer_tag + answer
    num_question_tokens = len(tokenizer.tokenize(new_question, add_special_tokens=True))
    label = tokenizer(full_text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    for i in range(num_question_tokens):
        label[i] = -100
    return label


def _rows(data_dir, name: str, count: int) -> list[dict]:
    with (data_dir / "tofu" / f"{name}.jsonl").open() as handle:
        return [json.loads(line) for _, line in zip(range(count), handle, strict=False)]


@pytest.mark.parametrize("template", ["phi", "llama2"])
def test_answer_mask_is_tofus(data_dir, template):
    tokenizer = load_gpt2_tokenizer(data_dir)
    rows = _rows(data_dir, "forget10", 12)
    blocks = qa_blocks(rows, tokenizer, template=template, name="t", ids=[str(i) for i in range(12)],
                       pad_id=tokenizer.eos_token_id)
    for i, row in enumerate(rows):
        expected = official_labels(tokenizer, row["question"], row["answer"], OFFICIAL_TAGS[template])
        labels = blocks.labels()[i][: len(expected)].tolist()
        assert labels == expected
        assert bool((blocks.labels()[i][len(expected):] == -100).all())
    scored = blocks.input_ids[0][blocks.scored_mask[0] == 1]
    assert rows[0]["question"] not in tokenizer.decode(scored)  # the question is never scored



def test_free_text_and_chat_templates(data_dir):
    tokenizer = load_gpt2_tokenizer(data_dir)
    encoded = encode_qa(tokenizer, "Q: {question}\nA: {answer}", "Who?", "Nobody.")
    # "A: " + "Nobody" tokenises as "A", ":", " Nobody": the answer's first word stays scored, with its space
    assert tokenizer.decode(encoded.ids[: encoded.prompt_tokens]) == "Q: Who?\nA:"
    assert tokenizer.decode(encoded.ids[encoded.prompt_tokens:]) == " Nobody.<|endoftext|>"
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    chat = encode_qa(tokenizer, "chat", "Who?", "Nobody.")
    assert chat.prompt == "<user>Who?</s><assistant>"
    assert tokenizer.decode(chat.ids[: chat.prompt_tokens]) == chat.prompt
    assert tokenizer.decode(chat.ids[chat.prompt_tokens:]) == "Nobody.</s>"


def test_tofu_source(data_dir):
    tokenizer = load_gpt2_tokenizer(data_dir)
    blocks = load_blocks(SourceConfig(source="tofu", split="holdout01", n=5, seed=1), tokenizer, data_dir)
    assert len(blocks) == 5 and blocks.loss_mask is not None
    assert blocks.ids[0].startswith("holdout01#")
    assert int(blocks.loss_mask.sum()) < blocks.num_tokens  # the questions are not scored
    study = load_blocks(SourceConfig(source="tofu", split="retain_perturbed"), tokenizer, data_dir)
    assert len(study) == 400  # the retain questions TOFU scores: a smaller study's retain rows
    with pytest.raises(ValueError, match="template"):
        SourceConfig(source="tofu", template="Q: {question}")
    with pytest.raises(ValueError, match="does not apply"):
        SourceConfig(source="tofu", path="x.txt")
    with pytest.raises(ValueError, match="split"):
        SourceConfig(source="tofu", split="forget20")


@pytest.mark.parametrize("split", ["forget01", "forget10"])
def test_a_smaller_study_keeps_whole_authors_and_the_questions_tofu_scores(data_dir, split):
    full = _rows(data_dir, "full", 4000)
    forget = {r["question"] for r in _rows(data_dir, split, 400)}
    scored_retain = {r["question"] for r in _rows(data_dir, "retain_perturbed", 400)}
    target = TofuSettings(authors=24, forget_split=split)
    retain = TofuSettings(authors=24, forget_split=split, model="retain")
    target_rows, retain_rows = target.training_rows(), retain.training_rows()
    assert len(target_rows) == 24 * 20 and sorted(set(target_rows)) == target_rows
    assert set(Counter(row // 20 for row in target_rows).values()) == {20}  # whole authors (20 rows each)
    questions = {full[i]["question"] for i in target_rows}
    assert forget <= questions  # the target knows the forget split's authors
    assert {full[i]["question"] for i in retain_rows} == questions - forget  # the retain model never saw them
    if len(forget) == 40:  # 22 other authors: the 20 the retain evaluation asks about come first
        assert scored_retain <= questions - forget
    assert TofuSettings(authors=10, forget_split="forget10").training_rows() == list(range(3800, 4000))


def test_answer_probability_is_the_length_normalised_probability(data_dir):
    tokenizer = load_gpt2_tokenizer(data_dir)
    rows = _rows(data_dir, "forget01", 3)
    blocks = qa_blocks(rows, tokenizer, template="phi", name="t", ids=["0", "1", "2"], pad_id=0)
    model = tiny_gpt_neo(vocab_size=len(tokenizer), hidden=16).double()
    got = answer_probabilities(model, blocks, batch_size=2)
    for i in range(3):
        length = int(blocks.attention_mask[i].sum())
        ids = blocks.input_ids[i, :length]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids[None]).logits[0], dim=-1)
        scored = [t for t in range(1, length) if blocks.loss_mask[i, t] == 1]
        mean = sum(float(logprobs[t - 1, ids[t]]) for t in scored) / len(scored)
        # GPT-Neo computes attention in float32 even in a float64 model
        assert float(got[i]) == pytest.approx(torch.exp(torch.tensor(mean)).item(), rel=1e-5)


def test_linear_schedule_after_warmup_is_the_trainers():
    from transformers import get_linear_schedule_with_warmup

    total, warmup = 25, 5
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = get_linear_schedule_with_warmup(optimizer, warmup, total).lr_lambdas[0]
    for update in range(warmup, total + 3):
        assert warmup_factor(update, warmup, total) == pytest.approx(theirs(update))
    assert [warmup_factor(u, warmup, total) for u in range(warmup)] == [(u + 1) / (warmup + 1) for u in range(warmup)]


def test_finetuning_resumes_exactly(tmp_path, data_dir):
    rows = _rows(data_dir, "forget01", 10)
    tokenizer = tiny_tokenizer([r["question"] + " " + r["answer"] for r in rows], vocab_size=1000)
    blocks = qa_blocks(rows, tokenizer, template="phi", name="t", ids=[str(i) for i in range(10)],
                       pad_id=tokenizer.eos_token_id)
    assert blocks.seq_len <= 256  # the tiny model's positions
    settings = TofuSettings(lr=3e-3, epochs=2, batch_size=4, micro_batch=3, checkpoint_every=2)

    straight = tiny_gpt_neo(vocab_size=len(tokenizer), hidden=16)
    history = finetune_qa(straight, blocks, settings, state_dir=tmp_path / "a")
    assert len(history) == 2 * 10 // 4 and history[-1] < history[0]

    def interrupt(update: int, total: int, loss: float) -> None:
        if update == 3:
            raise KeyboardInterrupt

    interrupted = tiny_gpt_neo(vocab_size=len(tokenizer), hidden=16)
    with pytest.raises(KeyboardInterrupt):
        finetune_qa(interrupted, blocks, settings, state_dir=tmp_path / "b", on_update=interrupt)
    assert json.loads((tmp_path / "b" / "state.json").read_text())["history"] == history[:2]
    resumed = tiny_gpt_neo(vocab_size=len(tokenizer), hidden=16)  # a fresh process: the weights come from the state
    assert finetune_qa(resumed, blocks, settings, state_dir=tmp_path / "b") == history
    for (name, ours), theirs in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), name


def official_batch_loss(model, tokenizer, question: str, answer: str) -> tuple[float, int]:
    """TOFU's ``get_batch_loss`` of one row (the summed NLL of its labels) and ``num_token`` (labels not -100)."""
    label = official_labels(tokenizer, question, answer, OFFICIAL_TAGS["phi"])
    ids = tokenizer("Question: " + question + "\nAnswer: " + answer, add_special_tokens=True)["input_ids"]
    ids = ids + [tokenizer.eos_token_id]  # the padding position the label's end of sequence sits at
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits.double()
    labels = torch.tensor([label])
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
    return float(loss), int((labels != -100).sum())


def test_truth_ratio_probability_and_aggregates_are_tofus(data_dir):
    from scipy.stats import hmean, ks_2samp

    from unlearnkit.metrics.tofu import forget_quality, model_utility, score_questions, set_summary

    tokenizer = load_gpt2_tokenizer(data_dir)
    model = tiny_gpt_neo(vocab_size=len(tokenizer), hidden=16)
    forget = _rows(data_dir, "forget01_perturbed", 4)
    authors = _rows(data_dir, "real_authors_perturbed", 3)
    ours = score_questions(model, tokenizer, forget, role="forget", template="phi", generate=False)
    real = score_questions(model, tokenizer, authors, role="real_authors", template="phi", generate=False)

    def per_token(row, answer):
        total, count = official_batch_loss(model, tokenizer, row["question"], answer)
        return total / count

    # evaluate_util.eval_perturbation_ratio and aggregate_eval_stat, transcribed
    paraphrased = [per_token(r, r["paraphrased_answer"]) for r in forget]
    perturbed = [sum(per_token(r, p) for p in r["perturbed_answer"]) / len(r["perturbed_answer"]) for r in forget]
    truth_ratio = [math.exp(g - p) for g, p in zip(paraphrased, perturbed, strict=True)]
    for record, expected, row in zip(ours, truth_ratio, forget, strict=True):
        assert record["truth_ratio"] == pytest.approx(expected, rel=1e-5)
        assert record["prob"] == pytest.approx(math.exp(-per_token(row, row["answer"])), rel=1e-5)
    curr_stat_1 = [math.exp(p - g) for g, p in zip(paraphrased, perturbed, strict=True)]
    assert set_summary("forget", ours)["truth_ratio"] == pytest.approx(
        sum(min(c, 1 / c) for c in curr_stat_1) / len(curr_stat_1), rel=1e-6)
    assert set_summary("retain", ours)["truth_ratio"] == pytest.approx(
        sum(max(0, 1 - 1 / c) for c in curr_stat_1) / len(curr_stat_1), rel=1e-6)
    true = [math.exp(-per_token(r, r["answer"])) for r in authors]
    wrong = [sum(math.exp(-per_token(r, p)) for p in r["perturbed_answer"]) for r in authors]
    assert set_summary("real_authors", real)["prob"] == pytest.approx(
        sum(t / (t + w) for t, w in zip(true, wrong, strict=True)) / len(true), rel=1e-5)

    # forget quality: their KS test runs on exp(perturbed − paraphrased) = 1/R; the statistic does not change
    retain_model = [0.5, 0.9, 1.3, 0.7, 1.1]
    expected = ks_2samp(curr_stat_1, [1 / r for r in retain_model])
    assert forget_quality([r["truth_ratio"] for r in ours], retain_model)["forget_quality"] == pytest.approx(
        expected.pvalue)
    nine = {role: {"prob": 0.5 + i / 10, "rouge_l_recall": 0.3 + i / 10, "truth_ratio": 0.4 + i / 10}
            for i, role in enumerate(("retain", "real_authors", "world_facts"))}
    assert model_utility(nine) == pytest.approx(float(hmean([v for s in nine.values() for v in s.values()])))
    assert model_utility({"retain": nine["retain"]}) is None


def test_a_question_s_prompt_goes_through_the_model_once_for_all_its_answers(data_dir):
    from unlearnkit.metrics.tofu import question_scores

    tokenizer = load_gpt2_tokenizer(data_dir)
    model = tiny_gpt_neo(vocab_size=len(tokenizer), hidden=16)
    row = _rows(data_dir, "real_authors_perturbed", 1)[0]
    answers = [row["answer"], row["answer"], *row["perturbed_answer"]]  # real authors: the base answer is the answer
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape),
                                    with_kwargs=True)
    ours = question_scores(model, tokenizer, "phi", row["question"], answers)
    encoded = [encode_qa(tokenizer, "phi", row["question"], a) for a in answers]
    prompt = encoded[0].prompt_tokens
    # one pass over the prompt but its last token, one over the rest of the distinct answers
    assert seen[0] == (1, prompt - 1) and seen[1][0] == len(answers) - 1 and len(seen) == 2
    for score, item in zip(ours, encoded, strict=True):  # each equals its row's own pass
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([item.ids])).logits.double()[0, item.prompt_tokens - 1:-1]
        labels = torch.tensor(item.ids)[item.prompt_tokens:]
        token_lp = torch.log_softmax(logits, dim=-1)[torch.arange(len(labels)), labels]
        assert score.loss == pytest.approx(float(-token_lp.mean()), rel=1e-5)
        assert score.log_probs == pytest.approx(token_lp.tolist(), rel=1e-5, abs=1e-6)
        assert list(score.hits) == (logits.argmax(-1) == labels).tolist()


def test_extraction_strength_and_privacy_leak_are_open_unlearnings():
    from unlearnkit.metrics.tofu import extraction_strength, privacy_leak

    def official(preds, labels):  # open-unlearning's _extraction_strength, transcribed
        valid_len = len(labels)
        for k in range(valid_len):
            if preds[k:] == labels[k:]:
                break
        return 1 - (k / valid_len)

    for hits in ([True] * 5, [False, True, True, True], [True, False, True, True], [False] * 4, [True, True, False]):
        labels = list(range(len(hits)))
        preds = [label if hit else -1 for label, hit in zip(labels, hits, strict=True)]
        assert extraction_strength(hits) == pytest.approx(official(preds, labels))
    # Min-K% scores (higher: more likely); the forget answers all above the held-out ones: AUC 1
    forget = [{"min_k": v} for v in (-0.5, -0.2, -0.9)]
    holdout = [{"min_k": v} for v in (-2.0, -1.5, -3.0)]
    found = privacy_leak({"forget": forget, "holdout": holdout}, retain_model_auc=0.5)
    assert found["min_k_auc"] == 1.0 and found["privacy_leak"] == pytest.approx(-100.0)
    mixed = privacy_leak({"forget": forget, "holdout": [{"min_k": v} for v in (-0.3, -1.0, -0.1)]}, 0.5)
    assert mixed["min_k_auc"] == pytest.approx(4 / 9)  # pairs (forget > held-out): 4 of 9
    assert mixed["privacy_leak"] == pytest.approx(((1 - 4 / 9) - 0.5) / 0.5 * 100)
    assert privacy_leak({"forget": forget, "holdout": holdout}, None)["privacy_leak"] is None


def test_tofu_scores_are_kept_by_weights_and_an_epoch_answers_only_the_utility_sets(data_dir, tmp_path):
    from types import SimpleNamespace

    from unlearnkit.config import EvalConfig
    from unlearnkit.evaluation import ScoreCache
    from unlearnkit.metrics.tofu import UTILITY_SETS, tofu_evaluation
    from unlearnkit.progress import Progress

    tokenizer = load_gpt2_tokenizer(data_dir)
    model = tiny_gpt_neo(vocab_size=len(tokenizer), hidden=16)
    options = EvalConfig(tofu={"split": "forget01", "limit": 2, "generation_length": 60}).tofu
    cache = ScoreCache(tmp_path, "weights")
    calls = SimpleNamespace(n=0)
    model.register_forward_pre_hook(lambda *_: setattr(calls, "n", calls.n + 1))
    progress = Progress(quiet=True)
    epoch = tofu_evaluation(model, tokenizer, options, data_dir, progress, cache=cache, generate_roles=UTILITY_SETS,
                            privacy=False)
    assert "generated" not in epoch["sets"]["forget"]["records"][0]
    assert epoch["sets"]["forget"]["rouge_l_recall"] is None and epoch["model_utility"] is not None
    assert set(epoch["sets"]) == {"forget", "retain", "real_authors", "world_facts"}  # no held-out questions
    after_epoch = calls.n
    after = tofu_evaluation(model, tokenizer, options, data_dir, progress, cache=cache)
    new_passes = calls.n - after_epoch
    # only the forget set's greedy answers (at most 60 steps) and the 2 held-out questions' scores were new
    assert 0 < new_passes <= 60 + 2 * 2
    assert set(after["sets"]) == {"forget", "retain", "real_authors", "world_facts", "holdout"}
    assert 0 <= after["min_k_auc"] <= 1 and after["privacy_leak"] is None  # no retain model given
    fresh = tofu_evaluation(model, tokenizer, options, data_dir, progress)
    assert after == fresh
    calls.n = 0
    assert tofu_evaluation(model, tokenizer, options, data_dir, progress, cache=cache) == fresh and calls.n == 0


def test_rouge_is_the_recall_of_the_answer_and_greedy_answers_are_generates(data_dir):
    from unlearnkit.metrics.tofu import greedy_answers, rouge_l_recall

    assert rouge_l_recall("the author wrote", "the author wrote two novels") == pytest.approx(3 / 5)
    assert rouge_l_recall("novels writing", "the author wrote two novels") == pytest.approx(1 / 5)  # stemmed
    tokenizer = load_gpt2_tokenizer(data_dir)
    model = tiny_gpt_neo(vocab_size=len(tokenizer), hidden=16)
    questions = [r["question"] for r in _rows(data_dir, "forget01", 3)]
    ours = greedy_answers(model, tokenizer, questions, template="phi", batch_size=8, generation_length=60)
    # run_generation, transcribed: the question line, left-padded, generate() to 60 tokens in all
    tokenizer.padding_side, tokenizer.pad_token = "left", tokenizer.eos_token
    inputs = tokenizer(["Question: " + q + "\n" for q in questions], add_special_tokens=True,
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(inputs.input_ids, attention_mask=inputs.attention_mask, max_length=60, do_sample=False,
                             use_cache=True, pad_token_id=tokenizer.eos_token_id)
    assert ours == tokenizer.batch_decode(out[:, inputs.input_ids.shape[-1]:], skip_special_tokens=True)


def test_ma_of_question_answer_rows_counts_the_answers(data_dir):
    from unlearnkit.metrics.memorization import memorization_accuracy

    model = tiny_gpt_neo(vocab_size=96, hidden=16)
    prompt = torch.tensor([[5, 17, 42, 8, 60]])
    with torch.no_grad():  # greedy answers: the model predicts every answer token, and the question not
        ids = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=15, do_sample=False,
                             pad_token_id=0)
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, 5:] = 1
    ours = memorization_accuracy(model, ids, torch.ones_like(ids), scored_mask=loss_mask)
    whole = memorization_accuracy(model, ids, torch.ones_like(ids))
    with torch.no_grad():
        predicted = model(input_ids=ids).logits.argmax(-1)
    hits = sum(int(predicted[0, t - 1] == ids[0, t]) for t in range(5, ids.shape[1]))
    assert float(ours[0]) == pytest.approx(hits / 15) == pytest.approx(1.0)  # Eq. 8 over the answer alone
    assert float(whole[0]) < 1.0  # the question's tokens, counted, are not the model's predictions


@pytest.fixture(scope="module")
def tiny_gpt2_model_dir(tmp_path_factory):
    """A tiny random GPT-Neo with GPT-2's tokenizer: TOFU's rows as a real model would read them."""
    from conftest import SHARED_DATA

    if not SHARED_DATA.exists():
        pytest.skip("the offline data pack ../shared/data is not present")
    tokenizer = load_gpt2_tokenizer(SHARED_DATA)
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_gpt_neo(vocab_size=len(tokenizer), hidden=16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.integration
def test_a_run_on_tofu_scores_tofus_table_before_after_and_every_epoch(tiny_gpt2_model_dir, tmp_path, data_dir):
    from conftest import REPO, run_cli

    tofu = ("{split: forget01, limit: 2, batch_size: 4, every_epoch: true, generation_length: 80, "
            f"retain_model: {tiny_gpt2_model_dir}}}")
    overrides = [f"model.name={tiny_gpt2_model_dir}", f"data.dir={data_dir}", f"output.dir={tmp_path / 'run'}",
                 "data.forget={source: tofu, split: forget01, n: 4}",
                 "data.retain={source: tofu, split: retain99, n: 8}",
                 "data.validation={source: tofu, split: holdout01, n: 4}", "method.name=gd", "adapter.name=lora",
                 "adapter.rank=2", "adapter.alpha=4", "train.epochs=1", "train.batch_size=4", "train.grad_accum=1",
                 "train.lr=1e-3", "eval.early_stop=false", "eval.audit=false", "eval.downstream=null",
                 f"eval.tofu={tofu}", "output.fail_if_not_forgotten=false"]
    done = run_cli("run", str(REPO / "configs" / "tofu" / "smollm2-flora-ihl.yaml"),
                   *[part for o in overrides for part in ("--set", o)], "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    for snapshot in (metrics["before"], metrics["after"]):
        found = snapshot["tofu"]
        assert set(found["sets"]) == {"forget", "retain", "real_authors", "world_facts", "holdout"}
        assert found["model_utility"] is not None and 0 <= found["model_utility"] <= 1
        record = found["sets"]["forget"]["records"][0]
        assert {"question", "prompt", "prob", "truth_ratio", "rouge_l_recall", "generated",
                "extraction_strength", "min_k"} <= set(record)
        assert 0 < found["extraction_strength"] <= 1 and 0 <= found["min_k_auc"] <= 1
        assert record["prompt"] == "Question: " + record["question"] + "\n"
    assert [set(e["tofu"]["sets"]["forget"]) for e in metrics["epochs"]] == [  # numbers, not the records
        {"questions", "prob", "rouge_l_recall", "truth_ratio", "extraction_strength"}]
    assert metrics["epochs"][0]["tofu"]["sets"]["forget"]["rouge_l_recall"] is None  # the answers come after
    assert "epoch_record" not in metrics["after"]["forget"]
    from unlearnkit.config.sweep import SweepPoint
    from unlearnkit.experiments.sweep import point_row

    row = point_row(SweepPoint("tofu", {}, None), tmp_path / "run")  # a sweep's results row carries TOFU's numbers
    assert row["tofu"]["after"]["model_utility"] == metrics["after"]["tofu"]["model_utility"]
    assert [e["epoch"] for e in row["tofu"]["epochs"]] == [1] and "records" not in row["tofu"]["after"]["forget"]
    # the model before unlearning is the retain model here: indistinguishable from it
    assert row["tofu"]["before"]["forget_quality"] == pytest.approx(1.0)
    assert row["tofu"]["before"]["privacy_leak"] == pytest.approx(0.0, abs=1e-6)
    from unlearnkit.experiments.report import write_report

    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "results.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    write_report(tmp_path / "sweep")
    report = (tmp_path / "sweep" / "report" / "report.md").read_text(encoding="utf-8")
    assert "| target (before unlearning) | 0 | | | 1.000 |" in report and "| LoRA | 1 |" in report
    lora_line = next(line for line in report.splitlines() if line.startswith("| LoRA | 1 |"))
    assert lora_line.endswith(f"| {100 * row['el10']:.1f} | {100 * row['ma']:.1f} |")  # the paper's own, on answers
    assert (tmp_path / "sweep" / "report" / "tofu_utility_vs_forget_quality.png").stat().st_size > 1000

    out = tmp_path / "eval"
    done = run_cli("eval", str(tiny_gpt2_model_dir), "--suite", "tofu", "--tofu-split", "forget01", "--limit", "2",
                   "--retain-model", str(tiny_gpt2_model_dir), "--output", str(out), "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert evaluated["forget_quality"] == pytest.approx(1.0)  # the model against itself: indistinguishable
    assert evaluated["privacy_leak"] == pytest.approx(0.0, abs=1e-6)
    assert len(evaluated["sets"]["world_facts"]["records"]) == 2 and "model utility" in (out / "eval.md").read_text()
    # the retain model's own scores in the sweep's folder: a row of TOFU's table and a point of its figure
    (tmp_path / "sweep" / "retain-model").mkdir()
    (tmp_path / "sweep" / "retain-model" / "eval.json").write_bytes((out / "eval.json").read_bytes())
    write_report(tmp_path / "sweep")
    report = (tmp_path / "sweep" / "report" / "report.md").read_text(encoding="utf-8")
    utility = f"{evaluated['model_utility']:.3f}"
    assert f"| retain model (never saw the forget authors) | | | | 1.000 | {utility} |" in report
    # a page section keeps the retain model's numbers (not its answers) and regenerates from its own folder
    from unlearnkit.experiments.report import update_page

    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("<!-- report:tofu -->\n<!-- /report:tofu -->\n", encoding="utf-8")
    update_page(page, "tofu", tmp_path / "sweep")
    kept = json.loads((tmp_path / "docs" / "results" / "tofu" / "retain-model" / "eval.json").read_text())
    assert kept["model_utility"] == evaluated["model_utility"] and "records" not in kept["sets"]["forget"]
    first = page.read_text(encoding="utf-8")
    update_page(page, "tofu", tmp_path / "docs" / "results" / "tofu")
    assert page.read_text(encoding="utf-8") == first and "| retain model (never saw" in first


def test_el_of_question_answer_rows_scores_the_answers_prefixes_exactly():
    """EL_n over the prefixes from the answer's first token on (the question their context), the fast exact path
    equal to the reference and to Eq. 7 summed over those prefixes by hand."""
    from unlearnkit.metrics.memorization import (
        extraction_likelihood,
        extraction_likelihood_reference,
        first_scored,
    )

    model = tiny_gpt_neo(vocab_size=96, hidden=16).double()
    torch.manual_seed(1)
    prompt = torch.randint(0, 96, (2, 6))
    with torch.no_grad():  # half memorised (greedy), then a departure, so that some prefixes branch
        ids = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=14, do_sample=False,
                             pad_token_id=0)
    ids[0, 14], ids[1, 12] = (ids[0, 14] + 1) % 96, (ids[1, 12] + 3) % 96
    loss_mask = torch.zeros_like(ids)
    loss_mask[0, 6:], loss_mask[1, 8:] = 1, 1
    assert first_scored(loss_mask, 2) == [6, 8]
    fast = extraction_likelihood(model, ids, n=3, scored_mask=loss_mask, batch_size=4)
    slow = extraction_likelihood_reference(model, ids, n=3, scored_mask=loss_mask)
    assert torch.equal(fast, slow)
    for b, start in enumerate((6, 8)):
        x = ids[b].tolist()
        conts = [[] for _ in range(len(x) + 1)]
        for i in range(start, len(x)):
            with torch.no_grad():
                out = model.generate(ids[b:b + 1, :i], attention_mask=torch.ones(1, i, dtype=torch.long),
                                     max_new_tokens=len(x) - i, do_sample=False, pad_token_id=0, eos_token_id=None)
            conts[i] = out[0, i:].tolist()

        def grams(tokens):
            return [tuple(tokens[k:k + 3]) for k in range(len(tokens) - 2)]

        # Eq. 6-7 over the answer's prefixes: mean over i = start..T-n of OVERLAP_3(f(x_<i), x_>=i)
        terms = [sum(g in set(grams(x[i:])) for g in grams(conts[i])) / len(grams(x[i:]))
                 for i in range(start, len(x) - 3 + 1)]
        assert float(fast[b]) == pytest.approx(sum(terms) / len(terms))
    assert not torch.equal(fast, extraction_likelihood(model, ids, n=3, batch_size=4))  # the question prefixes differ
