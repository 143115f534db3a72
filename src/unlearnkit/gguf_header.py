"""A GGUF file's header — its metadata scalars, the lengths of its metadata arrays and its tensors' shapes —
read without torch and without decoding the tokenizer's arrays, so that a run's sizes and adapter targets on a
GGUF model (``smollm2``) are checked in milliseconds before any weight is loaded.

The ``gguf`` package's ``GGUFReader`` parses the same header but builds an array view for each of the
vocabulary's ~100,000 token and merge strings, which takes seconds; loading the model still goes through
transformers and ``gguf``. The layout follows the GGUF specification (ggml's ``docs/gguf.md``), versions 2 and 3.
"""

from __future__ import annotations

import functools
import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

# value type → struct format of one scalar (8 = string and 9 = array are variable-length)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# GGUF's tensor names for the llama family → the module names transformers gives the loaded model
_LLAMA_MODULES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                  "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                  "ffn_down": "mlp.down_proj"}
_LLAMA_FAMILY = {"llama", "mistral", "qwen2", "qwen3"}


@dataclass
class GGUFHeader:
    metadata: dict[str, int | float | bool | str] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)  # GGUF's order: innermost dimension first

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def number(self, key: str) -> int | None:
        value = self.metadata.get(key)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def linear_layers(self) -> dict[str, tuple[int, int]] | None:
        """The adapter-targetable linear layers as transformers names and shapes them ([out, in]); ``None`` for an
        architecture whose GGUF names are not mapped here (the model load is then the check)."""
        if self.architecture not in _LLAMA_FAMILY:
            return None
        layers: dict[str, tuple[int, int]] = {}
        for name, dims in self.tensors.items():
            match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
            if match and match.group(2) in _LLAMA_MODULES and len(dims) == 2:
                layers[f"model.layers.{match.group(1)}.{_LLAMA_MODULES[match.group(2)]}"] = (dims[1], dims[0])
        return layers


def read_gguf_header(path: str | Path) -> GGUFHeader | None:
    """The header of a GGUF file, or ``None`` when the file cannot be read or is not GGUF v2/v3 (the model load
    then reports what is wrong with it). Read once per file version: the size and the target checks both ask."""
    try:
        status = Path(path).stat()
    except OSError:
        return None
    return _read(str(Path(path).resolve()), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read(path: str, size: int, mtime_ns: int) -> GGUFHeader | None:
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return _parse(view)
    except (OSError, ValueError, struct.error, UnicodeDecodeError, IndexError):
        return None


def _parse(view: mmap.mmap) -> GGUFHeader | None:
    if view[:4] != b"GGUF":
        return None
    (version,) = struct.unpack_from("<I", view, 4)
    if version not in (2, 3):
        return None
    tensor_count, kv_count = struct.unpack_from("<QQ", view, 8)
    offset = 24
    header = GGUFHeader()

    def string() -> str:
        nonlocal offset
        (length,) = struct.unpack_from("<Q", view, offset)
        offset += 8 + length
        return bytes(view[offset - length:offset]).decode("utf-8")

    def skip(value_type: int) -> None:
        nonlocal offset
        if value_type == _STRING:
            (length,) = struct.unpack_from("<Q", view, offset)
            offset += 8 + length
        elif value_type == _ARRAY:
            item_type, count = struct.unpack_from("<IQ", view, offset)
            offset += 12
            if item_type in _SCALARS:
                offset += count * struct.calcsize(_SCALARS[item_type])
            else:
                for _ in range(count):
                    skip(item_type)
        else:
            offset += struct.calcsize(_SCALARS[value_type])

    for _ in range(kv_count):
        key = string()
        (value_type,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if value_type in _SCALARS:
            (header.metadata[key],) = struct.unpack_from(_SCALARS[value_type], view, offset)
            skip(value_type)
        elif value_type == _STRING:
            header.metadata[key] = string()
        elif value_type == _ARRAY:
            header.array_lengths[key] = struct.unpack_from("<IQ", view, offset)[1]
            skip(value_type)
        else:
            return None
    for _ in range(tensor_count):
        name = string()
        (dimensions,) = struct.unpack_from("<I", view, offset)
        shape = struct.unpack_from(f"<{dimensions}Q", view, offset + 4)
        offset += 4 + 8 * dimensions + 4 + 8  # dimensions, then the type and the data offset
        header.tensors[name] = tuple(int(d) for d in shape)
    return header
