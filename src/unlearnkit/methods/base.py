"""What an unlearning method is to the loop: its options, what it prepares before training, which modules it
trains, and the loss of one step on a forget batch and a retain batch.

A method is a subclass of :class:`UnlearningMethod` in a module of its own; ``method.name`` in a config names it
(a module of :mod:`unlearnkit.methods` by its file name, or a user's ``module:Class`` / ``file.py:Class``,
:mod:`unlearnkit.config.plugins`). Its ``Options`` — a pydantic model — are validated where the config is read,
so a method module imports torch only inside its functions. Methods on logits override
:meth:`UnlearningMethod.forget_objective`; a method on hidden states (RMU) overrides the losses themselves.

Every loss is a mean over its *items* (tokens or rows, :data:`UnlearningMethod.unit`) or, given a
``normaliser``, their sum divided by it: the loop passes the count of the whole optimisation step
(:mod:`unlearnkit.steps`), so a step's gradient does not depend on how its rows were split.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

    from unlearnkit.data.blocks import TokenBlocks
    from unlearnkit.data.run_sets import RunData


class MethodOptions(BaseModel):
    """A method's own options (``method.<option>`` in a config); none by default."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class MethodSetup:
    """What a method may prepare from before training: the model as loaded (before any adapter, and before a
    checkpoint is restored, so a resumed run prepares the same), the run's data, the device and seed."""

    model: Any
    data: RunData
    device: Any
    seed: int
    eval_batch_size: int


class UnlearningMethod:
    """The base of every method: a forget objective on the model's logits plus a retain term (the LM loss, or the
    KL divergence from the model before unlearning with ``retain_kind="kl"``) weighted by ``retain_weight``."""

    description: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    uses_retain: ClassVar[bool] = True  # trains on retain batches
    unit: ClassVar[str] = "tokens"  # what the forget loss is a mean over: "tokens" (predicted tokens) or "rows"
    retain_kinds: ClassVar[tuple[str, ...]] = ("lm", "kl")  # the method.retain_kind values its retain term takes

    def __init__(self, options: MethodOptions | None = None, *, retain_weight: float = 1.0,
                 retain_kind: str = "lm") -> None:
        self.options = options if options is not None else self.Options()
        self.retain_weight = retain_weight
        self.retain_kind = retain_kind
        self.name = type(self).__name__  # the config's method.name once built (unlearnkit.methods.build_method)
        self.device: Any = None
        self.reference_model: Any = None
        self.sam_rho = 0.0  # method.sam_rho: the forget term's gradient taken at a sharpness-aware point
        self.meta_relearn = 0.0  # method.meta_relearn: ... or after a simulated relearning step
        self.disruption_mask = False  # method.disruption_mask: the forget gradient kept where the retain one agrees

    # --- before training ----------------------------------------------------------------------------------
    def prepare(self, setup: MethodSetup) -> None:
        """Called once before training. The KL retain term keeps a frozen copy of the model as loaded."""
        self.device = setup.device
        if self.uses_retain and self.retain_kind == "kl":
            self.reference_model = copy.deepcopy(setup.model).eval().requires_grad_(False)

    def trains(self, module_name: str, adapter: bool) -> bool:
        """Whether the parameters of ``module_name`` train (full fine-tuning, ``adapter`` False) or an adapter
        targets it; every module by default."""
        return True

    # --- one step ---------------------------------------------------------------------------------------------
    def forget_objective(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None,
                         normaliser: float | None) -> torch.Tensor:
        """The forget loss from the forget batch's logits; ``rows`` index the batch's rows in the forget set."""
        raise NotImplementedError(f"{self.name} defines neither forget_objective nor forget_loss")

    def forget_loss(self, model: Any, forget: TokenBlocks, rows: torch.Tensor | None,
                    normaliser: float | None) -> torch.Tensor:
        return self.forget_objective(self.logits(model, forget), self.labels(forget), rows, normaliser)

    def retain_loss(self, model: Any, retain: TokenBlocks, normaliser: float | None) -> torch.Tensor:
        from unlearnkit.objectives import kl_from_reference, lm_loss

        inputs = self.inputs(retain)
        logits, labels = model(**inputs).logits, self.labels(retain)
        if self.reference_model is None:
            return lm_loss(logits, labels, normaliser)
        import torch

        with torch.no_grad():
            reference = self.reference_model(**inputs).logits
        return kl_from_reference(logits, reference, labels, normaliser)

    def step_loss(self, model: Any, forget: TokenBlocks | None, retain: TokenBlocks | None, *,
                  rows: torch.Tensor | None = None, forget_weight: float = 1.0,
                  forget_normaliser: float | None = None, retain_normaliser: float | None = None,
                  ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-step (Eq. 5 for IHL) and its parts for logging. ``forget_weight`` scales the
        forget term (0: rows a process runs only to take part in a step that left it none); without forget rows
        (a retain-only pass) the forget term is 0."""
        parts = {"forget_loss": 0.0}
        total: torch.Tensor | None = None
        if forget is not None:
            if self.sam_rho > 0 or self.meta_relearn > 0:
                moving = self.sharpness_aware_forget if self.sam_rho > 0 else self.meta_forget
                total, value, moved = moving(model, forget, rows, forget_normaliser)
                parts["forget_loss_moved"] = moved * forget_weight
            else:
                total = self.forget_loss(model, forget, rows, forget_normaliser)
                value = float(total.detach())
            if forget_weight != 1.0:
                total = total * forget_weight
            parts["forget_loss"] = value * forget_weight
        if self.uses_retain:
            if retain is None:
                raise ValueError(f"method {self.name} needs a retain batch")
            retain_loss = self.retain_loss(model, retain, retain_normaliser)
            parts["retain_loss"] = float(retain_loss.detach())
            if self.disruption_mask and total is not None:
                total = self.disruption_masked(model, total, retain_loss, self.retain_weight)
            else:
                total = (self.retain_weight * retain_loss if total is None
                         else total + self.retain_weight * retain_loss)
        if total is None:
            raise ValueError("a step needs forget rows, or retain rows for a method with a retain term")
        parts["loss"] = parts["forget_loss"] + self.retain_weight * parts.get("retain_loss", 0.0)
        return total, parts

    def sharpness_aware_forget(self, model: Any, forget: TokenBlocks, rows: torch.Tensor | None,
                               normaliser: float | None) -> tuple[torch.Tensor, float, float]:
        """SAM unlearning (Fan et al., ICML 2025) on the forget term: its gradient taken at ``θ + ρ g/‖g‖``, ``g``
        its gradient at ``θ`` over the trainable weights. Returns a term whose gradient is that one, the forget
        loss at ``θ`` and at the perturbed point."""
        loss = self.forget_loss(model, forget, rows, normaliser)
        return self._forget_gradient_elsewhere(model, forget, rows, normaliser, direction=loss,
                                               step=self.sam_rho, value=float(loss.detach()))

    def meta_forget(self, model: Any, forget: TokenBlocks, rows: torch.Tensor | None,
                    normaliser: float | None) -> tuple[torch.Tensor, float, float]:
        """Meta-unlearning (after MUDMAN, Sondej et al., 2025): the forget term's gradient taken where one simulated
        relearning step on the batch's forget rows leads, ``θ − η g_r/‖g_r‖`` with ``g_r`` the gradient of their LM
        loss at ``θ``, so that each update also removes what that relearning would bring back. Returns a term
        whose gradient is that one, the forget loss at ``θ`` and after the relearning step."""
        import torch

        from unlearnkit.objectives import lm_loss

        with torch.no_grad():
            value = float(self.forget_loss(model, forget, rows, normaliser))
        relearning = lm_loss(self.logits(model, forget), self.labels(forget), normaliser)
        return self._forget_gradient_elsewhere(model, forget, rows, normaliser, direction=relearning,
                                               step=-self.meta_relearn, value=value)

    def _forget_gradient_elsewhere(self, model: Any, forget: TokenBlocks, rows: torch.Tensor | None,
                                   normaliser: float | None, *, direction: torch.Tensor, step: float,
                                   value: float) -> tuple[torch.Tensor, float, float]:
        """The forget loss's gradient at ``θ + step · d/‖d‖`` (``d``: the gradient of ``direction`` over the
        trainable weights), the weights then put back at ``θ`` exactly; returned as a term whose gradient is
        that one (``Σ θ · g``, ``g`` detached), with ``value`` and the forget loss at the moved point for the log
        (how far the step moves the loss is what scaling ``step`` to a model needs)."""
        import torch

        params = [param for param in model.parameters() if param.requires_grad]
        grads = torch.autograd.grad(direction, params, allow_unused=True)
        norm = float(torch.sqrt(sum((g.double().square().sum() for g in grads if g is not None),
                                    torch.zeros((), dtype=torch.float64))))
        if norm == 0.0:  # no direction to move along: the plain gradient
            return self.forget_loss(model, forget, rows, normaliser), value, value
        saved = [param.detach().clone() for param in params]
        with torch.no_grad():
            for param, grad in zip(params, grads, strict=True):
                if grad is not None:
                    param.add_(grad, alpha=step / norm)
        try:
            at_moved = self.forget_loss(model, forget, rows, normaliser)
            moved = torch.autograd.grad(at_moved, params, allow_unused=True)
        finally:
            with torch.no_grad():
                for param, original in zip(params, saved, strict=True):
                    param.copy_(original)
        return _term_with_gradient(params, moved, like=direction), value, float(at_moved.detach())

    @staticmethod
    def disruption_masked(model: Any, forget_term: torch.Tensor, retain_loss: torch.Tensor,
                          retain_weight: float) -> torch.Tensor:
        """Disruption masking (MUDMAN, Sondej et al., 2025): the forget term's gradient kept only on the weights
        where it has the sign of the retain term's gradient, so that no weight's update works against the retain
        loss. Returns a term whose gradient is the masked forget gradient plus ``retain_weight`` times the retain
        gradient (``Σ θ · g``, ``g`` detached); each term is back-propagated once."""
        import torch

        if not bool(torch.isfinite(forget_term)):  # what the step skips as a NaN/inf loss, not masked away
            return forget_term + retain_weight * retain_loss
        params = [param for param in model.parameters() if param.requires_grad]
        forget_grads = torch.autograd.grad(forget_term, params, retain_graph=True, allow_unused=True)
        retain_grads = torch.autograd.grad(retain_loss, params, allow_unused=True)
        grads: list[torch.Tensor | None] = []
        for forget_grad, retain_grad in zip(forget_grads, retain_grads, strict=True):
            if retain_grad is None or forget_grad is None:  # sign 0 agrees with no forget gradient but 0
                grads.append(None if retain_grad is None else retain_weight * retain_grad)
            else:
                grads.append(retain_weight * retain_grad + forget_grad * (forget_grad.sign() == retain_grad.sign()))
        return _term_with_gradient(params, grads, like=forget_term)

    # --- helpers --------------------------------------------------------------------------------------------
    def inputs(self, blocks: TokenBlocks) -> dict[str, torch.Tensor]:
        return {"input_ids": blocks.input_ids.to(self.device), "attention_mask": blocks.attention_mask.to(self.device)}

    def logits(self, model: Any, blocks: TokenBlocks) -> torch.Tensor:
        return model(**self.inputs(blocks)).logits

    def labels(self, blocks: TokenBlocks) -> torch.Tensor:
        return blocks.labels().to(self.device)


def _term_with_gradient(params: list[Any], grads: Sequence[torch.Tensor | None], *,
                        like: torch.Tensor) -> torch.Tensor:
    """``Σ θ · g`` with each ``g`` detached: a term whose gradient over ``params`` is ``grads`` (None: none), for
    a step whose gradient is not that of one loss at ``θ`` (SAM, meta-unlearning, disruption masking)."""
    import torch

    return sum(((param * grad.detach()).sum() for param, grad in zip(params, grads, strict=True) if grad is not None),
               torch.zeros((), device=like.device, dtype=like.dtype))
