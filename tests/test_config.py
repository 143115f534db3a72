"""Configuration: YAML + overrides, one-sentence errors, resolved copies that reload identically."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearnkit.config import RunConfig, load_config, parse_override
from unlearnkit.errors import UnlearnkitError

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"


def test_paper_configs_load_with_the_papers_settings():
    files = sorted(PAPER.glob("*.yaml"))
    assert len(files) == 18  # 3 sizes x {GA, GD, LoRA+GD, LoRA+IHL, FLoRA+GD, FLoRA+IHL}
    for path in files:
        config = load_config(path)
        full = config.adapter.name == "none"
        assert config.train.lr == (5e-5 if full else 2e-4), path.name
        assert config.train.epochs == 20 and config.eval.el_n == 10
        assert config.eval.downstream is not None and config.eval.downstream.suite == "paper"
        assert config.data.forget.source == "jang" and config.data.forget.n == 32 and config.data.seq_len == 200
        if not full:
            assert config.adapter.rank == 16 and config.adapter.modules == ["q", "v", "ffn"]
        assert (config.data.retain is None) == (config.method.name == "ga")


def test_override_types_and_nesting():
    assert parse_override("train.lr=2e-4") == (["train", "lr"], 2e-4)
    assert parse_override("adapter.modules=[q, v]") == (["adapter", "modules"], ["q", "v"])
    config = load_config(PAPER / "gpt-neo-125m-lora-ihl.yaml",
                         ["train.lr=1e-3", "data.forget.n=4", "model.name=/tmp/x", "eval.ma_threshold=0.5"])
    assert config.train.lr == 1e-3 and config.data.forget.n == 4 and config.model.name == "/tmp/x"
    assert config.eval.ma_threshold == 0.5


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(UnlearnkitError, match=r'"train.lrr" does not exist.*Did you mean "lr"'):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(UnlearnkitError, match=r'"trian" does not exist.*Did you mean "train"'):
        load_config(None, ["trian.lr=1"])


@pytest.mark.parametrize(("override", "pattern"), [
    ("method.name=gaa", r'Unknown method "gaa".*ga, gd, ihl'),
    ("adapter.name=qlora", r'Unknown adapter "qlora".*flora, lora, none'),
    ("train.lr=-1", r"Invalid value for train.lr"),
    ("adapter.rank=0", r"adapter.rank must be at least 1"),
    ("data.forget.source=tdecc", r"Unknown data source"),
    ("train.lr", r'has no "="'),
])
def test_bad_values_are_one_sentence_errors(override, pattern):
    with pytest.raises(UnlearnkitError, match=pattern):
        load_config(None, [override])


def test_flora_and_gd_need_a_retain_set():
    with pytest.raises(UnlearnkitError, match="FLoRA's Fisher ratio needs a retain set"):
        load_config(None, ["adapter.name=flora", "method.name=ga", "data.retain=null"])
    with pytest.raises(UnlearnkitError, match="method gd needs a retain set"):
        load_config(None, ["method.name=gd", "data.retain=null"])


def test_defaults_resolve_and_round_trip(tmp_path):
    config = load_config(None, ["adapter.name=none"])
    assert config.train.lr == 5e-5 and config.train.retain_batch_size == config.train.batch_size
    saved = tmp_path / "config.yaml"
    saved.write_text(config.to_yaml())
    assert load_config(saved) == config
    assert RunConfig().adapter.name == "lora"


def test_missing_or_malformed_config_file(tmp_path):
    with pytest.raises(UnlearnkitError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(UnlearnkitError, match="must hold a mapping"):
        load_config(bad)


def test_downstream_suites_resolve_by_kind():
    from unlearnkit.config import DIALOGUE_SETS, REASONING_TASKS, SUITES, resolve_suite

    paper = resolve_suite("paper")
    assert paper.reasoning == REASONING_TASKS and len(REASONING_TASKS) == 9
    assert paper.dialogue == DIALOGUE_SETS and "pile" in paper.perplexity
    mixed = resolve_suite("quick", ["arc_easy", "wizard_of_wikipedia", "pile", "boolq"])
    assert mixed.reasoning == ("arc_easy", "boolq")  # not ours: passed to lm-eval as a built-in task
    assert mixed.dialogue == ("wizard_of_wikipedia",) and mixed.perplexity == ("pile",)
    assert set(SUITES) >= {"paper", "quick"}
    with pytest.raises(UnlearnkitError, match='Did you mean "paper"'):
        load_config(None, ["eval.downstream.suite=papr"])
    assert load_config(None).eval.downstream is None  # off by default: it costs minutes


def test_a_bad_config_is_refused_before_torch_is_even_imported(tmp_path):
    import subprocess
    import sys

    probe = ("import sys\nfrom unlearnkit.cli import main\n"
             f"sys.argv = ['unlearnkit', 'run', {str(PAPER / 'gpt-neo-125m-ga.yaml')!r}, '--set', 'train.lrr=1']\n"
             "try:\n    main()\nexcept SystemExit as done:\n"
             "    print(done.code, 'torch' in sys.modules, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert 'Did you mean "lr"' in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "2 False"  # exit 2, and no torch loaded for it


@pytest.mark.parametrize(("name", "text", "message"), [
    (".", None, "is a directory; pass the path of a YAML file"),
    ("empty.yaml", "", "is empty; write at least the sections"),
    ("list.yaml", "- 1\n", "must hold a mapping of sections"),
    ("missing.yaml", None, "does not exist"),
])
def test_config_paths_that_are_not_configs_are_refused_plainly(tmp_path, name, text, message):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(UnlearnkitError, match=message):
        load_config(tmp_path / name)
