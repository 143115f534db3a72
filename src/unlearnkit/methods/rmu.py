"""Representation misdirection for unlearning, RMU (Li et al., 2024, "The WMDP Benchmark", Section 5).

On the forget set the hidden states of one layer ℓ are pushed towards a fixed random direction scaled by ``c``;
on the retain set they are held where the frozen model puts them::

    L = mean_t ‖h_ℓ(x_f)_t − c·u‖² / d  +  α · mean_t ‖h_ℓ(x_r)_t − h_ℓ^frozen(x_r)_t‖² / d

with ``u`` a unit vector drawn once (uniform in [0, 1)^d, normalised, as the authors' code), ``d`` the hidden
size (their ``mse_loss`` averages over it too) and the means over the positions that predict a token (padding
and each row's last position left out, so the step's token count normalises it like the other methods). By
default only the MLPs of layers ℓ−2..ℓ train (with an adapter: the adapter's targets in those layers). The
authors' settings on 7B models (32 layers): ℓ = 7, c = 6.5, α = 1200, lr 5e-5; ℓ defaults here to the same
depth fraction of the model's layers.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import MethodOptions, MethodSetup, UnlearningMethod

if TYPE_CHECKING:
    import torch

    from unlearnkit.data.blocks import TokenBlocks


class RMUOptions(MethodOptions):
    layer: int | None = Field(None, ge=0, description="the layer whose output is steered (0 = the first); default "
                                                      "7/32 of the model's depth, rounded (the authors' 7 of 32)")
    steering_coeff: float = Field(6.5, gt=0.0, description="c, the length of the target direction")
    alpha: float = Field(1200.0, ge=0.0, description="weight of the retain term")
    trained_layers: int = Field(3, ge=1, description="layers ℓ−k+1..ℓ train (the authors' ℓ−2..ℓ: 3)")


class RMU(UnlearningMethod):
    description = ("representation misdirection: layer ℓ's hidden states steered on forget, held on retain (Li et "
                   "al., 2024)")
    Options: ClassVar[type[MethodOptions]] = RMUOptions
    retain_kinds: ClassVar[tuple[str, ...]] = ()  # its own retain term: method.retain_kind does not apply
    options: RMUOptions

    def prepare(self, setup: MethodSetup) -> None:
        import torch

        super().prepare(setup)
        depth = int(setup.model.config.get_text_config().num_hidden_layers)
        self.layer = self.options.layer if self.options.layer is not None else min(depth - 1, round(7 * depth / 32))
        if self.layer >= depth:
            raise UnlearnkitError(f"method.layer {self.layer} is beyond this model's {depth} layers; use 0 to "
                                  f"{depth - 1}.")
        hidden = int(setup.model.config.get_text_config().hidden_size)
        direction = torch.rand(hidden, generator=torch.Generator().manual_seed(setup.seed), dtype=torch.float32)
        self.target = (direction / direction.norm() * self.options.steering_coeff).to(setup.device)
        self.frozen = copy.deepcopy(setup.model).eval().requires_grad_(False)

    def trains(self, module_name: str, adapter: bool) -> bool:
        found = re.search(r"\.(\d+)\.", f".{module_name}.")
        if found is None or not self.layer - self.options.trained_layers < int(found.group(1)) <= self.layer:
            return False
        return adapter or ".mlp." in f".{module_name}."

    def forget_loss(self, model: Any, forget: TokenBlocks, rows: torch.Tensor | None,
                    normaliser: float | None) -> torch.Tensor:
        return self._distance(self.hidden(model, forget), self.target, forget, normaliser)

    def retain_loss(self, model: Any, retain: TokenBlocks, normaliser: float | None) -> torch.Tensor:
        import torch

        with torch.no_grad():
            frozen = self.hidden(self.frozen, retain)
        return self.options.alpha * self._distance(self.hidden(model, retain), frozen, retain, normaliser)

    def hidden(self, model: Any, blocks: TokenBlocks) -> torch.Tensor:
        """Layer ℓ's output (``hidden_states[0]`` is the embeddings), ``[B, T, d]``."""
        hidden: torch.Tensor = model(**self.inputs(blocks), output_hidden_states=True).hidden_states[self.layer + 1]
        return hidden

    def _distance(self, hidden: torch.Tensor, target: torch.Tensor, blocks: TokenBlocks,
                  normaliser: float | None) -> torch.Tensor:
        """Sum over the predicting positions of ‖hidden − target‖² / d, over ``normaliser`` (default their count);
        ``target`` is a direction [d] or the frozen model's hidden states [B, T, d]."""
        import torch

        dtype = torch.promote_types(hidden.dtype, torch.float32)  # half precision upcast, float64 kept
        predicting = (self.labels(blocks)[:, 1:] != -100).to(dtype)
        target = target[:, :-1] if target.dim() == 3 else target
        squared = (hidden[:, :-1].to(dtype) - target.to(dtype)).pow(2).mean(dim=-1)
        total = (squared * predicting).sum()
        return total / (predicting.sum().clamp(min=1) if normaliser is None else normaliser)


METHOD = RMU
