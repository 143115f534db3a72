"""Bad input to a command is one sentence naming the fix, exit 2 — before any expensive work: torch (several
seconds to import) is not even loaded for it. Each case runs in a fresh interpreter, which is what tells whether torch
was imported; test_bad_input.py covers the refusals themselves in-process, many more of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import DATA, REPO, import_torch_seconds


def _refused(tmp_path, *args: str) -> tuple[int, bool, str]:
    """(exit code, whether torch was imported, stderr) of the command line ``args`` run in a fresh interpreter."""
    code, torch_loaded, message, _ = _timed_refusal(tmp_path, *args)
    return code, torch_loaded, message


def _timed_refusal(tmp_path, *args: str) -> tuple[int, bool, str, float]:
    """:func:`_refused` and the seconds from importing the command line to its exit."""
    probe = ("import sys, time\nstarted = time.perf_counter()\nfrom unlearnkit.cli import main\n"
             f"sys.argv = ['unlearnkit', *{list(args)!r}]\n"
             "try:\n    main()\nexcept SystemExit as done:\n"
             "    print('EXIT', done.code, 'torch' in sys.modules, time.perf_counter() - started, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "UNLEARNKIT_DATA": str(DATA)})
    *message, last = done.stderr.strip().splitlines()
    _, code, torch_loaded, seconds = last.split()
    return int(code), torch_loaded == "True", " ".join(" ".join(message).split()), float(seconds)


# A model directory as the checks before torch see it: its config.json (GPT-Neo's field names), no weights.
SHAPE_ONLY = {"model_type": "gpt_neo", "vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
              "max_position_embeddings": 256}
PAPER = str(REPO / "configs" / "paper" / "gpt-neo-125m-lora-ihl.yaml")


@pytest.mark.parametrize(("args", "message"), [
    (("run", PAPER, "--set", "train.batch_size=100000"), "GiB of activations for one step"),
    (("run", PAPER, "--set", "data.seq_len=300"), "longer than the model's context (256 positions)"),
    (("run", PAPER, "--set", "data.forget={source: file, path: blank.jsonl, per_document: true}"),
     "blank.jsonl has no text"),
    (("run", PAPER, "--set", "data.forget={source: file, path: bad.csv}"), "has no column 'text'"),
    (("run", PAPER, "--set", "output.dir=proj", "--overwrite"), "holds files unlearnkit did not write (run.json)"),
    (("memorization", "model", "--data", "rows.jsonl", "--json", "rows.jsonl"), "is an input of this command"),
    (("memorization", "model", "--data", "rows.jsonl", "--seq-len", "300"), "longer than the model's context"),
    (("run", PAPER, "--set", "adapter.rank=100"), "LoRA rank 100 is too large for layer"),
    (("run", PAPER, "--set", "adapter.modules=[nosuch]"), '"nosuch" matches no linear module'),
])
def test_what_issue_27_found_is_refused_without_torch_and_quicker_than_importing_it(tmp_path, args, message):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(SHAPE_ONLY))
    save_file({f"transformer.h.0.{name}.weight": np.zeros(shape, dtype=np.float32) for name, shape in (
        ("attn.attention.q_proj", (64, 64)), ("attn.attention.v_proj", (64, 64)), ("mlp.c_fc", (256, 64)),
        ("mlp.c_proj", (64, 256)))}, str(tmp_path / "model" / "model.safetensors"))
    (tmp_path / "blank.jsonl").write_text("\n\n")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    (tmp_path / "rows.jsonl").write_text('{"text": "one record"}\n')
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "run.json").write_text('{"name": "app"}')
    if args[0] == "run":
        args = (*args, "--set", f"model.name={tmp_path / 'model'}", "--set", "data.seq_len=32")
        if "data.seq_len=300" in args:
            args = args[:-2]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code, torch_loaded, stderr, seconds = _timed_refusal(tmp_path, *args)
    assert message in stderr and "Traceback" not in stderr, stderr
    assert (code, torch_loaded) == (2, False)
    assert seconds < import_torch_seconds(), seconds
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written or touched


@pytest.mark.parametrize(("args", "message"), [
    (("report", "missing"), "There is no missing/results.jsonl"),
    (("attack", "./missing", "--forget", "jang,n=4", "--holdout", "tdec,split=val,n=4"),
     "The model path ./missing is not a directory or a .gguf file"),
    (("attack", "missing", "--quant", "int4-g0-sym", "--forget", "jang,n=4", "--holdout", "tdec,n=4"),
     "write e.g. int4-g32-asym"),
    (("eval", "./missing"), "The model path ./missing is not a directory"),
    (("eval", "smollm2", "--baseline", "nothere.json"), "--baseline nothere.json is not a readable eval.json"),
    (("eval", "smollm2", "--tasks", "pile", "--baseline", "eval.json"), "these --tasks name no reasoning task"),
    (("eval", "smollm2", "--suite", "tofu", "--baseline", "eval.json"), "--baseline does not apply to --suite tofu"),
    (("memorization", "missing.gguf", "--data", "jang,n=4"), "The GGUF file missing.gguf does not exist"),
    (("memorization", "smollm2", "--data", "jang,n=4", "--seq-len", "9000"), "longer than the model's context (8192"),
    (("audit", ".", "--forget", "jang,n=4", "--holdout", "tdec,n=4"), "is not a Hugging Face model"),
    (("memorization", "run", "--data", "jang,n=4"), "it holds a run's outputs: use its model/ folder"),
    (("testbed", "build", "--size", "huge"), 'Unknown testbed size "huge"; choose one of: tiny, small'),
    (("sweep", str(REPO / "configs" / "smollm2" / "sweeps" / "table1.yaml"), "--select", "set9*"),
     "is named like set9*; change --select"),
])
def test_bad_input_is_refused_in_one_sentence_before_torch_is_imported(tmp_path, args, message):
    if args[1] == "run":  # a run's output directory where a model is wanted
        (tmp_path / "run" / "model").mkdir(parents=True)
        (tmp_path / "run" / "run.json").write_text("{}")
    before = sorted(tmp_path.rglob("*"))
    code, torch_loaded, stderr = _refused(tmp_path, *args)
    assert message in stderr
    assert (code, torch_loaded) == (2, False)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_the_testbed_sizes_the_command_accepts_are_the_ones_that_can_be_built():
    from unlearnkit.cli.unlearn import TESTBED_SIZES
    from unlearnkit.showcase.testbed import SIZES, SMOLLM2_SIZES
    from unlearnkit.showcase.testbed.tofu import TofuSettings

    assert sorted(TESTBED_SIZES) == sorted((*SIZES, *SMOLLM2_SIZES, TofuSettings().name))


def test_a_model_path_is_located_without_torch_and_a_run_directory_passes(tmp_path):
    from unlearnkit.cli.common import check_model_name
    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.model_names import locate_model

    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    check_model_name(str(tmp_path / "run"))  # a run's output directory: its model/ is used
    assert locate_model(str(tmp_path / "run" / "model"), None) == (str(tmp_path / "run" / "model"), None, True)
    assert locate_model("EleutherAI/gpt-neo-125m", None) == ("EleutherAI/gpt-neo-125m", None, False)  # the hub
    with pytest.raises(UnlearnkitError, match="it holds a run's outputs: use its model/ folder"):
        locate_model(str(tmp_path / "run"), None)


def test_the_targets_read_from_stored_weights_are_the_loaded_models(memorized_model_dir):
    from unlearnkit.config import ModelConfig
    from unlearnkit.modeling import model_skeleton, resolve_target_modules
    from unlearnkit.targets import select_targets, stored_linear_layers

    layers = stored_linear_layers(memorized_model_dir)
    skeleton = model_skeleton(ModelConfig(name=str(memorized_model_dir)))
    stored = [name for name in layers if not name.endswith("lm_head")]
    for modules in (["q", "v", "ffn"], ["k", "o"], ["c_fc"]):
        assert select_targets(stored, modules, "gpt_neo") == resolve_target_modules(skeleton, modules)
    q = resolve_target_modules(skeleton, ["q"])[0]
    module = skeleton.get_submodule(q)
    assert layers[q] == (module.out_features, module.in_features)


def test_the_shape_of_smollm2_is_read_from_its_gguf_header_without_torch():
    probe = ("import sys\nfrom unlearnkit.model_names import model_shape\nprint(model_shape('smollm2'), "
             "'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    # the facts of ../shared/data/models.md: 30 layers, hidden 576, 9 heads, vocabulary 49152
    assert done.stdout.strip() == ("ModelShape(vocab=49152, hidden=576, layers=30, heads=9, context=8192) False"), \
        done.stderr[-2000:]


@pytest.mark.parametrize(("setting", "message"), [
    ("adapter.rank=700", "LoRA rank 700 is too large for layer model.layers.0.self_attn.q_proj of shape [576, 576]"),
    ("adapter.modules=[q, mlp.nosuch]", '"mlp.nosuch" matches no linear module of this llama'),
    ("data.seq_len=9000", "longer than the model's context (8192 positions)"),
])
def test_a_gguf_model_s_targets_and_sizes_are_refused_from_its_header_without_torch(tmp_path, setting, message):
    config = REPO / "configs" / "paper" / "gpt-neo-125m-flora-ihl.yaml"
    code, torch_loaded, stderr, seconds = _timed_refusal(
        tmp_path, "run", str(config), "--set", "model.name=smollm2", "--set", setting)
    assert message in stderr and "Traceback" not in stderr, stderr
    assert (code, torch_loaded) == (2, False)
    assert seconds < import_torch_seconds(), seconds


def test_the_gguf_header_reads_what_gguf_and_transformers_read():
    """The header reader against the ``gguf`` package's own reader (every scalar, array length and tensor shape),
    and its layer names and shapes against the module tree transformers builds from the same file."""
    from accelerate import init_empty_weights
    from gguf import GGUFReader
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from unlearnkit.gguf_header import read_gguf_header
    from unlearnkit.model_names import smollm2_gguf_path

    path = smollm2_gguf_path()
    header = read_gguf_header(path)
    reference = GGUFReader(str(path))
    assert header is not None
    assert {t.name: tuple(int(d) for d in t.shape) for t in reference.tensors} == header.tensors
    for key, field in reference.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types[0].name == "ARRAY":
            assert header.array_lengths[key] == len(field.data), key
        elif field.types[0].name == "STRING":
            assert header.metadata[key] == bytes(field.parts[field.data[0]]).decode(), key
        else:
            assert header.metadata[key] == pytest.approx(field.parts[field.data[0]][0]), key
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    linear = {name: (m.out_features, m.in_features) for name, m in skeleton.named_modules()
              if isinstance(m, nn.Linear) and not name.endswith("lm_head")}
    assert header.linear_layers() == linear


def test_a_hub_model_in_the_local_cache_has_its_sizes_checked_before_torch(tmp_path, monkeypatch):
    """A hub id whose config.json the Hugging Face cache holds (the layout huggingface_hub writes) is sized from
    it, with no network and no torch; one not downloaded yet is left to the load."""
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(SHAPE_ONLY))
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, torch_loaded, stderr, seconds = _timed_refusal(
        tmp_path, "run", PAPER, "--set", "model.name=org/tiny", "--set", "train.batch_size=100000")
    assert "GiB of activations for one step" in stderr and "Traceback" not in stderr, stderr
    assert (code, torch_loaded) == (2, False), stderr
    assert seconds < import_torch_seconds(), seconds

    from unlearnkit.model_names import model_shape

    assert model_shape("org/not-downloaded") is None
