"""Which modules an adapter targets, by name alone (no torch): the module groups per architecture (``q``, ``k``,
``v``, ``o``, ``ffn``, so configs can say "Q, V and FFN" as the paper does, whatever the model calls them), the one
target matcher, and a local model's linear layers read from its safetensors headers, so a wrong target or rank is
refused before torch is imported (:mod:`unlearnkit.modeling` applies the same rules to a loaded model).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from unlearnkit.errors import UnlearnkitError

MODULE_GROUP_NAMES = ("q", "k", "v", "o", "ffn")

_LLAMA_LIKE = {
    "q": r"self_attn\.q_proj",
    "k": r"self_attn\.k_proj",
    "v": r"self_attn\.v_proj",
    "o": r"self_attn\.o_proj",
    "ffn": r"mlp\.(gate_proj|up_proj|down_proj)",
}
# Patterns are matched against the end of full module names. Fused projections (GPT-2's
# c_attn, Phi-3's qkv_proj, GPT-NeoX's query_key_value) serve q, k and v at once: targeting
# any of them adapts all three, which the resolved module list makes visible.
MODULE_GROUPS: dict[str, dict[str, str]] = {
    "gpt_neo": {
        "q": r"attn\.attention\.q_proj",
        "k": r"attn\.attention\.k_proj",
        "v": r"attn\.attention\.v_proj",
        "o": r"attn\.attention\.out_proj",
        "ffn": r"mlp\.(c_fc|c_proj)",
    },
    "gpt2": {"q": r"attn\.c_attn", "k": r"attn\.c_attn", "v": r"attn\.c_attn", "o": r"attn\.c_proj",
             "ffn": r"mlp\.(c_fc|c_proj)"},
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi": {"q": r"self_attn\.q_proj", "k": r"self_attn\.k_proj", "v": r"self_attn\.v_proj",
            "o": r"self_attn\.dense", "ffn": r"mlp\.(fc1|fc2)"},
    "phi3": {"q": r"self_attn\.qkv_proj", "k": r"self_attn\.qkv_proj", "v": r"self_attn\.qkv_proj",
             "o": r"self_attn\.o_proj", "ffn": r"mlp\.(gate_up_proj|down_proj)"},
    "opt": {"q": r"self_attn\.q_proj", "k": r"self_attn\.k_proj", "v": r"self_attn\.v_proj",
            "o": r"self_attn\.out_proj", "ffn": r"layers\.\d+\.(fc1|fc2)"},
    "gpt_neox": {"q": r"attention\.query_key_value", "k": r"attention\.query_key_value",
                 "v": r"attention\.query_key_value", "o": r"attention\.dense",
                 "ffn": r"mlp\.(dense_h_to_4h|dense_4h_to_h)"},
}


def matches_target(module_name: str, wanted: str) -> bool:
    """PEFT's ``target_modules`` rule, the one matcher of the package: ``wanted`` is the full module name or
    a suffix of it after a dot (``q_proj`` matches ``transformer.h.0.attn.attention.q_proj``)."""
    return module_name == wanted or module_name.endswith("." + wanted)


def _suffixes(names: list[str]) -> list[str]:
    """Distinct module names with layer indices folded, for readable error messages."""
    return sorted({re.sub(r"\.\d+\.", ".N.", name) for name in names})


def select_targets(candidates: list[str], modules: list[str], model_type: str) -> list[str]:
    """Full names, among the linear modules ``candidates`` (``lm_head`` excluded), of the modules named by
    ``modules``: group names (q, k, v, o, ffn) or name suffixes."""
    if not modules:
        raise UnlearnkitError("adapter.modules is empty; name at least one module group, e.g. [q, v, ffn].")
    groups = MODULE_GROUPS.get(model_type)
    selected: list[str] = []
    for entry in modules:
        if entry in MODULE_GROUP_NAMES:
            if groups is None:
                raise UnlearnkitError(
                    f'Module groups are not defined for model type "{model_type}"; name its modules directly '
                    f"in adapter.modules, choosing from: {', '.join(_suffixes(candidates))}."
                )
            pattern = re.compile(rf"(^|\.){groups[entry]}$")
            matched = [n for n in candidates if pattern.search(n)]
        else:
            matched = [n for n in candidates if matches_target(n, entry)]
        if not matched:
            valid = ", ".join(MODULE_GROUP_NAMES) if groups else "(no groups for this model type)"
            raise UnlearnkitError(
                f'adapter.modules entry "{entry}" matches no linear module of this {model_type or "model"}; '
                f"use a group ({valid}) or a module name from: {', '.join(_suffixes(candidates))}."
            )
        selected.extend(m for m in matched if m not in selected)
    return selected


def check_rank_fits(shapes: dict[str, tuple[int, int]], targets: list[str], rank: int) -> None:
    """A rank-``rank`` LoRA on ``targets`` refused with one sentence when it exceeds a layer's smaller side."""
    for name in targets:
        if name in shapes and rank > min(shapes[name]):
            rows, columns = shapes[name]
            raise UnlearnkitError(f"LoRA rank {rank} is too large for layer {name} of shape [{rows}, {columns}]; "
                                  f"use a rank of at most {min(rows, columns)}.")


def stored_linear_layers(directory: str | Path) -> dict[str, tuple[int, int]] | None:
    """The 2-D weights of a local model directory's safetensors files (embedding tables left out), by module name,
    read from the files' headers (a few kilobytes each; no torch, no weights): what an adapter could target.
    ``None`` when the directory holds no safetensors files (a GGUF file, a hub id, ``.bin`` weights)."""
    root = Path(directory).expanduser()
    files = sorted(root.glob("*.safetensors")) if root.is_dir() else []
    if not files:
        return None
    layers: dict[str, tuple[int, int]] = {}
    for file in files:
        try:
            with open(file, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
        except (OSError, ValueError, struct.error):
            return None  # the real load says what is wrong with the file
        for tensor, info in header.items():
            shape = info.get("shape") if isinstance(info, dict) else None
            module = tensor.removesuffix(".weight")
            if tensor.endswith(".weight") and isinstance(shape, list) and len(shape) == 2 and not _embedding(module):
                layers[module] = (int(shape[0]), int(shape[1]))
    return layers


def _embedding(module: str) -> bool:
    """Token and position tables are 2-D weights too, but no linear layer (GPT-2's wte/wpe, embed_tokens, ...)."""
    last = module.rsplit(".", 1)[-1]
    return last in {"wte", "wpe"} or "embed" in last
