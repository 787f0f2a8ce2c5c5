"""Constituent records on their way to the `AmenabilityTracker`.

Every training step yields each constituent's loss and correctness (docs/method.md, "Loss"). `LossRecorder` keeps
them on the training device and hands them to the tracker in chunks, so a step costs no host sync. In a
distributed run each process records its own constituents; once per epoch one all-reduce sums them into every
process's tracker and a gathered checksum of the decisions proves the trackers agree (docs/method.md,
"Distributed training and resume"). The recorder takes the accelerator as an argument: anything with
`num_processes`, `is_main_process`, `device`, `reduce` and `gather` (an `accelerate.Accelerator`) will do.

Choices where the method is silent (docs/method.md, "Choices where the paper is silent"):
    - A non-finite loss (an fp16 overflow, whose step the GradScaler skips) is not recorded: that sample counts
      as unrecorded in the epoch (see `AmenabilityTracker`); the number of such losses is counted.
    - With several processes, accelerate's `even_batches` completes the last round of batches with items from
      the start of the plan, which are trained twice. Their two records are averaged into one observation by the
      tracker: no sample is dropped, none is counted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .tracker import EPOCH_BUFFER_KEYS, AmenabilityTracker, EpochSummary
from .tracker.summary import PlanCounts, epoch_statistics  # noqa: F401 (re-exported: the statistics of a closed epoch)

logger = logging.getLogger(__name__)

RECORD_FLUSH_EVERY = 256
"""Steps whose records are kept on the device before they are handed to the tracker at once."""


class Processes(Protocol):
    """What the recorder needs of an `accelerate.Accelerator`."""

    num_processes: int
    is_main_process: bool
    device: torch.device

    def reduce(self, tensor: Tensor, reduction: str = "sum") -> Tensor: ...

    def gather(self, tensor: Tensor) -> Tensor: ...


class LossRecorder:
    """Buffers the per-step records of one process and owns the tracker's cross-process bookkeeping.

    Args:
        tracker: The tracker that receives the records.
        flush_every: Steps kept on the device before a flush.

    Attributes:
        nonfinite_losses: Non-finite losses left out so far in this epoch, on this process (flushed steps only).
    """

    def __init__(self, tracker: AmenabilityTracker, flush_every: int = RECORD_FLUSH_EVERY):
        if flush_every < 1:
            raise ValueError(f"flush_every={flush_every} must be at least 1")
        self.tracker = tracker
        self.flush_every = flush_every
        self.nonfinite_losses = 0
        self._steps: list[tuple[Tensor, Tensor, Tensor]] = []

    @property
    def pending_steps(self) -> int:
        """Steps recorded but not yet handed to the tracker."""
        return len(self._steps)

    def add(self, records: Sequence[tuple[Tensor, Tensor, Tensor]]) -> None:
        """Keep one step's records (sample_index, loss, correct) per slot on the device; flush every `flush_every`."""
        index = torch.cat([r[0] for r in records])
        loss = torch.cat([r[1] for r in records]).detach().float()
        correct = torch.cat([r[2] for r in records])
        self._steps.append((index, loss, correct))
        if len(self._steps) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Hand the kept records to the tracker, leaving out (and counting) non-finite losses."""
        if not self._steps:
            return
        index, loss, correct = (torch.cat(parts).cpu().numpy() for parts in zip(*self._steps))
        self._steps.clear()
        finite = np.isfinite(loss)
        if not finite.all():
            self.nonfinite_losses += int(finite.size - np.count_nonzero(finite))
            index, loss, correct = index[finite], loss[finite], correct[finite]
        self.tracker.record(index, loss, correct)

    def reduce_epoch(self, accelerator: Processes) -> int:
        """Sum every process's records of this epoch into each tracker (one all-reduce; every process calls it).

        Returns:
            The number of non-finite losses left out this epoch, over all processes.
        """
        if accelerator.num_processes <= 1:
            return self.nonfinite_losses
        num_samples = self.tracker.num_samples
        loss_sum, correct_count, count = self.tracker.epoch_buffers()
        flat = np.concatenate([loss_sum, correct_count, count, [self.nonfinite_losses]], dtype=np.float64)
        flat = accelerator.reduce(torch.from_numpy(flat).to(accelerator.device), reduction="sum")
        bounds = [num_samples, 2 * num_samples, 3 * num_samples]
        loss_sum, correct_count, count, nonfinite = np.split(flat.cpu().numpy(), bounds)
        self.tracker.set_epoch_buffers(loss_sum, correct_count, count)
        return int(nonfinite[0])

    def check_ranks_agree(self, accelerator: Processes) -> None:
        """Raise if the processes' trackers diverged: a checksum of decisions and averages, gathered once."""
        if accelerator.num_processes <= 1:
            return
        tracker = self.tracker
        l_corr, l_incorr, _ = tracker.averages()
        checksum = np.nan_to_num(
            [
                np.count_nonzero(tracker.interpolated),
                np.flatnonzero(tracker.interpolated).sum(dtype=np.float64),
                np.flatnonzero(tracker.in_four_way).sum(dtype=np.float64),
                l_corr,
                l_incorr,
                np.nansum(tracker.last_loss, dtype=np.float64),
            ],
            nan=-1.0,
        )
        checksum = torch.tensor(checksum, dtype=torch.float64, device=accelerator.device)
        gathered = accelerator.gather(checksum[None]).cpu()
        if not torch.all(gathered == gathered[0]):
            raise RuntimeError(
                f"InterTrain trackers diverged across processes at epoch {tracker.epoch}: every process must "
                "see the same dataset, seed and InterTrain settings"
            )

    def close_epoch(self, accelerator: Processes) -> tuple[EpochSummary, int]:
        """Flush, sum the epoch over processes, let the tracker decide the next epoch, and check the ranks agree.

        Returns:
            The tracker's summary of the epoch and its non-finite losses over all processes (the count restarts).
        """
        self.flush()
        nonfinite = self.reduce_epoch(accelerator)
        self.nonfinite_losses = 0
        summary = self.tracker.end_epoch()
        self.check_ranks_agree(accelerator)
        if nonfinite:
            logger.warning(
                f"epoch {summary.epoch}: {nonfinite} constituent losses were not finite (fp16 overflow or diverging "
                "training) and were not recorded; their samples are trained without interpolation next epoch"
            )
        return summary, nonfinite

    def global_state(self, accelerator: Processes, at_epoch_boundary: bool) -> tuple[dict[str, np.ndarray], int]:
        """The tracker state with this epoch's records of all processes, and the epoch's non-finite loss count.

        Every process calls it (mid-epoch with several processes it is one all-reduce); each keeps its own
        buffers afterwards. Flush first.
        """
        if accelerator.num_processes <= 1 or at_epoch_boundary:
            return self.tracker.state_dict(), self.nonfinite_losses
        own = self.tracker.epoch_buffers()
        nonfinite = self.reduce_epoch(accelerator)
        state = self.tracker.state_dict()
        self.tracker.set_epoch_buffers(*own)
        return state, nonfinite

    def restore(self, state: dict[str, np.ndarray], nonfinite_losses: int, accelerator: Processes) -> None:
        """Load a checkpoint's tracker state, whose epoch records are summed over processes: only the main
        process keeps them (and the non-finite count), so the next all-reduce counts them once."""
        self._steps.clear()
        if accelerator.num_processes > 1 and not accelerator.is_main_process:
            state = {name: np.zeros_like(v) if name in EPOCH_BUFFER_KEYS else v for name, v in state.items()}
            nonfinite_losses = 0
        self.tracker.load_state_dict(state)
        self.nonfinite_losses = int(nonfinite_losses)
