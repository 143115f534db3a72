"""``unlearnkit run`` under FSDP on CPU processes, for tests/test_distributed.py.

Run as ``accelerate launch --config_file configs/accelerate/fsdp.yaml tests/distributed_fsdp.py ARGS``: the
launch reads the config file and starts the processes with its FSDP settings in their environment, as on GPUs.
accelerate chooses FSDP as the distributed type only for GPUs, so on CPUs this sets it, with the plugin the
launch configured, and then runs the unchanged command line ``unlearnkit ARGS``.
"""

from __future__ import annotations

import os
import sys

from accelerate import Accelerator, FullyShardedDataParallelPlugin, PartialState
from accelerate.utils import DistributedType

from unlearnkit.cli import main

if __name__ == "__main__":
    # the launch's settings, except the module-state sync, which needs a GPU (every process loads the same weights)
    os.environ["FSDP_SYNC_MODULE_STATES"] = "false"
    plugin = FullyShardedDataParallelPlugin()
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin)
    # in the process-wide state, which every later Accelerator (the run's own) starts from
    PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    sys.argv = ["unlearnkit", *sys.argv[1:]]
    main()
