"""Attacks on an unlearned model: relearning on part of the forget set, quantisation, the attack command."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import assert_no_near_ties, memorised_run_overrides, run_cli
from unlearnkit.attacks.relearn import recovery_fraction, relearn, split_forget_rows
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.errors import UnlearnkitError
from unlearnkit.results import KEPT_KEYS


def test_the_attack_and_measured_rows_are_disjoint_seeded_and_cover_the_forget_set():
    blocks = TokenBlocks(torch.arange(40).reshape(10, 4), torch.ones(10, 4, dtype=torch.long), "ten")
    split = split_forget_rows(blocks, 0.3, seed=1)
    assert len(split.attack_rows) == 3 and sorted(split.attack_rows + split.measured_rows) == list(range(10))
    assert split_forget_rows(blocks, 0.3, seed=1).attack_rows == split.attack_rows
    assert split_forget_rows(blocks, 0.3, seed=2).attack_rows != split.attack_rows
    assert split.attack.input_ids.tolist() == [blocks.input_ids[i].tolist() for i in split.attack_rows]
    with pytest.raises(ValueError, match="at least 2 forget rows"):
        split_forget_rows(blocks.subset([0]), 0.5)


def test_recovery_is_the_share_of_the_removed_memorisation_that_came_back():
    assert recovery_fraction(original=0.9, unlearned=0.1, attacked=0.5) == pytest.approx(0.5)
    assert recovery_fraction(0.9, 0.1, 0.1) == 0.0 and recovery_fraction(0.9, 0.1, 0.9) == pytest.approx(1.0)
    assert recovery_fraction(0.5, 0.5, 0.7) is None and recovery_fraction(None, 0.1, 0.2) is None


@pytest.mark.integration
def test_relearning_brings_back_the_rows_it_fine_tunes_on(memorized_model_dir, tmp_path):
    from conftest import memorised_run_config
    from unlearnkit.loop import run_unlearning
    from unlearnkit.metrics.memorization import memorization_accuracy

    result = run_unlearning(memorised_run_config(memorized_model_dir, tmp_path / "run", "ihl", "lora", 1e-1,
                                                 ["eval.audit=false"]), quiet=True)
    unlearned = result.plain_model()
    split = split_forget_rows(result.data.forget, 0.5, seed=0)

    def ma(model, blocks):
        return float(memorization_accuracy(model, blocks.input_ids).mean())

    attacked = copy.deepcopy(unlearned)
    losses = relearn(attacked, split.attack, steps=20, lr=1e-3, batch_size=2)
    assert losses[-1] < losses[0]
    # the criterion bounds the whole forget set's MA (not each half's); relearning brings the attacked rows back
    # with a margin of a quarter of their tokens (measured: 0.5-0.7 more). What it does to the rows it did not
    # see is what the attack measures, not a property to assert.
    assert_no_near_ties(unlearned, result.data.forget.input_ids)  # merged here, unmerged in the loop
    assert ma(unlearned, result.data.forget) <= result.thresholds.ma
    assert ma(attacked, split.attack) >= ma(unlearned, split.attack) + 0.25
    # the unlearned model itself is untouched (the loop scored the unmerged model: no near-tie, as checked above)
    assert float(memorization_accuracy(unlearned, result.data.forget.input_ids).mean()) == pytest.approx(
        result.after["forget"]["ma"])


@pytest.fixture(scope="module")
def ihl_lora_run(memorized_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "forget-a__method-lora-ihl"
    settings = [*memorised_run_overrides(memorized_model_dir, out), "method.name=ihl", "adapter.name=lora",
                "train.lr=0.1", "eval.bootstrap=50"]
    done = run_cli("run", "configs/paper/gpt-neo-125m-lora-ihl.yaml", "-q",
                   *[part for setting in settings for part in ("--set", setting)])
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.integration
def test_the_attack_command_on_a_run_directory_reports_every_attack_with_its_recovery(ihl_lora_run, tmp_path):
    attacked = run_cli("attack", str(ihl_lora_run), "--relearn-steps", "5", "--relearn-lr", "1e-3",
                       "--quant", "int4-g32-asym,int4-g128-sym", "--output", str(tmp_path / "attack"), "-q")
    assert attacked.returncode == 0, attacked.stderr[-2000:]
    report = json.loads((tmp_path / "attack" / "attack.json").read_text())
    names = [(row["attack"], row["rows"]) for row in report["rows"]]
    relearned, lora = "relearn 5 steps (lr 0.001)", "LoRA relearn r8 5 steps (lr 0.001)"
    unrelated = "fine-tune on unrelated text 20 steps (lr 0.001)"
    rest = names[3][1]
    assert names == [("before unlearning", "all"), ("none (unlearned)", "all"),
                     ("none (unlearned)", "held-out (control)"), ("before unlearning", rest),
                     ("none (unlearned)", rest), (relearned, rest), (relearned, "held-out (control)"),
                     (lora, rest), (lora, "held-out (control)"), (unrelated, "all"), (unrelated, "held-out (control)"),
                     ("quantise int4-g32-asym", "all"),
                     ("quantise base int4-g32-asym, adapter kept", "all")]  # groups of 128 do not fit widths of 64
    row = {name: found for name, found in zip(names, report["rows"], strict=True)}
    metrics = json.loads((ihl_lora_run / "metrics.json").read_text())
    assert row["before unlearning", "all"]["ma"] == pytest.approx(metrics["before"]["forget"]["ma"])  # from the run
    assert row["none (unlearned)", "all"]["ma"] == pytest.approx(metrics["after"]["forget"]["ma"])  # measured again
    measured = report["details"]["relearn"]["measured_rows"]  # the unlearned model on the rows not attacked
    for key in ("ma", "el"):
        assert row["none (unlearned)", rest][key] == pytest.approx(
            sum(metrics["after"]["forget"][f"{key}_per_sequence"][i] for i in measured) / len(measured), abs=1e-6)
    attacked = [row[relearned, rest], row[lora, rest], row[unrelated, "all"], *report["rows"][-2:]]
    for found in attacked:
        assert set(found["recovery"]) == {"ma", "el", "extraction"} and found["mia_auc"]
    # the control: held-out rows, never memorised, under the unlearned and each fine-tuned model
    control = row["none (unlearned)", "held-out (control)"]
    assert control["ma"] == pytest.approx(metrics["after"]["validation"]["ma"])
    for name, rows in ((relearned, rest), (lora, rest), (unrelated, "all")):
        found, held = row[name, rows], row[name, "held-out (control)"]
        before = row["before unlearning", rows]
        unlearned = row["none (unlearned)", rows]
        for key in ("ma", "el"):  # what rose beyond the control, as a share of what unlearning removed
            expected = ((found[key] - unlearned[key]) - (held[key] - control[key])) / (before[key] - unlearned[key])
            assert found["specific_recovery"][key] == pytest.approx(expected)
    assert report["details"]["unrelated"]["rows"] == 32 and len(report["details"]["lora_relearn"]["losses"]) == 5
    assert report["details"]["int4-g32-asym"]["max_abs_error"] > 0
    assert "not divisible" in report["details"]["int4-g128-sym"]["skipped"]
    assert "| relearn 5 steps" in (tmp_path / "attack" / "attack.md").read_text()
    # what the attack table needs of the run travels in the record
    assert report["run"] == {"method": "ihl", "adapter": "lora", "retain_kind": "lm", "forget": report["run"]["forget"],
                             "seed": 42, "epochs": metrics["epochs_run"], "criterion_met": metrics["criterion_met"],
                             "success": metrics["criterion_met"],
                             "kept": {key: (metrics["after"].get("downstream") or {}).get(key) for key in KEPT_KEYS},
                             "kept_before": {key: (metrics["before"].get("downstream") or {}).get(key)
                                             for key in KEPT_KEYS}}
    # run again (as after an interruption): every attacked copy's MA and EL come from the score cache, the same
    again = run_cli("attack", str(ihl_lora_run), "--relearn-steps", "5", "--relearn-lr", "1e-3",
                    "--quant", "int4-g32-asym,int4-g128-sym", "--output", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr[-2000:]
    said = " ".join((again.stdout + again.stderr).split())  # rich wraps long lines
    for label in ("unlearned · forget", f"{relearned} · forget", "held-out rows, relearn 5 steps (lr 0.001)",
                  "int4-g32-asym · forget", "base int4-g32-asym · forget"):
        assert f"{label}: MA and EL10 of these weights and sequences from the score cache" in said
    rerun = json.loads((tmp_path / "again" / "attack.json").read_text())
    assert [(row["attack"], row["ma"], row["el"]) for row in rerun["rows"]] == [
        (row["attack"], row["ma"], row["el"]) for row in report["rows"]]
    # --no-el: the same attacks and MA, no EL anywhere but the run's own scores before unlearning (even where
    # the score cache knew a copy's EL), so no EL recovery either
    cheap = run_cli("attack", str(ihl_lora_run), "--relearn-steps", "5", "--relearn-lr", "1e-3", "--quant",
                    "int4-g32-asym", "--no-el", "--output", str(tmp_path / "no-el"), "-q")
    assert cheap.returncode == 0, cheap.stderr[-2000:]
    without = json.loads((tmp_path / "no-el" / "attack.json").read_text())
    assert without["plan"]["score_el"] is False and report["plan"]["score_el"] is True
    assert [(r["attack"], r["rows"], r["ma"]) for r in without["rows"]] == [
        (r["attack"], r["rows"], r["ma"]) for r in report["rows"]]
    for found in without["rows"]:
        assert (found["el"] is None) == (found["attack"] != "before unlearning")
        assert found.get("recovery", {}).get("el") is None and found.get("specific_recovery", {}).get("el") is None
    assert without["rows"][5]["specific_recovery"]["ma"] == pytest.approx(report["rows"][5]["specific_recovery"]["ma"])


@pytest.mark.integration
def test_attacking_a_sweep_attacks_each_finished_run_once_and_records_the_one_that_fails(ihl_lora_run, tmp_path):
    sweep = ihl_lora_run.parent
    broken = sweep / "forget-b__method-gd"  # a finished point whose model has gone missing
    broken.mkdir(exist_ok=True)
    (broken / "run.json").write_text("{}")
    (broken / "config.yaml").write_text((ihl_lora_run / "config.yaml").read_text())
    rows = [{"name": path.name, "status": "done", "model": "m", "method": "ihl", "adapter": "lora"}
            for path in (ihl_lora_run, broken)]
    rows.append({"name": "forget-c__method-ga", "status": "failed", "model": "m", "method": "ga", "adapter": "none"})
    (sweep / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    arguments = ("attack", str(sweep), "--relearn-steps", "2", "--relearn-lr", "1e-3", "--quant", "int8-g32-sym",
                 "--output", str(tmp_path / "attacks"), "-q")
    first = run_cli(*arguments)
    assert first.returncode == 5, first.stderr[-2000:]
    assert "forget-b__method-gd" in first.stderr and "failed.json" in first.stderr
    record = json.loads((tmp_path / "attacks" / ihl_lora_run.name / "attack.json").read_text())
    assert record["run"]["method"] == "ihl" and record["plan"]["relearn_steps"] == 2
    failure = json.loads((tmp_path / "attacks" / "forget-b__method-gd.failed.json").read_text())
    assert failure["run"].endswith("forget-b__method-gd") and failure["error"]
    assert not (tmp_path / "attacks" / "forget-c__method-ga").exists()  # a point that never finished
    table = (tmp_path / "attacks" / "attacks.md").read_text()
    assert "| LoRA+IHL | `forget-a__method-lora-ihl` |" in table and "int8-g32-sym recovery MA" in table
    from unlearnkit.cli.attack import _sweep_runs

    with pytest.raises(UnlearnkitError, match="needs --output DIR"):  # a sweep without --output: refused up front
        _sweep_runs(sweep, None)
    assert _sweep_runs(sweep, tmp_path, "forget-a__*") == [ihl_lora_run]
    with pytest.raises(UnlearnkitError, match="no finished run named like set9"):
        _sweep_runs(sweep, tmp_path, "set9")


def test_attacking_runs_again_skips_those_attacked_and_retries_those_that_failed(tmp_path):
    from unlearnkit.experiments.attack_table import attack_runs

    runs = [tmp_path / "sweep" / name for name in ("a", "b", "c")]
    attacked: list[str] = []

    def attack_one(run):  # the attack itself is tested above; this is the bookkeeping around it
        attacked.append(run.name)
        if run.name == "b" and attacked.count("b") == 1:
            raise RuntimeError("out of memory")
        record = {"model": str(run), "plan": {"relearn_steps": 0, "quantisations": []}, "rows": []}
        return record, f"attack of {run.name}"

    first = attack_runs(runs, tmp_path / "out", attack_one)
    assert first.ran == ["a", "c"] and list(first.failed) == ["b"] and "out of memory" in first.failed["b"]
    assert json.loads((tmp_path / "out" / "b.failed.json").read_text())["error"] == "RuntimeError: out of memory"
    stamp = (tmp_path / "out" / "a" / "attack.json").stat().st_mtime_ns
    second = attack_runs(runs, tmp_path / "out", attack_one)
    assert second.skipped == ["a", "c"] and second.ran == ["b"] and attacked == ["a", "b", "c", "b"]
    assert not (tmp_path / "out" / "b.failed.json").exists()  # the retried run succeeded: its failure is gone
    assert (tmp_path / "out" / "a" / "attack.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "out" / "c" / "attack.md").read_text() == "attack of c\n"
    assert "3 attacked runs" in (tmp_path / "out" / "attacks.md").read_text()


def test_a_bad_quantisation_is_refused_before_any_model_loads(tmp_path):
    done = run_cli("attack", str(tmp_path / "nothing"), "--quant", "int4-g32", "--forget", "jang,n=4",
                   "--holdout", "tdec,split=val,n=4")
    assert done.returncode == 2 and "int4-g32" in done.stderr and "int4-g32-asym" in done.stderr


def test_quantisations_are_named_as_their_labels_read():
    from unlearnkit.attacks.quantize import QuantSpec
    from unlearnkit.cli.attack import _quant_fields

    for text in ("int8-g128-sym", "int4-g32-asym", "int8-channel-sym", "gguf-Q4_0", "gguf-Q8_0"):
        assert QuantSpec(**_quant_fields(text)).label == text
    for bad in ("int9-g32-sym", "int4-g0-asym"):  # what QuantSpec would refuse is refused before torch loads
        with pytest.raises(Exception, match="int4-g32-asym"):
            _quant_fields(bad)


def test_an_unrelated_attack_without_its_text_is_recorded_as_not_run(tiny_model):
    from unlearnkit.attacks.suite import UNRELATED_MISSING, AttackPlan, attack_markdown, run_attacks
    from unlearnkit.config import EvalConfig
    from unlearnkit.progress import Progress

    ids = torch.randint(0, 95, (12, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    forget, holdout = TokenBlocks(ids[:6], mask[:6], "forget"), TokenBlocks(ids[6:], mask[6:], "held-out")
    plan = AttackPlan(relearn_steps=0, lora_relearn_rank=0, unrelated_steps=3, quantisations=(), score_el=False)
    result = run_attacks(tiny_model, None, forget, holdout, plan, EvalConfig(bootstrap=20), Progress(quiet=True))
    assert result.details["unrelated"] == {"skipped": UNRELATED_MISSING}
    assert [row["attack"] for row in result.rows] == ["none (unlearned)"]  # no control without an attack
    assert f"- unrelated: {UNRELATED_MISSING}" in attack_markdown(result, "m")
    given = run_attacks(tiny_model, None, forget, holdout, plan, EvalConfig(bootstrap=20), Progress(quiet=True),
                        unrelated=holdout)
    assert given.details["unrelated"]["rows"] == 6 and "Not run" not in attack_markdown(given, "m")


@pytest.mark.integration
def test_attacking_a_bare_model_names_the_option_that_gives_its_unrelated_attack_text(memorized_model_dir, tmp_path):
    from unlearnkit.attacks.suite import UNRELATED_MISSING

    bare = run_cli("attack", str(memorized_model_dir), "--forget", "jang,n=4,set=0", "--holdout",
                   "tdec,split=val,n=4", "--seq-len", "32", "--relearn-steps", "0", "--lora-relearn-rank", "0",
                   "--quant", "", "--no-el", "--unrelated-steps", "2", "-q", "--output", str(tmp_path / "bare"))
    assert bare.returncode == 0, bare.stderr[-2000:]
    said = " ".join(bare.stderr.split())
    assert UNRELATED_MISSING in said and "--unrelated SOURCE" in said
    assert json.loads((tmp_path / "bare" / "attack.json").read_text())["details"]["unrelated"] == {
        "skipped": UNRELATED_MISSING}
