"""Forgetting that holds: the rule that the forget rows be indistinguishable from held-out rows by membership
inference (``eval.rule: paper+mia``), its bootstrap interval, and a run that meets the paper's rule but not this one
and says so."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import DATA, MEMORISED_SEQ_LEN, memorised_run_overrides, run_cli
from unlearnkit.metrics.privacy import auc, auc_interval, lowest_k_mean

REPO_CONFIG = "configs/paper/gpt-neo-125m-lora-ihl.yaml"


def test_the_auc_interval_is_the_bootstrap_of_the_auc():
    rng = np.random.default_rng(3)
    member, nonmember = rng.normal(0.4, 1, 12).tolist(), rng.normal(0, 1, 9).tolist()
    member[3] = nonmember[2]  # a tie counts a half
    low, high = auc_interval(member, nonmember, resamples=200, confidence=0.8, seed=5)
    # the same draws, each resample's AUC by the rank formula
    draws = np.random.default_rng(5)
    rows, columns = draws.integers(0, 12, size=(200, 12)), draws.integers(0, 9, size=(200, 9))
    values = [auc([member[i] for i in r], [nonmember[j] for j in c]) for r, c in zip(rows, columns, strict=True)]
    assert (low, high) == pytest.approx((np.quantile(values, 0.1), np.quantile(values, 0.9)))
    assert low < auc(member, nonmember) < high
    assert auc_interval(member, nonmember, resamples=0) == (auc(member, nonmember),) * 2


def test_a_run_that_meets_the_papers_rule_but_not_indistinguishability_says_so(memorized_model_dir, tmp_path):
    out = tmp_path / "run"
    overrides = [*memorised_run_overrides(memorized_model_dir, out), "method.name=ihl", "adapter.name=flora",
                 "train.lr=0.1", "train.epochs=12", "eval.rule=paper+mia", "eval.audit=false",
                 "eval.mia_margin=0.05"]  # a few rows' bootstrap interval is wider than ±0.05 on any CPU
    done = run_cli("run", REPO_CONFIG, *[part for o in overrides for part in ("--set", o)], "-q")
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]  # not forgotten
    said = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "membership inference still tells the forget rows from held-out rows" in said[0], done.stderr[-2000:]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.index("membership inference still tells") < 600  # in the report's first lines too
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    last = metrics["epochs"][-1]
    paper = [e["epoch"] for e in metrics["epochs"] if e["forget_el"] is not None
             and e["forget_ma"] <= e["ma_threshold"] and e["forget_el"] <= e["el_threshold"]]
    assert paper and f"the paper's rule was met (first after epoch {paper[0]})" in said[0]
    # after that epoch, an epoch membership inference still tells apart cannot meet the rule: its EL is left out
    # (whether such epochs come before the budget ends depends on the CPU's rounding; the rule's own test below
    # makes them)
    for later in (e for e in metrics["epochs"] if e["epoch"] > paper[0] and e["forget_ma"] <= e["ma_threshold"]):
        assert later["forget_el"] is None and later["el_skipped"].startswith(
            f"the paper's rule was met after epoch {paper[0]}")
        assert f"— (the paper's rule was met after epoch {paper[0]}" in report
    assert not metrics["criterion_met"] and not any(e["mia"]["met"] for e in metrics["epochs"])
    margin = last["mia"]["margin"]
    assert margin == 0.05
    for epoch in metrics["epochs"]:  # each verdict is what its intervals say
        intervals = [epoch["mia"][name] for name in ("loss", "min_k")]
        assert all(each["low"] <= each["auc"] <= each["high"] for each in intervals)
        assert any(each["low"] < 0.5 - margin or each["high"] > 0.5 + margin for each in intervals)

    # the recorded AUCs are those of the unlearned model, scored directly: each row's mean token log-probability
    # (LOSS) and the mean of its lowest 20 % (Min-K%), forget rows against held-out rows
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    from unlearnkit.config import load_config
    from unlearnkit.data.sources import load_blocks

    config = load_config(out / "config.yaml")

    def scores(spec):
        blocks = load_blocks(spec, tokenizer, DATA, seq_len=MEMORISED_SEQ_LEN)
        with torch.no_grad():
            logits = model(input_ids=blocks.input_ids).logits.double()
        token_lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, blocks.input_ids[:, 1:, None])[..., 0]
        return [float(row.mean()) for row in token_lp], [lowest_k_mean(row, 0.2) for row in token_lp]

    (forget_loss, forget_min_k), (held_loss, held_min_k) = scores(config.data.forget), scores(config.data.validation)
    assert last["mia"]["loss"]["auc"] == pytest.approx(auc(forget_loss, held_loss))
    assert last["mia"]["min_k"]["auc"] == pytest.approx(auc(forget_min_k, held_min_k))

    # a sweep's row and report carry the verdict
    from unlearnkit.config.sweep import SweepPoint
    from unlearnkit.experiments.report import write_report
    from unlearnkit.experiments.sweep import point_row

    row = point_row(SweepPoint("mia", {}, None), out)
    assert row["rule"] == "paper+mia" and row["mia"] == last["mia"] and 1 <= row["paper_rule_epoch"] <= 12
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "results.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    write_report(tmp_path / "sweep")
    report = (tmp_path / "sweep" / "report" / "report.md").read_text(encoding="utf-8")
    loss = last["mia"]["loss"]
    assert (f"| `mia` | FLoRA+IHL | {row['paper_rule_epoch']} | no | {loss['auc']:.2f} [{loss['low']:.2f}, "
            f"{loss['high']:.2f}] |") in report


def test_with_a_margin_any_interval_meets_the_rule_meets_with_the_papers(memorized_model_dir, tmp_path):
    from unlearnkit.config import load_config
    from unlearnkit.loop import run_unlearning

    out = tmp_path / "run"
    config = load_config(REPO_CONFIG, [*memorised_run_overrides(memorized_model_dir, out), "method.name=ihl",
                                       "adapter.name=flora", "train.lr=0.1", "eval.rule=paper+mia",
                                       "eval.mia_margin=0.5", "eval.audit=false"])
    result = run_unlearning(config, quiet=True)
    history = result.state.history
    paper = [e["epoch"] for e in history if e["forget_el"] is not None and e["forget_ma"] <= e["ma_threshold"]
             and e["forget_el"] <= e["el_threshold"]]
    assert result.state.criterion_met and history[-1]["epoch"] == paper[0]  # stops where the paper's rule is met
    assert all(e["mia"]["met"] for e in history) and result.after["forget"]["mia"]["met"]


def test_the_rule_needs_held_out_rows(memorized_model_dir, tmp_path):
    overrides = [*memorised_run_overrides(memorized_model_dir, tmp_path / "run"), "eval.rule=paper+mia",
                 "data.validation=null", "eval.ma_threshold=0.5", "eval.el_threshold=0.1"]
    done = run_cli("run", REPO_CONFIG, *[part for o in overrides for part in ("--set", o)])
    assert done.returncode == 2 and "eval.rule paper+mia compares the forget rows with held-out rows" in done.stderr
    assert not (tmp_path / "run").exists()


def test_the_held_out_level_loss_is_its_formula_and_stops_at_the_level():
    from unlearnkit.objectives import held_out_level_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11, requires_grad=True)
    labels = torch.randint(0, 11, (3, 6))
    labels[2, :3] = -100  # a masked prefix (a question) is not counted
    token_nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                                  ignore_index=-100, reduction="none").view(3, 5)
    mean_nll = (token_nll.sum(dim=1) / (labels[:, 1:] != -100).sum(dim=1)).detach()
    level = float(mean_nll.median())  # one row below the level, one at it, one above
    expected = (0.5 * torch.clamp(level - mean_nll, min=0).square()).mean()
    loss = held_out_level_loss(logits, labels, level)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert logits.grad is not None
    pushed = [not bool((logits.grad[row] == 0).all()) for row in range(3)]
    assert pushed == [float(mean_nll[row]) < level for row in range(3)] and sum(pushed) == 1  # none at or above


def test_after_the_papers_rule_an_epoch_that_membership_inference_tells_apart_skips_its_el(memorized_model_dir):
    from unlearnkit.config import load_config
    from unlearnkit.data.sources import load_blocks
    from unlearnkit.metrics.thresholds import Thresholds
    from unlearnkit.progress import Progress
    from unlearnkit.stopping import stopping_rule

    config = load_config(REPO_CONFIG, [*memorised_run_overrides(memorized_model_dir, Path("unused")),
                                       "eval.rule=paper+mia", "eval.mia_margin=0.05"])
    model = AutoModelForCausalLM.from_pretrained(memorized_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(memorized_model_dir)
    forget, held_out = (load_blocks(spec, tokenizer, DATA, seq_len=MEMORISED_SEQ_LEN)
                        for spec in (config.data.forget, config.data.validation))
    lenient = Thresholds(ma=1.0, el=1.0, n_sequences=len(held_out), source="test")  # MA passes: EL is asked for
    progress = Progress(quiet=True)

    def scores(history):
        rule = stopping_rule(config.eval, lenient, validation=held_out, history=history)
        return rule.epoch_scores(model, forget, progress, epoch=len(history) + 1)

    first = scores([])  # the paper's rule not met before: EL is scored, as the first passing epoch must report it
    assert first["el"] is not None and "el_skipped" not in first and not first["mia"]["met"]  # memorised rows
    met_before = [{"epoch": 1, "forget_ma": first["ma"], "forget_el": first["el"]}]
    later = scores(met_before)
    assert later["el"] is None and later["el_skipped"] == ("the paper's rule was met after epoch 1 and membership "
                                                           "inference still tells the rows apart")
    assert later["mia"] == scores(met_before)["mia"] and later["ma"] == first["ma"]  # the same verdict, no EL


def _step_against_a_moved_gradient(method_name: str, option: str, seed: int, direction, step: float):
    """One step of ``method_name`` with ``method.<option>`` 0.05 on a tiny GPT-Neo, against a direct computation:
    the forget loss's gradient at ``θ + step · d/‖d‖`` (``d``: the gradient of ``direction(model, forget)``), plus
    the retain LM loss's gradient at ``θ``. Checks that the weights are back at ``θ`` exactly and that the forget
    loss at ``θ`` is what is logged; returns the moved and the plain forget gradients."""
    from conftest import tiny_gpt_neo
    from unlearnkit.config import MethodConfig
    from unlearnkit.data.blocks import TokenBlocks
    from unlearnkit.methods import build_method
    from unlearnkit.objectives import lm_loss

    torch.manual_seed(seed)
    model = tiny_gpt_neo(vocab_size=64, hidden=16)
    forget = TokenBlocks(torch.randint(0, 64, (2, 12)), torch.ones(2, 12, dtype=torch.long), "forget")
    retain = TokenBlocks(torch.randint(0, 64, (2, 12)), torch.ones(2, 12, dtype=torch.long), "retain")
    method = build_method(MethodConfig(name=method_name, **{option: 0.05}))
    method.device = torch.device("cpu")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    reference, at_theta = copy.deepcopy(model), copy.deepcopy(model)
    total, parts = method.step_loss(model, forget, retain)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # exactly back at θ
    total.backward()

    def forget_loss(m):
        return method.forget_objective(m(input_ids=forget.input_ids).logits, forget.labels(), None, None)

    params = list(reference.parameters())
    moves = torch.autograd.grad(direction(reference, forget), params)
    norm = torch.sqrt(sum(g.double().square().sum() for g in moves))
    with torch.no_grad():
        for p, g in zip(params, moves, strict=True):
            p.add_(g, alpha=step / float(norm))
    moved = torch.autograd.grad(forget_loss(reference), params)
    retain_grads = torch.autograd.grad(lm_loss(at_theta(input_ids=retain.input_ids).logits, retain.labels()),
                                       list(at_theta.parameters()))
    for (name, p), m, r in zip(model.named_parameters(), moved, retain_grads, strict=True):
        assert torch.allclose(p.grad, m + r, rtol=1e-4, atol=1e-6), name
    assert parts["forget_loss"] == pytest.approx(float(forget_loss(model)))  # the loss at θ is what is logged
    # ... and beside it the loss where the gradient was taken: what the step length does to it
    assert parts["forget_loss_moved"] == pytest.approx(float(forget_loss(reference)), rel=1e-5)
    assert parts["forget_loss_moved"] != pytest.approx(parts["forget_loss"], rel=1e-6)
    return moved, torch.autograd.grad(forget_loss(at_theta), list(at_theta.parameters()))


def test_sam_takes_the_forget_gradient_at_the_perturbed_point_and_puts_the_weights_back():
    from unlearnkit.objectives import lm_loss

    def gd_forget_loss(model, forget):  # GD's forget term: SAM perturbs up its own gradient
        return -lm_loss(model(input_ids=forget.input_ids).logits, forget.labels())

    _step_against_a_moved_gradient("gd", "sam_rho", seed=1, direction=gd_forget_loss, step=0.05)


def test_meta_unlearning_takes_the_forget_gradient_after_a_relearning_step_and_puts_the_weights_back():
    from unlearnkit.config import MethodConfig
    from unlearnkit.objectives import lm_loss

    def relearning_loss(model, forget):  # one step of length η down the forget rows' LM loss: what relearning does
        return lm_loss(model(input_ids=forget.input_ids).logits, forget.labels())

    meta, plain = _step_against_a_moved_gradient("ihl", "meta_relearn", seed=2, direction=relearning_loss,
                                                 step=-0.05)
    assert any(not torch.allclose(m, g, rtol=1e-3, atol=1e-6) for m, g in zip(meta, plain, strict=True))  # moved
    with pytest.raises(ValueError, match="set only one of them"):
        MethodConfig(name="ihl", meta_relearn=0.05, sam_rho=0.05)


def test_disruption_masking_keeps_the_forget_gradient_only_where_the_retain_gradient_agrees():
    """MUDMAN's mask, against the two gradients computed directly: the step's gradient is the retain term's plus
    the forget term's on the weights where the two have one sign, so no weight moves against the retain loss."""
    from conftest import tiny_gpt_neo
    from unlearnkit.config import MethodConfig
    from unlearnkit.data.blocks import TokenBlocks
    from unlearnkit.methods import build_method
    from unlearnkit.objectives import lm_loss

    torch.manual_seed(3)
    model = tiny_gpt_neo(vocab_size=64, hidden=16)
    forget = TokenBlocks(torch.randint(0, 64, (2, 12)), torch.ones(2, 12, dtype=torch.long), "forget")
    retain = TokenBlocks(torch.randint(0, 64, (2, 12)), torch.ones(2, 12, dtype=torch.long), "retain")
    method = build_method(MethodConfig(name="ihl", disruption_mask=True, retain_weight=0.5))
    method.device = torch.device("cpu")
    reference = copy.deepcopy(model)
    total, parts = method.step_loss(model, forget, retain)
    total.backward()
    params = list(reference.parameters())
    forget_grads = torch.autograd.grad(method.forget_objective(reference(input_ids=forget.input_ids).logits,
                                                               forget.labels(), None, None), params)
    retain_grads = torch.autograd.grad(lm_loss(reference(input_ids=retain.input_ids).logits, retain.labels()),
                                       params)
    masked_share = []
    for (name, p), f, r in zip(model.named_parameters(), forget_grads, retain_grads, strict=True):
        agree = torch.sign(f) == torch.sign(r)
        assert torch.allclose(p.grad, 0.5 * r + f * agree, rtol=1e-4, atol=1e-7), name
        assert float((f * agree * r).sum()) >= 0  # the kept forget update never works against the retain loss
        masked_share.append(float((~agree).float().mean()))
    assert 0.2 < sum(masked_share) / len(masked_share) < 0.8  # the mask removes some of it, not all
    assert parts["forget_loss"] == pytest.approx(float(method.forget_objective(
        model(input_ids=forget.input_ids).logits, forget.labels(), None, None)))
    with pytest.raises(ValueError, match="no retain term"):
        MethodConfig(name="ga", disruption_mask=True)


@pytest.mark.parametrize("extra", [["method.name=level"], ["method.name=ihl", "method.sam_rho=0.05"],
                                   ["method.name=ihl", "method.meta_relearn=0.05"],
                                   ["method.name=ihl", "method.meta_relearn=0.05", "method.disruption_mask=true"]])
def test_the_new_objective_and_sam_run_with_lora_and_flora(memorized_model_dir, tmp_path, extra):
    from unlearnkit.config import load_config
    from unlearnkit.loop import run_unlearning

    config = load_config(REPO_CONFIG, [*memorised_run_overrides(memorized_model_dir, tmp_path / "run"),
                                       "adapter.name=flora", "train.lr=0.1", "train.epochs=2", "eval.audit=false",
                                       "eval.early_stop=false", *extra])
    result = run_unlearning(config, quiet=True)
    assert len(result.state.history) == 2 and result.after["forget"]["ma"] < result.before["forget"]["ma"]
    moves = config.method.sam_rho > 0 or config.method.meta_relearn > 0  # the epoch says where its gradient was
    assert all(("forget_loss_moved" in epoch) == moves for epoch in result.state.history)


def test_an_unlearned_model_carries_its_model_card(memorized_model_dir, tmp_path):
    """model/README.md in Hugging Face's format: metadata, what was unlearned (fingerprint, never the text), how,
    the evidence as metrics.json has it."""
    from huggingface_hub import ModelCard

    out = tmp_path / "run"
    overrides = [*memorised_run_overrides(memorized_model_dir, out), "method.name=ihl", "adapter.name=flora",
                 "train.lr=0.1"]
    done = run_cli("run", REPO_CONFIG, *[part for o in overrides for part in ("--set", o)], "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.library_name == "transformers" and {"unlearning", "method-ihl", "adapter-flora"} <= set(
        card.data.tags)
    assert card.data.base_model is None  # a local directory is no hub id to link to
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    facts = json.loads((out / "run.json").read_text(encoding="utf-8"))
    text = card.text
    assert "Forgetting criterion met" in text and facts["data_fingerprints"]["forget"] in text
    before, after = metrics["before"]["forget"], metrics["after"]["forget"]
    assert f"forget MA {before['ma']:.4f} → {after['ma']:.4f}" in text
    assert f"{metrics['epochs_run']} epoch" in text and "method `ihl`, adapter `flora` (rank 4)" in text
    # the forgotten text itself is not in the card
    from unlearnkit.config import load_config
    from unlearnkit.data.sources import load_blocks

    config = load_config(out / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    forget = load_blocks(config.data.forget, tokenizer, DATA, seq_len=MEMORISED_SEQ_LEN)
    for row in forget.input_ids:
        assert tokenizer.decode(row[:12]) not in text


def test_push_uploads_the_model_its_card_the_adapter_and_the_record(memorized_model_dir, tmp_path, monkeypatch,
                                                                    capsys):
    """Offline up to the upload: the calls huggingface_hub would make, and bad input refused before any."""
    import sys

    from huggingface_hub import HfApi

    from unlearnkit import cli

    out = tmp_path / "run"
    overrides = [*memorised_run_overrides(memorized_model_dir, out), "method.name=ihl", "adapter.name=lora",
                 "train.lr=0.1", "eval.audit=false"]
    assert run_cli("run", REPO_CONFIG, *[part for o in overrides for part in ("--set", o)], "-q").returncode == 0
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
                        or f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw["repo_id"], kw)))

    def push(*args):
        monkeypatch.setattr(sys, "argv", ["unlearnkit", "push", *args])
        with pytest.raises(SystemExit) as done:
            cli.main()
        return done.value.code

    assert push(str(out), "not-a-repo-id") == 2 and calls == []
    assert "owner/name" in capsys.readouterr().err
    assert push(str(tmp_path), "me/model") == 2 and calls == []  # not a run directory
    assert push(str(out), "me/unlearned") in (0, None)
    assert calls[0] == ("create", "me/unlearned", {"private": True, "exist_ok": True, "repo_type": "model"})
    uploads = {call[2].get("path_in_repo"): call[2] for call in calls[1:]}
    assert Path(uploads[None]["folder_path"]) == out / "model" and (out / "model" / "README.md").is_file()
    assert Path(uploads["adapter"]["folder_path"]) == out / "adapter"
    assert set(uploads["unlearning"]["allow_patterns"]) == {"config.yaml", "metrics.json", "run.json", "report.md"}


def test_the_level_follows_the_model_being_trained_once_an_epoch():
    from conftest import tiny_gpt_neo
    from unlearnkit.config import MethodConfig
    from unlearnkit.data.blocks import TokenBlocks
    from unlearnkit.data.run_sets import RunData
    from unlearnkit.methods import MethodSetup, build_method

    torch.manual_seed(2)
    model = tiny_gpt_neo(vocab_size=64, hidden=16)
    forget = TokenBlocks(torch.randint(0, 64, (4, 10)), torch.ones(4, 10, dtype=torch.long), "forget")
    held_out = TokenBlocks(torch.randint(0, 64, (3, 10)), torch.ones(3, 10, dtype=torch.long), "held-out")
    method = build_method(MethodConfig(name="level", level_from="current"))
    method.prepare(MethodSetup(model, RunData(forget=forget, validation=held_out), torch.device("cpu"), 0, 8))

    def direct() -> float:  # the held-out rows' mean token NLL under the model as it is now
        with torch.no_grad():
            logits = model(input_ids=held_out.input_ids).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), held_out.input_ids[:, 1:].reshape(-1),
                                                reduction="none").view(3, 9)
        return float(nll.mean(dim=1).mean())

    assert method.level == pytest.approx(direct(), rel=1e-5)
    method.forget_loss(model, forget.subset([0, 1]), torch.tensor([0, 1]), None)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(3.0)  # as if an epoch of training had changed the model
    changed = direct()
    method.forget_loss(model, forget.subset([2, 3]), torch.tensor([2, 3]), None)  # the same epoch: kept
    method.forget_loss(model, forget.subset([2, 3]), torch.tensor([2, 3]), None)  # the same step again (SAM)
    assert method.level != pytest.approx(changed, rel=1e-3)
    method.forget_loss(model, forget.subset([0, 1]), torch.tensor([0, 1]), None)  # row 0 again: a new epoch
    assert method.level == pytest.approx(changed, rel=1e-5)


def test_a_run_the_collapse_guard_stopped_is_judged_by_the_model_it_kept_not_the_epoch_it_undid():
    """GA under the indistinguishability rule on SmolLM2 collapsed in its 25th epoch and was restored to the 24th
    (its committed record): the sweep's verdict is the kept model's, which the audit after unlearning scored
    independently, not the undone epoch's."""
    from conftest import REPO
    from unlearnkit.config.sweep import SweepPoint
    from unlearnkit.experiments.sweep import point_row

    record = REPO / "docs" / "results" / "robust-smollm2" / "records" / "sweep" / "forget-set0__rule-mia__method-ga"
    metrics = json.loads((record / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["collapsed_epoch"] == metrics["epochs"][-1]["epoch"]  # the undone epoch has a record
    row = point_row(SweepPoint(record.name, {}, None), record)
    audited = metrics["after"]["privacy"]["mia_auc"]
    assert row["mia"] == metrics["epochs"][-2]["mia"] != metrics["epochs"][-1]["mia"]
    assert (row["mia"]["loss"]["auc"], row["mia"]["min_k"]["auc"]) == pytest.approx(
        (audited["loss"], audited["min_k"]), abs=1e-3)
    assert row["paper_rule_epoch"] == 12 and row["collapsed"] and not row["success"]
