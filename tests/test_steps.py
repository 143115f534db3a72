"""A step's gradient is that of its whole effective batch, however its rows are split into processes and
accumulation micro-steps (unlearnkit.steps): checked against the gradient of the objective's plain mean over
the step's rows, on rows of unequal length. End to end on 2 processes: tests/test_distributed.py."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_gpt_neo
from unlearnkit.config import MethodConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.run_sets import RunData
from unlearnkit.methods import MethodSetup, build_method
from unlearnkit.parallel import Processes
from unlearnkit.steps import epoch_micro_steps, micro_steps_in_epoch

FORGET_LENGTHS = [5, 17, 9, 30, 12, 3, 22]  # one record per line: rows of unequal length (7: the last step is short)
RETAIN_LENGTHS = [31, 8, 19, 4, 27, 13, 25, 10, 16, 6]
SEQ_LEN = 32


def _blocks(lengths: list[int], seed: int, name: str) -> TokenBlocks:
    generator = torch.Generator().manual_seed(seed)
    return TokenBlocks.from_lists([torch.randint(0, 95, (n,), generator=generator).tolist() for n in lengths],
                                  name, seq_len=SEQ_LEN)


def _logits(model: torch.nn.Module, blocks: TokenBlocks) -> torch.Tensor:
    return model(input_ids=blocks.input_ids, attention_mask=blocks.attention_mask).logits


def _gradient(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def _split_gradients(model, method, forget, retain, *, batch, accum, processes):
    """Each optimisation step's gradient as the loop computes it: every process's micro-steps on its rows cut to
    their longest, each loss
    divided by ``accum`` (accelerate) and the processes' gradients averaged (DDP); and each step's rows."""
    steps: list[torch.Tensor] = []
    rows: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    for index in range(processes):
        order = torch.arange(len(forget))
        plan = epoch_micro_steps(order, forget, retain if method.uses_retain else None, batch_size=batch,
                                 retain_batch_size=batch, grad_accum=accum,
                                 processes=Processes(index, processes), unit=method.unit,
                                 generator=torch.Generator().manual_seed(0))
        step = 0
        for micro in plan:
            if index == 0 and step == len(rows):
                rows.append(([], []))
            if index == 0:
                rows[step][0].append(micro.step_rows)
            # cut to each batch's longest row, as the loop does: the reference is the padded set's mean loss
            part = forget.subset(micro.forget_rows).trimmed() if micro.forget_rows is not None else None
            mine = retain.subset(micro.retain_rows).trimmed() if micro.retain_rows is not None else None
            if mine is not None:
                rows[step][1].append(micro.retain_rows)
            loss, _ = method.step_loss(model, part, mine, rows=micro.forget_rows, forget_weight=micro.forget_weight,
                                       forget_normaliser=micro.forget_normaliser,
                                       retain_normaliser=micro.retain_normaliser)
            (loss / accum / processes).backward()
            if micro.update:
                if index == 0:
                    steps.append(_gradient(model))
                else:
                    steps[step] += _gradient(model)
                model.zero_grad(set_to_none=True)
                step += 1
    return steps, [(torch.cat(f), torch.cat(r) if r else None) for f, r in rows]


@pytest.mark.parametrize("method_name", ["ga", "gd", "ihl", "npo", "simnpo", "rmu"])
def test_a_step_gradient_is_the_effective_batch_mean_however_its_rows_are_split(method_name):
    model = tiny_gpt_neo(layers=2).double().train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    method = build_method(MethodConfig(name=method_name))
    forget, retain = _blocks(FORGET_LENGTHS, 1, "forget"), _blocks(RETAIN_LENGTHS, 2, "retain")
    method.prepare(MethodSetup(model, RunData(forget, retain), device=None, seed=0, eval_batch_size=4))
    if method_name == "rmu":  # the trained copy must differ from the frozen one for the retain term to count
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
    splits = {  # (rows per process and micro-step, micro-steps per step, processes)
        "one batch": (7, 1, 1), "2 x accumulation 2": (2, 2, 1), "3 per step": (3, 1, 1),
        "1 on each of 2 processes x accumulation 2": (1, 2, 2), "2 on each of 2 processes": (2, 1, 2),
        "1 x accumulation 3 on 2 processes": (1, 3, 2),
    }
    for name, (batch, accum, processes) in splits.items():
        steps, rows = _split_gradients(model, method, forget, retain, batch=batch, accum=accum,
                                       processes=processes)
        effective = batch * accum * processes
        assert [len(f) for f, _ in rows] == [min(effective, 7 - start) for start in range(0, 7, effective)], name
        for gradient, (forget_rows, retain_rows) in zip(steps, rows, strict=True):
            # the independent computation: the objective's own mean over the step's rows, one pass
            part = forget.subset(forget_rows)
            loss = method.forget_loss(model, part, forget_rows, None)
            if method.uses_retain:
                kept = retain.subset(retain_rows)
                assert len(kept) == batch * accum * processes  # a short step keeps its full retain batch
                loss = loss + (method.retain_loss(model, kept, None) if method_name == "rmu" else
                               torch.nn.functional.cross_entropy(_logits(model, kept)[:, :-1].reshape(-1, 96),
                                                                 kept.labels()[:, 1:].reshape(-1), ignore_index=-100))
            loss.backward()
            expected = _gradient(model)
            model.zero_grad(set_to_none=True)
            # within 1e-7 of the gradient's scale: GPT-Neo computes attention in float32 even in a float64 model,
            # and rounds it differently for batches cut to different lengths (about 6e-10 seen); a row counted
            # wrongly or a wrong normaliser is off by percents
            torch.testing.assert_close(gradient, expected, rtol=0, atol=1e-7 * float(expected.abs().max()),
                                       msg=f"{method_name}, {name}")


def test_a_short_last_step_is_the_mean_of_its_own_rows_and_keeps_its_full_retain_batch():
    forget, retain = _blocks(FORGET_LENGTHS, 1, "forget"), _blocks(RETAIN_LENGTHS, 2, "retain")
    plan = list(epoch_micro_steps(torch.arange(5), forget, retain, batch_size=2, retain_batch_size=3, grad_accum=2,
                                  processes=Processes(0, 1), generator=torch.Generator().manual_seed(5)))
    assert [m.step_rows.tolist() for m in plan] == [[0, 1], [2, 3], [4], []]
    assert [m.forget_rows.tolist() if m.forget_rows is not None else None for m in plan] == [[0, 1], [2, 3], [4],
                                                                                              None]
    assert [m.update for m in plan] == [False, True, False, True]
    tokens = [n - 1 for n in FORGET_LENGTHS]  # predicted tokens: all but each row's first
    assert [m.forget_normaliser for m in plan] == [sum(tokens[:4]) / 2] * 2 + [tokens[4] / 2] * 2
    # one draw of 3 x 2 retain rows per step, from the loop's generator, dealt out 3 a pass
    generator = torch.Generator().manual_seed(5)
    draws = [torch.randint(len(retain), (6,), generator=generator) for _ in range(2)]
    assert all(torch.equal(m.retain_rows, draws[i // 2][3 * (i % 2):3 * (i % 2) + 3]) for i, m in enumerate(plan))
    assert micro_steps_in_epoch(5, batch_size=2, grad_accum=2, processes=Processes(), with_retain=True) == len(plan)
    # on 2 processes a pass of one row leaves the second process a row of weight 0
    second = list(epoch_micro_steps(torch.arange(3), forget, None, batch_size=1, retain_batch_size=1, grad_accum=1,
                                    processes=Processes(1, 2), generator=torch.Generator()))
    assert [(m.forget_rows.tolist(), m.forget_weight, m.retain_rows) for m in second] == [([1], 1.0, None),
                                                                                         ([2], 0.0, None)]
    assert micro_steps_in_epoch(3, batch_size=1, grad_accum=1, processes=Processes(1, 2),
                                with_retain=False) == len(second)


def test_a_batch_cut_to_its_longest_row_gives_every_real_token_the_logits_of_the_padded_batch():
    # right padding and causal models (learned positions, GPT-Neo; rotary ones, Llama like SmolLM2): the padding
    # columns every row of a batch ends with change only the cost, so the loop cuts them
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    padded = _blocks([5, 17, 9, 3], 3, "rows")
    padded = TokenBlocks(padded.input_ids, padded.attention_mask, "rows", ["a", "b", "c", "d"],
                         loss_mask=padded.attention_mask.clone())
    cut = padded.subset([0, 2, 3]).trimmed()
    assert cut.seq_len == 9 and cut.ids == ["a", "c", "d"] and cut.loss_mask is not None
    assert torch.equal(cut.input_ids, padded.input_ids[[0, 2, 3], :9]) and cut.num_tokens == 5 + 9 + 3
    whole = padded.trimmed()
    assert whole.seq_len == 17 and padded.subset([1]).trimmed().seq_len == 17
    assert TokenBlocks.from_lists([[1, 2], [3, 4]], "full").trimmed().seq_len == 2
    for model in (tiny_gpt_neo().eval(), llama):
        with torch.no_grad():
            full, short = _logits(model, padded.subset([0, 2, 3])), _logits(model, cut)
        real = cut.attention_mask.bool()
        torch.testing.assert_close(short[real], full[:, :9][real], rtol=1e-5, atol=1e-5)
