"""What the forgetting criterion costs after an epoch, against the epoch it judges.

One IHL + LoRA epoch over a forget set of TDEC validation rows the model half knows (with a WikiText retain
batch per step, as ``unlearnkit run`` trains), then the criterion three ways on the trained model:

* ``full``: MA and the full exact EL_n (what ``eval.per_epoch_el: full`` computes every epoch);
* ``decide``: what ``eval.per_epoch_el: decide`` (the default) computes: MA, then EL_n a group at a time,
  highest MA first, until the running sum proves the mean above the EL threshold;
* ``prefill``: the full EL_n without the KV-cache reuse (``reuse_cache=False``), for the record
  (``--skip-prefill`` leaves it out).

The thresholds are the held-out means of the same number of other TDEC validation rows, measured first.
The decision of ``decide`` is checked against ``full``.

    python benchmarks/criterion_cost.py --model smollm2 --sequences 32 --seq-len 200
    python benchmarks/criterion_cost.py --quick                     # a tiny random GPT-Neo, seconds

Writes benchmarks/results/criterion_cost.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from unlearnkit.adapters.lora import attach_lora
from unlearnkit.config import EvalConfig, MethodConfig, SourceConfig
from unlearnkit.data.catalog import resolve_data_dir
from unlearnkit.data.sources import load_blocks
from unlearnkit.evaluation import evaluate_memorization
from unlearnkit.io import atomic_write_json
from unlearnkit.methods import build_method
from unlearnkit.metrics.memorization import extraction_likelihood_details
from unlearnkit.modeling import load_model, resolve_target_modules
from unlearnkit.progress import Progress
from unlearnkit.training import OptimisationStep

RESULTS = Path(__file__).resolve().parent / "results" / "criterion_cost.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, a local model directory, or a hub id")
    parser.add_argument("--quick", action="store_true", help="a tiny random GPT-Neo, 4 x 48 tokens")
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--skip-prefill", action="store_true", help="skip the record-only EL without cache reuse")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data_dir = resolve_data_dir(args.data_dir)
    if args.quick:
        from transformers import GPTNeoConfig, GPTNeoForCausalLM

        from unlearnkit.data.sources import load_gpt2_tokenizer

        tokenizer = load_gpt2_tokenizer(data_dir)
        model: Any = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=64, num_layers=2,
                                                    num_heads=4, attention_types=[[["global", "local"], 1]],
                                                    max_position_embeddings=256))
        args.sequences, args.seq_len = 4, 48
    else:
        loaded = load_model(args.model)
        model, tokenizer = loaded.model, loaded.tokenizer
    params = sum(p.numel() for p in model.parameters())
    n = args.sequences
    rows = load_blocks(SourceConfig(source="tdec", split="val", n=2 * n, seed=0), tokenizer, data_dir,
                       seq_len=args.seq_len)
    forget, held_out = rows.subset(list(range(n))), rows.subset(list(range(n, 2 * n)))
    retain = load_blocks(SourceConfig(source="wikitext", n=4 * n), tokenizer, data_dir, seq_len=args.seq_len)
    options, quiet = EvalConfig(batch_size=32), Progress(quiet=True)
    print(f"{args.model if not args.quick else 'tiny gpt-neo'}: {params / 1e6:.1f} M parameters, "
          f"{n} x {args.seq_len} tokens, {torch.get_num_threads()} thread(s)", flush=True)

    t0 = time.perf_counter()
    threshold_scores = evaluate_memorization(model, held_out, options, quiet)
    thresholds_s = time.perf_counter() - t0
    tau = (threshold_scores["ma"], threshold_scores["el"])

    model = attach_lora(model, resolve_target_modules(model, ["q", "v", "ffn"]), rank=16, alpha=32)
    method = build_method(MethodConfig(name="ihl"))
    step = OptimisationStep([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    t0 = time.perf_counter()
    for start in range(0, n, args.batch):
        batch = forget.subset(list(range(start, min(n, start + args.batch))))
        kept = retain.subset(list(range(start, start + args.batch)))
        loss, _ = method.step_loss(model, batch, kept)
        step(loss)
    epoch_s = time.perf_counter() - t0
    model.eval()

    timed: dict[str, Any] = {}
    for mode in ("decide", "full"):
        t0 = time.perf_counter()
        scores = evaluate_memorization(model, forget, options, quiet, thresholds=tau if mode == "decide" else None)
        timed[mode] = {"seconds": round(time.perf_counter() - t0, 2), "ma": scores["ma"], "el": scores["el"],
                       "el_scored": scores.get("el_scored", n if scores["el"] is not None else 0),
                       "el_lower_bound": scores.get("el_lower_bound")}
    if not args.skip_prefill:
        t0 = time.perf_counter()
        extraction_likelihood_details(model, forget.input_ids, n=10, attention_mask=forget.attention_mask,
                                      reuse_cache=False)
        timed["prefill"] = {"seconds": round(time.perf_counter() - t0, 2)}
    full, decided = timed["full"], timed["decide"]
    forgotten_full = full["ma"] <= tau[0] and full["el"] <= tau[1]
    forgotten_decided = decided["el"] is not None and decided["ma"] <= tau[0] and decided["el"] <= tau[1]
    payload = {
        "what": "criterion cost after one IHL + LoRA epoch, against the epoch",
        "model": args.model if not args.quick else "tiny gpt-neo", "parameters_m": round(params / 1e6, 1),
        "sequences": n, "seq_len": args.seq_len, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "thresholds": {"ma": tau[0], "el": tau[1]},
        "thresholds_s": round(thresholds_s, 2), "epoch_s": round(epoch_s, 2), "criterion": timed,
        "full_over_epoch": round(full["seconds"] / epoch_s, 2),
        "decide_over_epoch": round(decided["seconds"] / epoch_s, 2),
        "same_decision": forgotten_full == forgotten_decided,
    }
    print(json.dumps(payload, indent=1), flush=True)
    atomic_write_json(args.out, payload)
    return 0 if payload["same_decision"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
