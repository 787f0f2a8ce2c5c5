"""Amenability tracker: which samples InterTrain interpolates in the next epoch.

Implements docs/method.md, "Selective interpolation" and "Adaptive interpolation". Losses and correctness go in
through `record`, decisions come out of `end_epoch`. Everything is a numpy array of length N, so ImageNet-21k sized
datasets (14M samples) cost a few hundred MB and `end_epoch` is a handful of vectorised passes. It knows no model,
no torch and no Trainer.

The package, one job per module: `rules` (the settings, `TrackerRules`, checked once), `decision` (the reason codes
and the end-of-epoch decision, with the Region-1 and Region-3 rules as tables), `summary` (what an epoch reports,
and the names of the `intertrain/*` statistics), `state` (checkpoints, old ones included); `AmenabilityTracker`
here holds the per-sample arrays and the read API.
"""

from __future__ import annotations

import numpy as np

from ..thresholds import ThresholdAverages
from . import state as tracker_state
from .decision import (
    NAIVE, NOT_INTERPOLATED, REASONS, REGION_1, REGION_3, Membership, Records, Thresholds, decide, judge, summarize,
)
from .rules import TrackerRules
from .state import EPOCH_BUFFER_KEYS
from .summary import EpochSummary

__all__ = [
    "ADAPTIVE_RATIO_MIN", "EPOCH_BUFFER_KEYS", "NAIVE", "NOT_INTERPOLATED", "REGION_1", "REGION_3",
    "AmenabilityTracker", "EpochSummary", "TrackerRules",
]

ADAPTIVE_RATIO_MIN = 0.25
"""Smallest share of a constituent under the adaptive LinAvg ratio; r is clipped to [0.25, 0.75].

Why (docs/method.md, "Adaptive interpolation"): unbounded, r = L_a / (L_a + L_b) erases a constituent whose
last loss is about 0 (r = 0 at a loss of exactly 0): it then gets neither pixels nor loss weight, which
skips the sample instead of interpolating it. A quarter is the share each constituent gets in a 4-way
composite, the smallest share on which the method trains a sample; the harder constituent still gets up to
three times the easier one's share.
"""


class AmenabilityTracker:
    """Per-sample loss bookkeeping and the S_int / S_noInt decision of InterTrain.

    The decision is `decision.py`'s (docs/method.md, "Selective interpolation", and the choices where the spec is
    silent in that module's docstring), under `rules` (the ablations: `rules.py`; docs/method.md, "Ablations").
    The pooled averages count one observation per sample per epoch; the tracker keeps every reading of the
    running average (`thresholds.ThresholdAverages`; docs/method.md, "Thresholds"), so `averages(kind)` reports
    any of them while the decision uses `rules.threshold_average`.

    A sample without a record in an epoch (skipped, dropped, or its loss not finite) keeps its previous losses
    (`last_loss`, `prev_noint_loss`) and adds nothing to the averages.

    Args:
        num_samples: Number of samples N in the training set; indices are 0 .. N-1.
        rules: The settings it decides with; the defaults are the method.
    """

    def __init__(self, num_samples: int, rules: TrackerRules = TrackerRules()):
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}; pass len(train_dataset).")
        if not isinstance(rules, TrackerRules):
            raise ValueError(f"rules must be a TrackerRules, got {type(rules).__name__}; pass TrackerRules(...) with the settings.")
        self.num_samples = int(num_samples)
        self.rules = rules
        self.epoch = 0
        self._revision = 0
        n = self.num_samples
        self._membership = Membership(
            reason=np.full(n, NOT_INTERPOLATED if rules.selective else NAIVE, dtype=np.int8),
            four_way=np.zeros(n, dtype=np.bool_),
            region3_left=np.zeros(n, dtype=np.uint8),
            increases=np.zeros(n, dtype=np.uint8),
        )
        self._last_loss = np.full(n, np.nan, dtype=np.float32)
        self._prev_noint_loss = np.full(n, np.nan, dtype=np.float32)
        # S_noInt losses of completed epochs, per class, in every reading of the running average.
        self._averages = ThresholdAverages()
        # Current-epoch buffers; int32 and float32 so they can be all-reduced with NCCL.
        self._loss_sum = np.zeros(n, dtype=np.float32)
        self._correct_count = np.zeros(n, dtype=np.int32)
        self._count = np.zeros(n, dtype=np.int32)

    # ----------------------------------------------------------------------------------------
    # Read access
    # ----------------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """Increases whenever membership or last losses change, so a sampler knows to replan."""
        return self._revision

    @property
    def reason(self) -> np.ndarray:
        """Read-only int8 membership code per sample for the current epoch (see `decision.py`)."""
        return _read_only(self._membership.reason)

    @property
    def last_loss(self) -> np.ndarray:
        """Read-only float32 most recent recorded loss per sample (NaN until recorded)."""
        return _read_only(self._last_loss)

    @property
    def prev_noint_loss(self) -> np.ndarray:
        """Read-only float32 most recent loss recorded while in S_noInt (NaN until known)."""
        return _read_only(self._prev_noint_loss)

    @property
    def interpolated(self) -> np.ndarray:
        """Boolean membership of S_int for the current epoch."""
        return self._membership.reason != NOT_INTERPOLATED

    @property
    def increases(self) -> np.ndarray:
        """Read-only uint8 count of consecutive increases of each sample's non-interpolated loss."""
        return _read_only(self._membership.increases)

    def s_int_indices(self, reason: int | None = None) -> np.ndarray:
        """Sorted int64 indices of S_int(current epoch), or of its members with one reason code.

        Args:
            reason: None for all of S_int; `REGION_1`, `REGION_3` or `NAIVE` for the members in
                S_int for that reason (e.g. a sampler that treats Region 3 apart, paper Table 4).
        """
        if reason is None:
            return np.flatnonzero(self.interpolated).astype(np.int64, copy=False)
        if isinstance(reason, bool) or reason not in REASONS:
            raise ValueError(f"reason must be one of REGION_1, NAIVE, REGION_3 {REASONS} or None, got {reason!r}; use s_noint_indices() for S_noInt.")
        return np.flatnonzero(self._membership.reason == reason).astype(np.int64, copy=False)

    @property
    def in_four_way(self) -> np.ndarray:
        """Read-only bool per sample: S_int member marked for a 4-way composite this epoch."""
        return _read_only(self._membership.four_way)

    def s_int_four_way_indices(self) -> np.ndarray:
        """Sorted int64 indices of the S_int members marked for 4-way composites."""
        return np.flatnonzero(self._membership.four_way).astype(np.int64, copy=False)

    def s_int_pair_indices(self) -> np.ndarray:
        """Sorted int64 indices of the S_int members to pair (S_int minus the 4-way members)."""
        return np.flatnonzero(self.interpolated & ~self._membership.four_way).astype(np.int64, copy=False)

    def s_noint_indices(self) -> np.ndarray:
        """Sorted int64 indices of S_noInt(current epoch)."""
        return np.flatnonzero(self._membership.reason == NOT_INTERPOLATED).astype(np.int64, copy=False)

    def averages(self, kind: str | None = None) -> tuple[float, float, float]:
        """(L_corr, L_incorr, L_mid) over the S_noInt records of all completed epochs.

        docs/method.md, "Thresholds". Each is NaN while undefined; L_mid is NaN unless both others
        are defined.

        Args:
            kind: One of `THRESHOLD_AVERAGES` (see `thresholds.ThresholdAverages`); None for
                `rules.threshold_average`, the one the decisions use.
        """
        l_corr, l_incorr, _ = self._means(kind)
        return l_corr, l_incorr, float(0.5 * (l_corr + l_incorr))

    def average_loss(self, kind: str | None = None) -> float:
        """L_avg: the average loss of all S_noInt records of completed epochs, averaged like `averages`.

        The threshold of `region1_rule="avg_loss"` (paper Sec. 7.7); NaN while undefined.
        """
        return self._means(kind)[2]

    def _means(self, kind: str | None) -> tuple[float, float, float]:
        return self._averages.means(self.rules.threshold_average if kind is None else kind)

    def adaptive_ratio(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Adaptive LinAvg ratio r = L_a / (L_a + L_b) from the most recent recorded losses, bounded.

        docs/method.md, "Adaptive interpolation": the harder constituent gets the larger share.
        r is clipped to [ADAPTIVE_RATIO_MIN, 1 - ADAPTIVE_RATIO_MIN] = [0.25, 0.75], so that a
        constituent whose last loss is about 0 is still in the input (see `ADAPTIVE_RATIO_MIN`);
        r is 0.5 where either loss is unknown or both are 0. r(a, b) = 1 - r(b, a) up to rounding.

        Args:
            a: Indices of the first constituents.
            b: Indices of the second constituents, same shape as `a`.

        Returns:
            float32 array of a's shares, same shape as `a`.
        """
        a = self._check_indices(a, "a")
        b = self._check_indices(b, "b")
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}; pass one b per a.")
        la = self._last_loss[a]
        total = la + self._last_loss[b]
        ratio = np.full(a.shape, 0.5, dtype=np.float32)
        np.divide(la, total, out=ratio, where=total > 0)  # NaN > 0 is False.
        return np.clip(ratio, np.float32(ADAPTIVE_RATIO_MIN), np.float32(1 - ADAPTIVE_RATIO_MIN), out=ratio)

    # ----------------------------------------------------------------------------------------
    # Recording
    # ----------------------------------------------------------------------------------------
    def record(self, indices: np.ndarray, losses: np.ndarray, correct: np.ndarray) -> None:
        """Add one epoch's observations: per-constituent loss and correctness (docs/method.md, "Loss").

        A sample recorded several times in one epoch counts once, with its mean loss and majority correctness.

        Args:
            indices: Sample indices, 1-D integer array.
            losses: Their losses (non-negative, finite), same length.
            correct: Whether the argmax matched the label (bool, or 0/1 integers), same length.

        Raises:
            ValueError: On mismatched shapes, out-of-range indices, or a non-finite or negative
                loss (a NaN loss means training diverged; it must not poison the averages).
        """
        idx = self._check_indices(indices, "indices")
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}; flatten them first.")
        loss = np.asarray(losses, dtype=np.float32)
        corr = np.asarray(correct)
        if loss.shape != idx.shape or corr.shape != idx.shape:
            raise ValueError(f"indices, losses and correct must have equal 1-D shapes, got {idx.shape}, {loss.shape} and {corr.shape}; pass one loss and one correctness per index.")
        bad = ~np.isfinite(loss) | (loss < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"loss of sample {int(idx[i])} is {float(loss[i])}: training diverged or the loss is not a cross-entropy; lower the learning rate or check the inputs.")
        if corr.dtype != np.bool_:
            if corr.size and (corr.dtype.kind not in "iu" or ((corr != 0) & (corr != 1)).any()):
                raise ValueError(f"correct must be bool or 0/1 integers, got dtype {corr.dtype}; pass (logits.argmax(-1) == labels).")
            corr = corr.astype(np.bool_)
        np.add.at(self._loss_sum, idx, loss)
        np.add.at(self._correct_count, idx, corr.astype(np.int32))
        np.add.at(self._count, idx, 1)

    def epoch_buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The live current-epoch buffers (loss_sum float32, correct_count int32, count int32).

        No copy: a distributed trainer may sum them across ranks in place (e.g. through
        `torch.from_numpy` and `all_reduce`), or sum copies and hand them to
        `set_epoch_buffers`.
        """
        return self._loss_sum, self._correct_count, self._count

    def set_epoch_buffers(self, loss_sum: np.ndarray, correct_count: np.ndarray, count: np.ndarray) -> None:
        """Replace the current-epoch buffers, e.g. with their sum over all ranks.

        Raises:
            ValueError: On a wrong shape, a non-finite or negative loss sum, or counts where
                correct_count > count or count < 0.
        """
        shape = (self.num_samples,)
        arrays = [np.asarray(x) for x in (loss_sum, correct_count, count)]
        if any(x.shape != shape for x in arrays):
            raise ValueError(f"epoch buffers must all have shape {shape}, got {[x.shape for x in arrays]}; pass arrays from epoch_buffers().")
        loss_sum, correct_count, count = arrays
        if not np.isfinite(loss_sum).all() or (loss_sum < 0).any():
            raise ValueError("loss_sum has a non-finite or negative value: training diverged; lower the learning rate or check the inputs.")
        if (count < 0).any() or (correct_count < 0).any() or (correct_count > count).any():
            raise ValueError("epoch counts are inconsistent (negative, or correct_count > count); sum the buffers of all ranks element-wise.")
        self._loss_sum = loss_sum.astype(np.float32, copy=True)
        self._correct_count = correct_count.astype(np.int32, copy=True)
        self._count = count.astype(np.int32, copy=True)

    # ----------------------------------------------------------------------------------------
    # Decision
    # ----------------------------------------------------------------------------------------
    def end_epoch(self) -> EpochSummary:
        """Judge the current epoch E's records and set the membership of epoch E + 1.

        docs/method.md, "Selective interpolation", in this order: regions from the averages of
        epochs 0 .. E-1 (of `rules.threshold_average`); membership of E + 1 under the rules
        (`decision.decide`); then E's S_noInt records join the averages and each sample's last
        losses are updated; the buffers are cleared and `epoch` becomes E + 1.

        Returns:
            The summary of epoch E for logging.
        """
        records = Records.of(self._loss_sum, self._correct_count, self._count)
        judgement = judge(self.rules, records, Thresholds(*self.averages(), self.average_loss()))
        now = self._membership
        next_ = decide(self.rules, judgement, now, self._prev_noint_loss)
        summary = summarize(self.epoch, judgement, now, next_)

        noint = (now.reason == NOT_INTERPOLATED) & records.recorded
        classes = (noint & records.correct, noint & ~records.correct)
        self._averages.fold(
            [records.loss[mask].sum(dtype=np.float64) for mask in classes], [int(np.count_nonzero(mask)) for mask in classes]
        )
        np.copyto(self._last_loss, records.loss, where=records.recorded)
        np.copyto(self._prev_noint_loss, records.loss, where=noint)
        self._membership = next_
        for buffer in (self._loss_sum, self._correct_count, self._count):
            buffer.fill(0)
        self.epoch += 1
        self._revision += 1
        return summary

    # ----------------------------------------------------------------------------------------
    # Checkpointing (state.py)
    # ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to resume, as numpy arrays only (savable with `safetensors.numpy`); `num_samples` and
        the rules included, so that `load_state_dict` refuses a checkpoint of another dataset or other rules."""
        return tracker_state.state_dict(self)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore a `state_dict` (or an older version's, see `state.py`), refusing one of another dataset size or
        other rules.

        Raises:
            ValueError: When a key is missing or has the wrong shape, or num_samples or a rule differ.
        """
        tracker_state.load_state_dict(self, state)

    def _check_indices(self, indices: np.ndarray, name: str) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.size == 0:
            return idx.astype(np.int64)
        if idx.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer array, got dtype {idx.dtype}; pass dataset indices.")
        if idx.min() < 0 or idx.max() >= self.num_samples:
            raise ValueError(f"{name} must lie in [0, {self.num_samples}), got values in [{idx.min()}, {idx.max()}]; pass indices of this training set.")
        return idx.astype(np.int64, copy=False)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
