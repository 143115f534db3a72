"""Sweeps: a grid expanded into named points, run into their own directories, resumed, failures recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, memorised_run_overrides
from unlearnkit.config.sweep import load_sweep
from unlearnkit.errors import UnlearnkitError

BASE = REPO / "configs" / "paper" / "gpt-neo-125m-lora-ihl.yaml"


def _write(path: Path, sweep: dict) -> Path:
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


def test_a_grid_expands_into_every_combination_named_from_its_values(tmp_path):
    other = tmp_path / "ga.yaml"
    other.write_text(BASE.read_text().replace("name: ihl", "name: ga"))
    file = _write(tmp_path / "grid.yaml", {
        "base": str(BASE), "output": str(tmp_path / "out"), "set": {"train.epochs": 3},
        "grid": {"method": {"ga": "ga.yaml", "ihl-fast": {"train.lr": 1e-3}},
                 "data.forget": {"first": {"source": "jang", "n": 32, "set": 0}},
                 "adapter.rank": [4, 8], "adapter.modules": [["q", "v"]]}})
    sweep = load_sweep(file)
    names = [p.name for p in sweep.points]
    assert names == [f"method-{m}__forget-first__rank-{r}__modules-q+v" for m in ("ga", "ihl-fast") for r in (4, 8)]
    first, last = sweep.points[0], sweep.points[-1]
    assert first.config == other.resolve() and last.config == BASE.resolve()
    assert first.axes == {"method": "ga", "data.forget": "first", "adapter.rank": 4, "adapter.modules": "q+v"}
    assert last.overrides == ["train.epochs=3", "train.lr=0.001", "data.forget={n: 32, set: 0, source: jang}",
                              "adapter.rank=8", "adapter.modules=[q, v]", f"output.dir={tmp_path / 'out' / names[-1]}"]
    from unlearnkit.config import load_config

    config = load_config(last.config, last.overrides)
    assert (config.train.lr, config.adapter.rank, config.train.epochs, config.data.forget.n) == (1e-3, 8, 3, 32)
    assert config.output.dir == str(tmp_path / "out" / names[-1])
    # shards never overlap and together are the whole sweep
    shards = [sweep.shard(i, 3) for i in range(3)]
    assert sorted(p.name for s in shards for p in s) == sorted(names)
    # --select deals out only the points named like the pattern, in the sweep's order
    assert [p.name for p in sweep.shard(0, 1, "method-ihl-fast__*")] == names[2:]
    assert [p.name for s in (sweep.shard(i, 2, "*rank-8*") for i in range(2)) for p in s] == [names[1], names[3]]


def test_a_sweep_runs_only_the_selected_points_and_a_pattern_matching_none_is_refused(tmp_path, monkeypatch,
                                                                                     capsys):
    from unlearnkit import cli

    file = _write(tmp_path / "grid.yaml", {"base": str(BASE), "output": str(tmp_path / "out"),
                                           "grid": {"train.lr": [0.05, 0.1, 0.2]}})
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "sweep", str(file), "--select", "*-0.[12]", "--dry-run"])
    with pytest.raises(SystemExit) as listed:
        cli.main()
    out = capsys.readouterr().out
    assert listed.value.code == 0 and "runs 2 of those named like *-0.[12]" in " ".join(out.split())
    assert [line.split()[0] for line in out.splitlines() if line.startswith("  ")] == ["lr-0.1", "lr-0.2"]
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "sweep", str(file), "--select", "lr-9*"])
    with pytest.raises(SystemExit) as refused:
        cli.main()
    assert refused.value.code == 2 and "No point of" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_every_bad_point_of_a_grid_is_named_with_its_axis_values_before_any_run(tmp_path, monkeypatch, capsys):
    from unlearnkit import cli

    file = _write(tmp_path / "grid.yaml", {"base": str(BASE), "output": str(tmp_path / "out"),
                                           "grid": {"train.lr": [1e-3, "abc"], "adapter.rank": [4, -1]}})
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "sweep", str(file)])
    with pytest.raises(SystemExit) as refused:
        cli.main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2 and len(lines) == 2, lines
    rank, lr = (next(line for line in lines if key in line) for key in ("adapter.rank", "train.lr"))
    assert "adapter.rank must be at least 1" in rank and "points lr-0.001__rank--1, lr-abc__rank--1" in rank
    assert "train.lr" in lr and "points lr-abc__rank-4, lr-abc__rank--1" in lr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("sweep", "message"), [
    ({"grid": {}}, "at least one axis"),
    ({"grid": {"adapter.rank": []}}, "has no values"),
    ({"base": "missing.yaml", "grid": {"adapter.rank": [4]}}, "does not exist"),
    ({"grid": {"seed": {"a": 1, "b": 1}, "other.seed": {"a": 2}}}, None),
    ({"grid": {"adapter.rank": [4]}, "epochs": 3}, "Extra inputs"),
])
def test_a_bad_sweep_file_is_one_sentence_naming_the_problem(tmp_path, sweep, message):
    file = _write(tmp_path / "bad.yaml", sweep)
    if message is None:  # two axes ending in the same word keep their full names apart
        assert [p.name for p in load_sweep(file).points] == ["seed-a__other.seed-a", "seed-b__other.seed-a"]
        return
    with pytest.raises(UnlearnkitError, match=message):
        load_sweep(file)


def test_points_with_the_same_name_are_refused(tmp_path):
    file = _write(tmp_path / "twice.yaml", {"grid": {"adapter.modules": [["q", "v"], "q+v"]}})
    with pytest.raises(UnlearnkitError, match="both named 'modules-q\\+v'"):
        load_sweep(file)


@pytest.mark.integration
def test_a_sweep_resumes_its_interrupted_point_skips_finished_ones_and_records_failures(memorized_model_dir,
                                                                                      tmp_path, monkeypatch):
    from unlearnkit import cli, loop
    from unlearnkit.experiments.sweep import RESULTS_CSV, RESULTS_JSONL, run_sweep

    settings = dict(part.split("=", 1) for part in memorised_run_overrides(memorized_model_dir, tmp_path))
    settings.update({"train.epochs": "3", "eval.early_stop": "false", "eval.audit": "false",
                     "eval.bootstrap": "50", "output.fail_if_not_forgotten": "false"})
    file = _write(tmp_path / "sweep.yaml", {
        "base": str(BASE), "output": str(tmp_path / "sweep"),
        "set": {key: yaml.safe_load(value) for key, value in settings.items()},
        "grid": {"adapter.modules": {"qv": ["q", "v"], "typo": ["nonexistent_proj"]}, "train.lr": [0.05, 0.1]}})
    sweep = load_sweep(file)
    assert [p.name for p in sweep.points] == ["modules-qv__lr-0.05", "modules-qv__lr-0.1", "modules-typo__lr-0.05",
                                              "modules-typo__lr-0.1"]

    # interrupt the second point after its first epoch (Ctrl-C): the sweep stops, its checkpoint stays
    real_scores, calls = loop._epoch_scores, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 + 2:  # the first point's 3 epochs, then the second point's second epoch
            raise KeyboardInterrupt
        return real_scores(*args, **kwargs)

    monkeypatch.setattr(loop, "_epoch_scores", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, sweep.points)
    monkeypatch.setattr(loop, "_epoch_scores", real_scores)
    assert (tmp_path / "sweep" / "modules-qv__lr-0.05" / "run.json").is_file()
    assert not (tmp_path / "sweep" / "modules-qv__lr-0.1").exists()
    assert (tmp_path / "sweep" / ".modules-qv__lr-0.1.checkpoint" / "latest.json").is_file()

    # the same command again: the finished point is skipped, the interrupted one resumed, the broken ones recorded
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "sweep", str(file), "-q"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == cli.EXIT_SWEEP_FAILURES
    resumed = json.loads((tmp_path / "sweep" / "modules-qv__lr-0.1" / "metrics.json").read_text())
    assert resumed["resumed_after_epochs"] == [1] and resumed["epochs_run"] == 3
    rows = [json.loads(line) for line in (tmp_path / "sweep" / RESULTS_JSONL).read_text().splitlines()]
    assert [(r["name"], r["status"]) for r in rows] == [
        ("modules-qv__lr-0.05", "done"), ("modules-qv__lr-0.1", "done"), ("modules-typo__lr-0.05", "failed"),
        ("modules-typo__lr-0.1", "failed")]
    assert "nonexistent_proj" in rows[2]["error"] and rows[2]["modules"] == ["nonexistent_proj"]
    done_row = rows[1]
    assert done_row["epochs"] == 3 and done_row["lr"] == 0.1 and done_row["adapter"] == "lora"
    assert done_row["flops"]["train"] > 0 and done_row["flops"]["total"] >= done_row["flops"]["train"]
    assert 0 < done_row["params_pct"] < 100 and done_row["ma_before"] > done_row["ma"]
    csv_lines = (tmp_path / "sweep" / RESULTS_CSV).read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("name,status,model,method")

    # another machine that kept nothing: the records without weights put back (docs/experiments.md) are skipped,
    # and their rows come back the same
    import shutil

    from unlearnkit.experiments.sweep import collect_results

    for point in ("modules-qv__lr-0.05", "modules-qv__lr-0.1"):
        shutil.copytree(tmp_path / "sweep" / point, tmp_path / "records" / point,
                        ignore=shutil.ignore_patterns("model", "adapter"))
    elsewhere = load_sweep(_write(tmp_path / "elsewhere.yaml", {
        **yaml.safe_load(file.read_text()), "output": str(tmp_path / "records")}))
    outcome = run_sweep(elsewhere, elsewhere.points[:2])
    assert outcome.skipped == ["modules-qv__lr-0.05", "modules-qv__lr-0.1"] and not outcome.ran
    kept = collect_results(elsewhere)
    assert [{k: v for k, v in r.items() if k != "output_dir"} for r in kept] == [
        {k: v for k, v in r.items() if k != "output_dir"} for r in rows[:2]]


@pytest.mark.parametrize("file", sorted(REPO.glob("configs/*/sweeps/*.yaml")), ids=lambda p: f"{p.parent.parent.name}/"
                         f"{p.name}")
def test_every_shipped_sweep_expands_into_valid_configs(file):
    from unlearnkit.config import load_config

    sweep = load_sweep(file)
    configs = [load_config(point.config, point.overrides) for point in sweep.points]
    assert len({c.output.dir for c in configs}) == len(configs) >= 2  # a grid: at least two points
    # the grid really varies what its axes name: as many distinct settings as points
    assert len({c.model_dump_json(exclude={"output"}) for c in configs}) == len(configs)


def test_the_sweeps_last_line_names_the_runs_that_did_not_forget(memorized_model_dir, tmp_path, monkeypatch,
                                                                  capsys):
    from unlearnkit import cli

    settings = dict(part.split("=", 1) for part in memorised_run_overrides(memorized_model_dir, tmp_path))
    settings.update({"train.epochs": "1", "eval.audit": "false", "eval.bootstrap": "50",
                     "output.fail_if_not_forgotten": "false"})
    file = _write(tmp_path / "sweep.yaml", {
        "base": str(BASE), "output": str(tmp_path / "sweep"),
        "set": {key: yaml.safe_load(value) for key, value in settings.items()},
        "grid": {"train.lr": [1e-9]}})  # one epoch at this rate moves nothing: the criterion cannot be met
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "sweep", str(file), "-q"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    row = json.loads((tmp_path / "sweep" / "results.jsonl").read_text())
    assert done.value.code == 0 and row["success"] is False  # a finished point, not a failed one
    assert "1 run (1 without success: lr-1e-09), 0 already done, 0 failed" in " ".join(capsys.readouterr().out.split())
