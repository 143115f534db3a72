"""Configuration: every option model of a run, read from YAML with overrides; imports no torch.

Implementations import their options from here, never the reverse.
"""

from unlearnkit.config.loading import apply_overrides, build_config, load_config, parse_override
from unlearnkit.config.run import (
    ADAPTERS,
    METHODS,
    PAPER_LR,
    AdapterConfig,
    DataConfig,
    EvalConfig,
    FloraOptions,
    MethodConfig,
    MethodSpec,
    ModelConfig,
    OutputConfig,
    RunConfig,
    TrainConfig,
)
from unlearnkit.config.sources import SOURCES, SourceConfig, SourceSpec, source_names

__all__ = [
    "ADAPTERS", "METHODS", "PAPER_LR", "SOURCES", "AdapterConfig", "DataConfig", "EvalConfig", "FloraOptions",
    "MethodConfig", "MethodSpec", "ModelConfig", "OutputConfig", "RunConfig", "SourceConfig", "SourceSpec",
    "TrainConfig", "apply_overrides", "build_config", "load_config", "parse_override", "source_names",
]
