"""Configs by name, from anywhere, and ``base:``: a config that states only what differs from another."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from conftest import REPO, memorised_run_overrides, run_cli
from unlearnkit.config import load_config
from unlearnkit.config.catalogue import SHIPPED, merge, shipped_configs
from unlearnkit.config.loading import build_config, read_config
from unlearnkit.errors import UnlearnkitError

# Every shipped run config as it was written before the configs used base: (each file whole), kept to show that
# stating only the differences changed no run.
BEFORE_BASE = json.loads((REPO / "tests" / "data" / "configs_before_base.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(BEFORE_BASE))
def test_a_shipped_config_resolves_to_what_it_said_in_full_before_base(name):
    assert load_config(name).model_dump() == build_config(copy.deepcopy(BEFORE_BASE[name])).model_dump()


def test_the_shipped_configs_state_only_what_differs_from_their_family():
    names = [n for n in shipped_configs() if "sweeps" not in n and not n.startswith("accelerate/")]
    assert sorted(names) == sorted(BEFORE_BASE)  # the record covers every run config shipped
    written = {n: yaml.safe_load((SHIPPED / f"{n}.yaml").read_text(encoding="utf-8")) for n in names}
    roots = sorted(n for n, raw in written.items() if "base" not in raw)
    assert roots == ["paper/gpt-neo-125m-gd", "smollm2/gd", "testbed/gd", "testbed/sequential/gd", "tofu/smollm2-gd"]
    # a derived config is far shorter than it was whole: the paper's 1.3B FLoRA + IHL names two keys
    assert written["paper/gpt-neo-1.3b-flora-ihl"] == {"base": "paper/gpt-neo-125m-flora-ihl",
                                                       "model": {"name": "EleutherAI/gpt-neo-1.3B"},
                                                       "output": {"dir": "runs/gpt-neo-1.3b-flora-ihl"}}
    for name, raw in written.items():  # bases are names, so that a copy resolves from any directory
        assert raw.get("base") is None or raw["base"] in names, name


def test_base_merges_sections_key_by_key_and_a_new_source_or_method_starts_afresh(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "parent.yaml").write_text(
        "base: paper/gpt-neo-125m-flora-ihl\n"
        "data: {forget: {source: file, path: records.jsonl}, seq_len: 64}\n"
        "method: {name: npo, beta: 0.2}\n", encoding="utf-8")
    (tmp_path / "child.yaml").write_text(
        "base: sub/parent.yaml\n"  # a path relative to the file that names it
        "train: {lr: 1.0e-3}\n"
        "adapter: {rank: 8}\n"
        "data: {forget: {text_field: body}}\n", encoding="utf-8")
    raw = read_config(tmp_path / "child.yaml")
    shipped = read_config(SHIPPED / "paper" / "gpt-neo-125m-flora-ihl.yaml")
    assert raw["data"]["forget"] == {"source": "file", "path": "records.jsonl", "text_field": "body"}  # not jang's n
    assert raw["data"]["retain"] == shipped["data"]["retain"] and raw["data"]["seq_len"] == 64
    assert raw["method"] == {"name": "npo", "beta": 0.2}
    assert raw["adapter"] == {**shipped["adapter"], "rank": 8} and raw["train"]["lr"] == 1.0e-3
    assert raw["train"]["epochs"] == shipped["train"]["epochs"] and "base" not in raw
    # a method named anew drops the old method's options; the same method keeps them
    assert merge({"method": {"name": "npo", "beta": 0.2}}, {"method": {"name": "ihl"}}) == {"method": {"name": "ihl"}}
    assert merge({"method": {"name": "npo", "beta": 0.2}}, {"method": {"retain_weight": 2}}) == \
        {"method": {"name": "npo", "beta": 0.2, "retain_weight": 2}}


@pytest.mark.parametrize(("text", "message"), [
    ("base: paper/gpt-neo-125m-flora-ihhl\n", 'as a file or as a shipped config.*Did you mean '
                                              '"paper/gpt-neo-125m-flora-ihl"'),
    ("base: [a, b]\n", "must name one config"),
    ("base: loop.yaml\n", "go round in a circle"),
    ("base: testbed/sweeps/table1\n", "is a sweep file .it has a grid., not a run config; run it with `unlearnkit "
                                      "sweep` instead"),
])
def test_a_bad_base_is_one_sentence(tmp_path, text, message):
    (tmp_path / "loop.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(UnlearnkitError, match=message):
        load_config(tmp_path / "loop.yaml")


def test_configs_are_listed_shown_copied_and_run_by_name_from_any_directory(memorized_model_dir, tmp_path):
    listed = run_cli("configs", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert all(name in listed.stdout for name in ("paper/gpt-neo-125m-flora-ihl", "tofu/sweeps/smollm2-forget10"))
    # piped, each config's line is whole: its comment's first line as written, not cut to a terminal's width
    first = next(line for line in (SHIPPED / "testbed" / "sweeps" / "robust-mask.yaml").read_text().splitlines())
    assert first.lstrip("# ") in listed.stdout and "…" not in listed.stdout
    shown = run_cli("configs", "show", "paper/gpt-neo-1.3b-lora-ihl", "--resolved", cwd=tmp_path)
    assert yaml.safe_load(shown.stdout) == read_config(SHIPPED / "paper" / "gpt-neo-1.3b-lora-ihl.yaml")
    assert run_cli("configs", "show", "paper/gpt-neo-1.3b-lora-ihl", cwd=tmp_path).stdout == \
        (SHIPPED / "paper" / "gpt-neo-1.3b-lora-ihl.yaml").read_text(encoding="utf-8")

    copied = run_cli("configs", "cp", "paper/gpt-neo-125m-lora-ihl", "mine.yaml", cwd=tmp_path)
    assert copied.returncode == 0 and (tmp_path / "mine.yaml").read_bytes() == \
        (SHIPPED / "paper" / "gpt-neo-125m-lora-ihl.yaml").read_bytes()
    (tmp_path / "mine.yaml").write_text("# edited\n", encoding="utf-8")
    again = run_cli("configs", "cp", "paper/gpt-neo-125m-ga", "mine.yaml", cwd=tmp_path)
    assert again.returncode == 2 and "a copy never replaces a file" in again.stderr
    assert (tmp_path / "mine.yaml").read_text(encoding="utf-8") == "# edited\n"  # untouched
    unknown = run_cli("run", "paper/gpt-neo-125m-lora-ihk", cwd=tmp_path)
    assert unknown.returncode == 2 and 'Did you mean "paper/gpt-neo-125m-lora-ihl"' in unknown.stderr

    out = tmp_path / "run"
    overrides = [*memorised_run_overrides(memorized_model_dir, out), "train.epochs=1", "eval.audit=false",
                 "output.fail_if_not_forgotten=false", "output.save_model=false"]
    done = run_cli("run", "paper/gpt-neo-125m-lora-ihl", *[p for o in overrides for p in ("--set", o)], "-q",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert "base" not in resolved and resolved["method"]["name"] == "ihl" and resolved["adapter"]["name"] == "lora"
    assert resolved["train"]["max_grad_norm"] == 1.0  # from the base, written out whole
