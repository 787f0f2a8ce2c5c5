"""What a launcher told the processes it started, read from their environment.

Every process of a distributed run trains its shard of one shared plan (docs/method.md, "Distributed training and
resume"). accelerate's torchrun launcher (`distributed_type: MULTI_GPU`, which
`recipes/accelerate/cpu_multi_process.yaml` uses to start CPU processes without MPI) sets `WORLD_SIZE` and
`LOCAL_RANK` but does not pass the config's `use_cpu` on; transformers then sets up no distributed state on a machine
without an accelerator, and each process trains the whole dataset alone into the same `output_dir`.
`launched_on_cpu` tells `InterTrainArguments` when the processes can only be CPU processes;
`check_processes_share_work` stops a run whose processes would still not share the work; `end_processes` ends what a
run started that could hold its process at exit.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping

COMPILE_WORKERS_GRACE_SECONDS: float = 10.0
"""How long `end_processes` waits for inductor's compile workers to shut down before the process exits without them."""

WORLD_SIZE_VARIABLES: tuple[str, ...] = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Where torchrun and the MPI launchers put the number of processes (the names accelerate reads)."""


def launched_world_size(environ: Mapping[str, str] | None = None) -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    environ = os.environ if environ is None else environ
    sizes = [int(environ[name]) for name in WORLD_SIZE_VARIABLES if str(environ.get(name, "")).strip().isdigit()]
    return max(sizes, default=1)


def launched_on_cpu(environ: Mapping[str, str] | None = None, has_accelerator: bool | None = None) -> bool:
    """Whether the launcher means these processes to run on the CPU.

    True when accelerate says so (`ACCELERATE_USE_CPU`, set by `accelerate launch --cpu`), or when several processes
    were started on a machine without an accelerator, where the CPU is the only device they can share the work on.
    """
    environ = os.environ if environ is None else environ
    if str(environ.get("ACCELERATE_USE_CPU", "")).strip().lower() in ("1", "true", "yes", "on"):
        return True
    if launched_world_size(environ) <= 1:
        return False
    if has_accelerator is None:
        import torch

        has_accelerator = torch.accelerator.is_available()
    return not has_accelerator


def check_processes_share_work(
    world_size: int, environ: Mapping[str, str] | None = None, initialized_world_size: int | None = None
) -> None:
    """Refuse processes that were launched together but would each train the whole dataset.

    Args:
        world_size: The processes the Trainer will shard over (`TrainingArguments.world_size`).
        environ: The environment to read the launcher's process count from (default: `os.environ`).
        initialized_world_size: Processes of an initialised `torch.distributed` group (default: looked up).
    """
    launched = launched_world_size(environ)
    if initialized_world_size is None:
        import torch.distributed as dist

        initialized_world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    launched = max(launched, initialized_world_size)
    if launched > 1 and world_size != launched:
        raise ValueError(
            f"{launched} processes were launched but the Trainer shards over {world_size}, so each would train the "
            "whole dataset into the same output_dir: pass --use_cpu true for CPU processes, or launch with an "
            "accelerate config whose devices this machine has (see recipes/accelerate/)"
        )


def end_processes(grace_seconds: float = COMPILE_WORKERS_GRACE_SECONDS) -> None:
    """Tear down what a run started that could hold the interpreter at exit: the process group a distributed run set
    up (what `Accelerator.end_training` does), so that no communication thread is still running, and the compile
    workers of torch.compile's inductor (`end_compile_workers`); nothing that was not started."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()
    end_compile_workers(grace_seconds)


def end_compile_workers(grace_seconds: float = COMPILE_WORKERS_GRACE_SECONDS) -> None:
    """Shut down inductor's compile workers, waiting at most `grace_seconds`.

    Inductor shuts its worker pool down at exit and waits up to 5 minutes for it; a pool still starting when a run
    fails (its first compile, a cold start) can take all of that, so a failed run seemed to hang after its error.
    Here the same shutdown (`torch._inductor.async_compile.shutdown_compile_workers`) runs in a daemon thread for at
    most `grace_seconds`; after that the process exits without waiting, and the workers, which watch their parent,
    end themselves. Nothing happens when inductor was never imported.
    """
    async_compile = sys.modules.get("torch._inductor.async_compile")
    if async_compile is None:
        return
    stopping = threading.Thread(
        target=async_compile.shutdown_compile_workers, name="hf-intertrain-end-compile-workers", daemon=True
    )
    stopping.start()
    stopping.join(grace_seconds)
