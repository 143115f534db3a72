"""The CPU testbeds: GPT-Neo trained from scratch on TDEC (tiny, small) and a memorised SmolLM2."""

from unlearnkit.showcase.testbed.build import (
    build_testbed,
    heldout_perplexity,
    point_latest,
    read_manifest,
    score_memorization,
    testbed_dir,
)
from unlearnkit.showcase.testbed.data import (
    FORGET_SIZE,
    POOL_SIZE,
    SIZES,
    TESTBED_CONFIGS,
    TESTBED_VERSION,
    TestbedData,
    TestbedSettings,
    forget_set_sources,
    heldout_text_blocks,
    load_testbed_data,
    retain_eval_blocks,
    settings_for,
)
from unlearnkit.showcase.testbed.smollm2 import SMOLLM2_SIZES, SmolSettings, build_smollm2, smollm2_dir
from unlearnkit.showcase.testbed.train import TrainResult, kept_tokens, new_model, train_testbed

__all__ = [
    "FORGET_SIZE", "POOL_SIZE", "SIZES", "SMOLLM2_SIZES", "TESTBED_CONFIGS", "TESTBED_VERSION", "SmolSettings",
    "TestbedData",
    "TestbedSettings", "TrainResult", "build_smollm2", "build_testbed", "forget_set_sources", "heldout_perplexity",
    "heldout_text_blocks", "kept_tokens", "load_testbed_data", "new_model", "point_latest", "read_manifest",
    "retain_eval_blocks", "score_memorization", "settings_for", "smollm2_dir", "testbed_dir", "train_testbed",
]
