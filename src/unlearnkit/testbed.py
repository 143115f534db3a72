"""A miniature TDEC testbed that runs on a CPU: a small GPT-Neo trained from scratch that has memorised TDEC rows.

The paper's TDEC experiment (Section 4.1, Table 1) unlearns TDEC sequences that GPT-Neo memorised
during pre-training on the Pile. GPT-Neo weights are not available offline, so :func:`build_testbed`
makes a stand-in:

* a ``GPTNeoForCausalLM`` initialised at random and trained **from scratch** with the GPT-2 tokenizer
  of the data directory, so TDEC token ids are used as they are (no re-tokenisation);
* its training text is WikiText-2 (``valid``), most of Jang et al.'s Pile validation documents, the
  WikiText rows that serve as the retain set, TDEC train rows outside the pool (each seen about once),
  and the **forget pool**: the 128 rows of Jang et al.'s ``lm_extraction_128_{k}``, repeated every
  epoch until the model has memorised them (pool MA ≥ 0.9), the way GPT-Neo memorised TDEC;
* held out (never trained on): TDEC validation rows (the forgetting thresholds), the tail of the
  Pile documents and WikiText-2 ``test`` (perplexity).

Every ``lm_extraction_32_{k}`` set lies inside ``lm_extraction_128_{k}``, so forget set 0 is Jang et
al.'s own 32-sequence set (``jang`` n=32 set=k) and the other 96 pool rows give further disjoint
forget sets of 32 (``tdec`` with ``rows:``), see :func:`forget_set_sources`.

**The vocabulary trick.** A 50257-token output layer is 30x the cost of the rest of a model this
small on a CPU. The model keeps the full GPT-2 vocabulary, but only ``kept`` tokens (every pool token
plus the most frequent background tokens) have trainable embedding rows; the others are fixed at zero,
so their logit is exactly 0. The training loss is then the *exact* full-vocabulary cross-entropy,
computed from the kept logits plus one extra logit ``log(number of zero rows)`` for the rest. The
saved checkpoint is a plain GPT-Neo with the full vocabulary: every metric and every unlearning run
sees an ordinary model (rare tokens simply behave like an "unknown" token).

The result is cached under ``$UNLEARNKIT_CACHE/testbed/<size>-<settings hash>/`` (default cache
root ``~/.cache/unlearnkit``) with ``model/`` and ``manifest.json``; ``testbed/<size>`` is a link to
the latest build, so configs can name ``~/.cache/unlearnkit/testbed/small/model``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import time
from collections import Counter
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch

from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.sources import GPT2_VOCAB_SIZE, SourceConfig, load_blocks, load_gpt2_tokenizer, load_tdec
from unlearnkit.errors import UnlearnkitError
from unlearnkit.outputs import save_model_to_cache
from unlearnkit.progress import Progress

TESTBED_VERSION = 1
POOL_SIZE = 128
FORGET_SIZE = 32
METHODS = ("ga", "gd", "lora-gd", "lora-ihl", "flora-gd", "flora-ihl")


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
    # For tests: about a minute on one core. Rows are cut to their first 32 tokens.
    "tiny": TestbedSettings(size="tiny", layers=2, hidden=64, heads=4, seq_len=32, kept_background_tokens=512,
                            wikitext2_blocks=64, pile_blocks=64, retain_blocks=64, tdec_rows=64, heldout_blocks=16,
                            lr=5e-3, warmup_steps=5, batch_size=16, background_per_epoch=32, max_epochs=60,
                            lora_rank=2),
    # The miniature of Table 1: full 200-token TDEC rows; ≤ 20 minutes on 2 cores.
    # lr by measurement (pool MA after 14 epochs, one thread each): 1e-2 → 0.11, 3e-3 → 0.21 (batch 4: 0.14),
    # 1e-3 → 0.49, 5e-4 → 0.43; hidden 256 at 1e-3 → 0.46 and 40% slower per epoch.
    "small": TestbedSettings(size="small", layers=4, hidden=192, heads=4, seq_len=200, lr=1e-3, batch_size=8,
                             background_per_epoch=32, max_epochs=60, lora_rank=4),
}


def cache_root() -> Path:
    return Path(os.environ.get("UNLEARNKIT_CACHE", Path.home() / ".cache" / "unlearnkit"))


def settings_for(size: str) -> TestbedSettings:
    if size not in SIZES:
        raise UnlearnkitError(f'Unknown testbed size "{size}"; choose one of: {", ".join(SIZES)}.')
    return SIZES[size]


def testbed_dir(size: str = "small", settings: TestbedSettings | None = None) -> Path:
    """Where the testbed of ``size`` is (or will be) cached."""
    settings = settings or settings_for(size)
    return cache_root() / "testbed" / settings.key()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    return dict(json.loads((Path(directory) / "manifest.json").read_text(encoding="utf-8")))


# ------------------------------------------------------------------------------------------ data


@dataclass
class TestbedData:
    __test__ = False

    pool: TokenBlocks
    background: TokenBlocks  # everything else trained on
    heldout_tdec: TokenBlocks
    heldout_text: dict[str, TokenBlocks]  # perplexity sets, never trained on
    retain_eval: TokenBlocks  # trained retain-set blocks, for retain perplexity


def _cat(parts: list[TokenBlocks], name: str) -> TokenBlocks:
    return TokenBlocks(torch.cat([p.input_ids for p in parts]), torch.cat([p.attention_mask for p in parts]), name,
                       [f"{p.name}#{i}" for p in parts for i in (p.ids or [str(j) for j in range(len(p))])])


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
        pool=pool, background=_cat([wiki, pile, retain, tdec], "background"), heldout_tdec=heldout_tdec,
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


# ------------------------------------------------------------------------------------------ model


def new_model(settings: TestbedSettings) -> Any:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(settings.seed)
    eos = GPT2_VOCAB_SIZE - 1
    config = GPTNeoConfig(
        vocab_size=GPT2_VOCAB_SIZE, hidden_size=settings.hidden, num_layers=settings.layers,
        num_heads=settings.heads, attention_types=[[["global", "local"], max(1, settings.layers // 2)]],
        intermediate_size=4 * settings.hidden, max_position_embeddings=max(settings.seq_len, 64),
        window_size=max(settings.seq_len, 64), bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True,
    )
    if settings.layers == 1:
        config.attention_types = [[["global"], 1]]
        config.attention_layers = ["global"]
    return GPTNeoForCausalLM(config)


def kept_tokens(data: TestbedData, settings: TestbedSettings) -> torch.Tensor:
    """Sorted ids with trainable rows: every pool token, the EOS, and the ``kept_background_tokens`` most
    frequent background tokens (held-out text plays no part in the choice)."""
    counts = Counter(data.background.input_ids[data.background.attention_mask > 0].tolist())
    kept = {int(t) for t in data.pool.input_ids[data.pool.attention_mask > 0].tolist()}
    kept |= {t for t, _ in counts.most_common(settings.kept_background_tokens)}
    kept.add(GPT2_VOCAB_SIZE - 1)
    return torch.tensor(sorted(kept), dtype=torch.long)


def restricted_lm_loss(model: Any, blocks: TokenBlocks, kept: torch.Tensor, lookup: torch.Tensor) -> torch.Tensor:
    """The exact full-vocabulary next-token cross-entropy when every row outside ``kept`` is zero.

    Zero rows give logit 0, so the log-partition is ``logsumexp(kept logits, log(#zero rows))`` and a
    target outside ``kept`` has logit 0.
    """
    hidden = model.transformer(input_ids=blocks.input_ids, attention_mask=blocks.attention_mask).last_hidden_state
    logits = hidden[:, :-1] @ model.lm_head.weight[kept].t()
    rest = math.log(GPT2_VOCAB_SIZE - len(kept))
    lse = torch.logsumexp(torch.cat([logits, torch.full_like(logits[..., :1], rest)], dim=-1), dim=-1)
    position = lookup[blocks.input_ids[:, 1:]]
    target = logits.gather(-1, position.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    target = torch.where(position >= 0, target, torch.zeros_like(target))
    valid = blocks.attention_mask[:, 1:] > 0
    return ((lse - target) * valid).sum() / valid.sum().clamp(min=1)


@torch.no_grad()
def restricted_ma(model: Any, blocks: TokenBlocks, kept: torch.Tensor, lookup: torch.Tensor,
                  batch_size: int = 64) -> float:
    """Mean MA (Eq. 8) of ``blocks`` from the kept logits only: exact while every row outside ``kept`` is zero
    (a zero row has logit 0, so the argmax is a kept token exactly when the best kept logit is above 0)."""
    model.eval()
    hits = total = 0
    weight = model.lm_head.weight[kept]
    for start in range(0, len(blocks), batch_size):
        ids = blocks.input_ids[start:start + batch_size]
        mask = blocks.attention_mask[start:start + batch_size]
        hidden = model.transformer(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        best, position = (hidden @ weight.t()).max(dim=-1)
        target = lookup[ids[:, 1:]]
        valid = mask[:, 1:] > 0
        hits += int(((position == target) & (target >= 0) & (best > 0) & valid).sum())
        total += int(valid.sum())
    return hits / max(total, 1)


def _fused() -> dict[str, bool]:
    # The fused AdamW kernel is much faster on the large (mostly frozen) embedding; older torch lacks it on CPU.
    return {"fused": True} if tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 4) else {}


@dataclass
class TrainResult:
    epochs: int
    steps: int
    pool_ma: float
    reached_target: bool
    history: list[dict[str, float]]
    tokens: int


def train_testbed(model: Any, data: TestbedData, settings: TestbedSettings, progress: Progress) -> TrainResult:
    """Train from scratch on pool + background until pool MA ≥ target (checked after every epoch)."""
    kept = kept_tokens(data, settings)
    lookup = torch.full((GPT2_VOCAB_SIZE,), -1, dtype=torch.long)
    lookup[kept] = torch.arange(len(kept))
    frozen = lookup < 0
    weight = model.transformer.wte.weight
    with torch.no_grad():
        weight[frozen] = 0.0
    weight.register_hook(lambda grad: grad.masked_fill(frozen.unsqueeze(1), 0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0, betas=(0.9, 0.98),
                                  **_fused())
    generator = torch.Generator().manual_seed(settings.seed)
    background_order = torch.randperm(len(data.background), generator=generator)
    per_epoch = len(data.pool) + settings.background_per_epoch
    steps_per_epoch = math.ceil(per_epoch / settings.batch_size)
    history: list[dict[str, float]] = []
    step = tokens = cursor = 0
    ma = 0.0
    started = time.perf_counter()
    ticks = cast(Generator[int, None, None], progress.track(
        range(settings.max_epochs), total=settings.max_epochs, description=f"training the {settings.size} testbed",
        unit="epochs"))
    with contextlib.closing(ticks):
        for epoch in ticks:
            take = (background_order.roll(-cursor)[: settings.background_per_epoch]).tolist()
            cursor = (cursor + settings.background_per_epoch) % len(data.background)
            epoch_blocks = _cat([data.pool, data.background.subset(take)], "epoch")
            order = torch.randperm(len(epoch_blocks), generator=generator)
            model.train()
            losses = []
            for start in range(0, len(order), settings.batch_size):
                batch = epoch_blocks.subset(order[start:start + settings.batch_size])
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr * min(1.0, (step + 1) / max(1, settings.warmup_steps))
                loss = restricted_lm_loss(model, batch, kept, lookup)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                step += 1
                tokens += batch.num_tokens
            ma = restricted_ma(model, data.pool, kept, lookup)
            history.append({"epoch": epoch + 1, "loss": round(sum(losses) / len(losses), 4), "pool_ma": round(ma, 4),
                            "elapsed_s": round(time.perf_counter() - started, 1)})
            if not progress.quiet:
                progress.console.print(f"  epoch {epoch + 1}: loss {history[-1]['loss']:.3f}, pool MA {ma:.3f} "
                                       f"(target {settings.target_ma}), {steps_per_epoch} steps")
            if ma >= settings.target_ma:
                return TrainResult(epoch + 1, step, ma, True, history, tokens)
    return TrainResult(settings.max_epochs, step, ma, False, history, tokens)


# ------------------------------------------------------------------------------------------ measure


def perplexity_of(model: Any, blocks: TokenBlocks, batch_size: int = 16) -> float:
    """Token-weighted mean next-token NLL over ``blocks`` (padding excluded), exponentiated."""
    from unlearnkit.perplexity import perplexity

    return perplexity(model, blocks, batch_size=batch_size)


def heldout_perplexity(model: Any, sets: dict[str, TokenBlocks]) -> dict[str, float]:
    """Perplexity of each held-out set and of all of them together (token-weighted)."""
    result = {name: perplexity_of(model, blocks) for name, blocks in sets.items()}
    weights = {name: blocks.num_tokens - len(blocks) for name, blocks in sets.items()}
    total = sum(weights.values())
    result["combined"] = math.exp(sum(math.log(result[n]) * w for n, w in weights.items()) / total)
    return result


def measure(model: Any, blocks: TokenBlocks, el_n: int = 10, el: bool = True) -> dict[str, float]:
    """Mean MA and (unless ``el=False``) EL_n of ``blocks``."""
    from unlearnkit.metrics.memorization import extraction_likelihood, memorization_accuracy

    ma = memorization_accuracy(model, blocks.input_ids, blocks.attention_mask)
    scores = {"ma": round(float(ma.mean()), 4)}
    if el:
        values = extraction_likelihood(model, blocks.input_ids, n=el_n, attention_mask=blocks.attention_mask)
        scores[f"el{el_n}"] = round(float(values.mean()), 4)
    return scores


# ------------------------------------------------------------------------------------------ build


def build_testbed(size: str = "small", *, data_dir: str | Path | None = None, quiet: bool = False,
                  progress: Progress | None = None, settings: TestbedSettings | None = None,
                  force: bool = False) -> Path:
    """The cached testbed directory of ``size`` (``model/`` + ``manifest.json``), trained first if missing."""
    from unlearnkit.data.catalog import resolve_data_dir

    settings = settings or settings_for(size)
    progress = progress or Progress(quiet=quiet)
    directory = testbed_dir(settings.size, settings)
    if not force and (directory / "manifest.json").is_file() and (directory / "model" / "config.json").is_file():
        _point_latest(directory, settings.size)
        return directory
    started = time.perf_counter()
    data_path = resolve_data_dir(data_dir)
    tokenizer = load_gpt2_tokenizer(data_path)
    with progress.status("Loading the testbed text (TDEC, WikiText, Pile)", announce=not quiet):
        data = load_testbed_data(settings, tokenizer, data_path)
    model = new_model(settings)
    load_s = time.perf_counter() - started
    trained = train_testbed(model, data, settings, progress)
    train_s = time.perf_counter() - started - load_s
    model.eval()
    t0 = time.perf_counter()
    with progress.status("Measuring memorisation and perplexity", announce=not quiet):
        pool_jang32 = load_blocks(SourceConfig(source="jang", n=FORGET_SIZE, set=settings.pool_set), tokenizer,
                                  data_path, seq_len=settings.seq_len)
        # EL10 is scored on the first forget set rather than the whole pool: it is the dearest score (minutes per
        # 32 rows on 2 cores), and the 32 rows are the ones the configs unlearn.
        measured = {
            "pool": measure(model, data.pool, el=False),
            "forget_set_0": measure(model, pool_jang32),
            "heldout_tdec_val": measure(model, data.heldout_tdec),
            "perplexity": {**heldout_perplexity(model, data.heldout_text),
                           "retain": perplexity_of(model, data.retain_eval)},
        }
    manifest = {
        "size": settings.size, "key": directory.name, "settings": asdict(settings),
        "seq_len": settings.seq_len, "lora_rank": settings.lora_rank,
        "parameters": sum(p.numel() for p in model.parameters()),
        "kept_tokens": len(kept_tokens(data, settings)),
        "pool_source": {"source": "jang", "n": POOL_SIZE, "set": settings.pool_set},
        "pool_rows": [int(i) for i in data.pool.ids],
        "jang32_rows": [int(i) for i in pool_jang32.ids],
        "heldout_tdec_val_rows": [int(i) for i in data.heldout_tdec.ids],
        "training": {"epochs": trained.epochs, "steps": trained.steps, "tokens": trained.tokens,
                     "reached_target": trained.reached_target, "history": trained.history,
                     "background_blocks": len(data.background)},
        "measured": measured,
        "seconds": {"load": round(load_s, 1), "train": round(train_s, 1),
                    "measure": round(time.perf_counter() - t0, 1), "total": round(time.perf_counter() - started, 1)},
        "threads": torch.get_num_threads(), "machine": platform.machine(), "torch": torch.__version__,
        "data_dir": str(data_path),
    }
    if not set(manifest["jang32_rows"]) <= set(manifest["pool_rows"]):  # pragma: no cover - data invariant
        raise UnlearnkitError("lm_extraction_32_k is not inside lm_extraction_128_k; the data files are not Jang's.")
    save_model_to_cache(directory, model, tokenizer, "manifest.json", manifest)
    _point_latest(directory, settings.size)
    if not quiet:
        mark = "[green]✓[/green]" if trained.reached_target else "[yellow]![/yellow]"
        progress.console.print(
            f"{mark} {settings.size} testbed: pool MA {measured['pool']['ma']:.3f}, forget set 0 "
            f"EL10 {measured['forget_set_0']['el10']:.3f}; held-out TDEC MA "
            f"{measured['heldout_tdec_val']['ma']:.3f}, EL10 {measured['heldout_tdec_val']['el10']:.3f}; "
            f"{trained.epochs} epochs, "
            f"{manifest['seconds']['total']:.0f}s; cached in {directory}")
    return directory


def _point_latest(directory: Path, size: str) -> None:
    """Make ``testbed/<size>`` a link to ``directory`` (atomically), so configs can name a fixed path."""
    link = directory.parent / size
    if link.is_symlink() and os.readlink(link) == directory.name:
        return
    if link.exists() and not link.is_symlink():
        return  # a real directory of that name: leave it alone
    temp = directory.parent / f".{size}.link-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    try:
        temp.symlink_to(directory.name)
        os.replace(temp, link)
    except OSError:  # no symlinks here (some filesystems): --print-path still works
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


# ------------------------------------------------------------------------------------------ SmolLM2


@dataclass(frozen=True)
class SmolSettings:
    """SmolLM2-135M fine-tuned (all weights) on one 32-sequence TDEC forget set until it is memorised."""

    forget_set: int = 0  # jang lm_extraction_32_{forget_set}
    seq_len: int = 200
    lr: float = 1e-4
    batch_size: int = 8
    max_epochs: int = 20
    target_ma: float = 0.9
    seed: int = 0
    heldout_tdec: int = 32

    @property
    def size(self) -> str:
        return "smollm2"

    def key(self) -> str:
        text = json.dumps({"version": TESTBED_VERSION, "model": "smollm2", **asdict(self)}, sort_keys=True)
        return f"smollm2-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def smollm2_dir(settings: SmolSettings | None = None) -> Path:
    return cache_root() / "testbed" / (settings or SmolSettings()).key()


def build_smollm2(*, data_dir: str | Path | None = None, quiet: bool = False, progress: Progress | None = None,
                  settings: SmolSettings | None = None, force: bool = False) -> Path:
    """SmolLM2-135M that has memorised Jang et al.'s ``lm_extraction_32_{k}`` (decoded from TDEC's GPT-2 ids and
    re-tokenised by the data layer), cached like the testbed: ``testbed/smollm2-<hash>/{model/,manifest.json}``.

    Measured: 6 epochs of full fine-tuning at lr 1e-4, batch 8 (13 min on one core beside another job), then
    13 min scoring EL10 of the memorised set.
    """
    from unlearnkit.data.catalog import resolve_data_dir
    from unlearnkit.memorize import memorize
    from unlearnkit.modeling import load_model

    settings = settings or SmolSettings()
    progress = progress or Progress(quiet=quiet)
    directory = smollm2_dir(settings)
    if not force and (directory / "manifest.json").is_file() and (directory / "model" / "config.json").is_file():
        _point_latest(directory, "smollm2")
        return directory
    started = time.perf_counter()
    data_path = resolve_data_dir(data_dir)
    with progress.status("Loading SmolLM2-135M", announce=not quiet):
        loaded = load_model("smollm2")
    model, tokenizer = loaded.model, loaded.tokenizer
    forget = load_blocks(SourceConfig(source="jang", n=FORGET_SIZE, set=settings.forget_set), tokenizer, data_path,
                         seq_len=settings.seq_len)
    heldout = load_blocks(SourceConfig(source="tdec", split="val", n=settings.heldout_tdec, seed=0), tokenizer,
                          data_path, seq_len=settings.seq_len)
    # EL10 of text a model has not memorised costs as much as the reference definition (every prefix branches):
    # about 20 minutes per 32 x 200 tokens for SmolLM2 on 2 cores. So MA only, except for the memorised set after.
    before = {"forget": measure(model, forget, el=False), "heldout_tdec_val": measure(model, heldout, el=False)}
    ticks = cast(Generator[int, None, None], progress.track(
        range(settings.max_epochs), total=settings.max_epochs, description="memorising jang 32 on SmolLM2",
        unit="epochs"))

    def on_epoch(epoch: int, ma: float) -> None:
        next(ticks, None)
        if not quiet:
            progress.console.print(f"  epoch {epoch}: forget MA {ma:.3f} (target {settings.target_ma})")

    with contextlib.closing(ticks):
        result = memorize(model, forget, target_ma=settings.target_ma, max_epochs=settings.max_epochs,
                          lr=settings.lr, batch_size=settings.batch_size, seed=settings.seed, on_epoch=on_epoch)
    train_s = time.perf_counter() - started
    model.eval()
    after = {"forget": measure(model, forget), "heldout_tdec_val": measure(model, heldout, el=False)}
    manifest = {
        "size": "smollm2", "key": directory.name, "settings": asdict(settings), "seq_len": settings.seq_len,
        "forget_source": {"source": "jang", "n": FORGET_SIZE, "set": settings.forget_set},
        "forget_rows": [int(i) for i in forget.ids], "retokenized": forget.retokenized,
        "training": {"epochs": result.epochs, "reached_target": result.reached_target, "history": result.history},
        "measured": {"before": before, "after": after},
        "seconds": {"train": round(train_s, 1), "total": round(time.perf_counter() - started, 1)},
        "threads": torch.get_num_threads(), "torch": torch.__version__, "data_dir": str(data_path),
    }
    save_model_to_cache(directory, model, tokenizer, "manifest.json", manifest)
    _point_latest(directory, "smollm2")
    if not quiet:
        progress.console.print(f"✓ SmolLM2 memorised jang 32_{settings.forget_set}: MA {after['forget']['ma']:.3f} "
                               f"(held-out {after['heldout_tdec_val']['ma']:.3f}); cached in {directory}")
    return directory
