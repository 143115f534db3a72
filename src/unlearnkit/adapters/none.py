"""``none``: no adapter; the model's own weights train (full fine-tuning, the paper's GA/GD baselines)."""

from __future__ import annotations

from typing import Any

from unlearnkit.adapters.base import Adapter


class FullFineTuning(Adapter):
    """Every weight of the modules the method trains (all of them, for a method on the whole model)."""

    description = "full fine-tuning: the model's own weights train"
    label = ""
    paper_lr = 5e-5
    has_adapter = False

    def attach(self, model: Any, method: Any) -> tuple[Any, list[str]]:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(method.trains(name.rsplit(".", 1)[0], adapter=False))
        return model, []


ADAPTER = FullFineTuning
