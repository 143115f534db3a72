"""The deletion-request demo: memorise synthetic customers, unlearn the ones who asked, prove it, report it."""

from unlearnkit.showcase.demo.pipeline import (
    demo_config,
    measure_leaks_and_perplexity,
    prepare_memorized_model,
    run_demo,
    write_splits,
)
from unlearnkit.showcase.demo.report import (
    DemoResult,
    Measured,
    MethodRun,
    demo_document,
    demo_rows,
    demo_table,
    plot_demo,
    render_demo_markdown,
    write_demo_outputs,
)
from unlearnkit.showcase.demo.settings import PRESETS, TARGET_MA, DemoSettings, Preset

__all__ = [
    "PRESETS", "TARGET_MA", "DemoResult", "DemoSettings", "Measured", "MethodRun", "Preset", "demo_config",
    "demo_document", "demo_rows", "demo_table", "measure_leaks_and_perplexity", "plot_demo",
    "prepare_memorized_model", "render_demo_markdown", "run_demo", "write_demo_outputs", "write_splits",
]
