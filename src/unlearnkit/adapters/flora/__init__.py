"""FLoRA (Section 3.4): the ``flora`` adapter — LoRA initialised from the relative empirical Fisher (forget /
retain) of each target weight, the base becoming ``W − BA``.

Its parts: :mod:`.maths` (relative importance, row weights, Eq. 4 closed form, Eq. 3 EM), :mod:`.init` (Fisher
pass → factors → PEFT layers with the residual base), :mod:`.export` (the trained adapter as a standard LoRA for
the original base). This module imports none of them until asked: a config naming ``flora`` is read without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearnkit.adapters.base import AdapterInit
from unlearnkit.adapters.lora import LoraAdapter

if TYPE_CHECKING:
    import torch

    from unlearnkit.config import AdapterConfig
    from unlearnkit.data.run_sets import RunData
    from unlearnkit.parallel import Processes


class FloraAdapter(LoraAdapter):
    """LoRA whose factors start from FLoRA's Fisher-weighted low-rank approximation (options: ``adapter.flora``)."""

    description = "LoRA initialised by FLoRA (the paper's Section 3.4): Fisher-weighted SVD; options adapter.flora"
    label = "FLoRA"
    uses_retain = "FLoRA's Fisher ratio"
    initialises = True
    key = "flora"
    export_note = " (applies to the original, untouched base model)."

    @classmethod
    def problems(cls, config: AdapterConfig) -> list[str]:
        fisher_path = config.flora.fisher_path
        if fisher_path and Path(fisher_path).expanduser().exists() and not Path(fisher_path).expanduser().is_dir():
            return [f"adapter.flora.fisher_path {fisher_path} is a file; give a directory for forget.safetensors "
                    "and retain.safetensors (`unlearnkit fisher --out DIR` writes one)."]
        return []

    def initialising(self, data: RunData, seed: int) -> str:
        retain = self._retain_sample(data, seed)
        return (f"FLoRA: Fisher information ({len(data.forget)} forget, {len(retain)} retain sequences) and "
                "weighted SVD")

    def initialise(self, model: Any, data: RunData, *, seed: int, processes: Processes) -> AdapterInit:
        from unlearnkit.adapters.flora.init import initialise_flora

        summary = initialise_flora(model, data.forget, self._retain_sample(data, seed), self.config.flora,
                                   processes=processes)
        return AdapterInit(summary.to_dict(), dict(summary.initial_state))

    def restore(self, model: Any, tensors: dict[str, torch.Tensor]) -> None:
        from unlearnkit.adapters.flora.init import restore_flora

        restore_flora(model, tensors)

    def export(self, model: Any, directory: Path) -> None:
        from unlearnkit.adapters.flora.export import save_flora_adapter_for_original_base

        save_flora_adapter_for_original_base(model, directory)

    def _retain_sample(self, data: RunData, seed: int) -> Any:
        from unlearnkit.adapters.flora.init import fisher_retain_sample

        assert data.retain is not None  # RunConfig refuses FLoRA without a retain set
        return fisher_retain_sample(data.retain, len(data.forget), self.config.flora, seed)


ADAPTER = FloraAdapter
