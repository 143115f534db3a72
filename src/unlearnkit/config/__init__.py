"""Configuration: every option model of a run, read from YAML with overrides; imports no torch.

Implementations import their options from here, never the reverse.
"""

from unlearnkit.config.loading import apply_overrides, build_config, load_config, parse_override
from unlearnkit.config.run import (
    AdapterConfig,
    DataConfig,
    DownstreamConfig,
    EvalConfig,
    FloraOptions,
    LogConfig,
    MethodConfig,
    ModelConfig,
    OutputConfig,
    RunConfig,
    TofuEvalConfig,
    TrainConfig,
)
from unlearnkit.config.sources import SOURCES, SourceConfig, SourceSpec, source_names
from unlearnkit.config.suites import DIALOGUE_SETS, PERPLEXITY_SETS, REASONING_TASKS, SUITES, Suite, resolve_suite

__all__ = [
    "DIALOGUE_SETS", "PERPLEXITY_SETS", "REASONING_TASKS", "SOURCES", "SUITES",
    "AdapterConfig", "DataConfig", "DownstreamConfig", "EvalConfig", "FloraOptions", "LogConfig", "MethodConfig",
    "ModelConfig", "OutputConfig", "RunConfig", "SourceConfig", "SourceSpec", "Suite", "TofuEvalConfig", "TrainConfig",
    "apply_overrides", "build_config", "load_config", "parse_override", "resolve_suite", "source_names",
]
