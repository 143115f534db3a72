"""Bad input to a command is one sentence naming the fix, exit 2 — before any expensive work: torch (several
seconds to import) is not even loaded for it. Each case runs in a fresh interpreter, which is what tells whether torch
was imported; test_bad_input.py covers the refusals themselves in-process, many more of them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


def _refused(tmp_path, *args: str) -> tuple[int, bool, str]:
    """(exit code, whether torch was imported, stderr) of the command line ``args`` run in a fresh interpreter."""
    probe = ("import sys\nfrom unlearnkit.cli import main\n"
             f"sys.argv = ['unlearnkit', *{list(args)!r}]\n"
             "try:\n    main()\nexcept SystemExit as done:\n"
             "    print('EXIT', done.code, 'torch' in sys.modules, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    *message, last = done.stderr.strip().splitlines()
    _, code, torch_loaded = last.split()
    return int(code), torch_loaded == "True", " ".join(" ".join(message).split())


@pytest.mark.parametrize(("args", "message"), [
    (("report", "missing"), "There is no missing/results.jsonl"),
    (("attack", "./missing", "--forget", "jang,n=4", "--holdout", "tdec,split=val,n=4"),
     "The model path ./missing is not a directory or a .gguf file"),
    (("attack", "missing", "--quant", "int4-g0-sym", "--forget", "jang,n=4", "--holdout", "tdec,n=4"),
     "write e.g. int4-g32-asym"),
    (("eval", "./missing"), "The model path ./missing is not a directory"),
    (("memorization", "missing.gguf", "--data", "jang,n=4"), "The GGUF file missing.gguf does not exist"),
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

    assert sorted(TESTBED_SIZES) == sorted((*SIZES, *SMOLLM2_SIZES))


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
