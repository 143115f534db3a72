"""Privacy audit: TDEC extraction attack, membership-inference scores, AUC, and the audit report."""

from __future__ import annotations

import json
import math
import zlib

import pytest
import torch

from conftest import memorize_fully, tiny_gpt_neo
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.errors import UnlearnkitError
from unlearnkit.metrics.privacy import (
    auc,
    extraction_attack,
    extraction_layout,
    membership_inference,
    mia_scores,
)

VOCAB = 96


@pytest.fixture(scope="module")
def memorized():
    gen = torch.Generator().manual_seed(5)
    seqs = torch.randint(0, VOCAB - 1, (4, 32), generator=gen)
    model = memorize_fully(tiny_gpt_neo(vocab_size=VOCAB, seed=1), seqs)
    holdout = torch.randint(0, VOCAB - 1, (4, 32), generator=gen)
    return model, seqs, holdout


def _direct_suffix_match(model, x: torch.Tensor, cut: int, suffix_len: int) -> int:
    """Greedy decoding one token at a time without a cache, then count leading matches."""
    seq = x[:cut].tolist()
    with torch.no_grad():
        for _ in range(suffix_len):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    gen, true = seq[cut:], x[cut : cut + suffix_len].tolist()
    k = 0
    while k < suffix_len and gen[k] == true[k]:
        k += 1
    return k


def test_extraction_attack_matches_direct_decoding(memorized):
    model, seqs, holdout = memorized
    ids = torch.cat([seqs[:2], holdout[:2]])
    res = extraction_attack(model, ids, prefix_start=10, prefix_len=6, suffix_len=8)
    assert res["exact"][:2] == [True, True]  # memorised suffixes come back
    expected = [_direct_suffix_match(model, row, 16, 8) for row in ids]
    assert res["matched_tokens"] == expected
    assert res["exact_match_rate"] == pytest.approx(sum(k == 8 for k in expected) / 4)
    assert res["mean_matched_tokens"] == pytest.approx(sum(expected) / 4)


def test_extraction_attack_context_start_and_short_input(memorized):
    model, seqs, _ = memorized
    res = extraction_attack(model, seqs[:1], prefix_start=10, prefix_len=6, suffix_len=8, context_start=10)
    assert res["layout"]["context_start"] == 10 and len(res["exact"]) == 1
    with pytest.raises(UnlearnkitError, match="smaller prefix_start"):
        extraction_attack(model, seqs[:1])  # 32 tokens < 100 + 50 + 50


def test_mia_scores_match_direct_computation(memorized):
    model, seqs, holdout = memorized
    ids = torch.cat([seqs[:1], holdout[:1]])
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0  # right padding must be ignored
    texts = ["abc abc abc", "the quick brown fox"]
    scores = mia_scores(model, ids, mask, texts=texts, k=0.2)
    for b, length in enumerate([32, 20]):
        x = ids[b, :length]
        with torch.no_grad():
            logp_all = torch.log_softmax(model(input_ids=x[None]).logits[0, :-1].double(), dim=-1)
        lp = [float(logp_all[t, x[t + 1]]) for t in range(length - 1)]
        count = int(len(lp) * 0.2)
        assert scores["loss"][b] == pytest.approx(sum(lp) / len(lp), rel=1e-5)
        assert scores["min_k"][b] == pytest.approx(sum(sorted(lp)[:count]) / count, rel=1e-5)
        z = []
        for t in range(length - 1):
            p = logp_all[t].exp()
            mu = float((p * logp_all[t]).sum())
            var = float((p * logp_all[t] ** 2).sum()) - mu**2
            z.append((lp[t] - mu) / math.sqrt(var))
        assert scores["min_k_pp"][b] == pytest.approx(sum(sorted(z)[:count]) / count, rel=1e-4)
        assert scores["zlib"][b] == pytest.approx((sum(lp) / len(lp)) / len(zlib.compress(texts[b].encode())))


def test_mia_zlib_needs_text_or_tokenizer(memorized):
    model, seqs, _ = memorized

    class Decoder:
        def decode(self, ids):
            return " ".join(map(str, ids))

    assert "zlib" not in mia_scores(model, seqs[:2])
    assert len(mia_scores(model, seqs[:2], tokenizer=Decoder())["zlib"]) == 2


def test_auc_hand_cases():
    assert auc([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.5
    assert auc([5.0, 6.0], [1.0, 2.0, 3.0]) == 1.0
    assert auc([1.0, 2.0], [5.0, 6.0]) == 0.0
    # pairs: (1,2)<, (1,3)<, (2,2) tie = 0.5, (2,3)< -> 0.5 / 4
    assert auc([1.0, 2.0], [2.0, 3.0]) == pytest.approx(0.125)
    assert math.isnan(auc([], [1.0]))


def test_membership_inference_separates_memorized_text(memorized):
    model, seqs, holdout = memorized
    forget = TokenBlocks(seqs, torch.ones_like(seqs), "forget")
    held = TokenBlocks(holdout, torch.ones_like(holdout), "holdout")
    mia = membership_inference(model, forget, held)
    assert set(mia["auc"]) == {"loss", "min_k", "min_k_pp"}
    assert mia["auc"]["loss"] == 1.0 and mia["auc"]["min_k"] == 1.0
    assert membership_inference(model, forget, forget)["auc"]["loss"] == 0.5


def test_extraction_layout_scales_short_sequences():
    tdec = {"prefix_start": 100, "prefix_len": 50, "suffix_len": 50, "scaled": False}
    assert extraction_layout(200) == tdec
    small = extraction_layout(32)
    assert small is not None and small["scaled"] and "note" in small
    assert small["prefix_start"] + small["prefix_len"] + small["suffix_len"] == 32
    assert extraction_layout(3) is None


def test_audit_is_the_run_snapshot_as_json_and_renders(memorized):
    from rich.console import Console
    from rich.table import Table

    from unlearnkit.config import EvalConfig
    from unlearnkit.data.run_sets import RunData
    from unlearnkit.evaluation import evaluation_snapshot
    from unlearnkit.progress import Progress
    from unlearnkit.reports import audit_table

    model, seqs, holdout = memorized
    forget = TokenBlocks(seqs, torch.ones_like(seqs), "forget", ids=[f"f{i}" for i in range(4)])
    held = TokenBlocks(holdout, torch.ones_like(holdout), "holdout")
    snapshot = evaluation_snapshot(model, RunData(forget=forget, validation=held), EvalConfig(el_n=5),
                                   Progress(quiet=True), "audit")
    json.dumps(snapshot)  # plain JSON values only
    privacy = snapshot["privacy"]
    assert privacy["extraction_layout"]["scaled"]
    assert snapshot["forget"]["ma"] == 1.0 and snapshot["forget"]["el"] == 1.0
    assert privacy["extraction_forget"]["exact_match_rate"] == 1.0
    assert snapshot["validation"]["el"] < 0.5
    assert privacy["mia_auc"]["loss"] == 1.0  # memorised rows against random ones: perfectly separated
    table = audit_table(snapshot, 5)
    assert isinstance(table, Table)
    console = Console(width=200, record=True)
    console.print(table)
    shown = console.export_text()
    assert "exact suffix extraction" in shown and "MIA AUC loss" in shown


def test_untrained_model_scores_are_finite():
    model = tiny_gpt_neo(vocab_size=VOCAB, seed=2)
    ids = torch.randint(0, VOCAB, (2, 12))
    scores = mia_scores(model, ids)
    assert all(math.isfinite(v) for values in scores.values() for v in values)
