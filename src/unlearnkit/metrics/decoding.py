"""Greedy decoding: EL_n's own decoder (per-row lengths, logit margins) and fixed-length generation via transformers.

EL_n (:mod:`.memorization`) compares greedy continuations with the text, many prefixes of many lengths at
once, and reports how close each argmax was; :func:`greedy_generate` is written for that: left-padded
batches with explicit positions, a KV cache, per-row numbers of new tokens, the top-1/top-2 logit gap of
every decision, and batches cut to a model's position table. Where a fixed number of tokens after each
prompt is all that is needed (the extraction attack, a leak test), :func:`generate_continuations` uses
``model.generate``. Both continue past EOS: an EOS inside a text is an ordinary token, and every
continuation has exactly the length asked for.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode (no dropout) under ``torch.no_grad`` and restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _forward_params(model: torch.nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache``; older versions only know the former."""
    # A PEFT wrapper forwards **kwargs, so ask the model it wraps.
    get_base_model = getattr(model, "get_base_model", None)
    inner = get_base_model() if callable(get_base_model) else model
    return "cache" if "cache" in _forward_params(inner) else "past_key_values"


def output_cache(out: object) -> object:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a parameter-free module (only in tests)
        return torch.device("cpu")


def greedy_generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int] | int,
    batch_size: int = 32,
) -> tuple[list[list[int]], float]:
    """Greedy continuations of ``prompts`` (token lists), ``max_new_tokens[j]`` new tokens for prompt j.

    Prompts of different lengths are left-padded in one batch with explicit ``position_ids`` (as
    ``model.generate`` does), decoded with the KV cache, never stopped at EOS. Returns the continuations and
    the smallest gap between the top two logits over all decisions (how close the closest argmax was).
    Call it inside :func:`eval_mode`.
    """
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(prompts)
    device = model_device(model)
    cache_kw = cache_kwarg(model)
    # Only the last position's logits are needed after the prefill; skipping the LM head elsewhere saves about
    # as much compute as the rest of a 125M model. Reference and fast path both decode through here.
    keep: dict[str, int] = {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model) else {}
    results: list[list[int]] = [[] for _ in prompts]
    min_margin = float("inf")
    for rows in decode_batches([len(p) for p in prompts], max_new_tokens, batch_size, context_limit(model)):
        steps = max(max_new_tokens[r] for r in rows)
        if steps <= 0:
            continue
        width = max(len(prompts[r]) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            p = list(prompts[r])
            ids[j, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[j, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **keep)
        need = [max_new_tokens[r] for r in rows]
        tokens, margin = _decode(model, out, mask, positions[:, -1:], need, cache_kw)
        min_margin = min(min_margin, margin)
        for j, r in enumerate(rows):
            results[r] = tokens[j][: max_new_tokens[r]]
    return results, min_margin


def _decode(model: torch.nn.Module, out: Any, mask: torch.Tensor, last_pos: torch.Tensor, need: list[int],
            cache_kw: str) -> tuple[list[list[int]], float]:
    """The greedy decode loop shared by every path: from the output ``out`` of a forward pass whose last
    positions are ``last_pos`` ([R, 1]), ``need[j]`` tokens for row j, and the smallest top-1 minus top-2
    logit gap over the decisions kept."""
    cache = output_cache(out)
    logits = out.logits[:, -1, :]
    steps = max(need)
    device = mask.device
    wanted = torch.tensor(need, device=device)
    rows = torch.arange(len(need), device=device)  # each batch row's index in ``need``
    tokens = torch.zeros((len(need), steps), dtype=torch.long, device=device)
    # A row with all its tokens stops advancing its position (a model's position table may end at the last
    # one it needs: a GPT-Neo trained on 200-token blocks with 200 positions) and keeps decoding with the
    # batch, its extra tokens discarded, until a quarter of the batch has finished: then the finished rows
    # are dropped from the batch and its cache, so that short continuations do not cost as much as the
    # longest. Token k is fed to produce token k+1.
    next_pos = last_pos + (wanted.unsqueeze(1) > 1).long()
    compactable = callable(getattr(cache, "batch_select_indices", None))
    min_margin = float("inf")
    for step in range(steps):
        top2 = torch.topk(logits.float(), k=min(2, logits.shape[-1]), dim=-1).values
        kept = wanted > step
        if top2.shape[-1] == 2 and bool(kept.any()):
            min_margin = min(min_margin, float((top2[kept, 0] - top2[kept, 1]).min()))
        token = logits.argmax(dim=-1, keepdim=True)
        tokens[rows, step] = token.squeeze(1)
        if step == steps - 1:
            break
        alive = wanted > step + 1
        finished = len(alive) - int(alive.sum())
        if compactable and finished and 4 * finished >= len(alive):
            keep = alive.nonzero().squeeze(1)
            cache.batch_select_indices(keep)  # type: ignore[attr-defined]
            mask, next_pos, wanted, rows, token = mask[keep], next_pos[keep], wanted[keep], rows[keep], token[keep]
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        out = model(input_ids=token, attention_mask=mask, position_ids=next_pos, use_cache=True, **{cache_kw: cache})
        cache = output_cache(out)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + (wanted.unsqueeze(1) > step + 2).long()
    return tokens.tolist(), min_margin


def left_padded_prefix_cache(caches: Sequence[Any], chunk_rows: int, prefixes: Sequence[tuple[int, int]],
                             reserve: int = 0) -> Any:
    """One KV cache holding, left-padded to the longest, the first ``length`` tokens of row ``b`` for every
    ``(b, length)`` in ``prefixes``, cut from the caches of a teacher-forced pass over whole rows in batches
    of ``chunk_rows`` (``caches[b // chunk_rows]`` holds row ``b``); ``None`` where that cannot be done exactly
    (a cache type other than transformers' dynamic full or sliding-window layers, or a sliding window that
    was already full). The caches are not changed. Room for ``reserve`` more tokens is allocated up front, and
    the layers grow into it in place (:class:`_GrowsInPlace`) instead of concatenating at every step.

    Causal attention makes a token's keys and values depend on the tokens before it only, so these are the
    keys and values a prefill of each prefix would compute, up to float rounding of the different shapes;
    left padding is what :func:`greedy_generate` uses too (masked, and positions given explicitly).
    """
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    found = [getattr(cache, "layers", None) for cache in caches]
    if not found or any(not layers for layers in found):
        return None
    sources: list[Any] = found
    for layers in sources:
        if any(type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers):
            return None
        if any(layer.is_sliding and layer.get_seq_length() >= layer.sliding_window for layer in layers):
            return None
    width = max(length for _, length in prefixes)
    batch = copy.copy(caches[0])
    batch.layers = []
    for index, template in enumerate(sources[0]):
        keys = template.keys.new_zeros((len(prefixes), *template.keys.shape[1:2], width + reserve,
                                        template.keys.shape[-1]))
        values = template.values.new_zeros((len(prefixes), *template.values.shape[1:2], width + reserve,
                                            template.values.shape[-1]))
        for j, (row, length) in enumerate(prefixes):
            source = sources[row // chunk_rows][index]
            keys[j, :, width - length:width] = source.keys[row % chunk_rows, :, :length]
            values[j, :, width - length:width] = source.values[row % chunk_rows, :, :length]
        layer = _GrowsInPlace.of(template, keys, values, width)
        if layer.is_sliding:
            layer.cumulative_length = width
        batch.layers.append(layer)
    return batch


class _GrowsInPlace:
    """A dynamic cache layer whose keys and values are the first tokens of buffers allocated up front: a new
    token is copied into the buffer and the layer's tensors become one token longer views of it. A dynamic
    layer concatenates instead, copying its whole cache at every step, which was a third of EL's decoding
    time. The tensors handed to attention have the same shapes and values either way; beyond the buffer (or
    once a sliding window would drop tokens) the layer falls back to the concatenating update it extends."""

    keys: torch.Tensor
    values: torch.Tensor
    _key_buffer: torch.Tensor
    _value_buffer: torch.Tensor

    @staticmethod
    def of(template: Any, keys: torch.Tensor, values: torch.Tensor, used: int) -> Any:
        """A copy of the layer ``template`` holding the first ``used`` tokens of the buffers ``keys``, ``values``."""
        base: Any = type(template)
        grows: Any = _grows_in_place(base)
        layer = object.__new__(grows)
        layer.__dict__.update(template.__dict__)
        layer._key_buffer, layer._value_buffer = keys, values
        layer.keys, layer.values = keys[:, :, :used], values[:, :, :used]
        return layer

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (rows that finished decoding are dropped from the batch)."""
        if not self._in_buffer():  # grown past the buffer: the concatenating layer's own selection
            super().batch_select_indices(indices)  # type: ignore[misc]
            return
        used = self.keys.shape[-2]
        self._key_buffer, self._value_buffer = self._key_buffer[indices], self._value_buffer[indices]
        self.keys, self.values = self._key_buffer[:, :, :used], self._value_buffer[:, :, :used]

    def _in_buffer(self) -> bool:
        return self.keys.data_ptr() == self._key_buffer.data_ptr()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        used, new = self.keys.shape[-2], key_states.shape[-2]
        room = self._key_buffer.shape[-2]
        if getattr(self, "is_sliding", False):  # a sliding layer keeps its whole history until the window is full
            room = min(room, self.sliding_window - 1)  # type: ignore[attr-defined]
        if used + new > room or not self._in_buffer():
            return super().update(key_states, value_states, *args, **kwargs)  # type: ignore[misc]
        self._key_buffer[:, :, used:used + new].copy_(key_states)
        self._value_buffer[:, :, used:used + new].copy_(value_states)
        self.keys, self.values = self._key_buffer[:, :, :used + new], self._value_buffer[:, :, :used + new]
        if getattr(self, "is_sliding", False):
            self.cumulative_length += new  # type: ignore[attr-defined]
        return self.keys, self.values


@functools.cache
def _grows_in_place(base: Any) -> type:
    """``base`` (a transformers dynamic cache layer class) with :class:`_GrowsInPlace`'s update."""
    return type(f"GrowsInPlace{base.__name__}", (_GrowsInPlace, base), {})


def greedy_continue(model: torch.nn.Module, cache: Any, prefix_lengths: Sequence[int], first_tokens: Sequence[int],
                    max_new_tokens: Sequence[int]) -> tuple[list[list[int]], float]:
    """Greedy continuations of prompts ``prefix_j + [first_tokens[j]]`` whose prefixes (``prefix_lengths[j]``
    tokens from position 0) are already in ``cache``, left-padded (:func:`left_padded_prefix_cache`): only the
    last prompt token is fed, then ``max_new_tokens[j]`` tokens are decoded as :func:`greedy_generate` decodes
    them. Call it inside :func:`eval_mode`."""
    if max(max_new_tokens, default=0) <= 0:
        return [[] for _ in first_tokens], float("inf")
    device = model_device(model)
    width = max(prefix_lengths)
    ids = torch.tensor(list(first_tokens), dtype=torch.long, device=device).unsqueeze(1)
    mask = torch.zeros((len(first_tokens), width + 1), dtype=torch.long, device=device)
    for j, length in enumerate(prefix_lengths):
        mask[j, width - length:] = 1
    positions = torch.tensor(list(prefix_lengths), dtype=torch.long, device=device).unsqueeze(1)
    cache_kw = cache_kwarg(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kw: cache})
    tokens, margin = _decode(model, out, mask, positions, list(max_new_tokens), cache_kw)
    return [row[:new] for row, new in zip(tokens, max_new_tokens, strict=True)], margin


def context_limit(model: torch.nn.Module) -> int | None:
    """The model's position table size, if its config names one."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def decode_batches(prompt_lengths: Sequence[int], new_tokens: Sequence[int], batch_size: int,
                    limit: int | None) -> Iterator[list[int]]:
    """Consecutive rows, at most ``batch_size`` per batch, such that a batch's padded width plus its decode steps
    stays within ``limit`` positions: a left-padded row's cache holds the batch's full width, and a model with a
    fixed position table (GPT-Neo's attention mask is ``max_position_embeddings`` wide) cannot go beyond it."""
    rows: list[int] = []
    width = steps = 0
    for r, (length, new) in enumerate(zip(prompt_lengths, new_tokens, strict=True)):
        w, s = max(width, length), max(steps, new)
        if rows and (len(rows) == batch_size or (limit is not None and w + s - 1 > limit)):
            yield rows
            rows, w, s = [], length, new
        rows.append(r)
        width, steps = w, s
    if rows:
        yield rows


def generate_continuations(model: Any, prompts: Sequence[Sequence[int]], new_tokens: int, batch_size: int = 32,
                           pad_id: int = 0, stop_at_eos: bool = False) -> list[list[int]]:
    """Greedy continuations of each prompt through ``model.generate`` (left-padded batches): exactly
    ``new_tokens`` tokens, as :func:`greedy_generate` gives, with EOS an ordinary token (neither stopping nor
    banned); with ``stop_at_eos`` at most ``new_tokens``, each cut before its first EOS (a chat reply).
    Call it inside :func:`eval_mode`.
    """
    from transformers import GenerationConfig

    if new_tokens <= 0:
        return [[] for _ in prompts]
    device = model_device(model)
    config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, pad_token_id=pad_id)
    eos = _eos_ids(model)
    results: list[list[int]] = []
    with contextlib.nullcontext() if stop_at_eos else _eos_switched_off(model):
        for start in range(0, len(prompts), batch_size):
            chunk = [list(p) for p in prompts[start:start + batch_size]]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for row in out[:, width:].tolist():
                if stop_at_eos:
                    row = row[: next((k for k, t in enumerate(row) if t in eos), len(row))]
                results.append(row)
    return results


def _eos_ids(model: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return set(eos) if isinstance(eos, list) else ({eos} if isinstance(eos, int) else set())


@contextlib.contextmanager
def _eos_switched_off(model: Any) -> Iterator[None]:
    # generate() fills an unset eos_token_id from the model's own generation config; clear it there for the call.
    generation_config = getattr(model, "generation_config", None)
    saved = getattr(generation_config, "eos_token_id", None)
    if generation_config is not None:
        generation_config.eos_token_id = None
    try:
        yield
    finally:
        if generation_config is not None:
            generation_config.eos_token_id = saved
