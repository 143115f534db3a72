"""Bad input, as a new user types it: exit 2, one plain sentence naming the problem, no traceback, nothing written.

Each case runs the real entry point (:func:`unlearnkit.cli.main`) in this process; the working directory is
a fresh folder whose contents are compared before and after, so that any file a refused command writes
(an output, a cache, a half-written model) fails the test. Refusals that need no model take less time than a
fresh interpreter takes to import torch; the subprocess tests in test_config and test_refusals check that config
errors, model paths that hold no model and other input checked up front import no torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from conftest import MEMORISED_SEQ_LEN, REPO, import_torch_seconds
from unlearnkit import cli

PAPER = str(REPO / "configs" / "paper" / "gpt-neo-125m-lora-ihl.yaml")
FLORA = str(REPO / "configs" / "paper" / "gpt-neo-125m-flora-ihl.yaml")
SMALL = ["--set", f"data.seq_len={MEMORISED_SEQ_LEN}", "--set", "data.forget.n=4", "--set", "data.retain.n=8",
         "--set", "data.validation.n=4", "--set", "eval.downstream=null"]

# (name, arguments, words the message must contain); MODEL is the memorised tiny model, files are in the
# working directory: empty.yaml, broken.yaml, list.yaml, file.txt, empty.txt, a folder sub/ and full/ (non-empty).
CASES = [
    ("run without config", ["run"], ["Pass a config file"]),
    ("missing config", ["run", "nope.yaml"], ["nope.yaml does not exist"]),
    ("config is a folder", ["run", "sub"], ["is a directory"]),
    ("empty config", ["run", "empty.yaml"], ["empty.yaml is empty"]),
    ("broken YAML", ["run", "broken.yaml"], ["not valid UTF-8 YAML"]),
    ("config not a mapping", ["run", "list.yaml"], ["must hold a mapping"]),
    ("mistyped key", ["run", PAPER, "--set", "train.lrr=1"], ['"train.lrr" does not exist', 'Did you mean "lr"']),
    ("key given twice", ["run", "twice.yaml"], ['the key "lr" is given twice at line 3']),
    ("eval without a task", ["eval", "MODEL", "--tasks", ","], ["--tasks ',' names no task"]),
    ("not a number", ["run", PAPER, "--set", "train.lr=abc"], ["train.lr", "valid number"]),
    ("unknown method", ["run", PAPER, "--set", "method.name=foo"], ['Unknown method "foo"']),
    ("unknown adapter", ["run", PAPER, "--set", "adapter.name=foo"], ['Unknown adapter "foo"']),
    ("unknown source", ["run", PAPER, "--set", "data.forget.source=nosuch"], ['Unknown data source "nosuch"']),
    ("override without =", ["run", PAPER, "--set", "train.lr"], ['"train.lr" has no "="']),
    ("EL n beyond seq_len", ["run", PAPER, "--set", "eval.el_n=40", "--set", "data.seq_len=32"],
     ["EL40 needs sequences of at least 41 tokens"]),
    ("missing forget file", ["run", PAPER, "MODEL", *SMALL, "--set", "data.forget={source: file, path: missing.txt}"],
     ["missing.txt does not exist"]),
    ("empty forget file", ["run", PAPER, "MODEL", *SMALL, "--set", "data.forget={source: file, path: empty.txt}"],
     ["empty.txt is empty"]),
    ("forget file is a folder", ["run", PAPER, "MODEL", *SMALL, "--set", "data.forget={source: file, path: sub}"],
     ["path sub is not a .txt, .jsonl, .csv file"]),
    ("missing model folder", ["run", PAPER, *SMALL, "--set", "model.name=./nomodel"], ["./nomodel is not a directory"]),
    ("folder that is not a model", ["run", PAPER, *SMALL, "--set", "model.name=sub"], ["not a Hugging Face model"]),
    ("output is a file", ["run", PAPER, "MODEL", *SMALL, "--set", "output.dir=file.txt"], ["file.txt is a file"]),
    ("output under a file", ["run", PAPER, "MODEL", *SMALL, "--set", "output.dir=file.txt/run"],
     ["cannot be created", "file.txt is a file"]),
    ("output is the model", ["run", PAPER, "MODEL", *SMALL, "--set", "output.dir=MODEL", "--overwrite"],
     ["output.dir", "is an input of this command"]),
    ("overwrite a user's folder", ["run", PAPER, "MODEL", *SMALL, "--set", "output.dir=full", "--overwrite"],
     ["holds files unlearnkit did not write (notes.txt)"]),
    # issue 27's four ways to lose files or memory: a folder with a run.json of its own, the run's own config in its
    # output directory, --json over an input, a batch that does not fit
    ("overwrite a folder with its own run.json", ["run", PAPER, "MODEL", *SMALL, "--set", "output.dir=proj",
                                                  "--overwrite"], ["holds files unlearnkit did not write (run.json, "
                                                                   "src)"]),
    ("overwrite the run's own config", ["run", "prev/my.yaml", "MODEL", *SMALL, "--set", "output.dir=prev",
                                        "--overwrite"], ["holds an input of this command", "my.yaml"]),
    ("memorization json over its data", ["memorization", "MODEL", "--data", "rows.jsonl", "--json", "rows.jsonl"],
     ["--json", "rows.jsonl is an input of this command"]),
    ("memorization json into the model", ["memorization", "MODEL", "--data", "rows.jsonl", "--json",
                                          "MODEL/model.safetensors"], ["is inside an input of this command"]),
    ("audit json over a user's file", ["audit", "MODEL", "--forget", "jang,n=4", "--holdout", "tdec,split=val,n=4",
                                       "--json", "file.txt"], ["file.txt exists and unlearnkit did not write it"]),
    ("attack over a user's attack.md", ["attack", "MODEL", "--forget", "jang,n=4", "--holdout", "tdec,split=val,n=4",
                                        "--output", "atk"], ["attack.md exists and unlearnkit did not write it"]),
    ("truncated weights", ["memorization", "truncated", "--data", "jang,n=4", "--seq-len", "32"],
     ["The weights in truncated cannot be read", "truncated or corrupt"]),
    ("data directory is a file", ["memorization", "MODEL", "--data", "jang,n=4", "--data-dir", "file.txt"],
     ["file.txt is a file; point --data-dir"]),
    ("binary results", ["report", "binary"], ["results.jsonl is not a sweep's results (byte 0 is not UTF-8"]),
    ("a name too long", ["memorization", "MODEL", "--data", "jang,n=4", "--json", "a" * 300 + ".json"],
     ["--json names a file or folder of 305 bytes"]),
    ("batch that does not fit", ["run", PAPER, "MODEL", *SMALL, "--set", "train.batch_size=100000"],
     ["train.batch_size 100000", "GiB of activations", "GiB of memory"]),
    ("seq_len beyond the context", ["run", PAPER, "MODEL", *SMALL, "--set", "data.seq_len=300"],
     ["data.seq_len 300 is longer than the model's context (256 positions)"]),
    ("memorization seq-len beyond the context", ["memorization", "MODEL", "--data", "jang,n=4", "--seq-len", "300"],
     ["--seq-len 300 is longer than the model's context"]),
    ("fisher out is the model", ["fisher", PAPER, "--out", "MODEL", "--set", "model.name=MODEL"],
     ["is an input of this command"]),
    ("demo over a folder with its own run.json", ["demo", "--tiny", "--output", "proj"],
     ["holds files unlearnkit did not write"]),
    ("rank beyond the layers", ["run", PAPER, "MODEL", *SMALL, "--set", "adapter.rank=1000"],
     ["LoRA rank 1000 is too large"]),
    ("unknown target module", ["run", PAPER, "MODEL", *SMALL, "--set", "adapter.modules=[nosuch]"],
     ['"nosuch" matches no linear module']),
    ("Fisher cache is a file", ["run", FLORA, "MODEL", *SMALL, "--set", "adapter.flora.fisher_path=file.txt"],
     ["fisher_path file.txt is a file"]),
    ("resume without checkpoint", ["run", "--resume", "elsewhere"], ["no interrupted run to resume"]),
    ("resume with a config", ["run", PAPER, "--resume", "elsewhere"], ["--resume OUTPUT_DIR alone"]),
    ("memorization n 0", ["memorization", "MODEL", "--data", "jang,n=4", "--n", "0"], ["'--n'", "--help"]),
    ("memorization json folder", ["memorization", "MODEL", "--data", "jang,n=4", "--json", "sub"],
     ["--json", "sub is a directory"]),
    ("memorization unknown source", ["memorization", "MODEL", "--data", "nosuch,n=4"],
     ['Unknown data source "nosuch"']),
    ("memorization not key=value", ["memorization", "MODEL", "--data", "jang,n"], ['"n" is not key=value']),
    ("memorization unknown field", ["memorization", "MODEL", "--data", "jang,nn=4"], ["jang,nn=4", "nn"]),
    ("memorization missing model", ["memorization", "./nomodel", "--data", "jang,n=4"], ["./nomodel"]),
    ("memorization seq-len 1", ["memorization", "MODEL", "--data", "jang,n=4", "--seq-len", "1"], ["'--seq-len'"]),
    ("memorization missing file", ["memorization", "MODEL", "--data", "missing.txt"], ["missing.txt does not exist"]),
    ("memorization empty file", ["memorization", "MODEL", "--data", "empty.txt"], ["empty.txt"]),
    ("memorization n beyond text", ["memorization", "MODEL", "--data", "jang,n=4", "--seq-len", "8", "--n", "20"],
     ["EL20 needs sequences of at least 21 tokens"]),
    ("audit unknown holdout", ["audit", "MODEL", "--forget", "jang,n=4", "--holdout", "nosuch"],
     ['Unknown data source "nosuch"']),
    ("audit json under a file", ["audit", "MODEL", "--forget", "jang,n=4", "--holdout", "tdec,split=val,n=4",
                                 "--json", "file.txt/a.json"], ["file.txt is a file"]),
    ("audit without forget", ["audit", "MODEL", "--holdout", "tdec,split=val,n=4"], ["Missing option '--forget'"]),
    ("fisher out is a file", ["fisher", PAPER, "--out", "file.txt"], ["file.txt is a file"]),
    ("fisher without out", ["fisher", PAPER], ["Missing option '--out'"]),
    ("fisher out not empty", ["fisher", PAPER, "--out", "full"], ["full is not empty; choose another --out."]),
    ("fisher without retain", ["fisher", PAPER, "--out", "f", "--set", "data.retain=null", "--set", "method.name=ga"],
     ["needs a retain set"]),
    ("demo forget all", ["demo", "--tiny", "--customers", "4", "--forget", "8", "--output", "d"], ["--forget"]),
    ("demo output is a file", ["demo", "--tiny", "--output", "file.txt"], ["file.txt is a file"]),
    ("demo no customers", ["demo", "--tiny", "--customers", "-1", "--output", "d"], ["--customers must be at least"]),
    ("demo lr 0", ["demo", "--tiny", "--lr", "0", "--output", "d"], ["--lr must be a positive learning rate"]),
    ("demo over a user's folder", ["demo", "--tiny", "--output", "full"], ["holds files unlearnkit did not write"]),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, memorized_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(memorized_model_dir, folder / "truncated")  # a model whose weights file was cut short
    weights = folder / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (folder / "atk").mkdir()
    (folder / "atk" / "attack.md").write_text("# my notes on the attack\n")
    (folder / "binary").mkdir()
    (folder / "binary" / "results.jsonl").write_bytes(bytes(range(200, 256)) * 8)
    (folder / "empty.yaml").write_text("")
    (folder / "broken.yaml").write_text("a: [\n")
    (folder / "list.yaml").write_text("- 1\n")
    (folder / "file.txt").write_text("some text\n")
    (folder / "empty.txt").write_text("")
    (folder / "sub").mkdir()
    (folder / "full").mkdir()
    (folder / "full" / "notes.txt").write_text("the user's")
    (folder / "proj" / "src").mkdir(parents=True)  # a project of the user's that has a run.json of its own
    (folder / "proj" / "run.json").write_text('{"name": "app"}')
    (folder / "proj" / "src" / "main.py").write_text("print('hello')\n")
    (folder / "prev").mkdir()  # a config kept in the output directory it names
    (folder / "prev" / "my.yaml").write_text(Path(PAPER).read_text())
    (folder / "twice.yaml").write_text("train:\n  lr: 1.0e-3\n  lr: 1.0e-4\n")
    (folder / "rows.jsonl").write_text('{"text": "one record"}\n{"text": "another record, longer"}\n')
    return folder


def _tree(folder: Path) -> dict[str, tuple[int, float, str]]:
    """Every file and folder below ``folder``: size, modification time and, for a file, its sha256."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime,
                                         hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
            for p in sorted(folder.rglob("*"))}


@functools.cache
def _torch_import_seconds() -> float:
    """A fresh interpreter's import of torch, measured once for the module: a refused config costs less than that."""
    return import_torch_seconds()


@pytest.mark.parametrize(("name", "arguments", "expected"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_refused_plainly_and_writes_nothing(name, arguments, expected, workdir, memorized_model_dir,
                                                         monkeypatch):
    model = str(memorized_model_dir)
    argv = [arg.replace("MODEL", model) for arg in arguments]
    if "MODEL" in arguments and arguments[0] == "run":  # a run of the memorised model: named through --set
        argv.remove(model)
        argv += ["--set", f"model.name={model}"]
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["unlearnkit", *argv])
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(workdir / "cache"))  # a refused demo must not fill a cache
    before, model_before = _tree(workdir), _tree(memorized_model_dir)
    stderr, stdout = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as done:
        cli.main()
    seconds = time.perf_counter() - started
    message = stderr.getvalue().strip()
    assert done.value.code == 2, (message, stdout.getvalue())
    assert message.startswith("error: ") and "Traceback" not in message and "\n" not in message, message
    for words in expected:
        assert words in message, message
    assert _tree(workdir) == before and _tree(memorized_model_dir) == model_before  # nothing written
    assert not any(p.name.startswith(".") for p in workdir.iterdir())  # no staging or checkpoint left
    if "MODEL" not in arguments and arguments[0] == "run":  # refused before any model is read
        assert seconds < _torch_import_seconds(), seconds


def test_every_problem_of_a_config_is_reported_at_once(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "run", PAPER, "--set", "train.epochs=-1",
                                      "--set", "train.batch_size=0", "--set", "train.lrr=1"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(lines) == 3, lines
    assert "train.epochs" in lines[0] and "train.batch_size" in lines[1] and "train.lrr" in lines[2]


def test_a_file_that_cannot_be_read_is_refused(workdir, memorized_model_dir, monkeypatch, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    secret = workdir / "secret.txt"
    secret.write_text("text")
    secret.chmod(0)
    try:
        monkeypatch.chdir(workdir)
        monkeypatch.setattr(sys, "argv", ["unlearnkit", "run", PAPER, *SMALL, "--set",
                                          f"model.name={memorized_model_dir}", "--set",
                                          "data.forget={source: file, path: secret.txt}"])
        with pytest.raises(SystemExit) as done:
            cli.main()
        assert done.value.code == 2 and "secret.txt cannot be read" in capsys.readouterr().err
    finally:
        secret.chmod(0o644)
        secret.unlink()


def test_a_full_disk_is_one_sentence_and_leaves_nothing_half_written(workdir, memorized_model_dir, monkeypatch,
                                                                      capsys):
    import errno

    from unlearnkit import io as unlearnkit_io

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(unlearnkit_io, "atomic_write_json", full)
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "memorization", str(memorized_model_dir), "--data", "jang,n=4",
                                      "--seq-len", str(MEMORISED_SEQ_LEN), "--json", "scores.json", "-q"])
    before = _tree(workdir)
    with pytest.raises(SystemExit) as done:
        cli.main()
    message = capsys.readouterr().err.strip()
    assert done.value.code == 6 and message.startswith("error: The file system refused: No space left on device")
    assert "scores.json" in message and "Traceback" not in message and _tree(workdir) == before


def test_ctrl_c_on_a_sweep_says_how_to_continue(monkeypatch, capsys):
    from unlearnkit.experiments import sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    file = REPO / "configs" / "testbed" / "sweeps" / "table1.yaml"
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "sweep", str(file), "--select", "forget-set0__*", "-q"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    message = " ".join(capsys.readouterr().err.split())
    assert done.value.code == 130 and f"Continue with the same command: unlearnkit sweep {file}" in message


def test_quiet_silences_the_libraries_too():
    import logging

    from transformers.utils import logging as transformers_logging

    from unlearnkit.progress import Progress

    Progress(quiet=True)
    assert logging.getLogger("kernels").getEffectiveLevel() >= logging.ERROR
    assert transformers_logging.get_verbosity() >= transformers_logging.ERROR
    assert not transformers_logging.is_progress_bar_enabled()
