"""Wall time of the what-the-model-kept suite (`unlearnkit eval MODEL --suite paper --limit N`) per kind of task.

Runs :func:`unlearnkit.evaluation.downstream_scores` once per kind (reasoning through lm-eval, dialogue F1,
perplexity) so each gets its own time, and counts the tokens every forward pass of the model processed
(padding included: that is what the machine computes), hence tokens per second.

Models: ``tiny`` (a randomly initialised 2-layer GPT-Neo, hidden 64, with the GPT-2 tokenizer of the data
directory: the scores are chance, the timing is the harness's own overhead plus a cheap model) and
``smollm2`` (SmolLM2-135M-Instruct, GGUF dequantised to float32).

Usage: ``python benchmarks/eval_suite.py [--models tiny,smollm2] [--suite paper] [--limit 100] [--threads 1]``.
Results go to ``benchmarks/results/eval_suite.json`` (rewritten after every model).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

from unlearnkit.config import DownstreamConfig, resolve_suite
from unlearnkit.data.catalog import resolve_data_dir
from unlearnkit.evaluation import downstream_scores
from unlearnkit.io import atomic_write_json
from unlearnkit.progress import Progress

RESULTS = Path(__file__).resolve().parent / "results" / "eval_suite.json"


class TokenCounter:
    """Counts the input tokens of every forward pass of a model (a forward pre-hook)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor):
            self.tokens += ids.numel()


def load(name: str, data_dir: Path) -> tuple[Any, Any]:
    if name == "smollm2":
        from unlearnkit.modeling import load_model

        loaded = load_model("smollm2")
        return loaded.model.eval(), loaded.tokenizer
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from unlearnkit.data.sources import load_gpt2_tokenizer

    tokenizer = load_gpt2_tokenizer(data_dir)
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=64, num_layers=2, num_heads=4,
                                           attention_types=[[["global", "local"], 1]], intermediate_size=256,
                                           max_position_embeddings=2048, window_size=256))
    return model.eval(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--suite", default="paper")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = resolve_data_dir(None)
    suite = resolve_suite(args.suite)
    results: dict[str, Any] = {"suite": args.suite, "limit": args.limit, "batch_size": args.batch_size,
                               "threads": args.threads, "machine": platform.machine(), "torch": torch.__version__,
                               "models": {}}
    for name in args.models.split(","):
        model, tokenizer = load(name, data_dir)
        parameters = sum(p.numel() for p in model.parameters())
        config = model.config
        shape = f"{config.model_type}, {getattr(config, 'num_hidden_layers', '?')} layers, hidden {config.hidden_size}"
        print(f"{name}: {shape}, {parameters / 1e6:.1f}M parameters, vocabulary {config.vocab_size}; "
              f"suite {args.suite}, first {args.limit} items per task, batch {args.batch_size}, "
              f"{args.threads} thread(s)", flush=True)
        counter = TokenCounter(model)
        row: dict[str, Any] = {"shape": shape, "parameters": parameters, "kinds": {}}
        for kind in ("reasoning", "dialogue", "perplexity"):
            tasks = getattr(suite, kind)
            if not tasks:
                continue
            counter.tokens = 0
            started = time.perf_counter()
            scores = downstream_scores(model, tokenizer, DownstreamConfig(
                suite=args.suite, tasks=list(tasks), limit=args.limit, batch_size=args.batch_size), data_dir,
                Progress(quiet=True))
            seconds = time.perf_counter() - started
            row["kinds"][kind] = {"seconds": round(seconds, 1), "tokens": counter.tokens,
                                  "tokens_per_s": round(counter.tokens / seconds), "scores": scores}
            print(f"  {kind}: {seconds:.0f} s, {counter.tokens} tokens through the model, "
                  f"{counter.tokens / seconds:.0f} tokens/s", flush=True)
        counter.handle.remove()
        row["total_s"] = round(sum(k["seconds"] for k in row["kinds"].values()), 1)
        print(f"  total {row['total_s']:.0f} s", flush=True)
        results["models"][name] = row
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
