"""Running averages of the non-interpolated losses, per class, over completed epochs: the thresholds' inputs.

docs/method.md, "Thresholds": L_corr and L_incorr are "running averages ... calculated from epoch 0 to E-1" of the
losses of correctly / incorrectly classified S_noInt samples (paper eq. 4), and L_avg (the average-loss ablation,
Table 3) is the same over all of them. That phrase has several readings, so `ThresholdAverages` keeps every one
(a few floats each) and `means(kind)` answers for any of them: `AmenabilityTracker` judges with the configured one
and can report the others. numpy only; it knows no sample, model or Trainer.
"""

from __future__ import annotations

import math

import numpy as np

from ..constants import THRESHOLD_AVERAGES

EMA_DECAY = 0.5
"""Weight of the previous value in `threshold_average="ema"`: new = 0.5 * old + 0.5 * this epoch's class mean.

Why 0.5 (docs/method.md, "Thresholds"): the thresholds judge the current epoch's losses, so they should lag
the loss distribution by about one epoch (the mean age of the weights is 1 epoch), not by the whole run. The
paper (Sec. 7.5, Fig. 12) finds that losses change slowly between epochs except in the first epochs and after
a learning-rate drop, which is where a long memory hurts: pooled averages stay above the current losses for
many epochs then. With 0.5 the epochs more than five back weigh 3 % together, so the thresholds catch up
within two or three epochs of a drop, while one epoch's mean of a small class (the few incorrect S_noInt
samples late in training) is still averaged with its predecessors, unlike `"last_epoch"`.
"""

STATE_SHAPES: dict[str, int] = {
    "pooled_sum": 2, "pooled_count": 2, "epoch_mean_sum": 3, "epoch_mean_count": 3, "ema_mean": 3, "last_epoch_mean": 3,
}
"""The `state_dict` entries (names as in the tracker's checkpoints) and their lengths."""


class ThresholdAverages:
    """Class means of S_noInt losses over completed epochs, in every reading of `THRESHOLD_AVERAGES`.

    Slots: 0 correct, 1 incorrect, 2 all (L_avg). `fold` adds one epoch's sums and observation counts:

    - `"pooled"`: every observation counts once (sums and counts accumulated; "all" is their total).
    - `"epoch_mean"`: the mean over epochs of each epoch's class mean; an epoch without an observation of a
      class does not count for it.
    - `"ema"`: exponential moving average of the per-epoch class means with `EMA_DECAY`; the first epoch's mean
      initialises it, epochs without an observation of a class leave it unchanged.
    - `"last_epoch"`: the most recent epoch's class mean that had an observation of that class.
    Each mean is NaN until it has an observation.
    """

    def __init__(self):
        self.pooled_sum = np.zeros(2, dtype=np.float64)
        self.pooled_count = np.zeros(2, dtype=np.int64)
        self.epoch_mean_sum = np.zeros(3, dtype=np.float64)
        self.epoch_mean_count = np.zeros(3, dtype=np.int64)
        self.ema_mean = np.full(3, np.nan, dtype=np.float64)
        self.last_epoch_mean = np.full(3, np.nan, dtype=np.float64)

    def fold(self, sums: np.ndarray, counts: np.ndarray) -> None:
        """Add one completed epoch: loss sums and observation counts of its S_noInt records for correct and
        incorrect samples (length 2; the "all" slot is derived)."""
        sums = np.asarray(sums, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.int64)
        self.pooled_sum += sums
        self.pooled_count += counts
        sums3 = np.append(sums, sums.sum())
        counts3 = np.append(counts, counts.sum())
        seen = counts3 > 0
        means = np.divide(sums3, counts3, out=np.full(3, np.nan), where=seen)
        self.epoch_mean_sum[seen] += means[seen]
        self.epoch_mean_count[seen] += 1
        first = seen & np.isnan(self.ema_mean)
        self.ema_mean[first] = means[first]
        later = seen & ~first
        self.ema_mean[later] = EMA_DECAY * self.ema_mean[later] + (1 - EMA_DECAY) * means[later]
        self.last_epoch_mean[seen] = means[seen]

    def means(self, kind: str) -> tuple[float, float, float]:
        """(correct, incorrect, all) class means in the reading `kind`, NaN where undefined."""
        if kind == "pooled":
            sums = (self.pooled_sum[0], self.pooled_sum[1], self.pooled_sum[0] + self.pooled_sum[1])
            counts = (self.pooled_count[0], self.pooled_count[1], self.pooled_count[0] + self.pooled_count[1])
            return tuple(float(s / c) if c else math.nan for s, c in zip(sums, counts))
        if kind == "epoch_mean":
            return tuple(float(s / c) if c else math.nan for s, c in zip(self.epoch_mean_sum, self.epoch_mean_count))
        if kind == "ema":
            return tuple(float(x) for x in self.ema_mean)
        if kind == "last_epoch":
            return tuple(float(x) for x in self.last_epoch_mean)
        raise ValueError(f"kind must be one of {THRESHOLD_AVERAGES} or None, got {kind!r}; pass None for the configured threshold_average.")

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name).copy() for name in STATE_SHAPES}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from a tracker state (entries named as in `STATE_SHAPES`), refusing wrong shapes."""
        for key, size in STATE_SHAPES.items():
            if np.asarray(state[key]).shape != (size,):
                raise ValueError(f"tracker state {key!r} has shape {np.asarray(state[key]).shape}, expected ({size},); the checkpoint is corrupt, start a new run.")
        for key in STATE_SHAPES:
            dtype = np.int64 if key.endswith("_count") else np.float64
            setattr(self, key, np.array(state[key], dtype=dtype))
