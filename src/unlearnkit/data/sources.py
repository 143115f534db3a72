"""Data source loaders: :func:`load_blocks` turns a :class:`~unlearnkit.config.SourceConfig` into token blocks.

Two kinds of source:

* **token-id sources** (``tdec``, ``jang``, ``jang_domain``): rows of the TDEC benchmark, 200
  GPT-2/GPT-Neo token ids each. One row becomes one block, cut or right-padded to ``seq_len``.
  For a model whose tokenizer is not GPT-2's, a row is decoded with the GPT-2 tokenizer (from
  ``<data_dir>/tokenizers/gpt2``) and re-tokenised with the model's tokenizer (no special
  tokens, like the TDEC ids themselves); the blocks then carry ``retokenized=True``. Jang et
  al.'s forget sets name TDEC rows by ``doc_id``; their ids are taken from TDEC exactly
  (decoding them reproduces the CSV text for most, not all, rows).
* **text sources** (``wikitext``, ``pile``, ``wikitext2``, ``file``): documents are tokenised with
  the model's tokenizer (no special tokens), joined with the tokenizer's EOS between documents
  and cut into consecutive blocks of ``seq_len`` tokens; a final short block is dropped, so text
  blocks carry no padding. The one exception: when all the text together is shorter than one
  block, it becomes a single right-padded block (a short user file still gives a forget set).
  ``n`` keeps ``n`` of the blocks drawn at random by ``seed`` (kept in corpus order).

Every source gives ``ids`` naming each block in its source (TDEC row, CSV ``doc_id``, block index).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unlearnkit.config.sources import SourceConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.catalog import TDEC_OFFICIAL_MD5, ensure_file, resolve_data_dir
from unlearnkit.data.files import read_csv, read_documents, read_text, user_path
from unlearnkit.data.qa import DEFAULT_TEMPLATE, qa_blocks, read_qa_rows
from unlearnkit.errors import UnlearnkitError, unknown_name

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TDEC_ROW_LEN = 200
TDEC_PARTS = ("preprefix", "prefix", "suffix")
GPT2_VOCAB_SIZE = 50257
# A few GPT-2 token ids that any GPT-2-compatible tokenizer (GPT-2, GPT-Neo, GPT-J) shares.
_GPT2_PROBES = {"Hello": 15496, "\u0120the": 262, "<|endoftext|>": 50256, "!": 0}


# --------------------------------------------------------------------------- context


@dataclass
class _Context:
    tokenizer: PreTrainedTokenizerBase
    data_dir: Path
    seq_len: int
    tokenizer_is_gpt2: bool | None

    @property
    def is_gpt2(self) -> bool:
        if self.tokenizer_is_gpt2 is None:
            self.tokenizer_is_gpt2 = is_gpt2_tokenizer(self.tokenizer)
        return self.tokenizer_is_gpt2

    @property
    def pad_id(self) -> int:
        # Padding is masked out everywhere, so any valid id works; prefer the tokenizer's own.
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if isinstance(candidate, int):
                return candidate
        return 0


def is_gpt2_tokenizer(tokenizer: Any) -> bool:
    """True when ``tokenizer`` maps tokens to GPT-2's ids (GPT-2, GPT-Neo, GPT-J, ...)."""
    try:
        if int(tokenizer.vocab_size) != GPT2_VOCAB_SIZE:
            return False
        ids = tokenizer.convert_tokens_to_ids(list(_GPT2_PROBES))
    except (AttributeError, TypeError, ValueError):
        return False
    return list(ids) == list(_GPT2_PROBES.values())


def load_gpt2_tokenizer(data_dir: str | Path) -> PreTrainedTokenizerBase:
    """The GPT-2 tokenizer from ``<data_dir>/tokenizers/gpt2`` (downloaded there if missing)."""
    for name in ("vocab.json", "merges.txt"):
        ensure_file(data_dir, f"tokenizers/gpt2/{name}")
    return _gpt2_tokenizer_cached(str(Path(data_dir) / "tokenizers" / "gpt2"))


@lru_cache(maxsize=4)
def _gpt2_tokenizer_cached(folder: str) -> PreTrainedTokenizerBase:
    # transformers 5 keeps GPT2TokenizerFast only as a lazy alias its stubs do not declare.
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]

    # from_pretrained(dir), not GPT2TokenizerFast(vocab_file=...): in transformers 5 the latter
    # silently builds an empty tokenizer.
    return GPT2TokenizerFast.from_pretrained(folder)


# --------------------------------------------------------------------------- TDEC and Jang


def load_tdec(data_dir: str | Path, split: str = "train") -> np.ndarray:
    """The TDEC ``split`` ("train" or "val") as a ``uint16 [N, 200]`` array.

    Rebuilt as ``np.concatenate([preprefix, prefix, suffix], 1)`` from the published split files
    and checked against the benchmark's official md5, which catches a damaged or wrong file.
    """
    if split not in TDEC_OFFICIAL_MD5:
        raise unknown_name("TDEC split", split, TDEC_OFFICIAL_MD5)
    parts = [np.load(ensure_file(data_dir, f"tdec/{split}_{part}.npy")) for part in TDEC_PARTS]
    array = np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.uint16)
    digest = hashlib.md5(array.tobytes()).hexdigest()
    if array.shape[1] != TDEC_ROW_LEN or digest != TDEC_OFFICIAL_MD5[split]:
        raise UnlearnkitError(
            f"The TDEC {split} files in {Path(data_dir) / 'tdec'} do not rebuild the official dataset "
            f"(md5 {digest}); delete them so they are downloaded again, "
            "or replace them with the published ones."
        )
    return array


def _id_blocks(token_rows: np.ndarray, ids: list[str], ctx: _Context, name: str) -> TokenBlocks:
    """One block per GPT-2 token-id row, re-tokenised when the model's tokenizer differs."""
    rows = [row.tolist() for row in token_rows]
    if ctx.is_gpt2:
        return TokenBlocks.from_lists(rows, name, pad_id=ctx.pad_id, ids=ids, seq_len=ctx.seq_len)
    gpt2 = load_gpt2_tokenizer(ctx.data_dir)
    # clean_up_tokenization_spaces=False keeps the decoded text byte-exact with the Pile text.
    texts = gpt2.batch_decode(rows, clean_up_tokenization_spaces=False)
    encoded = _encode(ctx.tokenizer, texts)
    blocks = TokenBlocks.from_lists(encoded, name, pad_id=ctx.pad_id, ids=ids, seq_len=ctx.seq_len)
    return dataclasses.replace(blocks, retokenized=True)


def _load_tdec_source(spec: SourceConfig, ctx: _Context) -> TokenBlocks:
    split = spec.split or "train"
    table = load_tdec(ctx.data_dir, split)
    total = len(table)
    if spec.rows is not None:
        bad = [r for r in spec.rows if r >= total]
        if bad:
            raise UnlearnkitError(
                f"TDEC {split} has rows 0..{total - 1} but rows lists {bad[:5]}; use indices below {total}."
            )
        chosen = list(spec.rows)
    else:
        chosen = _choose(total, spec.n, spec.seed, what=f"TDEC {split} rows", source=spec.label())
    return _id_blocks(table[chosen], [str(r) for r in chosen], ctx, spec.label())


def _jang_blocks(spec: SourceConfig, ctx: _Context, relative: str) -> TokenBlocks:
    path = ensure_file(ctx.data_dir, relative)
    records = read_csv(path, "doc_id")
    table = load_tdec(ctx.data_dir, "train")
    try:
        doc_ids = [int(record["doc_id"]) for record in records]
    except ValueError as exc:
        raise UnlearnkitError(
            f"{path} has a doc_id that is not a whole number ({exc}); restore the original file."
        ) from exc
    if any(not 0 <= d < len(table) for d in doc_ids):
        raise UnlearnkitError(f"{path} names doc_ids outside the TDEC train set; restore the original file.")
    if spec.source == "jang_domain" and spec.n is not None:
        doc_ids = doc_ids[: spec.n]
    if not doc_ids:
        raise _empty(spec.label(), f"{path} has no rows", "use another set or a larger n")
    return _id_blocks(table[doc_ids], [str(d) for d in doc_ids], ctx, spec.label())


def _load_jang(spec: SourceConfig, ctx: _Context) -> TokenBlocks:
    return _jang_blocks(spec, ctx, f"ku/forget/lm_extraction_{spec.n}_{spec.set}.csv")


def _load_jang_domain(spec: SourceConfig, ctx: _Context) -> TokenBlocks:
    return _jang_blocks(spec, ctx, f"ku/forget_domain/{spec.split}_8_{spec.set}.csv")


# --------------------------------------------------------------------------- text sources


#: Jang et al.'s validation documents by name: the Pile (perplexity) and WikiText (the retain set).
DOCUMENT_SETS = {"pile": "ku/validation/pile.csv", "wikitext": "ku/validation/wikitext.csv"}


def load_documents(name: str, data_dir: str | Path, limit: int | None = None) -> list[str]:
    """The non-empty documents of :data:`DOCUMENT_SETS` ``name`` in file order (the first ``limit``)."""
    if name not in DOCUMENT_SETS:
        raise unknown_name("document set", name, DOCUMENT_SETS)
    docs = [record["text"] for record in read_csv(ensure_file(data_dir, DOCUMENT_SETS[name]), "text")]
    docs = [doc for doc in docs if doc]
    return docs if limit is None else docs[:limit]


def _load_jang_csv_text(name: str) -> Callable[[SourceConfig, _Context], TokenBlocks]:
    def load(spec: SourceConfig, ctx: _Context) -> TokenBlocks:
        docs = load_documents(name, ctx.data_dir)
        return _text_blocks(docs, spec, ctx, str(ctx.data_dir / DOCUMENT_SETS[name]))

    return load


def _load_wikitext2(spec: SourceConfig, ctx: _Context) -> TokenBlocks:
    path = ensure_file(ctx.data_dir, f"text/wikitext-2/{spec.split or 'valid'}.txt")
    # The whole split is one document, as in the usual WikiText-2 perplexity evaluation.
    return _text_blocks([read_text(path)], spec, ctx, str(path))


def _load_file(spec: SourceConfig, ctx: _Context) -> TokenBlocks:
    path = user_path(str(spec.path), ctx.data_dir)
    docs = read_documents(path, spec.text_field)
    if spec.per_document:
        return _document_blocks(docs, spec, ctx, str(path))
    return _text_blocks(docs, spec, ctx, str(path))


def _load_tofu(spec: SourceConfig, ctx: _Context) -> TokenBlocks:
    split = spec.split or "forget10"
    rows = read_qa_rows(ctx.data_dir, split)
    if not rows:
        raise _empty(spec.label(), f"TOFU's {split} has no rows", "check the data directory's tofu/ files")
    chosen = _choose(len(rows), spec.n, spec.seed, what="questions", source=spec.label())
    return qa_blocks([rows[i] for i in chosen], ctx.tokenizer, template=spec.template or DEFAULT_TEMPLATE,
                     name=spec.label(), ids=[f"{split}#{i}" for i in chosen], pad_id=ctx.pad_id)


def _document_blocks(docs: Sequence[str], spec: SourceConfig, ctx: _Context, where: str) -> TokenBlocks:
    """One block per document (a record to delete stays one sequence), cut or right-padded to seq_len."""
    encoded = [ids for ids in _encode(ctx.tokenizer, [doc for doc in docs if doc]) if ids]
    if not encoded:
        raise _empty(spec.label(), f"{where} has no text", "give a file with text in it")
    chosen = _choose(len(encoded), spec.n, spec.seed, what="documents", source=spec.label())
    longest = max(len(encoded[i]) for i in chosen)
    if longest > ctx.seq_len:
        cut = sum(len(encoded[i]) > ctx.seq_len for i in chosen)
        warnings.warn(f"{cut} of the {len(chosen)} documents of {where} are longer than seq_len = {ctx.seq_len} "
                      f"tokens (the longest has {longest}) and are cut to it; raise data.seq_len to keep them "
                      "whole.", stacklevel=2)
    length = min(ctx.seq_len, longest)
    return TokenBlocks.from_lists(
        [encoded[i] for i in chosen], spec.label(), pad_id=ctx.pad_id, ids=[f"doc{i}" for i in chosen],
        seq_len=length,
    )


def _text_blocks(docs: Sequence[str], spec: SourceConfig, ctx: _Context, where: str) -> TokenBlocks:
    docs = [doc for doc in docs if doc]
    if not docs:
        raise _empty(spec.label(), f"{where} has no text", "give a file with text in it")
    encoded = [ids for ids in _encode(ctx.tokenizer, docs) if ids]
    eos = ctx.tokenizer.eos_token_id
    separator = [eos] if isinstance(eos, int) else _encode(ctx.tokenizer, ["\n\n"])[0]
    stream: list[int] = []
    for i, ids in enumerate(encoded):
        if i:
            stream.extend(separator)
        stream.extend(ids)
    if not stream:
        raise _empty(spec.label(), f"{where} tokenises to nothing", "give a file with text in it")
    length = ctx.seq_len
    if len(stream) < length:
        rows = [stream]  # the documented exception: shorter than one block -> one padded block
    else:
        rows = [stream[i : i + length] for i in range(0, len(stream) - length + 1, length)]
    chosen = _choose(len(rows), spec.n, spec.seed, what=f"blocks of {length} tokens", source=spec.label())
    return TokenBlocks.from_lists(
        [rows[i] for i in chosen], spec.label(), pad_id=ctx.pad_id, ids=[f"block{i}" for i in chosen],
        seq_len=length,
    )


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # verbose=False: the blocks are cut afterwards, so "longer than model_max_length" is noise.
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return [list(ids) for ids in encoded]


# --------------------------------------------------------------------------- helpers


def _choose(total: int, n: int | None, seed: int, *, what: str, source: str) -> list[int]:
    """Indices of ``n`` of ``total`` items drawn at random by ``seed``, sorted; all when n is None."""
    if n is None:
        chosen = list(range(total))
    elif n > total:
        raise UnlearnkitError(
            f"Source {source} asks for n={n} but has only {total} {what}; set n to {total} or less."
        )
    else:
        rng = np.random.default_rng(seed)
        chosen = sorted(int(i) for i in rng.choice(total, size=n, replace=False))
    if not chosen:
        raise _empty(source, "n=0 selects nothing" if n == 0 else f"it has no {what}", "set n to 1 or more")
    return chosen


def _empty(source: str, why: str, fix: str) -> UnlearnkitError:
    return UnlearnkitError(f"The data set from source {source} is empty ({why}); {fix}.")


# --------------------------------------------------------------------------- registry


#: Each source named in :data:`unlearnkit.config.SOURCES` and the function that loads it.
LOADERS: dict[str, Callable[[SourceConfig, _Context], TokenBlocks]] = {
    "tdec": _load_tdec_source,
    "jang": _load_jang,
    "jang_domain": _load_jang_domain,
    "wikitext": _load_jang_csv_text("wikitext"),
    "pile": _load_jang_csv_text("pile"),
    "wikitext2": _load_wikitext2,
    "file": _load_file,
    "tofu": _load_tofu,
}


__all__ = [
    "DOCUMENT_SETS", "LOADERS", "dataset_fingerprint", "ensure_file", "is_gpt2_tokenizer",
    "load_blocks", "load_documents", "load_gpt2_tokenizer", "load_tdec", "resolve_data_dir",
]


def load_blocks(spec: SourceConfig, tokenizer: PreTrainedTokenizerBase, data_dir: str | Path,
                seq_len: int = TDEC_ROW_LEN, *, tokenizer_is_gpt2: bool | None = None) -> TokenBlocks:
    """Load ``spec`` as token blocks of ``spec.seq_len or seq_len`` tokens for ``tokenizer``.

    ``tokenizer_is_gpt2`` overrides the detection of a GPT-2-compatible tokenizer (which decides
    whether TDEC token ids are used as they are or re-tokenised).
    """
    if spec.source not in LOADERS:  # a SourceConfig built with model_construct skips validation
        raise unknown_name("data source", spec.source, LOADERS)
    length = spec.seq_len or seq_len
    if length < 2:
        raise UnlearnkitError(f"seq_len={length} is too short; use at least 2 tokens per block.")
    ctx = _Context(tokenizer, Path(data_dir), length, tokenizer_is_gpt2)
    return LOADERS[spec.source](spec, ctx)


def dataset_fingerprint(blocks: TokenBlocks) -> str:
    """sha256 over the blocks' shape, token ids, attention mask and loss mask where given (int64, little-endian).

    Two runs with the same fingerprint trained and measured on exactly the same tokens.
    """
    digest = hashlib.sha256()
    digest.update(f"{len(blocks)}x{blocks.seq_len};".encode())
    tensors = [blocks.input_ids, blocks.attention_mask] + ([] if blocks.loss_mask is None else [blocks.loss_mask])
    for tensor in tensors:
        digest.update(tensor.detach().to("cpu", torch.int64).contiguous().numpy().astype("<i8").tobytes())
    return digest.hexdigest()
