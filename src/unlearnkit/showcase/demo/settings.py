"""What the demo is asked to do: the two presets (SmolLM2, tiny), its settings and the customers they name."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from unlearnkit.errors import UnlearnkitError
from unlearnkit.showcase.records import Record, synthetic_records


@dataclass(frozen=True)
class Preset:
    """What differs between the real-model demo and the tiny test preset."""

    name: str
    # step 1: memorising (full fine-tuning)
    memorize_lr: float
    memorize_epochs: int
    memorize_batch: int
    memorize_check_every: int
    # step 2: unlearning
    lr: float
    rank: int
    epochs: int
    batch_size: int
    retain_batch_size: int
    svd: str
    ga_lr: float
    eval_batch_size: int
    # step 3: perplexity text
    ppl_tokens: int
    ppl_seq_len: int


PRESETS = {
    "smollm2": Preset("smollm2", memorize_lr=3e-4, memorize_epochs=15, memorize_batch=8, memorize_check_every=1,
                      lr=1e-3, rank=8, epochs=8, batch_size=4, retain_batch_size=4, svd="randomized",
                      ga_lr=5e-5, eval_batch_size=64, ppl_tokens=2048, ppl_seq_len=256),
    "tiny": Preset("tiny", memorize_lr=3e-3, memorize_epochs=300, memorize_batch=8, memorize_check_every=5,
                   lr=1e-2, rank=8, epochs=30, batch_size=2, retain_batch_size=4, svd="exact",
                   ga_lr=1e-3, eval_batch_size=32, ppl_tokens=1024, ppl_seq_len=128),
}
TINY_SHAPE = {"hidden": 128, "layers": 2, "vocab": 1024}
TARGET_MA = 0.9
INFO_FILE = "memorised.json"  # beside a cached model/; the name stays, existing caches hold it


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs. ``None`` means the preset's value (see :data:`PRESETS`)."""

    tiny: bool = False
    customers: int = 32
    forget: int = 8
    holdout: int = 8
    kept_scored: int = 8
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    rank: int | None = None
    ga_lr: float | None = None

    @property
    def preset(self) -> Preset:
        return PRESETS["tiny" if self.tiny else "smollm2"]

    def check(self) -> None:
        """Refuse impossible settings (one sentence naming the option) before any work."""
        for option, value, least in (("--customers", self.customers, 3), ("--epochs", self.epochs, 1),
                                     ("--rank", self.rank, 1), ("--holdout", self.holdout, 2)):
            if value is not None and value < least:
                raise UnlearnkitError(f"{option} must be at least {least} (got {value}).")
        for option, rate in (("--lr", self.lr), ("GA lr", self.ga_lr)):
            if rate is not None and not rate > 0:
                raise UnlearnkitError(f"{option} must be a positive learning rate (got {rate}), e.g. 1e-3.")
        if not 1 <= self.forget < self.customers:
            raise UnlearnkitError(f"--forget must be between 1 and customers - 1 = {self.customers - 1} "
                                  f"(got {self.forget}): some customers must stay.")
        if self.holdout < 2:
            raise UnlearnkitError("The demo needs at least 2 never-seen customers for the thresholds.")

    def records(self) -> list[Record]:
        """All customers (the first ``customers`` were trained on) then the never-seen ones."""
        return synthetic_records(self.customers + self.holdout, self.seed)

    def memorize_key(self) -> str:
        """Names the cached memorised model: everything step 1 depends on, the record texts included."""
        preset = self.preset
        texts = "\n".join(r.text() for r in self.records())
        # The keys are part of the digest, hence of every cached model's name: keep them as they are.
        parts = {"preset": preset.name, "lr": preset.memorize_lr, "epochs": preset.memorize_epochs,
                 "batch": preset.memorize_batch, "target": TARGET_MA, "seed": self.seed,
                 "customers": self.customers, "texts": hashlib.sha256(texts.encode()).hexdigest(),
                 **(TINY_SHAPE if self.tiny else {})}
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
        return f"{preset.name}-{digest}"
