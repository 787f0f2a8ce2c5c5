"""Learning-rate schedules that follow epoch progress while InterTrain's epochs shrink.

transformers sizes the schedule once, from the first epoch's dataloader (`num_update_steps_per_epoch *
num_train_epochs`). InterTrain's epochs get shorter as more samples are interpolated (docs/method.md, "Vocabulary":
an epoch with P pairs has N - P items), so a step-indexed schedule would stop decaying half way. Here the
schedule is defined on *nominal* steps (the full-epoch step count) and each real optimizer step is mapped to
`(epoch + fraction of this epoch done) * nominal_steps_per_epoch`: the schedule reaches its end exactly at the
last step of the last epoch, and an epoch-based decay happens at the same epoch as in the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class EpochProgress:
    """Maps a global optimizer step to a nominal step on a schedule sized for full epochs.

    Args:
        nominal_steps_per_epoch: optimizer steps of an epoch without interpolation.
    """

    nominal_steps_per_epoch: int
    epoch: int = 0
    steps_before_epoch: int = 0
    steps_in_epoch: int = field(default=0)

    def __post_init__(self):
        if self.nominal_steps_per_epoch < 1:
            raise ValueError(f"nominal_steps_per_epoch={self.nominal_steps_per_epoch} must be at least 1")
        if self.steps_in_epoch <= 0:
            self.steps_in_epoch = self.nominal_steps_per_epoch

    def begin_epoch(self, epoch: int, steps_before_epoch: int, steps_in_epoch: int) -> None:
        """Declare that `epoch` starts after `steps_before_epoch` optimizer steps and lasts `steps_in_epoch`."""
        self.epoch = epoch
        self.steps_before_epoch = steps_before_epoch
        self.steps_in_epoch = max(1, steps_in_epoch)

    def nominal_step(self, global_step: int) -> float:
        """Position on the nominal schedule after `global_step` optimizer steps."""
        done = min(max(global_step - self.steps_before_epoch, 0), self.steps_in_epoch)
        return (self.epoch + done / self.steps_in_epoch) * self.nominal_steps_per_epoch


def nominal_update_steps_per_epoch(
    num_samples: int, batch_size: int, *, drop_last: bool, num_processes: int, accumulation_steps: int
) -> int:
    """Optimizer steps per process of an epoch without interpolation (N singles), as the Trainer counts them."""
    batches = num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)
    per_process = math.ceil(batches / max(1, num_processes))
    return max(1, math.ceil(per_process / accumulation_steps))


def follow_epoch_progress(
    scheduler: torch.optim.lr_scheduler.LRScheduler, progress: EpochProgress
) -> torch.optim.lr_scheduler.LRScheduler:
    """Re-index a step-based `LambdaLR` (what `transformers.get_scheduler` builds) by epoch progress.

    Schedulers that are not `LambdaLR` (e.g. `reduce_lr_on_plateau`, which does not depend on the step) are
    returned unchanged.
    """
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return scheduler
    base_lambdas = list(scheduler.lr_lambdas)

    def reindexed(base):
        return lambda step: base(progress.nominal_step(step))

    return torch.optim.lr_scheduler.LambdaLR(scheduler.optimizer, [reindexed(base) for base in base_lambdas])
