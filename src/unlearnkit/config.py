"""One typed configuration for a run: YAML in, ``--set key=value`` overrides, resolved copy out.

Sections follow the data flow: ``model`` → ``data`` → ``adapter`` → ``method`` → ``train``
→ ``eval`` → ``output``. Every field has a default that reproduces the paper's setting
(Section 4.1) where the paper gives one; each run writes the fully resolved config, so a run
is reproducible from its output directory alone.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unlearnkit.adapters.flora import FloraOptions
from unlearnkit.data.sources import SourceConfig
from unlearnkit.errors import UnlearnkitError, did_you_mean, unknown_name
from unlearnkit.objectives import METHODS

ADAPTERS = ("none", "lora", "flora")
PAPER_LR = {"none": 5e-5, "lora": 2e-4, "flora": 2e-4}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("EleutherAI/gpt-neo-125m", description="hub id, local directory, .gguf file or 'smollm2'")
    revision: str | None = None
    gguf_file: str | None = Field(None, description="GGUF file inside a directory named by `name`")
    tokenizer: str | None = Field(None, description="tokenizer location when it differs from the model's")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False


class DataConfig(Section):
    dir: str | None = Field(None, description="data directory; default $UNLEARNKIT_DATA or ~/.cache/unlearnkit/data")
    seq_len: int = Field(200, ge=2, description="tokens per sequence")
    forget: SourceConfig = Field(default_factory=lambda: SourceConfig(source="jang", n=32, set=0))
    retain: SourceConfig | None = Field(default_factory=lambda: SourceConfig(source="wikitext"))
    validation: SourceConfig | None = Field(
        default_factory=lambda: SourceConfig(source="tdec", split="val", n=32, seed=0),
        description="held-out set whose mean EL and MA are the forgetting thresholds",
    )


class MethodConfig(Section):
    name: str = Field("ihl", description="ga | gd | ihl")
    retain_weight: float = Field(1.0, ge=0.0, description="weight of the retain LM loss (Eq. 5 uses 1)")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in METHODS:
            raise ValueError(str(unknown_name("method", name, METHODS)))
        return name


class AdapterConfig(Section):
    name: str = Field("lora", description="none (full fine-tuning) | lora | flora")
    rank: int = Field(16, description="LoRA rank r")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the adapter is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    modules: list[str] = Field(default_factory=lambda: ["q", "v", "ffn"],
                               description="module groups (q, k, v, o, ffn) or module names")
    flora: FloraOptions = Field(default_factory=FloraOptions)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in ADAPTERS:
            raise ValueError(str(unknown_name("adapter", name, ADAPTERS)))
        return name

    @field_validator("rank")
    @classmethod
    def _positive(cls, rank: int) -> int:
        if rank < 1:
            raise ValueError("adapter.rank must be at least 1")
        return rank


class TrainConfig(Section):
    lr: float | None = Field(None, gt=0, description="default: 5e-5 for full fine-tuning, 2e-4 for (F)LoRA")
    epochs: int = Field(20, ge=1, description="maximum epochs over the forget set")
    batch_size: int = Field(8, ge=1, description="forget sequences per step")
    retain_batch_size: int | None = Field(None, ge=1, description="retain sequences per step; default batch_size")
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, description="gradient clipping; null to disable")
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0, description="optimizer updates over which the lr rises linearly to train.lr")


class EvalConfig(Section):
    el_n: int = Field(10, ge=1, description="n of the n-gram extraction likelihood EL_n")
    ma_threshold: float | None = Field(None, description="stop when forget MA <= this; default: validation mean")
    el_threshold: float | None = Field(None, description="stop when forget EL_n <= this; default: validation mean")
    early_stop: bool = True
    batch_size: int = Field(32, ge=1)
    el_method: Literal["fast", "reference"] = "fast"
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the threshold interval")
    audit: bool = Field(True, description="extraction attack and membership inference before and after")
    retain_sequences: int = Field(0, ge=0, description="retain sequences also scored before and after (0: none)")
    el_only_when_ma_passes: bool = Field(
        False, description="after each epoch, score EL_n only once forget MA is at or below its threshold: the "
                           "stopping rule needs both, so it stops at the same epoch, and EL_n of half-forgotten "
                           "text is the dearest score of a run; the per-epoch EL curve then has gaps")


class OutputConfig(Section):
    dir: str = "runs/unlearn"
    overwrite: bool = False
    save_model: bool = True


class RunConfig(Section):
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _resolve(self) -> RunConfig:
        if self.train.lr is None:
            self.train.lr = PAPER_LR[self.adapter.name]
        if self.train.retain_batch_size is None:
            self.train.retain_batch_size = self.train.batch_size
        needs_retain = METHODS[self.method.name].uses_retain or self.adapter.name == "flora"
        if needs_retain and self.data.retain is None:
            why = "FLoRA's Fisher ratio" if self.adapter.name == "flora" else f"method {self.method.name}"
            raise ValueError(f"{why} needs a retain set; set data.retain (e.g. source: wikitext)")
        if self.data.validation is None and (self.eval.ma_threshold is None or self.eval.el_threshold is None):
            raise ValueError("without data.validation, set both eval.ma_threshold and eval.el_threshold")
        return self

    def to_yaml(self) -> str:
        resolved = self.model_dump(mode="json")
        # A source lists only the fields it uses: the others do not apply to it and are refused on reload.
        for role in ("forget", "retain", "validation"):
            spec = getattr(self.data, role)
            resolved["data"][role] = spec.model_dump(mode="json", exclude_unset=True) if spec else None
        return yaml.safe_dump(resolved, sort_keys=False)


# --- loading and overrides -------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=2e-4`` → (["train", "lr"], 0.0002); the value is read as YAML."""
    if "=" not in text:
        raise UnlearnkitError(f'The override "{text}" has no "="; write it as key=value, e.g. train.lr=2e-4.')
    key, raw = text.split("=", 1)
    if not key.strip():
        raise UnlearnkitError(f'The override "{text}" has no key; write it as key=value, e.g. train.lr=2e-4.')
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML reads "2e-4" as a string (no dot); numbers are what users mean.
    if isinstance(value, str) and any(c in value.lower() for c in ".e"):
        with contextlib.suppress(ValueError):
            value = float(value)
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return raw


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    """Valid keys under a config location, for did-you-mean suggestions."""
    model: Any = RunConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _explain(error: ValidationError) -> UnlearnkitError:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc)
    if first["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        where = ".".join(str(p) for p in loc[:-1]) or "the top level"
        return UnlearnkitError(
            f'The config key "{key}" does not exist; valid keys in {where}: {", ".join(valid)}.'
            f"{did_you_mean(str(loc[-1]), valid)}"
        )
    message = first["msg"].removeprefix("Value error, ")
    if not key:
        return UnlearnkitError(f"Invalid configuration: {message}.".replace("..", "."))
    if message.endswith((".", "?")):
        return UnlearnkitError(f"Invalid value for {key}: {message}")
    return UnlearnkitError(f"Invalid value for {key}: {message}; fix it in the config or with --set {key}=...")


def build_config(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise _explain(error) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from the defaults), apply ``key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UnlearnkitError(f"The config file {path} does not exist; pass the path of a YAML file.")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise UnlearnkitError(
                f"The config file {path} is not valid UTF-8 YAML ({error}); fix its syntax."
            ) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UnlearnkitError(f"The config file {path} must hold a mapping of sections; see configs/paper/.")
        raw = loaded or {}
    return build_config(apply_overrides(raw, overrides or []))
