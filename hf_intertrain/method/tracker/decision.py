"""The end-of-epoch decision: which samples are in S_int for the next epoch, and why.

docs/method.md, "Selective interpolation" (the regions and the membership table), "Four-way composites" and
"Ablations". `judge` reads one epoch's records against the thresholds of the epochs before it, `decide` turns that
into the next epoch's membership under a `TrackerRules`, and `summarize` counts what happened. What puts a sample
in Region 1, and what admits a Region-3 sample, are small tables from a rule's name to its function
(`REGION1_RULES`, `REGION3_RULES`): the flags' choices and the checks of `TrackerRules` come from their keys.

Choices where the spec is silent (docs/method.md, "Choices where the paper is silent"):

- One record per sample per epoch. A sample recorded several times in one epoch (a distributed sampler padding
  with duplicates) counts once, with its mean loss and the majority correctness; a tie counts as correct.
- Undefined averages (no correct or no incorrect S_noInt observation pooled yet, which includes every judgement
  after epoch 0): nobody is judged, under every rule, and everybody is in S_noInt for the next epoch; region
  counts are 0. So each ablation starts interpolating in the same epoch as the method and changes one thing.
- A sample without a record in the epoch goes to S_noInt for the next epoch (its previous losses are kept). This
  is also how the "skipping instead of interpolating" ablation (paper Sec. 7.8, Table 4) treats a skipped sample,
  with k = 1: a skipped Region-1 sample is trained and judged again after one epoch, and a skipped Region-3
  sample's next loss is compared with its loss before the skip. The exception is a Region-3 member inside a
  period of `region3_epochs` > 1: it keeps its place unrecorded.
- If L_corr > L_incorr, Regions 1 and 3 overlap; Region 1 wins, so the regions stay a partition of the recorded
  samples.
- Naive mode (`selective=False`): every sample is in S_int in every epoch with reason code `NAIVE`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .summary import EpochSummary

if TYPE_CHECKING:
    from .rules import TrackerRules

# Membership codes of `AmenabilityTracker.reason`.
NOT_INTERPOLATED = 0
"""In S_noInt: trained as a single."""
REGION_1 = 1
"""In S_int because its loss was in Region 1 (l < L_mid)."""
NAIVE = 2
"""In S_int because the tracker runs naive interpolation (`selective=False`)."""
REGION_3 = 3
"""In S_int because its loss was in Region 3 (l > L_incorr) and increased."""

REASONS = (REGION_1, NAIVE, REGION_3)
"""The codes of S_int members."""

MAX_STREAK = 255
"""uint8 per-sample counters (`increases`, `region3_left`) saturate here."""


class Records(NamedTuple):
    """One epoch's records, one observation per sample."""

    loss: np.ndarray
    """float32 mean loss of each sample's records, NaN where it has none."""
    recorded: np.ndarray
    """Whether the sample has a record."""
    correct: np.ndarray
    """Majority correctness of its records (a tie counts as correct; True where unrecorded)."""

    @classmethod
    def of(cls, loss_sum: np.ndarray, correct_count: np.ndarray, count: np.ndarray) -> Records:
        """From the tracker's epoch buffers."""
        recorded = count > 0
        loss = np.full(loss_sum.shape, np.nan, dtype=np.float32)
        np.divide(loss_sum, count, out=loss, where=recorded, casting="unsafe")
        return cls(loss, recorded, 2 * correct_count >= count)


class Thresholds(NamedTuple):
    """The thresholds of docs/method.md, "Thresholds", from the epochs before the judged one; NaN while undefined."""

    l_corr: float
    l_incorr: float
    l_mid: float
    l_avg: float


class Rule(NamedTuple):
    """A named choice of `TrackerRules`: its function and the one line that describes it in the flag's help."""

    applies: Callable[..., np.ndarray]
    description: str


def _below_l_mid(records: Records, thresholds: Thresholds) -> np.ndarray:
    """Region 1 is l < L_mid (the method). NaN (unrecorded) compares False."""
    return records.loss < thresholds.l_mid


def _classified_correctly(records: Records, thresholds: Thresholds) -> np.ndarray:
    """Region 1 is the samples classified correctly (paper Table 3, "Threshold = Accuracy"): an interpolated member
    stays while its interpolated record is correct, the analogue of staying below L_mid."""
    return records.recorded & records.correct


def _below_l_avg(records: Records, thresholds: Thresholds) -> np.ndarray:
    """Region 1 is l < L_avg, the running average loss of all S_noInt observations (Table 3, "Threshold = Average
    Loss"): one threshold, and a member stays while its interpolated loss stays below it."""
    return records.loss < thresholds.l_avg


REGION1_RULES: dict[str, Rule] = {
    "l_mid": Rule(_below_l_mid, "loss below L_mid, the method"),
    "accuracy": Rule(_classified_correctly, "classified correctly"),
    "avg_loss": Rule(_below_l_avg, "loss below the running average loss"),
}
"""What puts a recorded sample in Region 1: `region1_rule`, the first entry the method."""


def _increased(candidates: np.ndarray, increases: np.ndarray, rules: TrackerRules) -> np.ndarray:
    """Region 3 admits a sample after `region3_increases` (k) consecutive increases of its non-interpolated loss (the
    method: k = 1; Sec. 3.2, Fig. 8b and Sec. 7.8 for k > 1). See `count_increases`; an unknown previous loss is no
    increase. The increases need not all lie in Region 3; the last record must."""
    return candidates & (increases >= rules.region3_increases)


def _above_l_incorr(candidates: np.ndarray, increases: np.ndarray, rules: TrackerRules) -> np.ndarray:
    """Every S_noInt sample with l > L_incorr outside Region 1 is admitted, without the increase test (Table 3,
    "Region 1 and threshold = Lincorr for Region 3")."""
    return candidates


REGION3_RULES: dict[str, Rule] = {
    "increase": Rule(_increased, "loss above L_incorr that increased, the method"),
    "l_incorr": Rule(_above_l_incorr, "loss above L_incorr alone, an ablation"),
}
"""What admits a Region-3 sample (l > L_incorr, outside Region 1, in S_noInt): `region3_rule`, the first entry the
method."""


def describe(table: dict[str, Rule]) -> str:
    """The choices of a table for a flag's help: "'a' (what a does), 'b' (...) or 'c' (...)"."""
    *first, last = [f"'{name}' ({rule.description})" for name, rule in table.items()]
    return f"{', '.join(first)} or {last}" if first else last


class Judgement(NamedTuple):
    """One epoch's records against the thresholds of the epochs before it."""

    records: Records
    thresholds: Thresholds
    region_1: np.ndarray
    """In Region 1 under `region1_rule`; nobody while L_mid is undefined."""
    region_3: np.ndarray
    """l > L_incorr outside Region 1; nobody while L_mid is undefined."""

    @property
    def defined(self) -> bool:
        return not math.isnan(self.thresholds.l_mid)


def judge(rules: TrackerRules, records: Records, thresholds: Thresholds) -> Judgement:
    """The regions of an epoch's records (Region 2 is the rest of the recorded samples)."""
    if math.isnan(thresholds.l_mid):
        nobody = np.zeros(records.loss.shape, dtype=np.bool_)
        return Judgement(records, thresholds, nobody, nobody)
    region_1 = REGION1_RULES[rules.region1_rule].applies(records, thresholds)
    return Judgement(records, thresholds, region_1, (records.loss > thresholds.l_incorr) & ~region_1)


class Membership(NamedTuple):
    """The per-sample arrays the decision rewrites every epoch."""

    reason: np.ndarray
    """int8 membership code (`NOT_INTERPOLATED`, `REGION_1`, `NAIVE`, `REGION_3`)."""
    four_way: np.ndarray
    """bool: S_int member marked for a 4-way composite."""
    region3_left: np.ndarray
    """uint8 epochs left in a Region-3 member's period (`region3_epochs`)."""
    increases: np.ndarray
    """uint8 consecutive increases of the non-interpolated loss."""


def count_increases(increases: np.ndarray, prev_noint_loss: np.ndarray, records: Records, noint: np.ndarray) -> np.ndarray:
    """Consecutive-increase counts after this epoch's S_noInt records (`noint`): up by one for a record above the
    sample's previous non-interpolated loss, back to 0 for any other S_noInt record; epochs in S_int or without a
    record are passed over, as `prev_noint_loss` is."""
    increases = increases.copy()
    up = noint & (records.loss > prev_noint_loss)  # Unknown previous loss: False.
    increases[noint & ~up] = 0
    increases[up] = np.minimum(increases[up], MAX_STREAK - 1) + 1
    return increases


def decide(rules: TrackerRules, judgement: Judgement, now: Membership, prev_noint_loss: np.ndarray) -> Membership:
    """The membership of epoch E + 1 from epoch E's judgement (docs/method.md, "Selective interpolation").

    - S_noInt samples in Region 1, and Region-1 members that stay in Region 1, are in S_int (if 1 in `regions`).
    - Four-way selection (`max_group_size=4`; docs/method.md, "Four-way composites"): a sample is marked for a
      4-way composite only if it was interpolated in epoch E because of Region 1 (as a pair or a 4-way
      constituent), stays in Region 1, and its interpolated loss is below L_corr (still as easy as a typical
      sample the network gets right without interpolation); `four_way_selection="region1"` drops that bar. New
      entrants and Region-3 members start as pairs, a 4-way member in [L_corr, L_mid) goes back to pairs, and one
      at L_mid or above leaves S_int as any Region-1 member does.
    - S_noInt samples in Region 3 that pass `region3_rule` are in S_int for `region3_epochs` epochs (if 3 in
      `regions`), whatever their records; admission restarts their increase count.
    """
    records = judgement.records
    was_noint = now.reason == NOT_INTERPOLATED
    increases = count_increases(now.increases, prev_noint_loss, records, was_noint & records.recorded)
    reason = np.full(now.reason.shape, NOT_INTERPOLATED if rules.selective else NAIVE, dtype=np.int8)
    four_way = np.zeros(now.reason.shape, dtype=np.bool_)
    region3_left = np.zeros(now.reason.shape, dtype=np.uint8)
    if rules.selective and 1 in rules.regions:
        reason[judgement.region_1 & (was_noint | (now.reason == REGION_1))] = REGION_1
        if rules.max_group_size == 4:
            thresholds = judgement.thresholds
            bar = thresholds.l_corr if rules.four_way_selection == "robust" else thresholds.l_mid
            four_way = (now.reason == REGION_1) & (reason == REGION_1) & (records.loss < bar)
    if rules.selective and 3 in rules.regions:
        admitted = REGION3_RULES[rules.region3_rule].applies(judgement.region_3 & was_noint, increases, rules)
        reason[admitted] = REGION_3
        region3_left[admitted] = rules.region3_epochs
        increases[admitted] = 0
    staying = (now.reason == REGION_3) & (now.region3_left > 1)  # In a Region-3 period, recorded or not.
    reason[staying] = REGION_3
    region3_left[staying] = now.region3_left[staying] - 1
    return Membership(reason, four_way, region3_left, increases)


def summarize(epoch: int, judgement: Judgement, now: Membership, next_: Membership) -> EpochSummary:
    """The `EpochSummary` of epoch `epoch`, whose membership was `now` and is `next_` in the next epoch."""
    records, thresholds = judgement.records, judgement.thresholds
    n = records.loss.size
    was_noint = now.reason == NOT_INTERPOLATED
    noint = was_noint & records.recorded
    below = [math.nan, math.nan]
    for slot, mask in enumerate((noint & records.correct, noint & ~records.correct)):
        total = int(np.count_nonzero(mask))
        if judgement.defined and total:
            below[slot] = int(np.count_nonzero(mask & (records.loss < thresholds.l_mid))) / total
    regions = [int(np.count_nonzero(judgement.region_1)), 0, int(np.count_nonzero(judgement.region_3))]
    if judgement.defined:
        regions[1] = int(np.count_nonzero(records.recorded)) - regions[0] - regions[2]
    next_noint = next_.reason == NOT_INTERPOLATED
    return EpochSummary(
        epoch=epoch,
        num_recorded=int(np.count_nonzero(records.recorded)),
        num_interpolated=n - int(np.count_nonzero(was_noint)),
        region_1=regions[0],
        region_2=regions[1],
        region_3=regions[2],
        l_corr=thresholds.l_corr,
        l_incorr=thresholds.l_incorr,
        l_mid=thresholds.l_mid,
        next_interpolated=n - int(np.count_nonzero(next_noint)),
        num_four_way=int(np.count_nonzero(now.four_way)),
        next_four_way=int(np.count_nonzero(next_.four_way)),
        l_avg=thresholds.l_avg,
        correct_below_l_mid=below[0],
        incorrect_below_l_mid=below[1],
        admitted_region_1=int(np.count_nonzero(was_noint & (next_.reason == REGION_1))),
        admitted_region_3=int(np.count_nonzero(was_noint & (next_.reason == REGION_3))),
        left_s_int=int(np.count_nonzero(~was_noint & next_noint)),
    )
