"""Claims: one process at a time writes a run's directory; a killed holder leaves nothing that blocks the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, cli_env
from unlearnkit.io import ClaimedElsewhere, claim_holder, claimed


def test_a_directory_is_claimed_by_one_holder_at_a_time(tmp_path):
    out = tmp_path / "runs" / "ihl"
    assert claim_holder(out) is None
    with claimed(out) as claim:
        holder = claim_holder(out)
        assert holder is not None and holder["pid"] == os.getpid()
        with pytest.raises(ClaimedElsewhere, match=f"being written by process {os.getpid()} on "), claimed(out):
            pass
        assert claim.is_file() and not out.exists()  # the claim sits beside the directory, which it does not create
    assert not claim.exists() and claim_holder(out) is None
    with claimed(out):  # released: claimed again at once
        pass


def test_a_claim_leaves_no_folder_it_made_for_itself_when_nothing_was_written_there(tmp_path):
    with claimed(tmp_path / "runs" / "sweeps" / "ihl"):  # the run fails before writing anything
        assert (tmp_path / "runs" / "sweeps" / ".ihl.claim").is_file()
    assert not (tmp_path / "runs").exists()  # as the user left it
    sweeps = tmp_path / "runs" / "sweeps"
    with claimed(sweeps / "ihl"):  # the run writes its directory
        (sweeps / "ihl").mkdir()
    assert (sweeps / "ihl").is_dir() and not (sweeps / ".ihl.claim").exists()
    (tmp_path / "mine").mkdir()
    with claimed(tmp_path / "mine" / "ihl"):  # a folder that was there stays, empty or not
        pass
    assert (tmp_path / "mine").is_dir()


def test_a_killed_holder_leaves_no_claim_that_blocks_the_next(tmp_path):
    out = tmp_path / "ihl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom unlearnkit.io import claimed\n"
         f"with claimed({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env=cli_env())
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(ClaimedElsewhere, match=f"process {holder.pid} "), claimed(out):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / ".ihl.claim").is_file() and claim_holder(out) is None  # the file stays, the lock does not
    with claimed(out):
        assert claim_holder(out)["pid"] == os.getpid()


def test_a_sweep_passes_by_the_points_another_invocation_is_running(tmp_path, monkeypatch, capsys):
    from unlearnkit import cli
    from unlearnkit.config.sweep import load_sweep
    from unlearnkit.experiments.sweep import run_sweep

    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump({"base": str(REPO / "configs" / "paper" / "gpt-neo-125m-lora-ihl.yaml"),
                                    "output": str(tmp_path / "sweep"), "grid": {"train.lr": [0.05, 0.1]}}))
    sweep = load_sweep(file)
    with claimed(sweep.output / "lr-0.05"), claimed(sweep.output / "lr-0.1"):
        monkeypatch.setattr(sys, "argv", ["unlearnkit", "sweep", str(file), "--dry-run"])
        with pytest.raises(SystemExit) as listed:
            cli.main()
        outcome = run_sweep(sweep, sweep.points)
    assert listed.value.code == 0
    assert capsys.readouterr().out.count(f"[running: process {os.getpid()} on ") == 2
    assert outcome.elsewhere == ["lr-0.05", "lr-0.1"] and not outcome.ran and not outcome.failed
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["results.csv", "results.jsonl"]
    assert (tmp_path / "sweep" / "results.jsonl").read_text() == ""


def test_attacking_a_sweep_passes_by_the_runs_another_invocation_is_attacking(tmp_path):
    from unlearnkit.experiments.attack_table import attack_runs

    runs, output, attacked = [tmp_path / "sweep" / "a", tmp_path / "sweep" / "b"], tmp_path / "attacks", []

    def attack_one(run):
        attacked.append(run.name)
        return {"model": str(run), "plan": {}, "rows": []}, f"attacked {run.name}"

    with claimed(output / "a"):
        outcome = attack_runs(runs, output, attack_one)
    assert attacked == ["b"] and outcome.elsewhere == ["a"] and outcome.ran == ["b"]
    assert (output / "b" / "attack.json").is_file() and not (output / "a").exists()
    assert attack_runs(runs, output, attack_one).ran == ["a"] and attacked == ["b", "a"]  # released: attacked now
