"""Question-answer data (TOFU): rows read from the data directory or the hub, formatted by a template, scored on
the answer only.

A row becomes one sequence ``prompt + answer`` whose ``loss_mask`` covers the answer's tokens (and the end of
sequence the answer is trained to stop with), never the question: TOFU's official data module
(``convert_raw_data_to_model_format``) tokenises the whole text and masks as many leading tokens as the prompt
alone tokenises to, and so does :func:`encode_qa`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit.config.sources import QA_SCORED_FROM, QA_TEMPLATES
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.catalog import ENV_VAR
from unlearnkit.errors import UnlearnkitError

TOFU_HUB_DATASET = "locuslab/TOFU"
TOFU_AUTHOR_ROWS = 20  # questions per fictitious author in ``full`` (authors are consecutive blocks of rows)
DEFAULT_TEMPLATE = "phi"


@dataclass(frozen=True)
class EncodedQA:
    """One formatted row: its token ids and how many of the leading ones are the prompt (never scored)."""

    ids: list[int]
    prompt_tokens: int
    prompt: str


def read_qa_rows(data_dir: str | Path, name: str) -> list[dict[str, Any]]:
    """The rows of TOFU file ``name`` (``forget10``, ``retain_perturbed``, ...): ``<data>/tofu/<name>.jsonl``
    where it exists, else the hub dataset ``locuslab/TOFU`` (configuration ``name``), which holds the same rows."""
    path = Path(data_dir) / "tofu" / f"{name}.jsonl"
    if path.is_file():
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    try:
        import datasets

        return [dict(row) for row in datasets.load_dataset(TOFU_HUB_DATASET, name)["train"]]
    except Exception as error:  # no network, no such configuration: one sentence, with both fixes
        raise UnlearnkitError(
            f"TOFU's {name} is neither in {path} nor loadable from the hub dataset {TOFU_HUB_DATASET} ({error}); "
            f"set {ENV_VAR} to a data directory with tofu/{name}.jsonl, or connect to the Hugging Face hub."
        ) from None


def format_prompt(tokenizer: Any, template: str, question: str) -> str:
    """The text before the scored part: what the answer is trained and scored after, and what generation starts
    from."""
    if template == "chat":
        return str(tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                 add_generation_prompt=True))
    text = QA_TEMPLATES.get(template, template)
    scored = QA_SCORED_FROM.get(template, "{answer}")
    return text[: text.index(scored)].replace("{question}", question)


def format_answer(template: str, answer: str) -> str:
    """The scored text: the answer, after the part of the template TOFU's code scores with it (phi's "Answer: ")."""
    if template == "chat":
        return answer
    return QA_SCORED_FROM.get(template, "{answer}").replace("{answer}", answer)


def encode_qa(tokenizer: Any, template: str, question: str, answer: str) -> EncodedQA:
    """``prompt + scored text`` as token ids, the end of sequence after it, and the prompt's length in tokens.

    With TOFU's presets (``phi``, ``llama2``) this is its code's computation: the whole text tokenised at once
    (with the tokenizer's special tokens), the prompt's length that of the prompt tokenised alone. A free-text
    template may end in a space that the answer's first token absorbs ("A: " + "No" → "A", ":", " No"): there the
    prompt is the tokens that end within it, so the answer's first word is still scored. With ``chat`` the
    template already ends the assistant's turn (and holds any special tokens), so nothing is added."""
    prompt = format_prompt(tokenizer, template, question)
    if template == "chat":
        full = str(tokenizer.apply_chat_template(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False))
        if not full.startswith(prompt):
            raise UnlearnkitError("The tokenizer's chat template writes the answer's turn differently from the "
                                  "prompt it generates from; use template: phi or a text template.")
        ids, prompt_tokens = _tokenize(tokenizer, prompt, full, special=False, by_offsets=True)
        return EncodedQA(ids, prompt_tokens, prompt)
    full = prompt + format_answer(template, answer)
    ids, prompt_tokens = _tokenize(tokenizer, prompt, full, special=True, by_offsets=template not in QA_TEMPLATES)
    eos = tokenizer.eos_token_id
    if isinstance(eos, int):
        ids.append(eos)
    return EncodedQA(ids, prompt_tokens, prompt)


def _tokenize(tokenizer: Any, prompt: str, full: str, *, special: bool, by_offsets: bool) -> tuple[list[int], int]:
    """The ids of ``full`` and how many leading ones are the prompt: those ending within it (``by_offsets``, where
    the tokenizer gives offsets), else as many as the prompt tokenised alone has (TOFU's count)."""
    if by_offsets and getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(full, add_special_tokens=special, return_offsets_mapping=True)
        ends = [end for _, end in encoded["offset_mapping"]]
        prompt_tokens = 0
        while prompt_tokens < len(ends) and ends[prompt_tokens] <= len(prompt):
            prompt_tokens += 1
        return list(encoded["input_ids"]), prompt_tokens
    ids = list(tokenizer(full, add_special_tokens=special)["input_ids"])
    return ids, len(tokenizer(prompt, add_special_tokens=special)["input_ids"])


def qa_blocks(rows: list[dict[str, Any]], tokenizer: Any, *, template: str, name: str, ids: list[str],
              pad_id: int, answer_key: str = "answer") -> TokenBlocks:
    """One right-padded sequence per row, ``loss_mask`` on its answer tokens only."""
    encoded = [encode_qa(tokenizer, template, row["question"], row[answer_key]) for row in rows]
    blocks = TokenBlocks.from_lists([e.ids for e in encoded], name, pad_id=pad_id, ids=ids)
    loss_mask = blocks.attention_mask.clone()
    for row, item in enumerate(encoded):
        loss_mask[row, : item.prompt_tokens] = 0
    if bool((loss_mask.sum(dim=1) == 0).any()):
        raise UnlearnkitError(f"A row of {name} has no answer token after its prompt; check the template "
                              f"({template!r}) and the data.")
    return TokenBlocks(blocks.input_ids, blocks.attention_mask, name, blocks.ids, loss_mask=loss_mask)


def author_rows(total_rows: int, authors: int | None, forget_rows: int) -> list[int]:
    """The rows of ``full`` in a study of ``authors`` fictitious authors (all rows for None): the forget split's
    (``full``'s last ``forget_rows``, kept whole) and, for the rest, the first authors of ``full``, the ones whose
    questions TOFU's retain evaluation (``retain_perturbed``, the first 400 rows) asks. A study no larger than the
    forget split keeps its last authors."""
    if authors is None:
        return list(range(total_rows))
    wanted = authors * TOFU_AUTHOR_ROWS
    if wanted <= forget_rows:
        return list(range(total_rows - wanted, total_rows))
    first = min(wanted - forget_rows, total_rows - forget_rows)
    return list(range(first)) + list(range(total_rows - forget_rows, total_rows))
