"""The unlearning recipe (Section 3.5), as one function you can read top to bottom.

set up (model, data, thresholds, adapter) → evaluate before → for each epoch: for each
forget batch draw a retain batch, compute the method's objective, step → evaluate MA and
EL_n on the forget set → stop once both are at or below the held-out thresholds → evaluate after
and return the result; the caller writes it (:func:`unlearnkit.outputs.write_run_outputs`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import time
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console

from unlearnkit.adapters.flora import fisher_retain_sample, initialise_flora, restore_flora
from unlearnkit.adapters.lora import attach_lora
from unlearnkit.checkpoints import Checkpoints, state_payload
from unlearnkit.config import RunConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.catalog import resolve_data_dir
from unlearnkit.data.run_sets import RunData, load_run_data
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation import ScoreCache, evaluate_memorization, evaluation_snapshot
from unlearnkit.flops import FlopTally
from unlearnkit.metrics.perplexity import perplexity, sequence_logprobs
from unlearnkit.metrics.thresholds import Thresholds
from unlearnkit.modeling import (
    LoadedModel,
    enable_gradient_checkpointing,
    load_configured_model,
    resolve_target_modules,
)
from unlearnkit.objectives import Method, get_method, unlearning_loss
from unlearnkit.parallel import Processes, WholeModel, checkpoints_supported, refuse_sharded_weights
from unlearnkit.progress import Progress
from unlearnkit.results import RunResult, RunState
from unlearnkit.steps import MicroStep, epoch_micro_steps, micro_steps_in_epoch
from unlearnkit.training import OptimisationStep


def run_unlearning(
    config: RunConfig, *, loaded: LoadedModel | None = None, console: Console | None = None, quiet: bool = False,
    checkpoints: Checkpoints | None = None,
) -> RunResult:
    """Unlearn ``config.data.forget`` from ``config.model`` and return the result; see the module docstring.

    ``loaded`` lets a caller reuse a model it already holds; it is deep-copied, never modified. A caller that
    will write the outputs checks the output directory first (:func:`unlearnkit.outputs.check_output_dir`),
    before this expensive work. With ``checkpoints`` the run saves a checkpoint there after set-up and after
    every epoch, and continues from the one there when a run of the same config left it (exactly: see
    :mod:`unlearnkit.checkpoints`).
    """
    set_seed(config.seed)
    # the schedule counts optimiser updates, however many processes there are (accelerate's default would step it
    # once per process and update)
    accelerator = Accelerator(gradient_accumulation_steps=config.train.grad_accum, cpu=not _has_accelerator(),
                              step_scheduler_with_optimizer=False)
    # On several processes (accelerate launch, torchrun) only the main one logs, evaluates and writes.
    refuse_sharded_weights(accelerator)
    processes = Processes.of(accelerator)
    console = (console or Console(emoji=False, quiet=quiet)) if processes.main else Console(emoji=False, quiet=True)
    progress = Progress(console=console, quiet=quiet or not processes.main)
    if checkpoints is not None and not checkpoints_supported(accelerator):
        progress.note("Checkpoints are not saved under DeepSpeed yet; an interrupted run starts afresh.")
        checkpoints = None
    # read by the main process, which holds the claim and has removed a checkpoint --restart discards
    saved = (processes.on_main(lambda: checkpoints.resumable(config, processes.count)) if checkpoints is not None
             else None)
    timings: dict[str, float] = dict(saved.payload["timings"]) if saved else {}
    started = time.perf_counter() - (saved.payload["elapsed_s"] if saved else 0.0)

    # --- set-up: model, data, thresholds ----------------------------------------------------
    t0 = time.perf_counter()
    with progress.status("Loading the model"):
        loaded = _own_copy(loaded) if loaded is not None else load_configured_model(config.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    method = get_method(config.method.name, config.method.objective_options())
    data = load_run_data(config, tokenizer)
    fingerprints = data.fingerprints()  # hashed once: checked on resume, stored in every checkpoint
    if saved and saved.payload["data_fingerprints"] != fingerprints:
        raise UnlearnkitError(f"The data of the checkpoint in {saved.directory} differ from this run's (a data file "
                              "changed); start afresh with the config and --restart (unlearnkit run CONFIG --restart).")
    target_modules = (resolve_target_modules(model, config.adapter.modules)
                      if config.adapter.name != "none" else [])
    # Scores of the model as loaded (thresholds, the forget set before) are the same in every run on it.
    scores_cache = ScoreCache.of(model, config.eval) if not saved and processes.main else None
    model.to(accelerator.device)
    # What NPO and the KL retain term compare with: the model before unlearning. NPO needs only the forget rows'
    # sequence log-probabilities under it (computed once); the KL term its distribution on every retain batch.
    reference_logprob = (sequence_logprobs(model, data.forget, config.eval.batch_size) if method.needs_reference
                         else None)
    reference_model = (copy.deepcopy(model).eval().requires_grad_(False) if config.method.retain_kind == "kl"
                       else None)
    _add(timings, "setup_s", t0)

    # LoRA layers start as a no-op (B = 0), so attaching them before evaluating changes no
    # output, and a rank the layers cannot take is refused before any expensive work.
    if config.adapter.name == "none":
        model.requires_grad_(True)
    else:
        model = attach_lora(model, target_modules, rank=config.adapter.rank, alpha=config.adapter.alpha,
                            dropout=config.adapter.dropout)

    if config.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)

    kept = (data.retain.subset(list(range(min(config.eval.retain_sequences, len(data.retain)))))
            if data.retain is not None and config.eval.retain_sequences > 0 else None)
    eval_sets = RunData(forget=data.forget, validation=data.validation, retain=kept)
    data_dir = resolve_data_dir(config.data.dir)
    t0 = time.perf_counter()
    if saved:
        before, thresholds, state = saved.payload["before"], saved.thresholds, saved.state
        state.resumed_after.append(saved.epoch)
        progress.note(f"Resuming after epoch {saved.epoch} from the checkpoint in {saved.directory.parent}")
    else:
        before = processes.on_main(lambda: evaluation_snapshot(
            model, eval_sets, config.eval, progress, label="before", tokenizer=tokenizer, data_dir=data_dir,
            cache=scores_cache))
        thresholds = _thresholds(config, before)
        state = RunState()
        if before["forget"]["el"] is not None and thresholds.forgotten(before["forget"]["ma"],
                                                                       before["forget"]["el"]):
            state.warnings.append("the forget set already meets the forgetting criterion before unlearning: the "
                                  "model does not reproduce it more than unseen text (it never memorised it, or an "
                                  "earlier unlearning removed it), so there was nothing to forget")
            progress.warn(state.warnings[-1])
            if config.eval.early_stop:  # training could only damage the model: stop before the first epoch
                state.criterion_met = True
                state.stop_reason = "forgetting criterion already met before unlearning: nothing was trained"
        _add(timings, "eval_before_s", t0)

    # --- FLoRA: replace the zero-initialised LoRA factors by Fisher-weighted ones (Section 3.4) --
    t0 = time.perf_counter()
    adapter_summary = saved.payload["adapter_summary"] if saved else None
    flora_initial: dict[str, torch.Tensor] = {}
    tally = FlopTally(state.flops, state.flops_sample)  # kept in the state: a resumed run keeps counting
    if config.adapter.name == "flora" and saved:
        flora_initial = _prefixed(saved.tensors(), "flora/")
        restore_flora(model, flora_initial)
    elif config.adapter.name == "flora":
        assert data.retain is not None
        fisher_retain = fisher_retain_sample(data.retain, len(data.forget), config.adapter.flora, config.seed)
        with progress.status(f"FLoRA: Fisher information ({len(data.forget)} forget, {len(fisher_retain)} retain "
                             f"sequences) and weighted SVD"):
            with tally.count("flora_init"):
                summary = initialise_flora(model, data.forget, fisher_retain, config.adapter.flora,
                                           processes=processes)
            tally.flops["flora_init"] = _summed(processes, tally.flops["flora_init"])  # each did its share
        adapter_summary, flora_initial = summary.to_dict(), summary.initial_state
        _add(timings, "adapter_init_s", t0)
    assert config.train.lr is not None  # resolved by RunConfig
    parameters = _parameter_counts(model, adapter=config.adapter.name != "none")
    step = OptimisationStep([p for p in model.parameters() if p.requires_grad], lr=config.train.lr,
                            weight_decay=config.train.weight_decay, warmup_steps=config.train.warmup_steps,
                            max_grad_norm=config.train.max_grad_norm)
    whole = WholeModel(accelerator, model, processes)  # what the main process evaluates (FSDP: a gathered copy)
    model = step.prepare(accelerator, model)
    # FSDP replaces the parameters by shards of them: the trainable ones are those of the prepared model
    trainable = [p for p in accelerator.unwrap_model(model).parameters() if p.requires_grad]

    # --- the loop ---------------------------------------------------------------------------
    generator = torch.Generator().manual_seed(config.seed)
    # train.batch_size forget rows per process and micro-step, train.grad_accum micro-steps an optimisation step;
    # each micro-step's loss is normalised by the whole step's items (unlearnkit.steps)
    retain_for_training = data.retain if method.uses_retain else None
    steps_per_epoch = micro_steps_in_epoch(len(data.forget), batch_size=config.train.batch_size,
                                           grad_accum=config.train.grad_accum, processes=processes,
                                           with_retain=retain_for_training is not None)
    # A fixed sample of text the model must keep: its LM loss rising far above its value before unlearning
    # means the model is being wrecked (GA at a large lr keeps a finite, ever more negative loss).
    check_blocks = _collapse_check_blocks(data)
    if saved:
        assert checkpoints is not None
        checkpoints.restore(saved, accelerator, model)
        generator.set_state(saved.tensors()["generator"])  # the main process's: the same on every process
        check_before, last_scores = saved.payload["check_before"], saved.payload["last_scores"]
    else:
        evaluated = whole.of(model)
        check_before = processes.on_main(lambda: _lm_loss(evaluated, check_blocks)
                                         if check_blocks is not None else None)
        last_scores = None  # forget-set scores of the model as last_good holds it
    last_good = _snapshot(trainable)

    def save_checkpoint() -> None:
        if checkpoints is None:
            return
        if whole.sharded and not step.optimizer.state:
            # Under FSDP torch builds the optimiser's state dict by taking a zero-lr step when there is no state
            # yet; that step would count in every later Adam update. So the first checkpoint follows the first update.
            return
        # an optimisation step never crosses an epoch's end: no gradients are pending here
        tensors = {"generator": generator.get_state(), **{f"flora/{k}": v for k, v in flora_initial.items()}}
        checkpoints.save(state.epoch, config, accelerator, state_payload(
            state, thresholds, before=before, adapter_summary=adapter_summary, check_before=check_before,
            last_scores=last_scores, timings=timings, elapsed_s=time.perf_counter() - started,
            data_fingerprints=fingerprints), tensors, processes)

    if not saved:
        save_checkpoint()
    t_train = time.perf_counter()
    for epoch in range(state.epoch + 1, config.train.epochs + 1):
        if state.stop_reason:
            break
        state.epoch = epoch
        model.train()
        epoch_losses: list[dict[str, float]] = []  # each optimisation step's mean losses
        step_losses: dict[str, float] = {}
        order = torch.randperm(len(data.forget), generator=generator)
        micro_steps = epoch_micro_steps(
            order, data.forget, retain_for_training, batch_size=config.train.batch_size,
            retain_batch_size=config.train.retain_batch_size or config.train.batch_size,
            grad_accum=config.train.grad_accum, processes=processes, unit=method.unit, generator=generator)
        for micro in progress.track(micro_steps, total=steps_per_epoch,
                                    description=f"epoch {epoch}/{config.train.epochs}", unit="step"):
            forget = data.forget.subset(micro.forget_rows) if micro.forget_rows is not None else None
            retain = (retain_for_training.subset(micro.retain_rows)
                      if retain_for_training is not None and micro.retain_rows is not None else None)
            # the first step is counted (forward, backward, all processes alike); the others are scaled from it
            counted = (tally.count_sample("train", (forget.num_tokens if forget else 0) +
                                          (retain.num_tokens if retain else 0))
                       if "train" not in tally.sample else contextlib.nullcontext())
            with step.micro_step(model, update=micro.update), counted:
                loss, parts = _step_loss(model, method, forget, retain, config, accelerator.device, micro,
                                         reference_logprob[micro.forget_rows] if reference_logprob is not None
                                         and micro.forget_rows is not None else None, reference_model)
                # every process must take the NaN guard's decision together: one skipping the backward pass
                # alone would leave the others waiting in the gradient all-reduce
                if not processes.all_finite(loss) or not step(loss, update=micro.update):
                    state.diverged_epoch = epoch
                    break
            state.step += 1
            state.tokens_seen += int(data.forget.subset(micro.step_rows).num_tokens) + (
                retain.num_tokens * processes.count if retain is not None else 0)
            tally.scale("train", state.tokens_seen)
            # accelerate divides each micro-step's loss by grad_accum: their sum is the step's mean loss
            for key, value in parts.items():
                step_losses[key] = step_losses.get(key, 0.0) + value / config.train.grad_accum
            if micro.update:
                epoch_losses.append(step_losses)
                step_losses = {}
        if state.diverged_epoch is not None:
            _restore(trainable, last_good)
            state.stop_reason = (f"the loss became NaN or infinite in epoch {epoch}; the model was restored "
                                 f"to its state after epoch {epoch - 1}")
            break

        # --- evaluate after each epoch: MA and EL_n on the forget set (Appendix B) ------------
        model.eval()
        evaluated = whole.of(model)
        with tally.count("criterion"):  # on the main process, where the criterion is computed
            scores, check_loss = processes.on_main(functools.partial(
                _epoch_scores, evaluated, data.forget, check_blocks, config, thresholds, progress, epoch))
        record: dict[str, Any] = {
            "epoch": epoch,
            **processes.mean({k: _mean(losses_of(epoch_losses, k)) for k in ("loss", "forget_loss", "retain_loss")
                              if losses_of(epoch_losses, k)}),
            "lr": step.lr, "forget_ma": scores["ma"], "forget_el": scores["el"],
            **{k: scores[k] for k in ("el_lower_bound", "el_scored") if k in scores},
            "ma_threshold": thresholds.ma, "el_threshold": thresholds.el,
            "elapsed_s": round(time.perf_counter() - started, 2), "tokens_seen": state.tokens_seen,
        }
        if check_before is not None:
            record["retain_check_loss"] = check_loss
        state.history.append(record)
        progress.log_epoch(record, config.eval.el_n)
        collapse = _collapse(record, check_before, config.train.collapse_factor)
        if collapse:
            state.collapsed_epoch = epoch
            _restore(trainable, last_good)
            state.stop_reason = (f"the model collapsed in epoch {epoch} ({collapse}); it was restored to its state "
                                 f"after epoch {epoch - 1}")
        else:
            last_good, last_scores = _snapshot(trainable), scores
            if scores["el"] is not None and thresholds.forgotten(scores["ma"], scores["el"]):
                state.criterion_met = True
                if config.eval.early_stop:
                    state.stop_reason = f"forgetting criterion met after epoch {epoch}"
        _add(timings, "train_s", t_train)
        t_train = time.perf_counter()
        save_checkpoint()
    _add(timings, "train_s", t_train)
    if not state.stop_reason:
        state.stop_reason = (f"forgetting criterion met by epoch {state.epoch}" if state.criterion_met else
                             f"forgetting criterion NOT met within {config.train.epochs} epochs")

    # --- after: evaluate and return ------------------------------------------------------------
    model = whole.of(model)
    model.eval()
    t0 = time.perf_counter()
    # The forget set was just scored after the last epoch (or the epoch restored to); reuse that.
    known = {"forget": last_scores} if last_scores is not None and last_scores["el"] is not None else None
    # On a real model this evaluation takes most of an hour (EL of the held-out rows, the downstream suite); kept
    # by these weights, a run interrupted during it and resumed from its last checkpoint does not do it twice.
    after_cache = ScoreCache.of(model, config.eval) if processes.main else None
    after = (evaluation_snapshot(model, eval_sets, config.eval, progress, label="after", tokenizer=tokenizer,
                                 known=known, data_dir=data_dir, cache=after_cache,
                                 el_roles=("forget",) if config.eval.after_el == "forget" else
                                 ("forget", "validation", "retain")) if processes.main else {})
    timings["eval_after_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started
    return RunResult(config, state, thresholds, before, after, timings, model=model, tokenizer=tokenizer,
                     data=data, target_modules=target_modules, adapter_summary=adapter_summary,
                     processes=processes.count, main_process=processes.main,
                     launch={"distributed": accelerator.distributed_type.value,
                             "mixed_precision": str(accelerator.mixed_precision)}, parameters=parameters)


def losses_of(records: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in records if key in r]


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def _step_loss(model: Any, method: Method, forget: TokenBlocks | None, retain: TokenBlocks | None,
               config: RunConfig, device: torch.device, micro: MicroStep, reference_logprob: torch.Tensor | None = None,
               reference_model: Any = None) -> tuple[torch.Tensor, dict[str, float]]:
    forget_logits = forget_labels = None
    if forget is not None:
        forget_logits = model(input_ids=forget.input_ids.to(device),
                              attention_mask=forget.attention_mask.to(device)).logits
        forget_labels = forget.labels().to(device)
    retain_logits = retain_labels = retain_reference = None
    if retain is not None:
        inputs = {"input_ids": retain.input_ids.to(device), "attention_mask": retain.attention_mask.to(device)}
        retain_logits = model(**inputs).logits
        retain_labels = retain.labels().to(device)
        if reference_model is not None:
            with torch.no_grad():
                retain_reference = reference_model(**inputs).logits
    return unlearning_loss(method, forget_logits, forget_labels, retain_logits, retain_labels,
                           config.method.retain_weight, micro.forget_weight, reference_logprob=reference_logprob,
                           retain_reference_logits=retain_reference, forget_normaliser=micro.forget_normaliser,
                           retain_normaliser=micro.retain_normaliser)


def _epoch_scores(model: Any, forget: TokenBlocks, check_blocks: TokenBlocks | None, config: RunConfig,
                  thresholds: Thresholds, progress: Progress, epoch: int) -> tuple[dict[str, Any], float | None]:
    """After an epoch: MA and EL_n of the forget set (only what the stopping rule needs, with ``decide``) and
    the LM loss of the collapse check's text."""
    scores = evaluate_memorization(model, forget, config.eval, progress, label=f"epoch {epoch} · forget",
                                   thresholds=((thresholds.ma, thresholds.el)
                                               if config.eval.per_epoch_el == "decide" else None))
    return scores, _lm_loss(model, check_blocks) if check_blocks is not None else None


def _thresholds(config: RunConfig, before: dict[str, Any]) -> Thresholds:
    """The config's thresholds where given, else the held-out means measured before unlearning (Appendix B)."""
    given_ma, given_el, n = config.eval.ma_threshold, config.eval.el_threshold, config.eval.el_n
    if given_ma is not None and given_el is not None:
        return Thresholds(ma=given_ma, el=given_el, n_sequences=0, source="config", n=n)
    held_out = before["validation"]
    measured = Thresholds.from_scores(torch.tensor(held_out["ma_per_sequence"], dtype=torch.float64),
                                      torch.tensor(held_out["el_per_sequence"], dtype=torch.float64),
                                      held_out["name"], n, config.eval.bootstrap, config.seed)
    # A threshold the config gives replaces the measured one (its interval still describes the held-out set).
    return dataclasses.replace(measured, ma=given_ma if given_ma is not None else measured.ma,
                               el=given_el if given_el is not None else measured.el)


def _collapse_check_blocks(data: RunData, rows: int = 8) -> TokenBlocks | None:
    """The first few retain (else held-out) sequences: text the model should keep speaking."""
    source = data.retain if data.retain is not None else data.validation
    return None if source is None else source.subset(list(range(min(rows, len(source)))))


def _lm_loss(model: Any, blocks: TokenBlocks | None) -> float:
    """Mean next-token NLL of ``blocks`` (the log of their perplexity)."""
    assert blocks is not None
    return math.log(perplexity(model, blocks))


def _collapse(record: dict[str, Any], check_before: float | None, factor: float | None) -> str:
    """Why the epoch of ``record`` wrecked the model, or '' when it did not."""
    if factor is None:
        return ""
    forget_loss = record.get("forget_loss")
    if forget_loss is not None and abs(forget_loss) > 100:
        return f"forget loss {forget_loss:.3g} per token"
    if check_before is not None and record["retain_check_loss"] > factor * max(check_before, 1e-6):
        return (f"LM loss on kept text {record['retain_check_loss']:.3g}, more than {factor:g} x its "
                f"{check_before:.3g} before unlearning")
    return ""


def _parameter_counts(model: torch.nn.Module, adapter: bool) -> dict[str, int]:
    """Trainable parameters and those of the model as loaded (an adapter's own are not the model's)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "model": total - trainable if adapter else total}


def _summed(processes: Processes, value: float) -> float:
    return processes.mean({"value": value})["value"] * processes.count


def _add(timings: dict[str, float], key: str, since: float) -> None:
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - since


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().to("cpu", copy=True) for p in params]


def _restore(params: list[torch.nn.Parameter], saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, value in zip(params, saved, strict=True):
            param.copy_(value.to(param.device))


def _own_copy(loaded: LoadedModel) -> LoadedModel:
    return LoadedModel(copy.deepcopy(loaded.model), loaded.tokenizer, loaded.source, loaded.gguf_file)


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
