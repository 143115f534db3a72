"""Run under ``torchrun``: the empirical Fisher of a tiny model split over the processes, saved by the main one.

    torchrun --nproc_per_node 2 tests/distributed_fisher.py OUT_DIR ESTIMATOR...   (OUT_DIR/ESTIMATOR.safetensors)
"""

from __future__ import annotations

import sys

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from conftest import leave_processes_together, tiny_gpt_neo
from unlearnkit.adapters.fisher import empirical_fisher
from unlearnkit.data.blocks import TokenBlocks
from unlearnkit.parallel import Processes


def fisher_inputs() -> tuple[torch.nn.Module, TokenBlocks]:
    """The model and the 7 rows (of unequal lengths: some padded) the test and this script both use."""
    model = tiny_gpt_neo(seed=4)
    ids = torch.randint(0, 90, (7, 12), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    mask[5, 4:] = 0
    return model, TokenBlocks(ids, mask, "fisher rows")


def main(out: str, estimators: list[str]) -> None:
    accelerator = Accelerator(cpu=True)
    model, blocks = fisher_inputs()
    for estimator in estimators:
        result = empirical_fisher(model, ["c_fc", "q_proj"], blocks, batch_size=2, estimator=estimator,
                                  processes=Processes.of(accelerator))
        if accelerator.is_main_process:
            save_file({**result.sums, "num_tokens": torch.tensor([result.num_tokens])},
                      f"{out}/{estimator}.safetensors")
    leave_processes_together()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
