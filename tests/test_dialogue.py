"""Dialogue F1: prompt construction, the reply cut, SQuAD normalisation and F1, and the whole pipeline."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import tiny_gpt_neo, tiny_tokenizer
from unlearnkit.errors import UnlearnkitError
from unlearnkit.metrics.decoding import eval_mode, generate_continuations
from unlearnkit.metrics.dialogue import (
    DIALOGUE_SETS,
    clean_up_spaces,
    cut_reply,
    dialogue_examples,
    dialogue_f1,
    dialogue_prompt,
    generate_replies,
    load_dialogue_examples,
    mean_dialogue_f1,
    normalize_answer,
    normalize_reply,
    unigram_f1,
)

FULL_SIZES = {"blended_skill_talk": 1009, "empathetic_dialogues": 2758, "wizard_of_internet": 516,
              "wizard_of_wikipedia": 967}


# ── normalisation of turns (ParlAI's normalize_reply, as Jang et al. use it) ─────────────────────────────────

@pytest.mark.parametrize(("text", "expected"), [
    ("hello , how are you", "Hello, how are you."),
    ("i don ' t know . what about you ?", "I don't know. What about you?"),
    ("WELL i'm fine!  thanks", "Well I'm fine! Thanks."),
    ("Great!", "Great!"),
    ("  spaced out  ", "spaced out."),  # ParlAI's quirk: the first "word" is the empty string before the space
    ("", ""),
])
def test_normalize_reply(text, expected):
    # Checked against a verbatim copy of Jang et al.'s utils.normalize_reply on every turn of the four files.
    assert normalize_reply(text) == expected


# ── the prompt ────────────────────────────────────────────────────────────────────────────────────────────

def test_prompt_alternates_speakers_and_ends_with_the_next_speakers_tag():
    assert dialogue_prompt(["hi"]) == "User 1: Hi.\nUser 2:"
    assert dialogue_prompt(["hi", "hello there"]) == "User 1: Hi.\nUser 2: Hello there.\nUser 1:"
    assert dialogue_prompt(["a?", "b!", "c"]) == "User 1: A?\nUser 2: B!\nUser 1: C.\nUser 2:"
    with pytest.raises(ValueError):
        dialogue_prompt([])


def test_examples_score_each_dialogues_last_turn_in_key_order():
    data = {"text": {"10": ["x", "y", "z"], "2": ["how are you", "fine , thanks"], "1": ["only one turn"],
                     "0": ["hi", "hey", "what's up", "not much"]}}
    examples = dialogue_examples(data)
    assert [e.reference for e in examples] == ["Not much.", "Fine, thanks.", "Z."]
    assert examples[0].prompt == "User 1: Hi.\nUser 2: Hey.\nUser 1: What's up.\nUser 2:"
    assert examples[1].prompt == "User 1: How are you.\nUser 2:"
    assert examples[2].prompt == "User 1: X.\nUser 2: Y.\nUser 1:"
    assert dialogue_examples(data, limit=2) == examples[:2]


def test_unknown_set_names_fail_with_a_suggestion(tmp_path):
    with pytest.raises(UnlearnkitError, match="wizard_of_wikipedia"):
        load_dialogue_examples("wizard_of_wikipedias", tmp_path)


# ── the reply cut ─────────────────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize(("generated", "reply"), [
    (" Sure, see you then.\nUser 1: Bye.\nUser 2: Bye.", " Sure, see you then."),
    (" No next line here", " No next line here"),
    (" Ends with a tag\nUser", " Ends with a tag\nUser"),
    (" lower case\nuser 1: is not a tag", " lower case\nuser 1: is not a tag"),
    ("\nUser 2: nothing before", ""),
    (" A user said\nUsers are people", " A user said\nUsers are people"),
])
def test_cut_reply(generated, reply):
    assert cut_reply(generated) == reply


def test_clean_up_spaces_is_transformers_decode_clean_up():
    assert clean_up_spaces("I do n't know , it 's fine . you 're right ?") == "I don't know, it's fine. you're right?"


# ── SQuAD normalisation and F1 ────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize(("text", "expected"), [
    ("The Cat, a dog & AN apple!", "cat dog apple"),
    ("  banana   another  theme ", "banana another theme"),
    ("Don't stop-believing.", "dont stopbelieving"),
    ("the a an", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(("prediction", "reference", "f1"), [
    ("the cat sat", "cat sat on the mat", 2 / 3),  # P = 1, R = 1/2
    ("yes yes yes", "yes no", 0.4),  # one common token: P = 1/3, R = 1/2
    ("Hello, World!", "hello world", 1.0),
    ("nothing alike", "totally different", 0.0),
    ("", "something", 0.0),
    ("the", "a", 0.0),  # both empty after normalisation
])
def test_unigram_f1_on_hand_made_examples(prediction, reference, f1):
    assert unigram_f1(prediction, reference) == pytest.approx(f1)


def _f1_by_matching(prediction: str, reference: str) -> float:
    """Brute force: pair equal tokens greedily, one reference token per predicted token."""
    predicted, true = normalize_answer(prediction).split(), normalize_answer(reference).split()
    unused = list(true)
    common = 0
    for token in predicted:
        if token in unused:
            unused.remove(token)
            common += 1
    if common == 0:
        return 0.0
    return 2 * common / (len(predicted) + len(true))  # 2PR/(P+R) with P = c/|p|, R = c/|t|


def test_unigram_f1_matches_brute_force_matching():
    rng = random.Random(0)
    words = ["the", "cat", "a", "dog", "Sat,", "sat", "on", "mat!", "an"]
    for _ in range(300):
        p = " ".join(rng.choices(words, k=rng.randint(0, 6)))
        t = " ".join(rng.choices(words, k=rng.randint(0, 6)))
        assert unigram_f1(p, t) == pytest.approx(_f1_by_matching(p, t))
        assert unigram_f1(p, t) == pytest.approx(unigram_f1(t, p))


def test_mean_is_unweighted_over_sets():
    results = {"a": {"f1": 0.2, "n": 10}, "b": {"f1": 0.4, "n": 1000}}
    assert mean_dialogue_f1(results) == pytest.approx(0.3)


# ── the real files ────────────────────────────────────────────────────────────────────────────────────────

def test_real_sets_have_one_example_per_dialogue(data_dir):
    for name in DIALOGUE_SETS:
        examples = load_dialogue_examples(name, data_dir)
        assert len(examples) == FULL_SIZES[name]
        assert load_dialogue_examples(name, data_dir, limit=5) == examples[:5]
        assert all(e.prompt.endswith(("\nUser 1:", "\nUser 2:")) and e.prompt.startswith("User 1: ")
                   for e in examples)
        assert all(unigram_f1(e.reference, e.reference) == 1.0 for e in examples if normalize_answer(e.reference))


# ── end to end ────────────────────────────────────────────────────────────────────────────────────────────

class ParrotModel(torch.nn.Module):
    """Answers each known prompt with a fixed continuation, through the ``generate`` interface."""

    def __init__(self, answers: dict[tuple[int, ...], list[int]], pad_id: int) -> None:
        super().__init__()
        self.answers, self.pad_id = answers, pad_id
        self.config = type("Config", (), {"max_position_embeddings": 4096})()
        self.generation_config = type("GenerationConfig", (), {"eos_token_id": None})()

    def generate(self, input_ids, attention_mask, generation_config):
        pairs = zip(input_ids, attention_mask, strict=True)
        rows = [self.answers[tuple(ids[mask.bool()].tolist())] for ids, mask in pairs]
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


def test_a_model_that_says_the_reference_scores_one(data_dir):
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(data_dir / "tokenizers" / "gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    examples = load_dialogue_examples("wizard_of_wikipedia", data_dir, limit=12)
    answers = {tuple(tokenizer(e.prompt)["input_ids"]): tokenizer(f" {e.reference}\nUser 1: and then?")["input_ids"]
               for e in examples}
    model = ParrotModel(answers, tokenizer.pad_token_id)
    result = dialogue_f1(model, tokenizer, ["wizard_of_wikipedia"], data_dir=data_dir, limit=12, batch_size=5)
    assert result["wizard_of_wikipedia"]["n"] == 12
    assert result["wizard_of_wikipedia"]["f1"] == pytest.approx(1.0)


@pytest.fixture
def tiny(data_dir):
    texts = [line for e in load_dialogue_examples("blended_skill_talk", data_dir, limit=40)
             for line in e.prompt.split("\n")]
    tokenizer = tiny_tokenizer(texts, vocab_size=384)
    model = tiny_gpt_neo(vocab_size=len(tokenizer), seed=3)  # 256 positions: long prompts are left-truncated
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def test_tiny_model_end_to_end_plain_and_peft(tiny, data_dir):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    model.train()  # dialogue_f1 must evaluate without dropout and then restore the mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = dialogue_f1(model, tokenizer, DIALOGUE_SETS, data_dir=data_dir, limit=6, batch_size=4)
    assert list(result) == list(DIALOGUE_SETS)
    for scores in result.values():
        assert scores["n"] == 6
        assert 0.0 <= scores["f1"] <= 1.0
        assert 0 < scores["new_tokens"] <= 6 * 32
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert 0.0 <= mean_dialogue_f1(result) <= 1.0

    # Batching changes nothing, and a fresh LoRA adapter (B = 0) leaves the replies as they were.
    first = DIALOGUE_SETS[:1]
    one_by_one = dialogue_f1(model, tokenizer, first, data_dir=data_dir, limit=6, batch_size=1)
    assert one_by_one[first[0]]["f1"] == pytest.approx(result[first[0]]["f1"])
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_result = dialogue_f1(wrapped, tokenizer, first, data_dir=data_dir, limit=6, batch_size=4)
    assert peft_result[first[0]] == result[first[0]]


def test_long_prompts_keep_their_last_tokens(tiny, data_dir):
    model, tokenizer = tiny
    prompt = load_dialogue_examples("wizard_of_internet", data_dir, limit=1)[0].prompt
    ids = tokenizer(prompt)["input_ids"]
    assert len(ids) > 256  # longer than the tiny model's position table
    replies, tokens = generate_replies(model, tokenizer, [prompt], max_new_tokens=8)
    with eval_mode(model):
        tail = generate_continuations(model, [ids[-(256 - 8):]], 8, pad_id=tokenizer.pad_token_id, stop_at_eos=True)
    assert tokens == len(tail[0]) <= 8
    assert replies == [cut_reply(clean_up_spaces(tokenizer.decode(tail[0], skip_special_tokens=True)))]
