"""Dialogue F1 (Jang et al., 2023): greedy replies on four dialogue sets, unigram F1 against the true reply.

What is scored. Each set is Jang et al.'s JSON file ``ku/validation/<set>.json`` (``{"text": {"0": [turn,
...], ...}}``); every dialogue in it is one example, in the file's key order. Only the dialogue's **last turn**
is scored: it is the reference reply, and all turns before it form the context. ``limit=N`` takes the first N
dialogues of the file (keys "0" .. "N-1"), so a limited run always scores the same examples.

How, following joeljang/knowledge-unlearning (Datasets.py @ecdc423, models/Neo_Model.py @8b498b0,
utils.py @23c1230):

- prompt: ``Custom_Dataset.create_dialogue_prompt`` (Datasets.py lines 75-90), called on ``text[:-1]`` with the
  target ``normalize_reply(text[-1])`` (lines 165-169). Each context turn passes through ParlAI's
  ``normalize_reply`` (utils.py ``normalize_reply``, version 2: lower case, sentence-initial and "i"
  capitals, punctuation spacing, a final period) and becomes ``User 1: <turn>\\n`` for even positions and
  ``User 2: <turn>\\n`` for odd ones; the prompt ends with the next speaker's tag (``User 1:`` or ``User 2:``,
  no space after the colon). No instruction or header line (theirs is commented out).
- generation: ``Neo.dialog_evaluation`` in Neo_Model.py: greedy ``model.generate(..., max_new_tokens=32)`` on
  left-padded prompts, stopping at EOS; ``batch_decode(skip_special_tokens=True)``; the reply is the text
  before the first ``"\\nUser "``; the reference is the decoded target.
- F1: ``Neo.normalize_answer`` and ``Neo._f1_score`` (SQuAD's: lower case, punctuation and the articles
  a/an/the removed, whitespace collapsed; bag-of-words F1, 0 when nothing overlaps).
- mean: per set over its examples; "Dialogue (F1)" is the unweighted mean of the per-set means
  (:func:`mean_dialogue_f1`).

Where we differ, and why:

- Jang et al. decoded with the transformers of 2022, whose ``decode`` applied ``clean_up_tokenization``
  (``" ."`` -> ``"."``, ``" n't"`` -> ``"n't"``, ...) by default; current tokenizers often do not, so that
  clean-up is applied here to both reply and reference explicitly (:func:`clean_up_spaces`).
- Their tokenizer right-truncated prompts at ``input_length`` (512 GPT-2 tokens, configs/dialog.json), cutting
  off the latest turns and the speaker tag of the 26 longer dialogues (25 in wizard_of_internet, 1 in
  empathetic_dialogues). Here a prompt is cut only when it is longer than the model's window minus
  ``max_new_tokens``, and then loses its oldest tokens (left truncation), so the model always sees the latest
  turns and the tag. Prompts are batched by length (results come back in file order).
- Their per-set score was Lightning's epoch average of per-batch means (``self.log``); ours is the plain mean
  over examples (the two can differ only through a smaller last batch).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from unlearnkit.config import DIALOGUE_SETS
from unlearnkit.data.catalog import ensure_file
from unlearnkit.errors import unknown_name
from unlearnkit.metrics.decoding import context_limit, eval_mode, generate_continuations
from unlearnkit.progress import Progress

USER_TAGS = ("User 1", "User 2")
REPLY_END = "\nUser "
_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# ParlAI's normalize_reply: (spaced, joined) forms of punctuation, in this order.
_SWITCH = ((" .", "."), (" ,", ","), (" ?", "?"), (" !", "!"), (" ' ", "'"))
_CAPITALISED = ("i", "i'm", "i've", "i'll", "i'd")


class DialogueExample(NamedTuple):
    """One scored turn: the conversation before it as a prompt, and the reply actually given."""

    prompt: str
    reference: str


def dialogue_set_path(name: str) -> str:
    """The data-directory path of a dialogue set's JSON file."""
    if name not in DIALOGUE_SETS:
        raise unknown_name("dialogue set", name, DIALOGUE_SETS)
    return f"ku/validation/{name}.json"


def normalize_reply(text: str) -> str:
    """ParlAI's ``normalize_reply`` (version 2), as Jang et al. apply it to every turn.

    Lower case; punctuation attached to the word before it; the first word, the word after ``.?!`` and
    "i"/"i'm"/... capitalised; surrounding whitespace removed; a period added unless the text ends in
    ``!.?)"'``.
    """
    new_text = text.lower()
    for spaced, joined in _SWITCH:
        new_text = new_text.replace(joined, spaced).replace("  ", " ")
    tokens = new_text.split(" ")
    for i in range(len(tokens)):
        if i == 0 or tokens[i] in _CAPITALISED:
            tokens[i] = _upper_first(tokens[i])
        elif tokens[i] in "?.!" and i < len(tokens) - 1:
            # ParlAI's test is a substring test, so an empty token also capitalises the next one.
            tokens[i + 1] = _upper_first(tokens[i + 1])
    new_text = " " + " ".join(tokens) + " "
    for spaced, joined in _SWITCH:
        new_text = new_text.replace(spaced, joined)
    new_text = new_text.strip().replace("  ", " ")
    if new_text and new_text[-1] not in "!.?)\"'":
        new_text += "."
    return new_text


def _upper_first(word: str) -> str:
    return word[:1].upper() + word[1:]


def dialogue_prompt(turns: Sequence[str]) -> str:
    """The conversation so far, one ``User k: <turn>`` line per (normalised) turn, then the next speaker's tag.

    Speakers alternate starting with ``User 1``; ``["Hi", "Hello"]`` gives ``"User 1: Hi.\\nUser 2: Hello.\\nUser 1:"``.
    """
    if not turns:
        raise ValueError("a dialogue prompt needs at least one turn of context")
    lines = [f"{USER_TAGS[i % 2]}: {normalize_reply(turn)}\n" for i, turn in enumerate(turns)]
    return "".join(lines) + f"{USER_TAGS[len(turns) % 2]}:"


def dialogue_examples(data: Mapping[str, Any], limit: int | None = None) -> list[DialogueExample]:
    """The examples of one set's parsed JSON: each dialogue's last turn is the reference, the turns before it
    the prompt. Dialogues keep the file's key order; ``limit`` keeps the first ``limit`` of them."""
    dialogues = data["text"]
    examples = []
    for key in sorted(dialogues, key=int):
        turns = dialogues[key]
        if turns is None or len(turns) < 2:  # pandas' dropna in Jang et al.'s loader; one turn has no context
            continue
        examples.append(DialogueExample(dialogue_prompt(turns[:-1]), clean_up_spaces(normalize_reply(turns[-1]))))
        if limit is not None and len(examples) >= limit:
            break
    return examples


def load_dialogue_examples(name: str, data_dir: str | Path, limit: int | None = None) -> list[DialogueExample]:
    """The examples of the dialogue set ``name``, its file fetched through the data catalogue if missing."""
    path = ensure_file(data_dir, dialogue_set_path(name))
    with open(path, encoding="utf-8") as handle:
        return dialogue_examples(json.load(handle), limit)


def clean_up_spaces(text: str) -> str:
    """transformers' ``clean_up_tokenization``, which ``decode`` applied by default when Jang et al. ran."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


def cut_reply(generated_text: str) -> str:
    """The reply in a generated continuation: the text before the next speaker's line (``"\\nUser "``)."""
    return generated_text.split(REPLY_END, 1)[0]


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def unigram_f1(prediction: str, reference: str) -> float:
    """SQuAD's bag-of-words F1 of two texts after :func:`normalize_answer`.

    With c the size of the multiset intersection of the two token lists, P = c / |prediction| and
    R = c / |reference|: F1 = 2PR / (P + R), and 0 when c = 0 (so also when either side is empty).
    """
    predicted, true = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(predicted) & Counter(true)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(true)
    return 2 * precision * recall / (precision + recall)


def generate_replies(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = 16,
                     max_new_tokens: int = 32, progress: Progress | None = None,
                     description: str = "Dialogue replies") -> tuple[list[str], int]:
    """Greedy replies to ``prompts`` (at most ``max_new_tokens`` tokens each, cut at EOS and at ``"\\nUser "``),
    in the order given, and the number of tokens generated. Prompts longer than the model's window minus
    ``max_new_tokens`` keep their last tokens. The model is only read (eval mode inside, then restored)."""
    window = context_limit(model)
    keep = max(1, window - max_new_tokens) if window is not None else None
    token_ids = [list(tokenizer(p)["input_ids"]) for p in prompts]
    token_ids = [ids[-keep:] if keep is not None else ids for ids in token_ids]
    # Longest first: similar lengths share a batch (little padding), and a batch too big shows up at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(token_ids[i]))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    generated: list[list[int]] = [[] for _ in prompts]
    items = progress.track(batches, len(batches), description, "batches") if progress is not None else batches
    with eval_mode(model):
        for rows in items:
            outputs = generate_continuations(model, [token_ids[r] for r in rows], max_new_tokens,
                                             batch_size=len(rows), pad_id=pad_id, stop_at_eos=True)
            for r, out in zip(rows, outputs, strict=True):
                generated[r] = out
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [cut_reply(clean_up_spaces(t)) for t in texts], sum(len(g) for g in generated)


def dialogue_f1(model: Any, tokenizer: Any, sets: Sequence[str], *, data_dir: str | Path, limit: int | None = None,
                batch_size: int = 16, max_new_tokens: int = 32,
                progress: Progress | None = None) -> dict[str, dict[str, float | int]]:
    """Dialogue F1 per set: ``{set: {"f1": mean unigram F1, "n": examples scored, "new_tokens": generated}}``.

    Each dialogue's last turn is scored (see the module docstring); ``limit`` scores the first ``limit``
    dialogues of each file, the same ones every time. Works on plain and PEFT-wrapped models, which it never
    modifies. Average the sets with :func:`mean_dialogue_f1`.
    """
    for name in sets:
        dialogue_set_path(name)  # unknown names fail before any generation
    results: dict[str, dict[str, float | int]] = {}
    for name in sets:
        examples = load_dialogue_examples(name, data_dir, limit)
        replies, new_tokens = generate_replies(
            model, tokenizer, [e.prompt for e in examples], batch_size=batch_size, max_new_tokens=max_new_tokens,
            progress=progress, description=f"Dialogue F1 · {name}")
        scores = [unigram_f1(reply, e.reference) for reply, e in zip(replies, examples, strict=True)]
        results[name] = {"f1": sum(scores) / len(scores) if scores else 0.0, "n": len(scores),
                         "new_tokens": new_tokens}
    return results


def mean_dialogue_f1(results: Mapping[str, Mapping[str, float | int]]) -> float:
    """"Dialogue (F1)": the unweighted mean of the per-set F1 means of :func:`dialogue_f1`."""
    if not results:
        raise ValueError("no dialogue sets were scored")
    return sum(float(r["f1"]) for r in results.values()) / len(results)
