"""The testbeds' settings and text: sizes, the cache key, the training and held-out blocks, and the forget sets.

The paper's TDEC experiment (Section 4.1, Table 1) unlearns TDEC sequences that GPT-Neo memorised
during pre-training on the Pile. A testbed is a stand-in that runs on a CPU: a small GPT-Neo
trained from scratch, with the GPT-2 tokenizer of the data directory, on

* WikiText-2 (``valid``), most of Jang et al.'s Pile validation documents, the WikiText rows that
  serve as the retain set, and TDEC train rows outside the pool (each seen about once);
* the **forget pool**: the 128 rows of Jang et al.'s ``lm_extraction_128_{k}``, repeated every epoch
  until the model has memorised them (pool MA ≥ 0.9), the way GPT-Neo memorised TDEC;

while TDEC validation rows (the forgetting thresholds), the tail of the Pile documents and
WikiText-2 ``test`` (perplexity) are held out. Every ``lm_extraction_32_{k}`` set lies inside
``lm_extraction_128_{k}``, so forget set 0 is Jang et al.'s own 32-sequence set and the other 96
pool rows give further disjoint forget sets of 32 (:func:`forget_set_sources`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from unlearnkit.config import SourceConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.sources import load_blocks, load_tdec
from unlearnkit.errors import UnlearnkitError

TESTBED_VERSION = 1
POOL_SIZE = 128
FORGET_SIZE = 32
TESTBED_CONFIGS = ("ga", "gd", "lora-gd", "lora-ihl", "flora-gd", "flora-ihl")  # configs/{testbed,smollm2}/*.yaml


@dataclass(frozen=True)
class TestbedSettings:
    """Everything a testbed build depends on; its hash names the cache directory."""

    __test__ = False  # not a pytest test class

    size: str
    # model shape
    layers: int
    hidden: int
    heads: int
    seq_len: int
    # data
    pool_set: int = 0  # the pool is jang lm_extraction_128_{pool_set}
    kept_background_tokens: int = 4096  # most frequent background tokens given trainable rows
    wikitext2_blocks: int = 400  # WikiText-2 valid blocks trained on
    pile_blocks: int = 400  # Pile blocks trained on (from the head of the documents)
    retain_blocks: int = 400  # WikiText (retain set) blocks trained on
    tdec_rows: int = 300  # TDEC train rows outside the pool, trained on
    heldout_blocks: int = 32  # held-out Pile tail blocks and WikiText-2 test blocks, each
    heldout_tdec: int = 32  # TDEC validation rows (the thresholds of the configs: n=32 seed=0)
    # training
    lr: float = 2e-3
    warmup_steps: int = 20
    batch_size: int = 16
    background_per_epoch: int = 128  # background blocks mixed with the pool in each epoch
    max_epochs: int = 40
    target_ma: float = 0.9
    seed: int = 0
    # the adapter rank for this shape (paper: 16 on hidden 768), recorded for configs and benchmarks
    lora_rank: int = 8

    def key(self) -> str:
        text = json.dumps({"version": TESTBED_VERSION, **asdict(self)}, sort_keys=True)
        return f"{self.size}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


SIZES: dict[str, TestbedSettings] = {
    # For tests. Rows are cut to their first 32 tokens.
    "tiny": TestbedSettings(size="tiny", layers=2, hidden=64, heads=4, seq_len=32, kept_background_tokens=512,
                            wikitext2_blocks=64, pile_blocks=64, retain_blocks=64, tdec_rows=64, heldout_blocks=16,
                            lr=5e-3, warmup_steps=5, batch_size=16, background_per_epoch=32, max_epochs=60,
                            lora_rank=2),
    # The miniature of Table 1: full 200-token TDEC rows.
    "small": TestbedSettings(size="small", layers=4, hidden=192, heads=4, seq_len=200, lr=1e-3, batch_size=8,
                             background_per_epoch=32, max_epochs=60, lora_rank=4),
}


def settings_for(size: str) -> TestbedSettings:
    if size not in SIZES:
        raise UnlearnkitError(f'Unknown testbed size "{size}"; choose one of: {", ".join(SIZES)}.')
    return SIZES[size]


@dataclass
class TestbedData:
    """The blocks a build trains on and scores."""

    __test__ = False

    pool: TokenBlocks
    background: TokenBlocks  # everything else trained on
    heldout_tdec: TokenBlocks
    heldout_text: dict[str, TokenBlocks]  # perplexity sets, never trained on
    retain_eval: TokenBlocks  # trained retain-set blocks, for retain perplexity


def concat_blocks(parts: list[TokenBlocks], name: str) -> TokenBlocks:
    """``parts`` one after the other, rows named ``<part name>#<row id>``."""
    masked = any(p.loss_mask is not None for p in parts)
    loss_mask = torch.cat([p.scored_mask for p in parts]) if masked else None
    return TokenBlocks(torch.cat([p.input_ids for p in parts]), torch.cat([p.attention_mask for p in parts]), name,
                       [f"{p.name}#{i}" for p in parts for i in (p.ids or [str(j) for j in range(len(p))])],
                       loss_mask=loss_mask)


def _head(blocks: TokenBlocks, count: int) -> TokenBlocks:
    return blocks.subset(list(range(min(count, len(blocks)))))


def pile_split(pile: TokenBlocks) -> tuple[TokenBlocks, TokenBlocks]:
    """Pile validation blocks cut in two: the first 90% may be trained on, the last 10% are held out
    (one block between them is dropped, so no held-out block shares text with a trained one's end)."""
    cut = int(len(pile) * 0.9)
    return pile.subset(list(range(cut))), pile.subset(list(range(cut + 1, len(pile))))


def heldout_text_blocks(tokenizer: Any, data_dir: str | Path, seq_len: int, count: int,
                        pile: TokenBlocks | None = None) -> dict[str, TokenBlocks]:
    """Held-out general text for perplexity: ``count`` blocks of the Pile tail and of WikiText-2 test."""
    if pile is None:
        pile = load_blocks(SourceConfig(source="pile"), tokenizer, data_dir, seq_len=seq_len)
    _, pile_tail = pile_split(pile)
    wiki_test = load_blocks(SourceConfig(source="wikitext2", split="test"), tokenizer, data_dir, seq_len=seq_len)
    return {"pile_heldout": _head(pile_tail, count), "wikitext2_test": _head(wiki_test, count)}


def retain_eval_blocks(tokenizer: Any, data_dir: str | Path, seq_len: int, count: int) -> TokenBlocks:
    """The first ``count`` blocks of the retain set (WikiText rows, trained on): retain perplexity."""
    return _head(load_blocks(SourceConfig(source="wikitext"), tokenizer, data_dir, seq_len=seq_len), count)


def load_testbed_data(settings: TestbedSettings, tokenizer: Any, data_dir: str | Path) -> TestbedData:
    seq = settings.seq_len
    pool = load_blocks(SourceConfig(source="jang", n=POOL_SIZE, set=settings.pool_set), tokenizer, data_dir,
                       seq_len=seq)
    wiki = _head(load_blocks(SourceConfig(source="wikitext2", split="valid"), tokenizer, data_dir, seq_len=seq),
                 settings.wikitext2_blocks)
    all_pile = load_blocks(SourceConfig(source="pile"), tokenizer, data_dir, seq_len=seq)
    pile = _head(pile_split(all_pile)[0], settings.pile_blocks)
    retain = _head(load_blocks(SourceConfig(source="wikitext"), tokenizer, data_dir, seq_len=seq),
                   settings.retain_blocks)
    # TDEC train rows outside every published 128-row pool (so a forget set drawn from those sets is never
    # trained on unless it is in this pool), each seen about once, as the Pile's other TDEC rows were.
    excluded: set[int] = set()
    for k in range(5):
        excluded |= {int(i) for i in load_blocks(SourceConfig(source="jang", n=POOL_SIZE, set=k), tokenizer,
                                                  data_dir, seq_len=2).ids}
    total = len(load_tdec(data_dir, "train"))
    generator = torch.Generator().manual_seed(settings.seed)
    candidates = [r for r in torch.randperm(total, generator=generator).tolist() if r not in excluded]
    tdec = load_blocks(SourceConfig(source="tdec", rows=sorted(candidates[: settings.tdec_rows])), tokenizer,
                       data_dir, seq_len=seq)
    heldout_tdec = load_blocks(SourceConfig(source="tdec", split="val", n=settings.heldout_tdec, seed=0), tokenizer,
                               data_dir, seq_len=seq)
    return TestbedData(
        pool=pool, background=concat_blocks([wiki, pile, retain, tdec], "background"), heldout_tdec=heldout_tdec,
        heldout_text=heldout_text_blocks(tokenizer, data_dir, seq, settings.heldout_blocks, pile=all_pile),
        retain_eval=_head(retain, settings.heldout_blocks),
    )


def forget_set_sources(manifest: dict[str, Any], count: int = 3) -> list[SourceConfig]:
    """``count`` disjoint forget sets of 32 pool rows: Jang et al.'s ``lm_extraction_32_{k}`` (inside the
    128-row pool) first, then the remaining pool rows in pool order, 32 at a time, as ``tdec`` rows."""
    pool_rows = [int(r) for r in manifest["pool_rows"]]
    first = [int(r) for r in manifest["jang32_rows"]]
    rest = [r for r in pool_rows if r not in set(first)]
    if count > 1 + len(rest) // FORGET_SIZE:
        raise UnlearnkitError(f"The pool holds {len(pool_rows)} rows: at most {1 + len(rest) // FORGET_SIZE} "
                              f"forget sets of {FORGET_SIZE}; ask for fewer.")
    sources = [SourceConfig(source="jang", n=FORGET_SIZE, set=int(manifest["settings"]["pool_set"]))]
    for i in range(count - 1):
        sources.append(SourceConfig(source="tdec", rows=rest[i * FORGET_SIZE:(i + 1) * FORGET_SIZE]))
    return sources
