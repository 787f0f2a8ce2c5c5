"""Peer methods that train fewer samples per epoch without interpolating: the yardsticks InterTrain must beat.

A speed-up method is worth something only if it beats simply training less (docs/method.md, "Peer methods and
budget-matched baselines"). Two published ways of training on part of the data each epoch are built here as
pure functions of (seed, epoch, per-sample losses), so that the sampler can plan them like any other epoch and
every process of a distributed run draws the same subset. They know no model and no Trainer.

- RS2 without replacement (Okanovic et al., "Repeated Random Sampling for Minimizing the Time-to-Accuracy of
  Learning", ICLR 2024): each epoch trains on the next chunk of a random permutation of the whole dataset; a
  new permutation starts only when the previous one is used up, so every sample is seen once per cycle before
  any sample repeats. Here the chunk sizes are given per epoch (`compare` uses the items an InterTrain run
  trained in each epoch, so the two runs take the same number of steps per epoch).
- InfoBatch (Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic Data Pruning", ICLR 2024):
  each epoch, a sample whose last loss is below the mean of the last losses is left out with probability
  `prune_probability`; the well-learned samples that are kept have their loss scaled by
  `1 / (1 - prune_probability)`, so the expected gradient is unchanged; the final `full_data_fraction` of the
  epochs trains on every sample ("annealing").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

_CYCLE_STREAM = 0x5253  # Keeps the permutation draws of RS2 apart from the sampler's epoch draws.


def _cycle_permutation(num_samples: int, seed: int, cycle: int, last: np.ndarray) -> np.ndarray:
    """The permutation of cycle `cycle`, with the samples in `last` moved to its end (stable otherwise)."""
    key = int(np.random.SeedSequence([seed, cycle, _CYCLE_STREAM]).generate_state(1, np.uint64)[0] >> 1)
    permutation = torch.randperm(num_samples, generator=torch.Generator().manual_seed(key)).numpy()
    if last.size == 0:
        return permutation
    at_end = np.zeros(num_samples, dtype=np.bool_)
    at_end[last] = True
    return np.concatenate([permutation[~at_end[permutation]], permutation[at_end[permutation]]])


def random_subset(num_samples: int, sizes: Sequence[int], epoch: int, seed: int) -> np.ndarray:
    """The samples RS2 without replacement trains in `epoch` (int64, in stream order, no repeats).

    The stream is a concatenation of random permutations of 0 .. N-1 (one per cycle); epoch e takes the
    `sizes[e]` samples after the `sum(sizes[:e])` already taken. When an epoch straddles the end of a cycle, the
    samples it already took from the old cycle are moved to the end of the new cycle's permutation, so that no
    sample appears twice in one epoch while each cycle still holds every sample exactly once.

    Args:
        num_samples: N, the size of the training set.
        sizes: Samples per epoch, one entry per epoch, each in 1 .. N.
        epoch: The epoch to plan, 0 <= epoch < len(sizes).
        seed: The run's data seed.
    """
    if not 0 <= epoch < len(sizes):
        raise ValueError(f"epoch {epoch} has no subset size: random_subset_sizes gives {len(sizes)} epochs; give one size per epoch")
    for size in sizes:
        if not 1 <= size <= num_samples:
            raise ValueError(f"random subset size {size} is outside 1..{num_samples}; give sizes between 1 and the number of training samples")
    cycle, position = 0, 0
    permutation = _cycle_permutation(num_samples, seed, cycle, np.empty(0, dtype=np.int64))
    chunk = np.empty(0, dtype=np.int64)
    for size in sizes[: epoch + 1]:
        parts, need = [], int(size)
        while need:
            if position == num_samples:
                cycle, position = cycle + 1, 0
                permutation = _cycle_permutation(num_samples, seed, cycle, np.concatenate(parts) if parts else chunk[:0])
            part = permutation[position : position + need]
            parts.append(part)
            position += part.size
            need -= part.size
        chunk = np.concatenate(parts).astype(np.int64, copy=False)
    return chunk


def before_final_fraction(epoch: int, num_epochs: int, fraction: float) -> bool:
    """Whether `epoch` comes before the final `fraction` of a `num_epochs` schedule: `epoch < (1 - fraction) *
    num_epochs`, the cut of InfoBatch's reference implementation. InfoBatch prunes only before it; InterTrain's
    `interpolation_off_fraction` interpolates only before it."""
    return epoch < (1.0 - fraction) * num_epochs


def infobatch_selection(
    last_loss: np.ndarray, prune_probability: float, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """InfoBatch's soft pruning for one epoch: the samples to train and every sample's loss weight.

    A sample is "well learned" when its last recorded loss is below the mean of the known last losses; each
    well-learned sample is left out with probability `prune_probability` (one uniform draw per well-learned
    sample, in index order, from `generator`), and the well-learned samples that stay get weight
    `1 / (1 - prune_probability)`. A sample without a recorded loss is never pruned (InfoBatch starts every score
    at the same value, so nothing is pruned before the first losses are known).

    Returns:
        (kept, weights): sorted int64 indices of the samples to train, and float32 weights of length N (1.0 for
        samples that are not rescaled, 0.0 for pruned ones).
    """
    loss = np.asarray(last_loss, dtype=np.float32)
    weights = np.ones(loss.shape[0], dtype=np.float32)
    known = np.isfinite(loss)
    if not known.any():
        return np.arange(loss.shape[0], dtype=np.int64), weights
    well_learned = np.flatnonzero(known & (loss < loss[known].mean(dtype=np.float64)))
    draws = torch.rand(well_learned.size, generator=generator, dtype=torch.float64).numpy()
    pruned = well_learned[draws < prune_probability]
    weights[well_learned] = 1.0 / (1.0 - prune_probability)
    weights[pruned] = 0.0
    return np.flatnonzero(weights > 0).astype(np.int64), weights


def check_selection(
    selection: str,
    subset_sizes: Sequence[int] | None,
    prune_probability: float,
    full_data_fraction: float,
    num_epochs: int | None = None,
) -> None:
    """One-line errors for settings the peer methods cannot run with (before any training; the subset sizes against
    the dataset are `sampler.PlanRules.check_num_samples`'s)."""
    from ..constants import DATA_SELECTIONS

    if selection not in DATA_SELECTIONS:
        raise ValueError(f"data_selection={selection!r} is not supported: use one of {', '.join(DATA_SELECTIONS)}")
    if selection == "random_subset":
        if not subset_sizes:
            raise ValueError("data_selection=random_subset needs random_subset_sizes: the samples to train per epoch, e.g. '5000,5000,3600'")
        if num_epochs is not None and len(subset_sizes) != num_epochs:
            raise ValueError(f"random_subset_sizes gives {len(subset_sizes)} epochs but the run has {num_epochs}: give one size per epoch")
    if selection == "infobatch":
        if not 0.0 < prune_probability < 1.0:
            raise ValueError(f"infobatch_prune_probability={prune_probability} must lie strictly between 0 and 1 (InfoBatch uses 0.5)")
        if not 0.0 <= full_data_fraction <= 1.0 or math.isnan(full_data_fraction):
            raise ValueError(f"infobatch_full_data_fraction={full_data_fraction} must lie in [0, 1] (InfoBatch uses 0.125)")
