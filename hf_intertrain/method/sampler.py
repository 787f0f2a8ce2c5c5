"""Batch sampler yielding InterTrain items: singles, interpolated pairs and 4-way composites.

Implements docs/method.md, "Batch plan of an epoch". An item is `(a, b, r)`: a pair interpolates
samples a and b with a's share r; a single is `(a, -1, 1.0)`, the degenerate pair (a, a, 1).
A 4-way composite (docs/method.md, "Four-way composites") is `(a, b, r, c, d)`: four samples whose shares are drawn with the
composite's partition on the training device (r = 0.25 is only nominal).
The plan is a function of (seed, epoch, tracker state) only, so every rank of a distributed
run draws the same plan, and a resumed run redraws the plan it was in. Knows no model.

The "skipping instead of interpolating" ablation (paper Sec. 7.8, Table 4) is the same plan
with S_int left out instead of paired (`amenable_action="skip"`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

from ..constants import AMENABLE_ACTIONS
from .selection import before_final_fraction, check_selection, infobatch_selection, random_subset
from .tracker import REGION_3, AmenabilityTracker



@dataclass(frozen=True)
class PlanRules:
    """Every setting the epoch plan is drawn with, checked once when built (docs/method.md, "Batch plan of an
    epoch"). `InterTrainArguments.plan_rules()` builds it from the flags: the fields named like a flag are that flag.

    Attributes:
        batch_size: Items per batch (a pair is one item): `per_device_train_batch_size`.
        seed: Base seed; the epoch's generator is seeded with `seed + epoch` (`data_seed`, else `seed`).
        interpolate: False trains everything as singles whatever the tracker says (the baseline).
        adaptive_ratio: Pairs get r = L_a / (L_a + L_b) from the tracker (docs/method.md, "Adaptive
            interpolation") instead of `patch_ratio` (LinAvg with `adaptive_interpolation`).
        patch_ratio: a's share in every pair when `adaptive_ratio` is False, in (0, 1).
        drop_last: Drop the last batch when it has fewer than `batch_size` items (`dataloader_drop_last`).
        amenable_action: "interpolate" pairs S_int (InterTrain); "skip" leaves it out of the epoch (ablation);
            "skip_region3" leaves out the members admitted through Region 3 and pairs the rest (paper Table 4).
            Ignored when `interpolate` is False.
        data_selection: Without interpolation, which samples an epoch trains (the peer methods of `selection.py`):
            "none" (all), "random_subset" (RS2 without replacement, `subset_sizes` samples in each epoch) or
            "infobatch" (soft pruning from the tracker's last losses, with `loss_weights` for the kept well-learned
            samples). Needs `interpolate=False`.
        subset_sizes: Samples per epoch for "random_subset", one per epoch.
        infobatch_prune_probability: InfoBatch's probability of leaving a well-learned sample out.
        infobatch_full_data_fraction: InfoBatch trains every sample in this final fraction of `num_epochs`.
        num_epochs: The run's epochs; None for a run bounded by `max_steps` (InfoBatch, RS2 and
            `interpolation_off_fraction` plan whole epochs and refuse it).
        interpolation_off_fraction: The final fraction of `num_epochs` plans every sample as a single, whatever
            the tracker says, as a run without interpolation does (0: interpolate to the end, the paper).
    """

    batch_size: int
    seed: int = 0
    interpolate: bool = True
    adaptive_ratio: bool = False
    patch_ratio: float = 0.5
    drop_last: bool = False
    amenable_action: str = "interpolate"
    data_selection: str = "none"
    subset_sizes: tuple[int, ...] = ()
    infobatch_prune_probability: float = 0.5
    infobatch_full_data_fraction: float = 0.125
    num_epochs: int | None = None
    interpolation_off_fraction: float = 0.0

    def __post_init__(self):
        for name, value in (("batch_size", self.batch_size), ("seed", self.seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (1 if name == "batch_size" else 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'batch_size' else 'non-negative'} int, got {value!r}; pass per_device_train_batch_size and seed as whole numbers.")
        for name in ("interpolate", "adaptive_ratio", "drop_last"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}; pass True or False.")
        ratio = self.patch_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not 0.0 < float(ratio) < 1.0:
            raise ValueError(f"patch_ratio={ratio} must lie strictly between 0 and 1 (default 0.5)")
        if self.amenable_action not in AMENABLE_ACTIONS:
            raise ValueError(f"amenable_action={self.amenable_action!r} is not supported: use one of {', '.join(AMENABLE_ACTIONS)}")
        object.__setattr__(self, "subset_sizes", tuple(int(size) for size in self.subset_sizes or ()))
        check_selection(
            self.data_selection, self.subset_sizes, self.infobatch_prune_probability, self.infobatch_full_data_fraction,
            self.num_epochs,
        )
        if self.data_selection != "none" and self.interpolate:
            raise ValueError(
                f"data_selection={self.data_selection!r} is a peer method trained without interpolation: pass "
                "--interpolation none, or data_selection none for InterTrain"
            )
        if self.data_selection != "none" and self.num_epochs is None:
            raise ValueError(f"data_selection={self.data_selection} plans whole epochs: set num_train_epochs instead of max_steps")
        if not 0.0 <= self.interpolation_off_fraction < 1.0:
            raise ValueError(
                f"interpolation_off_fraction={self.interpolation_off_fraction} must lie in [0, 1): the final fraction of "
                "the epochs trained without interpolation (default 0, the paper)"
            )
        if self.interpolation_off_fraction > 0 and self.interpolate and self.num_epochs is None:
            raise ValueError(
                "interpolation_off_fraction stops interpolating in the final epochs: set num_train_epochs instead of "
                "max_steps, or interpolation_off_fraction 0"
            )

    def check_num_samples(self, num_samples: int) -> None:
        """Refuse a random subset larger than the training set (the one check that needs the dataset)."""
        if self.data_selection == "random_subset" and not all(1 <= size <= num_samples for size in self.subset_sizes):
            raise ValueError(f"random_subset_sizes must lie in 1..{num_samples} (the training samples), got {list(self.subset_sizes)}")


class EpochPlan(NamedTuple):
    """The items of one epoch, in training order.

    Attributes:
        item_a: int64 first constituent (or the single's sample).
        item_b: int64 second constituent, -1 for a single.
        item_r: float32 share of `item_a`; 1.0 for a single, 0.25 (nominal) for a 4-way composite.
        item_c: int64 third constituent of a 4-way composite, -1 otherwise.
        item_d: int64 fourth constituent of a 4-way composite, -1 otherwise.
    """

    item_a: np.ndarray
    item_b: np.ndarray
    item_r: np.ndarray
    item_c: np.ndarray
    item_d: np.ndarray


class InterTrainBatchSampler(Sampler[list[tuple]]):
    """Per epoch: group and pair a shuffle of S_int, add S_noInt as singles, shuffle the items, batch them.

    The draws are made from `torch.Generator().manual_seed(seed + epoch)`: first
    `randperm(|S_int|)` to pair S_int (only when there is something to pair), then
    `randperm(num_items)` over the items ordered as pairs, the odd S_int sample out (a
    single), then S_noInt in ascending index order. With nothing to pair the only draw is
    `randperm(N)` over 0 .. N-1, exactly accelerate's `SeedableRandomSampler` (what
    `transformers.Trainer` uses), so a baseline run sees the same order as a plain Trainer.

    The plan is computed lazily by `set_epoch`, `__len__` or `__iter__` and cached until the
    epoch or the tracker's `revision` changes.

    4-way composites (a tracker with `TrackerRules(max_group_size=4)`): the members the tracker marks for them
    are drawn first, with one `randperm` over them (only when there are any), and cut into
    groups of four; a remainder of 1-3 joins the members to pair, which are then paired as
    above (sorted, then one `randperm`). Items are ordered 4-way composites, pairs, the odd
    sample out, S_noInt before the final shuffle. Without marked members the draws are exactly
    those of the pair-only plan, so pair-only runs are unchanged. `__len__` therefore reflects the tracker state at
    the time it is called. The sampler never advances its epoch by itself: call `set_epoch`
    (transformers' Trainer does so every epoch).

    With `amenable_action="skip"` S_int is not trained at all in the epoch (paper Sec. 7.8,
    "skipping instead of interpolating"): the plan is S_noInt as singles, drawn with one
    `randperm(|S_noInt|)`, so `num_items + num_skipped == N` and `num_pairs == 0`. The tracker
    sends a skipped (unrecorded) sample back to S_noInt for the next epoch, which is the paper's
    "skipped for the next k epochs, after which they are trained without interpolation again"
    with k = 1. When S_int holds every sample, nothing is skipped that epoch (everything is
    trained as a single): an epoch without items would end a Trainer run.

    Args:
        tracker: Decides S_int for the tracker's current epoch.
        rules: The plan's settings (`PlanRules`), checked when they were built.
    """

    def __init__(self, tracker: AmenabilityTracker, rules: PlanRules):
        if not isinstance(tracker, AmenabilityTracker):
            raise ValueError(f"tracker must be an AmenabilityTracker, got {type(tracker).__name__}; build one with AmenabilityTracker(len(train_dataset)).")
        if not isinstance(rules, PlanRules):
            raise ValueError(f"rules must be a PlanRules, got {type(rules).__name__}; build one with PlanRules(batch_size=...) or InterTrainArguments.plan_rules().")
        rules.check_num_samples(tracker.num_samples)
        self.tracker = tracker
        self.rules = rules
        self.epoch = 0
        self._loss_weights: np.ndarray | None = None
        self._plan: EpochPlan | None = None
        self._plan_key: tuple[int, int] | None = None
        self._num_pairs = 0
        self._num_quads = 0
        self._num_skipped = 0

    @property
    def seed(self) -> int:
        """The plan's base seed (each epoch draws from `seed + epoch`)."""
        return self.rules.seed

    @property
    def batch_size(self) -> int:
        """Items per batch."""
        return self.rules.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch and make its plan (no redraw if epoch and tracker are unchanged)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}; pass the Trainer's epoch index.")
        self.epoch = int(epoch)
        self._ensure_plan()

    @property
    def plan(self) -> EpochPlan:
        """The current epoch's items (item_a, item_b, item_r, item_c, item_d) in training order."""
        return self._ensure_plan()

    @property
    def num_items(self) -> int:
        """Items in the current epoch: N - num_pairs - 3 * num_quads - num_skipped."""
        return int(self._ensure_plan().item_a.shape[0])

    @property
    def num_pairs(self) -> int:
        """Interpolated pairs in the current epoch."""
        self._ensure_plan()
        return self._num_pairs

    @property
    def num_four_way(self) -> int:
        """4-way composites in the current epoch (0 unless the tracker marks samples for them)."""
        self._ensure_plan()
        return self._num_quads

    @property
    def loss_weights(self) -> np.ndarray | None:
        """Per-sample loss weights of the current epoch (float32, length N), or None when every weight is 1.

        Only InfoBatch rescales: its kept well-learned samples weigh `1 / (1 - prune_probability)`.
        """
        self._ensure_plan()
        return self._loss_weights

    @property
    def num_skipped(self) -> int:
        """Samples left out of the current epoch (`amenable_action="skip"`, or a peer `selection`; else 0)."""
        self._ensure_plan()
        return self._num_skipped

    def __len__(self) -> int:
        num_items = self.num_items
        if self.rules.drop_last:
            return num_items // self.rules.batch_size
        return -(-num_items // self.rules.batch_size)

    def __iter__(self) -> Iterator[list[int | tuple]]:
        item_a, item_b, item_r, item_c, item_d = self._ensure_plan()
        stop = len(self) * self.rules.batch_size
        for start in range(0, min(stop, item_a.shape[0]), self.rules.batch_size):
            end = start + self.rules.batch_size
            items = list(zip(item_a[start:end].tolist(), item_b[start:end].tolist(), item_r[start:end].tolist()))
            if self._num_quads:
                for i in np.flatnonzero(item_c[start:end] >= 0).tolist():
                    items[i] = (*items[i], int(item_c[start + i]), int(item_d[start + i]))
            yield items

    def interpolates_in(self, epoch: int) -> bool:
        """Whether `epoch` may interpolate: `interpolate` is set and the epoch comes before the final
        `interpolation_off_fraction` of the run (docs/method.md, "Interpolation off at the end")."""
        if not self.rules.interpolate:
            return False
        return self.rules.interpolation_off_fraction == 0 or before_final_fraction(
            epoch, self.rules.num_epochs, self.rules.interpolation_off_fraction
        )

    # ----------------------------------------------------------------------------------------
    def _ensure_plan(self) -> EpochPlan:
        key = (self.epoch, self.tracker.revision)
        if self._plan is None or self._plan_key != key:
            self._plan, self._num_pairs, self._num_quads, self._num_skipped = self._make_plan()
            self._plan_key = key
        return self._plan

    def _make_plan(self) -> tuple[EpochPlan, int, int, int]:
        generator = torch.Generator().manual_seed(self.rules.seed + self.epoch)
        num_samples = self.tracker.num_samples
        num_skipped = 0
        quads = np.empty((4, 0), dtype=np.int64)
        if self.interpolates_in(self.epoch):
            s_int = self.tracker.s_int_indices()
            noint = self.tracker.s_noint_indices()
            marked = self.tracker.s_int_four_way_indices()
            if marked.size and self.rules.amenable_action == "interpolate":
                marked = marked[torch.randperm(marked.size, generator=generator).numpy()]
                num_quads = marked.size // 4
                quads = marked[: 4 * num_quads].reshape(num_quads, 4).T
                s_int = np.sort(np.concatenate([self.tracker.s_int_pair_indices(), marked[4 * num_quads :]]))
            if self.rules.amenable_action == "skip":
                if noint.size == 0:
                    noint = np.arange(num_samples, dtype=np.int64)
                else:
                    num_skipped = int(s_int.size)
                s_int = np.empty(0, dtype=np.int64)
            elif self.rules.amenable_action == "skip_region3":
                region3 = self.tracker.s_int_indices(reason=REGION_3)
                if region3.size < num_samples:
                    s_int = np.setdiff1d(s_int, region3, assume_unique=True)
                    num_skipped = int(region3.size)
        else:
            s_int = np.empty(0, dtype=np.int64)
            noint = self._selected_samples(generator)
            num_skipped = num_samples - int(noint.size)
        if s_int.size > 0:
            shuffled = s_int[torch.randperm(s_int.size, generator=generator).numpy()]
        else:
            shuffled = s_int
        num_pairs = shuffled.size // 2
        pair_a = shuffled[0 : 2 * num_pairs : 2]
        pair_b = shuffled[1 : 2 * num_pairs : 2]
        if self.rules.adaptive_ratio:
            pair_r = self.tracker.adaptive_ratio(pair_a, pair_b)
        else:
            pair_r = np.full(num_pairs, self.rules.patch_ratio, dtype=np.float32)
        singles = np.concatenate([shuffled[2 * num_pairs :], noint])

        num_quads = quads.shape[1]
        num_groups = num_quads + num_pairs
        num_items = num_groups + singles.size
        order = torch.randperm(num_items, generator=generator).numpy()
        # Same result as gathering the concatenated items with `order`, with fewer random
        # gathers over tens of millions of entries: singles have b = -1 and r = 1.
        if num_groups == 0:
            item_a = order if singles.size == num_samples else singles[order]
        else:
            item_a = np.concatenate([quads[0], pair_a, singles])[order]
        item_b = np.full(num_items, -1, dtype=np.int64)
        item_r = np.ones(num_items, dtype=np.float32)
        item_c = np.full(num_items, -1, dtype=np.int64)
        item_d = np.full(num_items, -1, dtype=np.int64)
        if num_groups:
            is_group = order < num_groups
            from_group = order[is_group]
            item_b[is_group] = np.concatenate([quads[1], pair_b])[from_group]
            item_r[is_group] = np.concatenate([np.full(num_quads, 0.25, dtype=np.float32), pair_r])[from_group]
        if num_quads:
            is_quad = order < num_quads
            item_c[is_quad] = quads[2][order[is_quad]]
            item_d[is_quad] = quads[3][order[is_quad]]
        return EpochPlan(item_a, item_b, item_r, item_c, item_d), num_pairs, num_quads, num_skipped


    def _selected_samples(self, generator: torch.Generator) -> np.ndarray:
        """The samples a run without interpolation trains this epoch (all of them unless a peer selection is set).

        "none" draws nothing here, so the baseline's only draw stays `randperm(N)`; "infobatch" draws its pruning
        coins from the epoch's generator before the final shuffle.
        """
        self._loss_weights = None
        num_samples = self.tracker.num_samples
        if self.rules.data_selection == "random_subset":
            return np.sort(random_subset(num_samples, self.rules.subset_sizes, self.epoch, self.rules.seed))
        if self.rules.data_selection == "infobatch" and before_final_fraction(self.epoch, self.rules.num_epochs, self.rules.infobatch_full_data_fraction):
            kept, weights = infobatch_selection(self.tracker.last_loss, self.rules.infobatch_prune_probability, generator)
            self._loss_weights = weights
            return kept
        return np.arange(num_samples, dtype=np.int64)
