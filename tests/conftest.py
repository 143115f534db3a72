"""Shared fixtures: tiny randomly initialised models and the offline data pack."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tiny models gain nothing from a second thread, and OpenMP threads that spin while another
# process holds the other core make them up to 100x slower. `make test-portable` runs the suite once with 2
# threads (UNLEARNKIT_TEST_THREADS=2, one worker), where reductions are split and summed in another order.
THREADS = os.environ.get("UNLEARNKIT_TEST_THREADS", "1")
torch.set_num_threads(int(THREADS))
os.environ.setdefault("OMP_NUM_THREADS", THREADS)


def tiny_gpt_neo(vocab_size: int = 96, seed: int = 0, layers: int = 2, hidden: int = 32):
    """A GPT-Neo small enough to memorise a few sequences in seconds."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_layers=layers, num_heads=4,
        attention_types=[[["global", "local"], layers // 2]] if layers % 2 == 0 else [[["global"], layers]],
        intermediate_size=4 * hidden, max_position_embeddings=256, window_size=256,
        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
    )
    return GPTNeoForCausalLM(config).eval()


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Runs keep scores (and showcases models) in $UNLEARNKIT_CACHE: the tests use their own, never the
    user's ~/.cache (tests that need a particular cache set it themselves)."""
    saved = os.environ.get("UNLEARNKIT_CACHE")
    os.environ["UNLEARNKIT_CACHE"] = str(tmp_path_factory.mktemp("unlearnkit-cache"))
    yield
    if saved is None:
        os.environ.pop("UNLEARNKIT_CACHE", None)
    else:
        os.environ["UNLEARNKIT_CACHE"] = saved


@pytest.fixture
def data_dir() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("the offline data pack ../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def tiny_model():
    return tiny_gpt_neo()


def tiny_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in about a second: keeps tiny models' output layers small."""
    from unlearnkit.modeling import train_byte_bpe_tokenizer

    return train_byte_bpe_tokenizer(texts, vocab_size)


def memorize_fully(model, seqs: torch.Tensor, max_epochs: int = 300):
    """Train ``model`` on the rows ``seqs`` (one batch) until every row has MA = 1; returns it in eval mode."""
    from unlearnkit.data.blocks import TokenBlocks
    from unlearnkit.showcase.memorize import memorize

    blocks = TokenBlocks(seqs, torch.ones_like(seqs), "memorized")
    result = memorize(model, blocks, target_ma=1.0, max_epochs=max_epochs, lr=3e-3, batch_size=len(seqs),
                      check_every=25)
    assert result.reached_target, result
    return model.eval()


# --- a tiny model that has memorised a few TDEC sequences, for end-to-end runs ----------------------

DATA = SHARED_DATA
MEMORISED_SEQ_LEN = 32


@pytest.fixture(scope="session")
def memorized_model_dir(tmp_path_factory) -> Path:
    """A tiny GPT-Neo that knows some WikiText and has memorised 4 TDEC sequences (re-tokenised)."""
    from unlearnkit.config import SourceConfig
    from unlearnkit.data.blocks import TokenBlocks
    from unlearnkit.data.sources import load_blocks
    from unlearnkit.showcase.memorize import memorize

    if not DATA.exists():
        pytest.skip("the offline data pack ../shared/data is not present")
    text = (DATA / "text" / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    tokenizer = tiny_tokenizer([text[i:i + 2000] for i in range(0, 400_000, 2000)], vocab_size=512)
    forget = load_blocks(SourceConfig(source="jang", n=4, set=0), tokenizer, DATA, seq_len=MEMORISED_SEQ_LEN)
    retain = load_blocks(SourceConfig(source="wikitext", n=32), tokenizer, DATA, seq_len=MEMORISED_SEQ_LEN)
    model = tiny_gpt_neo(vocab_size=len(tokenizer), hidden=64)
    both = TokenBlocks(torch.cat([forget.input_ids, retain.input_ids]),
                       torch.cat([forget.attention_mask, retain.attention_mask]), "forget+retain")
    memorize(model, both, lr=3e-3, max_epochs=15, batch_size=8, target_ma=1.1)  # some general text first
    result = memorize(model, forget, lr=3e-3, max_epochs=200, batch_size=4, target_ma=0.95)
    assert result.reached_target, result
    directory = tmp_path_factory.mktemp("memorised")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def memorised_run_config(model_dir: Path, out: Path, method: str, adapter: str, lr: float,
                         extra: list[str] | None = None):
    """A paper config scaled down to the memorised tiny model (4 forget, 32 retain, 8 held-out sequences)."""
    from unlearnkit.config import load_config

    return load_config(REPO / "configs" / "paper" / "gpt-neo-125m-lora-ihl.yaml", [
        *memorised_run_overrides(model_dir, out), f"method.name={method}", f"adapter.name={adapter}",
        f"train.lr={lr}", *(extra or []),
    ])


def memorised_run_overrides(model_dir: Path, out: Path) -> list[str]:
    return [
        f"model.name={model_dir}", f"output.dir={out}", f"data.seq_len={MEMORISED_SEQ_LEN}", "data.forget.n=4",
        "data.retain.n=32", "data.validation.n=8", "train.batch_size=2", "train.retain_batch_size=4",
        "train.grad_accum=1", "train.epochs=15", "eval.batch_size=128", "eval.downstream=null",
        f"data.dir={DATA}", "adapter.rank=4", "adapter.alpha=8",
    ]


def assert_no_near_ties(model: torch.nn.Module, ids: torch.Tensor, margin: float = 1e-4) -> None:
    """Two computations of the same logits that differ only by float rounding (a merged adapter against the
    unmerged one, another CPU's kernels: about 1e-6) agree on whether each next token of ``ids`` is the argmax
    when no position's true-token logit is within ``margin`` of the best other one: then MA can be compared
    exactly."""
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].float()
    true = logits.gather(-1, ids[:, 1:, None]).squeeze(-1)
    others = logits.scatter(-1, ids[:, 1:, None], float("-inf")).amax(dim=-1)
    closest = float((true - others).abs().min())
    assert closest > margin, f"a near-tie ({closest:.1e}): an exact comparison of MA could flip on another CPU"


def import_torch_seconds() -> float:
    """Seconds a fresh interpreter takes to import torch, measured now beside the refusal it is compared with: a
    refusal comes quicker than the first step of any real work (timings are compared within a run, never with a
    fixed number, which a slower or busier machine would miss)."""
    probe = "import time\nstarted = time.perf_counter()\nimport torch\nprint(time.perf_counter() - started)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def run_cli(*args: str, **popen: Any) -> subprocess.CompletedProcess[str]:
    """``unlearnkit ARGS`` in a fresh process (the tests' threads, the offline data pack)."""
    return subprocess.run([sys.executable, "-m", "unlearnkit.cli", *args], capture_output=True, text=True,
                          timeout=600, env=cli_env(), **popen)


def cli_env() -> dict[str, str]:
    return {**os.environ, "UNLEARNKIT_DATA": str(DATA), "OMP_NUM_THREADS": THREADS}


# --- several processes (tests/test_distributed.py, tests/test_fsdp.py) --------------------------------

DISTRIBUTED_CONFIG = REPO / "configs" / "paper" / "gpt-neo-125m-flora-ihl.yaml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def torchrun_command(*args: str, processes: int = 2) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``args`` (a module run with -m, or a script) under torchrun on CPU,
    the tests' threads per process."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               f"--master_port={free_port()}", *args]
    return command, {**cli_env(), "PYTHONPATH": str(Path(__file__).resolve().parent)}


def leave_processes_together() -> None:
    """The end of a script run under torchrun: every process waits for the others, the process group is taken
    down, and the process leaves at once.

    Leaving at once because the group's gloo threads can outlive ``destroy_process_group`` (the script's DDP-wrapped
    models still hold the group and its last work objects): destroyed during the interpreter's finalisation they
    abort the process ("terminate called without an active exception", exit -6; seen once in about six runs of
    the script that unlearns three times in a process; pytorch/pytorch#179291 describes the mechanism). Everything
    the script writes is written by then."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess[str]:
    """``args`` under torchrun (:func:`torchrun_command`), to the end."""
    command, env = torchrun_command(*args, processes=processes)
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def wait_for_checkpoint(output_dir: Path, epoch: int, process: subprocess.Popen[str]) -> int:
    """Block until the run writing ``output_dir`` has a checkpoint at or after ``epoch`` (or its process ended,
    an error); return the checkpoint's epoch."""
    from unlearnkit.checkpoints import Checkpoints, checkpoint_dir

    checkpoints = Checkpoints(checkpoint_dir(output_dir))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        saved = checkpoints.latest()
        if saved is not None and saved.epoch >= epoch:
            return saved.epoch
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint after epoch {epoch}: {process.communicate()}")


def accelerate_launch_command(config: Path, *args: str, processes: int = 2) -> tuple[list[str], dict[str, str]]:
    """The command and environment of ``accelerate launch --config_file CONFIG ARGS`` on CPU, the tests'
    threads per process."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               f"--num_processes={processes}", f"--main_process_port={free_port()}", *args]
    return command, {**cli_env(), "PYTHONPATH": str(Path(__file__).resolve().parent)}


def accelerate_launch(config: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess[str]:
    """``accelerate launch`` (:func:`accelerate_launch_command`; of tests/distributed_fsdp.py, say), to the end."""
    command, env = accelerate_launch_command(config, *args, processes=processes)
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def kill_after_checkpoint(command: list[str], env: dict[str, str], output_dir: Path, epoch: int = 1) -> None:
    """Launch ``command`` (a run writing ``output_dir``, on one or several processes) and kill it with every
    process it started (workers run in sessions of their own), at once, as a scheduler would, soon after its
    checkpoint after ``epoch``."""
    import psutil

    launched = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_checkpoint(output_dir, epoch, launched)
    time.sleep(0.1)  # into the next epoch (or its checkpoint): any moment must do
    for process in [*psutil.Process(launched.pid).children(recursive=True), psutil.Process(launched.pid)]:
        process.kill()
    launched.communicate()


def same_history(ours: Path, theirs: Path) -> bool:
    """Whether two runs' per-epoch records (all but the wall time) are equal."""
    records = [[{k: v for k, v in r.items() if k != "elapsed_s"} for r in json.loads((d / "metrics.json").read_text())
                ["epochs"]] for d in (ours, theirs)]
    return records[0] == records[1]


def distributed_settings(model_dir: Path, out: Path, forget_rows: int, batch: int, retain_batch: int,
                         extra: tuple[str, ...] = ()) -> list[str]:
    """``--set`` arguments of a short FLoRA + IHL run of the memorised tiny model, ``batch`` rows per process."""
    chosen = [*memorised_run_overrides(model_dir, out), f"data.forget.n={forget_rows}",
              "method.name=ihl", "adapter.name=flora", "train.lr=3e-2", "adapter.dropout=0", "train.epochs=2",
              f"train.batch_size={batch}", f"train.retain_batch_size={retain_batch}",
              "output.fail_if_not_forgotten=false", "eval.bootstrap=50", "eval.cache_scores=false",
              "eval.audit=false", *extra]
    return [part for setting in chosen for part in ("--set", setting)]


@pytest.fixture(scope="module")
def single_process_run(memorized_model_dir, tmp_path_factory):
    """The output directory of the one-process run with ``forget_rows`` rows, 2 per step when there are 4."""
    done: dict[int, Path] = {}

    def run(forget_rows: int) -> Path:
        if forget_rows not in done:
            out = tmp_path_factory.mktemp("single") / "one"
            per_process = max(1, forget_rows // 2)
            single = run_cli("run", str(DISTRIBUTED_CONFIG), "--quiet",
                             *distributed_settings(memorized_model_dir, out, forget_rows, 2 * per_process, 4))
            assert single.returncode == 0, single.stderr[-3000:]
            done[forget_rows] = out
        return done[forget_rows]

    return run


def assert_same_run(ours: Path, theirs: Path, weights: str = "adapter/adapter_model.safetensors") -> None:
    """Two runs' outputs agree: epochs, stop reason, MA, tokens, losses, effective batch and weights."""
    mine_metrics, reference_metrics = (json.loads((d / "metrics.json").read_text()) for d in (ours, theirs))
    assert len(mine_metrics["epochs"]) == len(reference_metrics["epochs"])
    assert mine_metrics["stop_reason"] == reference_metrics["stop_reason"]
    for mine, reference in zip(mine_metrics["epochs"], reference_metrics["epochs"], strict=True):
        assert mine["forget_ma"] == pytest.approx(reference["forget_ma"], abs=1e-3)  # the same tokens right
        assert mine["tokens_seen"] == reference["tokens_seen"]
        assert mine["loss"] == pytest.approx(reference["loss"], rel=1e-5)  # the processes' mean of weighted losses
    effective = [json.loads((d / "run.json").read_text())["batch"]["effective"] for d in (ours, theirs)]
    assert effective[0] == effective[1]
    adapter, reference = (load_file(d / weights) for d in (ours, theirs))
    assert adapter.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(adapter[name], reference[name], rtol=0, atol=1e-5, msg=name)


