"""The unlearning recipe (Section 3.5), as one function of named steps you can read top to bottom.

set up (model, data, the method and its adapter) → evaluate before (the held-out thresholds) → FLoRA → for each
epoch: for each forget batch draw a retain batch, take the method's step loss, step → evaluate MA and EL_n on the
forget set → stop once both are at or below the thresholds → evaluate after and return the result; the caller
writes it (:func:`unlearnkit.outputs.write_run_outputs`). A resumed run takes the one branch that reads its
:class:`~unlearnkit.checkpoints.LoopState` from the checkpoint; the clock and the guard against divergence and
collapse watch from beside the loop (:mod:`unlearnkit.guards`), the FLOP tally from :mod:`unlearnkit.flops`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.console import Console

from unlearnkit import tracking
from unlearnkit.adapters import Adapter, build_adapter
from unlearnkit.checkpoints import Checkpoints, LoopState, Saved
from unlearnkit.config import RunConfig
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.data.catalog import resolve_data_dir
from unlearnkit.data.run_sets import RunData, load_run_data
from unlearnkit.evaluation import ScoreCache, evaluation_snapshot
from unlearnkit.flops import FlopTally
from unlearnkit.guards import Clock, Guard, collapse
from unlearnkit.methods import MethodSetup, UnlearningMethod, build_method
from unlearnkit.metrics.perplexity import perplexity
from unlearnkit.metrics.thresholds import run_thresholds
from unlearnkit.modeling import LoadedModel, enable_gradient_checkpointing, load_configured_model
from unlearnkit.parallel import Processes, WholeModel, checkpoints_supported, refuse_unsupported_launch
from unlearnkit.progress import Progress
from unlearnkit.results import RunResult, RunState
from unlearnkit.steps import EpochPlan
from unlearnkit.stopping import StoppingRule, end_of_epochs, stopping_rule
from unlearnkit.training import OptimisationStep


def run_unlearning(
    config: RunConfig, *, loaded: LoadedModel | None = None, console: Console | None = None, quiet: bool = False,
    checkpoints: Checkpoints | None = None,
) -> RunResult:
    """Unlearn ``config.data.forget`` from ``config.model`` and return the result (module docstring). ``loaded``:
    a model the caller holds (deep-copied, never modified). With ``checkpoints`` the run saves one after set-up
    and every epoch, and continues exactly from one a run of the same config left (:mod:`unlearnkit.checkpoints`).
    A caller that writes the outputs checks the output directory first (:func:`unlearnkit.outputs.check_output_dir`)."""
    set_seed(config.seed)
    session = _launch(config, console, quiet, checkpoints)
    setup = _set_up(session, loaded)  # the model, the data, the method and its adapter
    loop = _before(session, setup)  # the held-out thresholds (Appendix B), or the state a checkpoint saved
    _initialise_adapter(session, setup, loop)  # FLoRA (Section 3.4): computed afresh, or restored
    training = _prepare_training(session, setup, loop)  # the optimiser, its generator and the guards
    state = loop.state
    for epoch in range(state.epoch + 1, config.train.epochs + 1):
        if state.stop_reason:
            break
        state.epoch = epoch
        with session.clock.phase("train_s"):
            losses = _train_epoch(session, setup, training, loop, epoch)
            if state.diverged_epoch is not None:
                training.guard.restore()
                state.stop_reason = (f"the loss became NaN or infinite in epoch {epoch}; the model was restored "
                                     f"to its state after epoch {epoch - 1}")
                break
            _judge_epoch(session, setup, training, loop, epoch, losses)  # MA and EL_n against the thresholds
        _save_checkpoint(session, training, loop)
    if not state.stop_reason:
        state.stop_reason = end_of_epochs(config.eval, config.train.epochs, state.criterion_met)
        shortfall = None if state.criterion_met or loop.last_scores is None else stopping_rule(
            config.eval, loop.thresholds, validation=setup.eval_sets.validation).shortfall(loop.last_scores,
                                                                                           state.history)
        if shortfall:
            state.stop_reason += f": {shortfall}"
    return _after(session, setup, training, loop)


# the step losses an epoch's record averages: forget_loss_moved where the forget gradient is taken elsewhere
_EPOCH_LOSSES = ("loss", "forget_loss", "retain_loss", "forget_loss_moved")


@dataclass
class _Session:
    """What every step of a run shares: its config, the processes it runs on, its progress display, clock and
    checkpoints (with the one it resumes from, if any)."""

    config: RunConfig
    accelerator: Accelerator
    processes: Processes
    progress: Progress
    checkpoints: Checkpoints | None
    saved: Saved | None
    clock: Clock


@dataclass
class _SetUp:
    """The model with its adapter, the run's data and method, and what is evaluated before and after."""

    model: Any
    tokenizer: Any
    data: RunData
    method: UnlearningMethod
    adapter: Adapter
    target_modules: list[str]
    eval_sets: RunData
    fingerprints: dict[str, str]
    scores_cache: ScoreCache | None  # scores of the model as loaded, the same in every run on it


@dataclass
class _Training:
    """The model as the optimiser holds it, the optimisation step, how an epoch's rows are split, and what
    watches it: the generator of batch orders, the FLOP tally, the guard and the collapse check's text."""

    model: Any
    whole: WholeModel  # what the main process evaluates (FSDP: a gathered copy)
    step: OptimisationStep
    plan: EpochPlan
    generator: torch.Generator
    tally: FlopTally
    guard: Guard
    check_blocks: TokenBlocks | None
    parameters: dict[str, int]


def losses_of(records: list[dict[str, float]], key: str) -> list[float]:
    return [r[key] for r in records if key in r]


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def _launch(config: RunConfig, console: Console | None, quiet: bool, checkpoints: Checkpoints | None) -> _Session:
    """The accelerator and processes of this run (on several, only the main one logs, evaluates and writes) and
    the checkpoint it resumes from."""
    # the schedule counts optimiser updates, however many processes there are (accelerate's default would step it
    # once per process and update)
    trackers = {"log_with": config.log.to, "project_dir": str(tracking.log_dir(config))} if config.log.to else {}
    accelerator = Accelerator(gradient_accumulation_steps=config.train.grad_accum, cpu=not _has_accelerator(),
                              step_scheduler_with_optimizer=False, **trackers)
    refuse_unsupported_launch(accelerator, config.method.gradient_point())  # before the trackers write anything
    tracking.start(accelerator, config)
    processes = Processes.of(accelerator)
    console = (console or Console(emoji=False, quiet=quiet)) if processes.main else Console(emoji=False, quiet=True)
    progress = Progress(console=console, quiet=quiet or not processes.main)
    if checkpoints is not None and not checkpoints_supported(accelerator):
        progress.note("Checkpoints are not saved under DeepSpeed yet; an interrupted run starts afresh.")
        checkpoints = None
    # read by the main process, which holds the claim and has removed a checkpoint --restart discards
    saved = processes.on_main(lambda: checkpoints.resumable(config, processes.count)) if checkpoints else None
    clock = Clock(dict(saved.payload["timings"]) if saved else {}, saved.payload["elapsed_s"] if saved else 0.0)
    return _Session(config, accelerator, processes, progress, checkpoints, saved, clock)


def _set_up(session: _Session, loaded: LoadedModel | None) -> _SetUp:
    """Load the model and the data, prepare the method on the model as loaded, then attach what trains."""
    config, saved = session.config, session.saved
    with session.clock.phase("setup_s"):
        with session.progress.status("Loading the model"):
            loaded = _own_copy(loaded) if loaded is not None else load_configured_model(config.model)
        model = loaded.model
        data = load_run_data(config, loaded.tokenizer)
        fingerprints = data.fingerprints()  # hashed once: checked on resume, stored in every checkpoint
        if saved:
            saved.check_data(fingerprints)
        scores_cache = ScoreCache.of(model, config.eval) if not saved and session.processes.main else None
        model.to(session.accelerator.device)
        method = build_method(config.method)
        method.prepare(MethodSetup(model, data, session.accelerator.device, config.seed, config.eval.batch_size))
    adapter = build_adapter(config.adapter)
    model, targets = adapter.attach(model, method)  # what trains: the adapter's layers, or the method's weights
    if config.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    eval_sets = RunData(forget=data.forget, validation=data.validation, retain=_kept_sample(data, config))
    return _SetUp(model, loaded.tokenizer, data, method, adapter, targets, eval_sets, fingerprints, scores_cache)


def _before(session: _Session, setup: _SetUp) -> LoopState:
    """A fresh run evaluates the model before unlearning and takes its thresholds from the held-out set; a
    resumed one continues from the state its checkpoint saved."""
    config, progress, saved = session.config, session.progress, session.saved
    if saved:
        loop = saved.loop_state()
        progress.note(f"Resuming after epoch {saved.epoch} from the checkpoint in {saved.directory.parent}")
    else:
        with session.clock.phase("eval_before_s"):
            before = session.processes.on_main(lambda: evaluation_snapshot(
                setup.model, setup.eval_sets, config.eval, progress, label="before", tokenizer=setup.tokenizer,
                data_dir=resolve_data_dir(config.data.dir), cache=setup.scores_cache))
        loop = LoopState(RunState(), run_thresholds(config.eval, before, config.seed), before, setup.fingerprints)
        _stop_if_nothing_to_forget(loop, config, progress, setup.eval_sets.validation)
    loop.timings = session.clock.timings  # what a checkpoint recorded, and this run's set-up
    return loop


def _stop_if_nothing_to_forget(loop: LoopState, config: RunConfig, progress: Progress,
                               validation: TokenBlocks | None) -> None:
    """A forget set that meets the criterion before unlearning is a warning; with early stopping nothing trains
    (an epoch could only damage the model)."""
    rule = stopping_rule(config.eval, loop.thresholds, validation=validation)  # nothing of it runs per epoch
    if not rule.met(loop.before["forget"]):
        return
    loop.state.warnings.append("the forget set already meets the forgetting criterion before unlearning: the "
                               "model does not reproduce it more than unseen text (it never memorised it, or an "
                               "earlier unlearning removed it), so there was nothing to forget")
    progress.warn(loop.state.warnings[-1])
    if rule.stops(loop.before["forget"]):
        loop.state.criterion_met = True
        loop.state.stop_reason = "forgetting criterion already met before unlearning: nothing was trained"


def _initialise_adapter(session: _Session, setup: _SetUp, loop: LoopState) -> None:
    """An adapter that starts from the data (FLoRA, Section 3.4: Fisher-weighted factors instead of B = 0)
    computes its start on a fresh run and restores it from the checkpoint on a resumed one."""
    adapter, processes = setup.adapter, session.processes
    prefix = f"{adapter.key}/"
    if session.saved:
        adapter.restore(setup.model, {k.removeprefix(prefix): v for k, v in loop.tensors.items()
                                      if k.startswith(prefix)})
        return
    if not adapter.initialises:
        return
    tally = FlopTally(loop.state.flops, loop.state.flops_sample)  # kept in the state: a resumed run keeps counting
    phase = f"{adapter.key}_init"
    with session.clock.phase("adapter_init_s"), \
            session.progress.status(adapter.initialising(setup.data, session.config.seed)):
        with tally.count(phase):
            start = adapter.initialise(setup.model, setup.data, seed=session.config.seed, processes=processes)
        tally.flops[phase] = _summed(processes, tally.flops[phase])  # each did its share
    loop.adapter_summary = start.summary
    loop.tensors.update({prefix + k: v for k, v in start.tensors.items()})


def _prepare_training(session: _Session, setup: _SetUp, loop: LoopState) -> _Training:
    """The optimiser over what trains, the model prepared for the processes, the generator of batch orders and
    the guards — restored from the checkpoint on a resumed run; a fresh run saves its first checkpoint."""
    config, accelerator, processes = session.config, session.accelerator, session.processes
    assert config.train.lr is not None  # resolved by RunConfig
    parameters = _parameter_counts(setup.model, adapter=setup.adapter.has_adapter)
    step = OptimisationStep([p for p in setup.model.parameters() if p.requires_grad], lr=config.train.lr,
                            weight_decay=config.train.weight_decay, warmup_steps=config.train.warmup_steps,
                            max_grad_norm=config.train.max_grad_norm)
    whole = WholeModel(accelerator, setup.model, processes)
    model = step.prepare(accelerator, setup.model)
    # FSDP replaces the parameters by shards of them: the trainable ones are those of the prepared model
    trainable = [p for p in accelerator.unwrap_model(model).parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(config.seed)
    check_blocks = _collapse_check_blocks(setup.data)
    if session.saved:
        assert session.checkpoints is not None
        session.checkpoints.restore(session.saved, accelerator, model)
        generator.set_state(loop.tensors["generator"])  # the main process's: the same on every process
    else:  # what the collapse guard compares with
        evaluated = whole.of(model)
        loop.check_before = processes.on_main(lambda: _lm_loss(evaluated, check_blocks)
                                              if check_blocks is not None else None)
    plan = EpochPlan(setup.data.forget, setup.data.retain if setup.method.uses_retain else None, config.train,
                     processes, setup.method.unit)
    training = _Training(model, whole, step, plan, generator, FlopTally(loop.state.flops, loop.state.flops_sample),
                         Guard(trainable), check_blocks, parameters)
    if not session.saved:
        _save_checkpoint(session, training, loop)
    return training


def _save_checkpoint(session: _Session, training: _Training, loop: LoopState) -> None:
    if session.checkpoints is None:
        return
    if training.whole.sharded and not training.step.optimizer.state:
        # Under FSDP torch builds the optimiser's state dict by taking a zero-lr step when there is no state yet;
        # that step would count in every later Adam update. So the first checkpoint follows the first update.
        return
    # an optimisation step never crosses an epoch's end: no gradients are pending here
    loop.tensors["generator"] = training.generator.get_state()
    loop.elapsed_s = session.clock.elapsed()
    session.checkpoints.save(loop.state.epoch, session.config, session.accelerator, loop, session.processes)


def _train_epoch(session: _Session, setup: _SetUp, training: _Training, loop: LoopState,
                 epoch: int) -> list[dict[str, float]]:
    """One epoch of optimisation steps; each step's mean losses. A NaN or infinite loss stops it
    (``state.diverged_epoch``)."""
    state, processes, plan, tally, step = loop.state, session.processes, training.plan, training.tally, training.step
    model, grad_accum = training.model, session.config.train.grad_accum
    model.train()
    epoch_losses: list[dict[str, float]] = []
    step_losses: dict[str, float] = {}
    for micro in session.progress.track(plan.micro_steps(training.generator), total=plan.steps,
                                        description=f"epoch {epoch}/{session.config.train.epochs}", unit="step"):
        forget = plan.forget.subset(micro.forget_rows).trimmed() if micro.forget_rows is not None else None
        retain = (plan.retain.subset(micro.retain_rows).trimmed()
                  if plan.retain is not None and micro.retain_rows is not None else None)
        # the first step is counted (forward, backward, all processes alike); the others are scaled from it
        counted = (tally.count_sample("train", (forget.num_tokens if forget else 0) +
                                      (retain.num_tokens if retain else 0))
                   if "train" not in tally.sample else contextlib.nullcontext())
        with step.micro_step(model, update=micro.update), counted:
            loss, parts = setup.method.step_loss(model, forget, retain, rows=micro.forget_rows,
                                                 forget_weight=micro.forget_weight,
                                                 forget_normaliser=micro.forget_normaliser,
                                                 retain_normaliser=micro.retain_normaliser)
            # every process must take the NaN guard's decision together: one skipping the backward pass alone
            # would leave the others waiting in the gradient all-reduce
            if not processes.all_finite(loss) or not step(loss, update=micro.update):
                state.diverged_epoch = epoch
                break
        state.step += 1
        state.tokens_seen += int(plan.forget.subset(micro.step_rows).num_tokens) + (
            retain.num_tokens * processes.count if retain is not None else 0)
        tally.scale("train", state.tokens_seen)
        # accelerate divides each micro-step's loss by grad_accum: their sum is the step's mean loss
        for key, value in parts.items():
            step_losses[key] = step_losses.get(key, 0.0) + value / grad_accum
        if micro.update:
            epoch_losses.append(step_losses)
            tracking.log(session.accelerator, session.config, "train", {**step_losses, "lr": training.step.lr},
                         state.step)
            step_losses = {}
    return epoch_losses


def _judge_epoch(session: _Session, setup: _SetUp, training: _Training, loop: LoopState, epoch: int,
                 losses: list[dict[str, float]]) -> None:
    """After an epoch: MA and EL_n on the forget set (Appendix B), the epoch's record, then the collapse guard
    and the criterion."""
    config, processes, state, thresholds = session.config, session.processes, loop.state, loop.thresholds
    rule = stopping_rule(config.eval, thresholds, tokenizer=setup.tokenizer, data_dir=resolve_data_dir(config.data.dir),
                         validation=setup.eval_sets.validation, history=state.history)
    training.model.eval()
    evaluated = training.whole.of(training.model)
    with training.tally.count("criterion"):  # on the main process, where the criterion is computed
        scores, check_loss = processes.on_main(functools.partial(
            _epoch_scores, evaluated, setup.data.forget, training.check_blocks, rule, session.progress, epoch))
    added = scores.pop("epoch_record", {})  # what the rule records beside the forget set's scores
    record: dict[str, Any] = {
        "epoch": epoch,
        **processes.mean({k: _mean(losses_of(losses, k)) for k in _EPOCH_LOSSES if losses_of(losses, k)}),
        "lr": training.step.lr, "forget_ma": scores["ma"], "forget_el": scores["el"],
        **{k: scores[k] for k in ("el_lower_bound", "el_scored", "el_skipped") if k in scores},
        "ma_threshold": thresholds.ma, "el_threshold": thresholds.el,
        "elapsed_s": round(session.clock.elapsed(), 2), "tokens_seen": state.tokens_seen,
        **added,
    }
    if loop.check_before is not None:
        record["retain_check_loss"] = check_loss
    state.history.append(record)
    session.progress.log_epoch(record, config.eval.el_n)
    tracking.log(session.accelerator, config, "epoch", record, state.step)
    wrecked = collapse(record, loop.check_before, config.train.collapse_factor)
    if wrecked:
        state.collapsed_epoch = epoch
        training.guard.restore()
        state.stop_reason = (f"the model collapsed in epoch {epoch} ({wrecked}); it was restored to its state "
                             f"after epoch {epoch - 1}")
        return
    training.guard.keep()
    loop.last_scores = scores
    if rule.met(scores):
        state.criterion_met = True
        if rule.stops(scores):
            state.stop_reason = f"forgetting criterion met after epoch {epoch}"


def _after(session: _Session, setup: _SetUp, training: _Training, loop: LoopState) -> RunResult:
    """The snapshot after unlearning (on the main process; the forget set's scores of the last epoch, or the one
    restored to, are reused) and the run's result."""
    config, processes, accelerator = session.config, session.processes, session.accelerator
    model = training.whole.of(training.model).eval()
    with session.clock.phase("eval_after_s", replace=True):
        after: dict[str, Any] = {}
        if processes.main:
            last = loop.last_scores
            # On a real model this evaluation takes most of an hour (EL of the held-out rows, the downstream
            # suite); kept by these weights, a run interrupted during it and resumed does not do it twice.
            after = evaluation_snapshot(
                model, setup.eval_sets, config.eval, session.progress, label="after", tokenizer=setup.tokenizer,
                known={"forget": last} if last is not None and last["el"] is not None else None,
                data_dir=resolve_data_dir(config.data.dir), cache=ScoreCache.of(model, config.eval),
                el_roles=("forget",) if config.eval.after_el == "forget" else ("forget", "validation", "retain"))
    session.clock.timings["total_s"] = session.clock.elapsed()
    tracking.log(accelerator, config, "after", {**{role: after[role] for role in ("forget", "validation")
                                                   if role in after}, "criterion_met": loop.state.criterion_met},
                 loop.state.step)
    tracking.finish(accelerator, config)
    return RunResult(config, loop.state, loop.thresholds, loop.before, after, session.clock.timings, model=model,
                     tokenizer=setup.tokenizer, data=setup.data, target_modules=setup.target_modules,
                     adapter_summary=loop.adapter_summary, processes=processes.count, main_process=processes.main,
                     launch={"distributed": accelerator.distributed_type.value,
                             "mixed_precision": str(accelerator.mixed_precision)}, parameters=training.parameters)


def _epoch_scores(model: Any, forget: TokenBlocks, check_blocks: TokenBlocks | None, rule: StoppingRule,
                  progress: Progress, epoch: int) -> tuple[dict[str, Any], float | None]:
    """After an epoch: what the stopping rule measures on the forget set, and the LM loss of the collapse check's
    text."""
    return rule.epoch_scores(model, forget, progress, epoch), \
        _lm_loss(model, check_blocks) if check_blocks is not None else None


def _kept_sample(data: RunData, config: RunConfig) -> TokenBlocks | None:
    """The retain sequences also scored before and after (``eval.retain_sequences``)."""
    if data.retain is None or config.eval.retain_sequences <= 0:
        return None
    return data.retain.subset(list(range(min(config.eval.retain_sequences, len(data.retain)))))


def _collapse_check_blocks(data: RunData, rows: int = 8) -> TokenBlocks | None:
    """The first few retain (else held-out) sequences: text the model should keep speaking."""
    source = data.retain if data.retain is not None else data.validation
    return None if source is None else source.subset(list(range(min(rows, len(source)))))


def _lm_loss(model: Any, blocks: TokenBlocks | None) -> float:
    """Mean next-token NLL of ``blocks`` (the log of their perplexity)."""
    assert blocks is not None
    return math.log(perplexity(model, blocks))


def _parameter_counts(model: torch.nn.Module, adapter: bool) -> dict[str, int]:
    """Trainable parameters and those of the model as loaded (an adapter's own are not the model's)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "model": total - trainable if adapter else total}


def _summed(processes: Processes, value: float) -> float:
    return processes.mean({"value": value})["value"] * processes.count


def _own_copy(loaded: LoadedModel) -> LoadedModel:
    return LoadedModel(copy.deepcopy(loaded.model), loaded.tokenizer, loaded.source, loaded.gguf_file)


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
