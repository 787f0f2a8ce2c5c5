"""Amenability tracker: which samples InterTrain interpolates in the next epoch.

Implements docs/method.md, "Selective interpolation" and "Adaptive interpolation". Losses and
correctness go in through `record`, decisions come out of `end_epoch`. Everything is a numpy
array of length N, so ImageNet-21k sized datasets (14M samples) cost a few hundred MB and
`end_epoch` is a handful of vectorised passes. It knows no model, no torch and no Trainer.

Beyond pairs (docs/method.md, "Four-way composites"): with `max_group_size=4` the tracker also decides which S_int members
go into 4-way composites instead of pairs (see `AmenabilityTracker`, "Four-way selection").

The paper's threshold ablations (Sec. 7.6 to 7.8) and other readings of its "running average" are
constructor settings whose defaults are the method (see `AmenabilityTracker`, "Ablations" and
"Threshold averages").
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..constants import FOUR_WAY_SELECTIONS, REGION1_RULES, REGION3_RULES, THRESHOLD_AVERAGES
from .thresholds import EMA_DECAY, ThresholdAverages  # noqa: F401 (EMA_DECAY re-exported)

# Membership codes of `AmenabilityTracker.reason`.
NOT_INTERPOLATED = 0
"""In S_noInt: trained as a single."""
REGION_1 = 1
"""In S_int because its loss was in Region 1 (l < L_mid)."""
NAIVE = 2
"""In S_int because the tracker runs naive interpolation (`selective=False`)."""
REGION_3 = 3
"""In S_int because its loss was in Region 3 (l > L_incorr) and increased."""

_VALID_REGIONS = (1, 3)
_GROUP_SIZES = (2, 4)
_REASONS = (REGION_1, NAIVE, REGION_3)

ADAPTIVE_RATIO_MIN = 0.25
"""Smallest share of a constituent under the adaptive LinAvg ratio; r is clipped to [0.25, 0.75].

Why (docs/method.md, "Adaptive interpolation"): unbounded, r = L_a / (L_a + L_b) erases a constituent whose
last loss is about 0 (r = 0 at a loss of exactly 0): it then gets neither pixels nor loss weight, which
skips the sample instead of interpolating it. A quarter is the share each constituent gets in a 4-way
composite, the smallest share on which the method trains a sample; the harder constituent still gets up to
three times the easier one's share.
"""

_MAX_STREAK = 255  # uint8 per-sample counters saturate here.


EPOCH_BUFFER_KEYS = ("epoch_loss_sum", "epoch_correct_count", "epoch_count")
"""The `state_dict` entries that hold the current epoch's records (a distributed run sums them over processes)."""


@dataclasses.dataclass(frozen=True)
class EpochSummary:
    """What `AmenabilityTracker.end_epoch` decided, for logging (the paper's per-epoch plots).

    Attributes:
        epoch: The epoch whose records were judged.
        num_recorded: Samples with at least one record in that epoch.
        num_interpolated: |S_int(epoch)|, the membership during that epoch.
        region_1: Records of that epoch in Region 1 (0 when the averages are undefined).
        region_2: Records of that epoch in Region 2 (0 when the averages are undefined).
        region_3: Records of that epoch in Region 3 (0 when the averages are undefined).
        l_corr: L_corr used for the decision (epochs before `epoch`), NaN when undefined.
        l_incorr: L_incorr used for the decision, NaN when undefined.
        l_mid: L_mid used for the decision, NaN when undefined.
        next_interpolated: |S_int(epoch + 1)|.
        num_four_way: S_int members of that epoch marked for 4-way composites (0 with pairs only).
        next_four_way: Members of S_int(epoch + 1) marked for 4-way composites.
        l_avg: Running average loss of all S_noInt observations used for the decision (the
            threshold of `region1_rule="avg_loss"`; reported under every rule), NaN when undefined.
        correct_below_l_mid: The paper's Fig. 5 efficacy of L_mid: among that epoch's records of
            samples that were in S_noInt, the fraction of the correctly classified ones with loss
            below `l_mid`; NaN when `l_mid` is undefined or there is no such record. The paper
            reports > 95 %.
        incorrect_below_l_mid: The same fraction among the incorrectly classified ones (the
            paper reports < 10 %).
        admitted_region_1: S_noInt samples of that epoch admitted to S_int(epoch + 1) through
            Region 1 (Fig. 6).
        admitted_region_3: S_noInt samples of that epoch admitted to S_int(epoch + 1) through
            Region 3 (Fig. 8a).
        left_s_int: S_int members of that epoch that are in S_noInt in epoch + 1, whatever their
            reason (Fig. 6 plots the Region-1 part; Region-3 members leave when their period ends).
    """

    epoch: int
    num_recorded: int
    num_interpolated: int
    region_1: int
    region_2: int
    region_3: int
    l_corr: float
    l_incorr: float
    l_mid: float
    next_interpolated: int
    num_four_way: int = 0
    next_four_way: int = 0
    l_avg: float = math.nan
    correct_below_l_mid: float = math.nan
    incorrect_below_l_mid: float = math.nan
    admitted_region_1: int = 0
    admitted_region_3: int = 0
    left_s_int: int = 0

    def to_dict(self) -> dict[str, int | float]:
        """Plain Python values, ready for `Trainer.log` or JSON (NaN stays NaN)."""
        return dataclasses.asdict(self)


class AmenabilityTracker:
    """Per-sample loss bookkeeping and the S_int / S_noInt decision of InterTrain.

    The decision rules are docs/method.md, "Selective interpolation". Choices where the spec is
    silent:

    - One record per sample per epoch. A sample recorded several times in one epoch (a
      distributed sampler padding with duplicates) counts once, with its mean loss and the
      majority correctness; a tie counts as correct. The pooled averages count that one
      averaged record as one observation.
    - Undefined averages (no correct or no incorrect S_noInt observation pooled yet, which
      includes every judgement after epoch 0): nobody is judged and everybody is in
      S_noInt for the next epoch; the epoch's S_noInt records are still pooled.
    - A sample without a record in the epoch goes to S_noInt for the next epoch and keeps its
      previous losses (`last_loss`, `prev_noint_loss`); it adds nothing to the averages. This is
      also how the "skipping instead of interpolating" ablation (paper Sec. 7.8, Table 4; the
      sampler's `amenable_action="skip"`) treats a skipped sample: "skipped for the next k
      epochs, after which they are trained without interpolation again", with k = 1. So a
      skipped Region 1 sample is trained and judged again after one epoch (unlike an
      interpolated one, which keeps its place while its interpolated loss stays below L_mid:
      a skipped sample yields no loss to judge), and a skipped Region 3 sample's next loss is
      compared with its loss before the skip. The exception is a Region-3 member inside a
      period of `region3_epochs` > 1 epochs (see "Ablations"): it keeps its place unrecorded.
    - If L_corr > L_incorr, Regions 1 and 3 overlap; Region 1 wins, so the regions stay a
      partition of the recorded samples.
    - Naive mode (`selective=False`, the paper's "naive interpolation" ablation): every sample
      is in S_int in every epoch, epoch 0 included, with reason code `NAIVE`; no S_noInt
      observation exists, so the averages stay undefined.
    - Every rule below judges nobody until L_mid is defined, whatever it needs itself, so each
      ablation starts interpolating in the same epoch as the method and changes one thing.

    Threshold averages (`threshold_average`, docs/method.md, "Thresholds"). The paper's L_corr
    and L_incorr are "running averages ... calculated from epoch 0 to E-1". Readings:

    - `"pooled"` (default): every S_noInt observation of epochs 0 .. E-1 counts once. Epoch 0,
      where every sample is in S_noInt and losses are highest, outweighs the later epochs.
    - `"epoch_mean"`: the mean over epochs 0 .. E-1 of each epoch's class mean, each epoch
      weighted equally; an epoch without an observation of a class does not count for it.
    - `"ema"`: an exponential moving average of the per-epoch class means with the fixed decay
      `EMA_DECAY` (see there why); the first epoch's mean initialises it, epochs without an
      observation of a class leave it unchanged.
    - `"last_epoch"`: the class means of epoch E-1 alone, or of the most recent epoch with an
      observation of that class.
    The tracker keeps all four (a few floats), so `averages(kind)` reports any of them; the
    decision uses the configured one. L_avg, the running average of all S_noInt observations
    (`region1_rule="avg_loss"`), is averaged the same way.

    Ablations (docs/method.md, "Ablations"); the defaults are the method:

    - `region1_rule="accuracy"` (paper Sec. 7.7, Table 3, "Threshold = Accuracy"): Region 1
      is the samples classified correctly in epoch E (majority of their records, a tie
      correct). An interpolated Region-1 member stays in S_int while its interpolated record is
      correct (the analogue of staying below L_mid). Region 3 is still l > L_incorr, among the
      incorrect samples.
    - `region1_rule="avg_loss"` (Table 3, "Threshold = Average Loss"): one threshold L_avg, the
      running average loss of all S_noInt observations (correct and incorrect together). Region
      1 is l < L_avg, and a Region-1 member stays while its interpolated loss stays below L_avg
      ("and vice-versa": at or above it the sample is not interpolated). The paper's row has
      no Region 3 (it compares with "Region 1 only": pass `regions=(1,)`); with
      `regions=(1, 3)` Region 3 keeps its own rule, l > L_incorr outside Region 1.
    - `region3_rule="l_incorr"` (Table 3, "Region 1 and threshold = Lincorr for Region 3"):
      every S_noInt sample with l > L_incorr (outside Region 1) is admitted, without the
      increase test; it leaves S_int after its period like any Region-3 member.
    - `region3_increases=k` (Sec. 3.2, Fig. 8b; Sec. 7.8, Table 4): Region 3 admits a sample
      only after k consecutive increases of its non-interpolated loss. The count goes up by one
      for each S_noInt record above the sample's previous non-interpolated loss (epochs in
      S_int or without a record are passed over, as `prev_noint_loss` is), restarts at 0 on
      any other S_noInt record, and restarts at 0 when the sample is admitted through Region 3.
      The increases need not all lie in Region 3; the last record must. k = 1 is the method.
    - `region3_epochs=m` (Sec. 7.8: samples "are skipped for the next k epochs", with m = k in
      the paper's variants): a Region-3 member stays in S_int for m epochs, whatever its
      records, then returns to S_noInt. A member without a record during its period (the
      sampler's "skip" action) keeps its place too. m = 1 is the method.
    - `regions=(3,)` ("Region 3 only", Sec. 7.6, Fig. 13b; Table 4 applies no Region-1
      interpolation): Region 1 admits nobody; the regions are still counted.
    Settings that cannot take effect are refused: the Region-1 rule without Region 1, the
    Region-3 settings without Region 3, `region3_increases` with `region3_rule="l_incorr"`,
    every rule with `selective=False`, and 4-way composites without the L_mid Region 1.

    Four-way selection (`max_group_size=4`; docs/method.md, "Four-way composites"). Pairs are the paper's first step of
    interpolation; a 4-way composite shows each constituent on about a quarter of the input, a
    harder test. The rule climbs the same ladder one rung higher, with the thresholds the
    method already has and no new hyper-parameter:

    - A sample enters a 4-way composite for epoch E + 1 only if it was interpolated in epoch E
      because of Region 1 (as a pair or a 4-way constituent), stays in Region 1, and its
      recorded *interpolated* loss is below L_corr, the average loss of correctly classified
      non-interpolated samples: interpolated, it is still as easy as a typical sample that
      the network gets right without interpolation. New Region-1 entrants (from S_noInt)
      and Region-3 members always start as pairs.
    - A 4-way member whose loss rises to [L_corr, L_mid) goes back to pairs (still Region 1);
      at L_mid or above it leaves S_int like any Region-1 member (the paper's rule).
    So a sample needs two epochs of evidence (non-interpolated, then interpolated) before it
    is interpolated 4 ways, and every demotion is one rung at a time, except that the paper's
    own Region-1 exit applies unchanged. The ablation `four_way_selection="region1"` drops
    the L_corr bar: every Region-1 member that stays in Region 1 is grouped by four. Which marked samples are actually grouped by four is
    the sampler's business (a remainder of fewer than four is paired).

    Args:
        num_samples: Number of samples N in the training set; indices are 0 .. N-1.
        selective: False for naive interpolation of every sample in every epoch.
        regions: Regions that may admit S_noInt samples into S_int: (1, 3) is the full method,
            (1,) the "Region 1 only" ablation.
        max_group_size: 2 for pairs only (the paper); 4 to also mark samples for 4-way
            composites (see "Four-way selection"). Needs `selective=True`.
        four_way_selection: "robust" (the rule above) or "region1" (its ablation).
        threshold_average: One of `THRESHOLD_AVERAGES` (see "Threshold averages").
        region1_rule: One of `REGION1_RULES`: "l_mid" (the method), "accuracy" or "avg_loss"
            (see "Ablations").
        region3_rule: One of `REGION3_RULES`: "increase" (the method) or "l_incorr".
        region3_increases: k, consecutive increases Region 3 needs (1, the method, to 255).
        region3_epochs: m, epochs a Region-3 member stays in S_int (1, the method, to 255).
    """

    def __init__(
        self,
        num_samples: int,
        selective: bool = True,
        regions: tuple[int, ...] = (1, 3),
        max_group_size: int = 2,
        four_way_selection: str = "robust",
        threshold_average: str = "pooled",
        region1_rule: str = "l_mid",
        region3_rule: str = "increase",
        region3_increases: int = 1,
        region3_epochs: int = 1,
    ):
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}; pass len(train_dataset).")
        if not isinstance(selective, (bool, np.bool_)):
            raise ValueError(f"selective must be a bool, got {selective!r}; pass True (InterTrain) or False (naive).")
        try:
            regions_t = tuple(sorted(int(r) for r in regions))
        except (TypeError, ValueError):
            raise ValueError(f"regions must be a tuple of ints, got {regions!r}; pass (1, 3) or (1,).") from None
        if not regions_t or len(set(regions_t)) != len(regions_t) or not set(regions_t) <= set(_VALID_REGIONS):
            raise ValueError(f"regions must be a non-empty subset of {_VALID_REGIONS} without repeats, got {regions!r}; pass (1, 3), (1,) or (3,).")
        if isinstance(max_group_size, bool) or max_group_size not in _GROUP_SIZES:
            raise ValueError(f"max_group_size must be 2 or 4, got {max_group_size!r}; pass 2 (pairs, the paper) or 4 (4-way composites).")
        if max_group_size == 4 and not selective:
            raise ValueError("max_group_size=4 needs selective=True: 4-way composites are chosen from the amenability records; use selective interpolation or pairs.")
        self.num_samples = int(num_samples)
        self.selective = bool(selective)
        self.regions = regions_t
        if four_way_selection not in FOUR_WAY_SELECTIONS:
            raise ValueError(f"four_way_selection must be one of {FOUR_WAY_SELECTIONS}, got {four_way_selection!r}; pass 'robust' (default) or 'region1' (ablation).")
        self.max_group_size = int(max_group_size)
        self.four_way_selection = str(four_way_selection)
        _check_rules(self.selective, self.regions, self.max_group_size, threshold_average, region1_rule, region3_rule, region3_increases, region3_epochs)
        self.threshold_average = str(threshold_average)
        self.region1_rule = str(region1_rule)
        self.region3_rule = str(region3_rule)
        self.region3_increases = int(region3_increases)
        self.region3_epochs = int(region3_epochs)
        self.epoch = 0
        self._revision = 0
        n = self.num_samples
        self._reason = np.full(n, NOT_INTERPOLATED if self.selective else NAIVE, dtype=np.int8)
        self._last_loss = np.full(n, np.nan, dtype=np.float32)
        self._prev_noint_loss = np.full(n, np.nan, dtype=np.float32)
        self._quad = np.zeros(n, dtype=np.bool_)
        # S_noInt losses of completed epochs, per class, in every reading of the running average.
        self._averages = ThresholdAverages()
        # Consecutive increases of the non-interpolated loss, and epochs left in a Region-3 period.
        self._increases = np.zeros(n, dtype=np.uint8)
        self._region3_left = np.zeros(n, dtype=np.uint8)
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
        """Read-only int8 membership code per sample for the current epoch (see module constants)."""
        return _read_only(self._reason)

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
        return self._reason != NOT_INTERPOLATED

    @property
    def increases(self) -> np.ndarray:
        """Read-only uint8 count of consecutive increases of each sample's non-interpolated loss."""
        return _read_only(self._increases)

    def s_int_indices(self, reason: int | None = None) -> np.ndarray:
        """Sorted int64 indices of S_int(current epoch), or of its members with one reason code.

        Args:
            reason: None for all of S_int; `REGION_1`, `REGION_3` or `NAIVE` for the members in
                S_int for that reason (e.g. a sampler that treats Region 3 apart, paper Table 4).
        """
        if reason is None:
            return np.flatnonzero(self._reason != NOT_INTERPOLATED).astype(np.int64, copy=False)
        if isinstance(reason, bool) or reason not in _REASONS:
            raise ValueError(f"reason must be one of REGION_1, NAIVE, REGION_3 {_REASONS} or None, got {reason!r}; use s_noint_indices() for S_noInt.")
        return np.flatnonzero(self._reason == reason).astype(np.int64, copy=False)

    @property
    def in_four_way(self) -> np.ndarray:
        """Read-only bool per sample: S_int member marked for a 4-way composite this epoch."""
        return _read_only(self._quad)

    def s_int_four_way_indices(self) -> np.ndarray:
        """Sorted int64 indices of the S_int members marked for 4-way composites."""
        return np.flatnonzero(self._quad).astype(np.int64, copy=False)

    def s_int_pair_indices(self) -> np.ndarray:
        """Sorted int64 indices of the S_int members to pair (S_int minus the 4-way members)."""
        return np.flatnonzero((self._reason != NOT_INTERPOLATED) & ~self._quad).astype(np.int64, copy=False)

    def s_noint_indices(self) -> np.ndarray:
        """Sorted int64 indices of S_noInt(current epoch)."""
        return np.flatnonzero(self._reason == NOT_INTERPOLATED).astype(np.int64, copy=False)

    def averages(self, kind: str | None = None) -> tuple[float, float, float]:
        """(L_corr, L_incorr, L_mid) over the S_noInt records of all completed epochs.

        docs/method.md, "Thresholds". Each is NaN while undefined; L_mid is NaN unless both others
        are defined.

        Args:
            kind: One of `THRESHOLD_AVERAGES` (see the class's "Threshold averages"); None for
                the configured `threshold_average`, the one the decisions use.
        """
        l_corr, l_incorr, _ = self._means(kind)
        return l_corr, l_incorr, float(0.5 * (l_corr + l_incorr))

    def average_loss(self, kind: str | None = None) -> float:
        """L_avg: the average loss of all S_noInt records of completed epochs, averaged like `averages`.

        The threshold of `region1_rule="avg_loss"` (paper Sec. 7.7); NaN while undefined.
        """
        return self._means(kind)[2]

    def _means(self, kind: str | None) -> tuple[float, float, float]:
        return self._averages.means(self.threshold_average if kind is None else kind)

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
        epochs 0 .. E-1 (of the configured `threshold_average`); membership of E + 1 under the
        configured rules; then E's S_noInt records join the averages and each sample's last
        losses are updated; the buffers are cleared and `epoch` becomes E + 1.

        Returns:
            The summary of epoch E for logging.
        """
        n = self.num_samples
        reason = self._reason
        recorded = self._count > 0
        loss = np.full(n, np.nan, dtype=np.float32)
        np.divide(self._loss_sum, self._count, out=loss, where=recorded, casting="unsafe")
        was_noint = reason == NOT_INTERPOLATED
        noint_rec = was_noint & recorded
        is_correct = 2 * self._correct_count >= self._count  # Majority; a tie counts as correct.
        increases = self._next_increases(loss, noint_rec)

        l_corr, l_incorr, l_mid = self.averages()
        l_avg = self.average_loss()
        defined = not math.isnan(l_mid)
        counts = [0, 0, 0]
        next_reason = np.full(n, NOT_INTERPOLATED if self.selective else NAIVE, dtype=np.int8)
        next_quad = np.zeros(n, dtype=np.bool_)
        next_left = np.zeros(n, dtype=np.uint8)
        if defined:
            if self.region1_rule == "l_mid":
                in_r1 = loss < l_mid  # NaN (unrecorded) compares False everywhere.
            elif self.region1_rule == "avg_loss":
                in_r1 = loss < l_avg
            else:
                in_r1 = recorded & is_correct
            in_r3 = loss > l_incorr
            in_r3 &= ~in_r1
            counts[0] = int(np.count_nonzero(in_r1))
            counts[2] = int(np.count_nonzero(in_r3))
            counts[1] = int(np.count_nonzero(recorded)) - counts[0] - counts[2]
            if self.selective and 1 in self.regions:
                # S_noInt admitted by Region 1, and Region-1 members that stay in Region 1.
                next_reason[in_r1 & (was_noint | (reason == REGION_1))] = REGION_1
                if self.max_group_size == 4:
                    bar = l_corr if self.four_way_selection == "robust" else l_mid
                    next_quad = (reason == REGION_1) & (next_reason == REGION_1) & (loss < bar)
            if self.selective and 3 in self.regions:
                admitted = in_r3 & was_noint
                if self.region3_rule == "increase":
                    admitted &= increases >= self.region3_increases  # Unknown previous loss: no increase.
                next_reason[admitted] = REGION_3
                next_left[admitted] = self.region3_epochs
                increases[admitted] = 0
        staying = (reason == REGION_3) & (self._region3_left > 1)  # In a Region-3 period, recorded or not.
        next_reason[staying] = REGION_3
        next_left[staying] = self._region3_left[staying] - 1

        below = [math.nan, math.nan]
        for slot, mask in enumerate((noint_rec & is_correct, noint_rec & ~is_correct)):
            total = int(np.count_nonzero(mask))
            if defined and total:
                below[slot] = int(np.count_nonzero(mask & (loss < l_mid))) / total
        next_noint = next_reason == NOT_INTERPOLATED

        classes = (noint_rec & is_correct, noint_rec & ~is_correct)
        self._averages.fold(
            [loss[mask].sum(dtype=np.float64) for mask in classes], [int(np.count_nonzero(mask)) for mask in classes]
        )
        np.copyto(self._last_loss, loss, where=recorded)
        np.copyto(self._prev_noint_loss, loss, where=noint_rec)

        summary = EpochSummary(
            epoch=self.epoch,
            num_recorded=int(np.count_nonzero(recorded)),
            num_interpolated=n - int(np.count_nonzero(was_noint)),
            region_1=counts[0],
            region_2=counts[1],
            region_3=counts[2],
            l_corr=l_corr,
            l_incorr=l_incorr,
            l_mid=l_mid,
            next_interpolated=n - int(np.count_nonzero(next_noint)),
            num_four_way=int(np.count_nonzero(self._quad)),
            next_four_way=int(np.count_nonzero(next_quad)),
            l_avg=l_avg,
            correct_below_l_mid=below[0],
            incorrect_below_l_mid=below[1],
            admitted_region_1=int(np.count_nonzero(was_noint & (next_reason == REGION_1))),
            admitted_region_3=int(np.count_nonzero(was_noint & (next_reason == REGION_3))),
            left_s_int=int(np.count_nonzero(~was_noint & next_noint)),
        )
        self._reason = next_reason
        self._quad = next_quad
        self._increases = increases
        self._region3_left = next_left
        self._loss_sum.fill(0)
        self._correct_count.fill(0)
        self._count.fill(0)
        self.epoch += 1
        self._revision += 1
        return summary

    def _next_increases(self, loss: np.ndarray, noint_rec: np.ndarray) -> np.ndarray:
        """Consecutive-increase counts after this epoch's S_noInt records (see "Ablations")."""
        increases = self._increases.copy()
        up = noint_rec & (loss > self._prev_noint_loss)  # Unknown previous loss: False.
        increases[noint_rec & ~up] = 0
        increases[up] = np.minimum(increases[up], _MAX_STREAK - 1) + 1
        return increases

    # ----------------------------------------------------------------------------------------
    # Checkpointing
    # ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to resume, as numpy arrays only (savable with `safetensors.numpy`).

        Settings (`num_samples`, `selective`, `regions`, `max_group_size`, and the threshold
        settings as int codes: the index into `THRESHOLD_AVERAGES`, `REGION1_RULES`,
        `REGION3_RULES`) are included so that a checkpoint of a different dataset or method is
        refused by `load_state_dict`.
        """
        return {
            "num_samples": np.array([self.num_samples], dtype=np.int64),
            "selective": np.array([self.selective], dtype=np.bool_),
            "regions": np.array(self.regions, dtype=np.int64),
            "max_group_size": np.array([self.max_group_size], dtype=np.int64),
            "threshold_average": np.array([THRESHOLD_AVERAGES.index(self.threshold_average)], dtype=np.int64),
            "region1_rule": np.array([REGION1_RULES.index(self.region1_rule)], dtype=np.int64),
            "region3_rule": np.array([REGION3_RULES.index(self.region3_rule)], dtype=np.int64),
            "region3_increases": np.array([self.region3_increases], dtype=np.int64),
            "region3_epochs": np.array([self.region3_epochs], dtype=np.int64),
            "epoch": np.array([self.epoch], dtype=np.int64),
            "reason": self._reason.copy(),
            "in_four_way": self._quad.copy(),
            "last_loss": self._last_loss.copy(),
            "prev_noint_loss": self._prev_noint_loss.copy(),
            **self._averages.state_dict(),
            "increases": self._increases.copy(),
            "region3_left": self._region3_left.copy(),
            "epoch_loss_sum": self._loss_sum.copy(),
            "epoch_correct_count": self._correct_count.copy(),
            "epoch_count": self._count.copy(),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore a `state_dict`, refusing one of another dataset size or other settings.

        States saved before the threshold settings existed load as the defaults ("pooled", the
        L_mid and increase rules, k = m = 1) with empty non-pooled averages and zero increase
        counts; their Region-3 members leave S_int after this epoch, as they did then.

        Raises:
            ValueError: When a key is missing, or num_samples, selective, regions, max_group_size
                or a threshold setting differ.
        """
        n = self.num_samples
        # States saved before 4-way composites existed: pairs only; "in_quads" is the older name of "in_four_way".
        state = dict(state)
        if "in_quads" in state:
            state.setdefault("in_four_way", state.pop("in_quads"))
        state = {"max_group_size": np.array([2]), "in_four_way": np.zeros(n, dtype=np.bool_), **state}
        if "reason" in state:  # States saved before the threshold settings existed: the defaults.
            region3_left = (np.asarray(state["reason"]) == REGION_3).astype(np.uint8)
            defaults = {
                "threshold_average": np.array([0]), "region1_rule": np.array([0]), "region3_rule": np.array([0]),
                "region3_increases": np.array([1]), "region3_epochs": np.array([1]),
                "epoch_mean_sum": np.zeros(3), "epoch_mean_count": np.zeros(3, dtype=np.int64),
                "ema_mean": np.full(3, np.nan), "last_epoch_mean": np.full(3, np.nan),
                "increases": np.zeros(n, dtype=np.uint8), "region3_left": region3_left,
            }
            state = {**defaults, **state}
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise ValueError(f"tracker state is missing {missing}; load a state saved by AmenabilityTracker.state_dict().")
        num_samples = int(np.asarray(state["num_samples"]).reshape(-1)[0])
        if num_samples != self.num_samples:
            raise ValueError(f"tracker state has num_samples={num_samples} but this tracker has {self.num_samples}; resume with the same training set or start a new run.")
        selective = bool(np.asarray(state["selective"]).reshape(-1)[0])
        regions = tuple(int(r) for r in np.asarray(state["regions"]).reshape(-1))
        if selective != self.selective or regions != self.regions:
            raise ValueError(f"tracker state has selective={selective}, regions={regions} but this tracker has selective={self.selective}, regions={self.regions}; resume with the same interpolation settings.")
        max_group_size = int(np.asarray(state["max_group_size"]).reshape(-1)[0])
        if max_group_size != self.max_group_size:
            raise ValueError(f"tracker state has max_group_size={max_group_size} but this tracker has {self.max_group_size}; resume with the same four_way setting.")
        for key, choices in (("threshold_average", THRESHOLD_AVERAGES), ("region1_rule", REGION1_RULES), ("region3_rule", REGION3_RULES)):
            code = int(np.asarray(state[key]).reshape(-1)[0])
            if not 0 <= code < len(choices):
                raise ValueError(f"tracker state has {key} code {code}, not an index into {choices}; the checkpoint is corrupt, start a new run.")
            if choices[code] != getattr(self, key):
                raise ValueError(f"tracker state has {key}={choices[code]!r} but this tracker has {getattr(self, key)!r}; resume with the same {key}.")
        for key in ("region3_increases", "region3_epochs"):
            value = int(np.asarray(state[key]).reshape(-1)[0])
            if value != getattr(self, key):
                raise ValueError(f"tracker state has {key}={value} but this tracker has {getattr(self, key)}; resume with the same {key}.")
        per_sample = {
            "reason": np.int8, "in_four_way": np.bool_, "last_loss": np.float32, "prev_noint_loss": np.float32,
            "epoch_loss_sum": np.float32, "epoch_correct_count": np.int32, "epoch_count": np.int32,
            "increases": np.uint8, "region3_left": np.uint8,
        }
        for key in per_sample:
            if np.asarray(state[key]).shape != (self.num_samples,):
                raise ValueError(f"tracker state {key!r} has shape {np.asarray(state[key]).shape}, expected ({self.num_samples},); the checkpoint is corrupt, start a new run.")
        averages = ThresholdAverages()
        averages.load_state_dict(state)
        self.epoch = int(np.asarray(state["epoch"]).reshape(-1)[0])
        self._reason = np.array(state["reason"], dtype=np.int8)
        self._quad = np.array(state["in_four_way"], dtype=np.bool_) & (self._reason != NOT_INTERPOLATED)
        self._last_loss = np.array(state["last_loss"], dtype=np.float32)
        self._prev_noint_loss = np.array(state["prev_noint_loss"], dtype=np.float32)
        self._averages = averages
        self._increases = np.array(state["increases"], dtype=np.uint8)
        self._region3_left = np.array(state["region3_left"], dtype=np.uint8) * (self._reason == REGION_3)
        self._loss_sum = np.array(state["epoch_loss_sum"], dtype=np.float32)
        self._correct_count = np.array(state["epoch_correct_count"], dtype=np.int32)
        self._count = np.array(state["epoch_count"], dtype=np.int32)
        self._revision += 1

    # ----------------------------------------------------------------------------------------
    def _check_indices(self, indices: np.ndarray, name: str) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.size == 0:
            return idx.astype(np.int64)
        if idx.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer array, got dtype {idx.dtype}; pass dataset indices.")
        if idx.min() < 0 or idx.max() >= self.num_samples:
            raise ValueError(f"{name} must lie in [0, {self.num_samples}), got values in [{idx.min()}, {idx.max()}]; pass indices of this training set.")
        return idx.astype(np.int64, copy=False)


def _check_rules(
    selective: bool,
    regions: tuple[int, ...],
    max_group_size: int,
    threshold_average: str,
    region1_rule: str,
    region3_rule: str,
    region3_increases: int,
    region3_epochs: int,
) -> None:
    """Refuse invalid threshold settings and combinations that cannot take effect (see "Ablations")."""
    for name, value, choices in (
        ("threshold_average", threshold_average, THRESHOLD_AVERAGES),
        ("region1_rule", region1_rule, REGION1_RULES),
        ("region3_rule", region3_rule, REGION3_RULES),
    ):
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}; pass {choices[0]!r} (the method) or an ablation from the list.")
    for name, value in (("region3_increases", region3_increases), ("region3_epochs", region3_epochs)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= _MAX_STREAK:
            raise ValueError(f"{name} must be an int in [1, {_MAX_STREAK}], got {value!r}; pass 1 (the method) or the paper's k = 2 or 3.")
    changed = [
        name
        for name, value, default in (
            ("threshold_average", threshold_average, "pooled"),
            ("region1_rule", region1_rule, "l_mid"),
            ("region3_rule", region3_rule, "increase"),
            ("region3_increases", region3_increases, 1),
            ("region3_epochs", region3_epochs, 1),
        )
        if value != default
    ]
    if not selective and changed:
        raise ValueError(f"{', '.join(changed)} {_need(changed)} selective=True: naive interpolation judges no sample; leave them at their defaults or use selective interpolation.")
    if 1 not in regions and region1_rule != "l_mid":
        raise ValueError(f"region1_rule={region1_rule!r} needs Region 1 in regions, got {regions}; pass regions=(1,) or (1, 3), or leave region1_rule='l_mid'.")
    region3_settings = [name for name in changed if name.startswith("region3")]
    if 3 not in regions and region3_settings:
        raise ValueError(f"{', '.join(region3_settings)} {_need(region3_settings)} Region 3 in regions, got {regions}; pass regions=(1, 3) or (3,), or leave them at their defaults.")
    if region3_rule == "l_incorr" and region3_increases != 1:
        raise ValueError(f"region3_increases={region3_increases} has no effect with region3_rule='l_incorr', which drops the increase test; pass region3_rule='increase' or region3_increases=1.")
    if max_group_size == 4 and (1 not in regions or region1_rule != "l_mid"):
        raise ValueError(f"max_group_size=4 needs Region 1 with region1_rule='l_mid' (4-way members are chosen among Region-1 members by their loss), got regions={regions}, region1_rule={region1_rule!r}; use pairs or the L_mid Region 1.")


def _need(names: list[str]) -> str:
    return "needs" if len(names) == 1 else "need"


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
