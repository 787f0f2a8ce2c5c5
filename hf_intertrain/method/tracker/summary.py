"""What a closed epoch reports: the tracker's `EpochSummary`, the plan's `PlanCounts`, and the `intertrain/*` statistics.

The trainer logs `epoch_statistics` once per epoch; the run report, the model card and `compare` read those entries
back. The statistics' names live here only (`EPOCH_STATISTICS`, `FOUR_WAY_STATISTICS`, `PREFIX`), and so does the
join of each epoch's statistics with the evaluation logged after it (`joined_epochs`). What they measure is
docs/method.md, "What the paper measures" (counts and time) and "Thresholds" (the threshold diagnostics).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

PREFIX = "intertrain/"
"""The prefix of every InterTrain statistic in `Trainer.log` (and so in `log_history`, TensorBoard, W&B)."""

REGION_COUNTS = ("region_1", "region_2", "region_3")
"""Records of the epoch per loss region (docs/method.md, "Selective interpolation")."""

EPOCH_STATISTICS = (
    "interpolated_fraction", "items", "pairs", "skipped", *REGION_COUNTS, "next_interpolated", "nonfinite_losses",
    "epoch_seconds", "l_corr", "l_incorr", "l_mid", "correct_below_l_mid", "incorrect_below_l_mid",
    "admitted_region_1", "admitted_region_3", "left_s_int",
)
"""The statistics of every epoch, in logging order (see `epoch_statistics`)."""

FOUR_WAY_STATISTICS = ("four_way_composites", "constituents_per_item", "next_four_way")
"""The statistics added with 4-way composites (docs/method.md, "Four-way composites")."""


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


class PlanCounts(NamedTuple):
    """How an epoch's plan grouped the N samples: items + pairs + 3 * four_way + skipped == num_samples
    (`four_way`: 4-way composites)."""

    num_samples: int
    items: int
    pairs: int
    four_way: int
    skipped: int

    @classmethod
    def of(cls, sampler: Any) -> PlanCounts:
        """The counts of an `InterTrainBatchSampler`'s current epoch."""
        num_samples = sampler.tracker.num_samples
        return cls(num_samples, sampler.num_items, sampler.num_pairs, sampler.num_four_way, sampler.num_skipped)

    def trained(self, update_steps_done: int, items_per_update_step: int) -> PlanCounts:
        """The counts of what was actually trained when the run stopped mid-epoch (`max_steps`, as the
        budget-matched baseline does): items beyond the last optimizer step count as skipped, so that
        `items` (and the ideal speed-up built from it) is what the run really trained."""
        trained = min(self.items, max(0, update_steps_done) * items_per_update_step)
        if trained == self.items:
            return self
        return self._replace(items=trained, skipped=self.skipped + self.items - trained)


def epoch_statistics(
    summary: EpochSummary, plan: PlanCounts, nonfinite_losses: int, seconds: float, four_way: bool = False
) -> dict[str, float]:
    """The `intertrain/*` statistics of a closed epoch, as the trainer logs them.

    `interpolated_fraction` (samples in a pair or a 4-way composite, over N), `items`, `pairs`, `skipped` (items +
    pairs + skipped == N without composites; skipped is 0 unless `amenable_action="skip"`), `region_1..3`,
    `next_interpolated` (members of S_int next epoch), `nonfinite_losses`, `epoch_seconds` (training time of the
    epoch on this process, evaluation excluded), and the threshold diagnostics of docs/method.md, "Thresholds":
    `l_corr`, `l_incorr`, `l_mid` (the thresholds that judged the epoch, NaN while undefined), the paper's Fig. 5
    efficacy over the epoch's non-interpolated records (`correct_below_l_mid`, `incorrect_below_l_mid`: fractions of
    the correct / incorrect ones below L_mid), the samples admitted to S_int through Region 1 and Region 3
    (`admitted_region_1`, `admitted_region_3`, Fig. 6) and the members leaving it (`left_s_int`, Fig. 8a). With
    `four_way` also `four_way_composites` (items + pairs + 3 * four_way_composites + skipped == N),
    `constituents_per_item` and `next_four_way`. All but the seconds are the same on every process of a
    distributed run.
    """
    num_samples = plan.num_samples
    values = {
        **summary.to_dict(),
        **plan._asdict(),
        "interpolated_fraction": (2 * plan.pairs + 4 * plan.four_way) / num_samples,
        "nonfinite_losses": nonfinite_losses,
        "epoch_seconds": seconds,
        "four_way_composites": plan.four_way,
        "constituents_per_item": (num_samples - plan.skipped) / max(1, plan.items),
    }
    names = EPOCH_STATISTICS + (FOUR_WAY_STATISTICS if four_way else ())
    return {PREFIX + name: float(values[name]) for name in names}


def joined_epochs(
    intertrain_history: list[dict[str, Any]], log_history: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each epoch's logged statistics, named without `PREFIX` ("epoch" included), with the evaluation logged after
    that epoch (the `log_history` entry with `eval_top1` at epoch + 1; None when there was none).

    Args:
        intertrain_history: `InterTrainTrainer.intertrain_history`: {"epoch": E, **epoch_statistics(...)} per epoch.
        log_history: `trainer.state.log_history`.
    """
    evals = {round(entry["epoch"]): entry for entry in log_history if "eval_top1" in entry and "epoch" in entry}
    return [
        ({key.removeprefix(PREFIX): value for key, value in stats.items()}, evals.get(int(stats["epoch"]) + 1))
        for stats in intertrain_history
    ]
