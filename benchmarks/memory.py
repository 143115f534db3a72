"""Peak memory and step time of an unlearning step, and what a model needs per GPU.

Measured (on this machine's CPU): a randomly initialised GPT-Neo-125M-shaped model (no download), one IHL
step with a retain batch as ``unlearnkit run`` takes it, for full fine-tuning, LoRA and FLoRA (its
initialisation: the Fisher passes form full target-weight gradients), with and without
``train.gradient_checkpointing``, in float32 and bfloat16 (``model.dtype``); and a GD step on the same
batches, to compare IHL with. Peak memory is the peak resident set size above the level before the case
(weights excluded; gradients, AdamW state and activations included), sampled every 10 ms, each case in a
fresh process (memory a previous case freed stays in a process and would hide the next case's); the step
time is the median of the timed steps after one warm-up step.

Computed: the memory per GPU of GPT-Neo-2.7B (the paper's largest) and a 7B Llama-family model under DDP,
DeepSpeed ZeRO-2 and FSDP, from their parameter counts (instantiated on the meta device, no download) and the usual
activation formula (Korthikanti et al. 2022, Eq. 2, scaled to the element size; with checkpointing one
layer's input per layer plus one layer's activations). The same formula is applied to the measured 125M
cases, so the JSON shows how far the estimate is from a measurement.

    python benchmarks/memory.py --quick      # tiny model, seconds
    python benchmarks/memory.py              # the 125M shape, several minutes on 2 cores

Writes benchmarks/results/memory.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flora_init import PeakRss  # noqa: E402  (a sibling benchmark's RSS sampler)
from unlearnkit.adapters.flora.init import initialise_flora  # noqa: E402
from unlearnkit.adapters.lora import attach_lora  # noqa: E402
from unlearnkit.config import (
    FloraOptions,  # noqa: E402
    MethodConfig,  # noqa: E402
)
from unlearnkit.data.blocks import TokenBlocks  # noqa: E402
from unlearnkit.io import atomic_write_json  # noqa: E402
from unlearnkit.methods import build_method  # noqa: E402
from unlearnkit.modeling import enable_gradient_checkpointing  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
GIB = 1024**3
TARGETS = ["q_proj", "v_proj", "c_fc", "c_proj"]


def gpt_neo(quick: bool, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    if quick:
        config = GPTNeoConfig(vocab_size=2048, hidden_size=128, num_layers=2, num_heads=4,
                              attention_types=[[["global", "local"], 1]], max_position_embeddings=256)
    else:  # the GPT-Neo-125M shape (GPTNeoConfig()'s defaults are the 1.3B one)
        config = GPTNeoConfig(vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12,
                              attention_types=[[["global", "local"], 6]], max_position_embeddings=2048)
    return GPTNeoForCausalLM(config).to(dtype)


def blocks(rows: int, length: int, vocab: int, seed: int) -> TokenBlocks:
    ids = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))
    return TokenBlocks(ids, torch.ones_like(ids), f"random-{seed}")


def measure_case(quick: bool, mode: str, dtype: torch.dtype, checkpointing: bool, batch: int, length: int,
                 steps: int, method_name: str = "ihl") -> dict[str, Any]:
    model = gpt_neo(quick, dtype)
    vocab = model.config.vocab_size
    forget, retain = blocks(batch, length, vocab, 1), blocks(batch, length, vocab, 2)
    if mode != "full":
        model = attach_lora(model, TARGETS, rank=16, alpha=32)
    else:
        model.requires_grad_(True)
    if checkpointing:
        enable_gradient_checkpointing(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    result: dict[str, Any] = {"mode": mode, "method": method_name, "dtype": str(dtype).removeprefix("torch."),
                              "gradient_checkpointing": checkpointing,
                              "trainable_m": round(sum(p.numel() for p in trainable) / 1e6, 2)}
    if mode == "flora":
        with PeakRss() as peak:
            initialise_flora(model, forget, retain, FloraOptions(fisher_batch_size=batch))
        result["init_peak_mb"] = round(peak.delta_mb, 1)
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    method = build_method(MethodConfig(name=method_name))
    model.train()
    times = []
    with PeakRss() as peak:
        for index in range(steps + 1):
            start = time.perf_counter()
            loss, _ = method.step_loss(model, forget, retain)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss
            if index:  # the first step allocates AdamW's state and warms the allocator
                times.append(time.perf_counter() - start)
    result["step_peak_mb"] = round(peak.delta_mb, 1)
    result["step_s"] = round(statistics.median(times), 3)
    return result


# ------------------------------------------------------------------------------------------ estimate
def estimate_bytes(params: int, trainable: int, layers: int, hidden: int, heads: int, vocab: int, *,
                   batch: int, length: int, element: int, checkpointing: bool, processes: int = 1,
                   zero2: bool = False, fsdp: bool = False, dropout: bool = True) -> dict[str, float]:
    """Bytes per process of one unlearning step (forget and retain batch, each ``batch`` x ``length``).

    Weights in ``element`` bytes; trainable weights get a gradient and AdamW's two moments, all in the
    weights' dtype as torch keeps them (ZeRO-2 splits gradients and moments over ``processes``; FSDP splits the
    weights too, and adds two gathered layers (one computing, one prefetched) and, on the main process, the
    whole plain copy that the evaluation after each epoch runs on: unlearnkit.parallel.WholeModel). Activations
    of both batches (the forget batch's graph is alive while the retain batch runs): Korthikanti et al.'s
    34 + 5·a·s/h units of s·b·h per layer in 16-bit (24 + 5·a·s/h without dropout), scaled to ``element``;
    with checkpointing, 2 units per layer (the saved input) plus one layer's full set. Logits: forget and
    retain logits in fp32 with their gradient.
    """
    tokens = batch * length
    per_layer_units = (34 if dropout else 24) + 5 * heads * length / hidden
    scale = element / 2
    if checkpointing:
        activation = 2 * (tokens * hidden * (2 * layers + per_layer_units)) * scale
    else:
        activation = 2 * tokens * hidden * per_layer_units * layers * scale
    split = processes if zero2 or fsdp else 1
    parts = {
        "weights": params * element / (processes if fsdp else 1),
        **({"gathered_layers": 2 * params / layers * element, "main_process_copy": params * element} if fsdp
           else {}),
        "gradients": trainable * element / split,
        "adamw": trainable * 2 * element / split,
        "activations": activation,
        "logits": 2 * 2 * tokens * vocab * 4,
    }
    parts["total"] = sum(parts.values())
    return parts


def shape_of(name: str) -> dict[str, Any]:
    """Parameter count and shape of a model from its config alone (meta device: no weights, no download)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, GPTNeoConfig, LlamaConfig

    if name == "gpt-neo-2.7b":
        config: Any = GPTNeoConfig(vocab_size=50257, hidden_size=2560, num_layers=32, num_heads=20,
                                   attention_types=[[["global", "local"], 16]], max_position_embeddings=2048)
        layers, heads, dropout = 32, 20, True
    elif name == "llama-7b":
        config = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
        layers, heads, dropout = 32, 32, False
    else:
        raise SystemExit(f"unknown model {name!r}")
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    lora = targets = 0
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module_name.rsplit(".", 1)[-1] in {
                "q_proj", "v_proj", "c_fc", "c_proj", "gate_proj", "up_proj", "down_proj"}:
            lora += 16 * (module.in_features + module.out_features)
            targets += module.in_features * module.out_features
    return {"params": params, "lora_params": lora, "target_params": targets, "layers": layers,
            "hidden": config.hidden_size, "heads": heads, "vocab": config.vocab_size, "dropout": dropout}


def gpu_table(batch: int, length: int, gpus: int) -> list[dict[str, Any]]:
    rows = []
    for name in ("gpt-neo-2.7b", "llama-7b"):
        shape = shape_of(name)
        for mode, element, zero2, fsdp in (
                ("full fp32, DDP", 4, False, False), ("full fp32, ZeRO-2", 4, True, False),
                ("full bf16 weights, ZeRO-2", 2, True, False), ("full bf16 weights, FSDP", 2, False, True),
                ("LoRA r16, bf16 weights", 2, False, False)):
            trainable = shape["params"] if mode.startswith("full") else shape["lora_params"]
            for checkpointing in (False, True):
                parts = estimate_bytes(shape["params"], trainable, shape["layers"], shape["hidden"],
                                       shape["heads"], shape["vocab"], batch=batch, length=length, element=element,
                                       checkpointing=checkpointing, processes=gpus, zero2=zero2, fsdp=fsdp,
                                       dropout=shape["dropout"])
                rows.append({"model": name, "params_b": round(shape["params"] / 1e9, 2), "setup": mode,
                             "gpus": gpus, "batch_per_gpu": batch, "seq_len": length,
                             "gradient_checkpointing": checkpointing,
                             **{f"{k}_gib": round(v / GIB, 1) for k, v in parts.items()}})
        # FLoRA's initialisation (bf16 weights): one Fisher batch's gradients of the target weights, and the
        # forget and retain sums in fp32; usually the peak of a LoRA run
        fisher = estimate_bytes(shape["params"], shape["target_params"], shape["layers"], shape["hidden"],
                                shape["heads"], shape["vocab"], batch=batch, length=length, element=2,
                                checkpointing=False, dropout=shape["dropout"])
        fisher["adamw"] = 0.0
        fisher["fisher_sums"] = 2 * 4 * shape["target_params"]
        fisher["activations"] /= 2  # one batch, not a forget and a retain batch
        fisher["logits"] /= 2
        fisher["total"] = sum(v for k, v in fisher.items() if k != "total")
        rows.append({"model": name, "params_b": round(shape["params"] / 1e9, 2), "setup": "FLoRA init, bf16 weights",
                     "gpus": gpus, "batch_per_gpu": batch, "seq_len": length, "gradient_checkpointing": False,
                     **{f"{k}_gib": round(v / GIB, 1) for k, v in fisher.items()}})
    return rows


def in_fresh_process(args: argparse.Namespace, mode: str, dtype: str, checkpointing: bool, method: str,
                     length: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one-case", json.dumps(
        {"quick": args.quick, "mode": mode, "dtype": dtype, "checkpointing": checkpointing, "method": method,
         "batch": args.batch, "length": length, "steps": args.steps, "threads": torch.get_num_threads()})]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def one_case(spec: dict[str, Any]) -> None:
    torch.set_num_threads(spec["threads"])
    case = measure_case(spec["quick"], spec["mode"], getattr(torch, spec["dtype"]), spec["checkpointing"],
                        spec["batch"], spec["length"], spec["steps"], spec["method"])
    print(json.dumps(case))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny GPT-Neo: a smoke run")
    parser.add_argument("--batch", type=int, default=2, help="forget rows (and retain rows) per step")
    parser.add_argument("--seq-len", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per case (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="model dtypes to measure (bfloat16 is slow on CPUs without bf16 matmuls)")
    parser.add_argument("--gpu-batch", type=int, default=4, help="rows per GPU in the computed table")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--computed-only", action="store_true",
                        help="recompute only the per-GPU table, into the JSON of an earlier run (measured kept)")
    parser.add_argument("--one-case", help=argparse.SUPPRESS)  # internal: one case, in its own process
    args = parser.parse_args()
    if args.one_case:
        one_case(json.loads(args.one_case))
        return
    if args.computed_only:
        table = gpu_table(args.gpu_batch, 200, args.gpus)
        for row in table:
            print(row)
        atomic_write_json(args.out, {**json.loads(args.out.read_text()), "computed_per_gpu": table})
        print(f"wrote {args.out}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    length = 32 if args.quick else args.seq_len
    probe = gpt_neo(args.quick, torch.float32)
    params = sum(p.numel() for p in probe.parameters())
    shape = probe.config
    print(f"GPT-Neo {'tiny' if args.quick else '125M shape'}: {params / 1e6:.1f} M parameters, "
          f"{args.batch} forget + {args.batch} retain rows x {length} tokens per step, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}", flush=True)
    cases = [(mode, dtype, checkpointing, "ihl") for dtype in args.dtypes.split(",")
             for mode in ("full", "lora", "flora") for checkpointing in (False, True)]
    # IHL against GD (the same forget and retain batches; GA has no retain batch): step time and peak memory
    cases += [(mode, "float32", False, "gd") for mode in ("full", "lora")]
    measured = []
    for mode, dtype, checkpointing, method in cases:
        case = in_fresh_process(args, mode, dtype, checkpointing, method, length)
        trainable = params if mode == "full" else int(case["trainable_m"] * 1e6)
        estimate = estimate_bytes(params, trainable, shape.num_layers, shape.hidden_size, shape.num_heads,
                                  shape.vocab_size, batch=args.batch, length=length,
                                  element=4 if dtype == "float32" else 2, checkpointing=checkpointing)
        # the measured peak excludes the weights, which were allocated before the case's baseline
        case["estimate_mb"] = round((estimate["total"] - estimate["weights"]) / 2**20, 1)
        print(case, flush=True)
        measured.append(case)
    table = gpu_table(args.gpu_batch, 200, args.gpus)
    for row in table:
        print(row)
    atomic_write_json(args.out, {
        "what": "peak memory and step time of an IHL step; memory per GPU computed for 2.7B and 7B models",
        "model": "tiny gpt-neo" if args.quick else "gpt-neo-125m shape (random init)",
        "parameters_m": round(params / 1e6, 1), "batch": args.batch, "seq_len": length,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "measured": measured, "computed_per_gpu": table,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
