"""The embedded default: a deletion request, end to end, on a model small enough for any laptop.

1. Make a tiny GPT-Neo memorise synthetic customer records (cached: ~/.cache/unlearnkit/demo/...).
2. Some customers ask to be forgotten: unlearn their records with IHL + LoRA, keeping the others.
3. Print the before/after table: MA and EL on the forgotten, the kept and never-seen customers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from unlearnkit.config import build_config
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.loop import RunResult, run_unlearning
from unlearnkit.memorize import memorize
from unlearnkit.outputs import atomic_write_text
from unlearnkit.records import synthetic_records


@dataclass(frozen=True)
class DemoSettings:
    customers: int = 24
    forget: int = 6
    holdout: int = 8
    hidden: int = 128
    layers: int = 2
    vocab: int = 1024
    seed: int = 0
    method: str = "ihl"
    adapter: str = "lora"

    def key(self) -> str:
        return hashlib.sha256(json.dumps(vars(self), sort_keys=True).encode()).hexdigest()[:12]


def cache_root() -> Path:
    return Path(os.environ.get("UNLEARNKIT_CACHE", Path.home() / ".cache" / "unlearnkit"))


def _tokenizer(texts: list[str], vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>")


def _general_text() -> list[str]:
    """General English that ships with Python itself (the pydoc reference topics)."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def prepare_memorised_model(settings: DemoSettings, console: Console) -> Path:
    """Train (or reuse from the cache) a tiny model that has memorised every customer's record."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    directory = cache_root() / "demo" / f"tiny-{settings.key()}"
    if (directory / "model" / "config.json").exists():
        console.print(f"[green]✓[/green] Memorised model from the cache: {directory}")
        return directory
    records = [r.text() for r in synthetic_records(settings.customers + settings.holdout, settings.seed)]
    trained = records[: settings.customers]
    tokenizer = _tokenizer(records + _general_text(), settings.vocab)
    torch.manual_seed(settings.seed)
    model = GPTNeoForCausalLM(GPTNeoConfig(
        vocab_size=len(tokenizer), hidden_size=settings.hidden, num_layers=settings.layers, num_heads=4,
        attention_types=[[["global", "local"], settings.layers // 2]], intermediate_size=4 * settings.hidden,
        max_position_embeddings=256, window_size=256, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    ))
    rows = tokenizer(trained, add_special_tokens=False)["input_ids"]
    blocks = TokenBlocks.from_lists(rows, "customers", pad_id=tokenizer.pad_token_id)
    with console.status("Step 1: the model memorises all customer records"):
        result = memorize(model, blocks, target_ma=0.95, max_epochs=300, lr=3e-3, batch_size=8, check_every=5,
                          seed=settings.seed)
    console.print(f"[green]✓[/green] Step 1: records memorised (MA {result.ma:.3f}) in {result.epochs} epochs")
    staging = directory.with_name(directory.name + f".partial-{os.getpid()}")
    model.save_pretrained(staging / "model")
    tokenizer.save_pretrained(staging / "model")
    split = {"forget": records[: settings.forget], "retain": records[settings.forget: settings.customers],
             "holdout": records[settings.customers:]}
    for name, texts in split.items():
        atomic_write_text(staging / f"{name}.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts))
    directory.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, directory)
    return directory


def demo_config(directory: Path, settings: DemoSettings, output_dir: Path) -> Any:
    def records(name: str) -> dict[str, Any]:
        return {"source": "file", "path": str(directory / f"{name}.jsonl"), "per_document": True}

    return build_config({
        "seed": settings.seed,
        "model": {"name": str(directory / "model")},
        "data": {"seq_len": 128, "forget": records("forget"), "retain": records("retain"),
                 "validation": records("holdout")},
        "method": {"name": settings.method},
        "adapter": {"name": settings.adapter, "rank": 8, "alpha": 16, "modules": ["q", "v", "ffn"]},
        "train": {"lr": 1e-2, "epochs": 30, "batch_size": 2, "retain_batch_size": 4},
        "eval": {"el_n": 10, "retain_sequences": settings.customers - settings.forget},
        "output": {"dir": str(output_dir), "overwrite": True},
    })


def run_demo(output_dir: Path, settings: DemoSettings | None = None, quiet: bool = False) -> RunResult:
    settings = settings or DemoSettings()
    console = Console(quiet=quiet)
    directory = prepare_memorised_model(settings, console)
    console.print(f"Step 2: {settings.forget} of {settings.customers} customers ask to be forgotten; "
                  f"unlearning with {settings.method.upper()} + {settings.adapter}")
    return run_unlearning(demo_config(directory, settings, output_dir), console=console, quiet=quiet)


def demo_table(result: RunResult) -> Table:
    n = result.config.eval.el_n
    table = Table(title="Deletion request: before and after unlearning")
    table.add_column("customers")
    for column in ("MA before", "MA after", f"EL{n} before", f"EL{n} after"):
        table.add_column(column, justify="right")
    rows = [("forgotten (asked for deletion)", "forget"), ("kept (other customers)", "retain"),
            ("never seen (held out)", "validation")]
    for label, key in rows:
        b, a = result.before[key], result.after[key]
        table.add_row(label, f"{b['ma']:.3f}", f"{a['ma']:.3f}", f"{b['el']:.3f}", f"{a['el']:.3f}")
    table.caption = (f"{result.state.stop_reason}; {len(result.state.history)} epochs, "
                     f"{result.timings['total_s']:.0f}s. Thresholds: MA ≤ {result.thresholds.ma:.3f}, "
                     f"EL ≤ {result.thresholds.el:.3f} (the never-seen customers' means).")
    return table
