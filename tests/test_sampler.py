import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from accelerate.data_loader import SeedableRandomSampler

from hf_intertrain.method.sampler import InterTrainBatchSampler, PlanRules
from hf_intertrain.method.tracker import REGION_1, REGION_3, AmenabilityTracker, TrackerRules


def tracker_with_s_int(num_samples: int, s_int: list[int]) -> AmenabilityTracker:
    """A tracker in epoch 2 whose S_int is exactly `s_int` (Region 1), built through its rules."""
    tracker = AmenabilityTracker(num_samples)
    correct = np.arange(num_samples) % 2 == 0
    losses = np.where(correct, 1.0, 3.0)  # L_corr = 1, L_incorr = 3, L_mid = 2.
    tracker.record(np.arange(num_samples), losses, correct)
    tracker.end_epoch()
    losses = np.full(num_samples, 2.5)
    losses[s_int] = 0.1 + 0.1 * np.arange(len(s_int))  # Distinct losses for the adaptive ratio.
    tracker.record(np.arange(num_samples), losses, correct)
    tracker.end_epoch()
    assert tracker.s_int_indices().tolist() == sorted(s_int)
    return tracker


def samples_seen(batches: list[list[tuple[int, int, float]]]) -> list[int]:
    seen = []
    for batch in batches:
        for a, b, _ in batch:
            seen.append(a)
            if b >= 0:
                seen.append(b)
    return seen


def test_every_sample_appears_exactly_once_per_epoch():
    tracker = tracker_with_s_int(23, [1, 4, 5, 8, 9, 13, 17, 20, 22])
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, seed=3))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(samples_seen(batches)) == list(range(23))
        assert len(batches) == len(sampler)


def test_items_plus_pairs_equals_num_samples_and_pairs_come_from_s_int():
    s_int = [0, 2, 3, 7, 11, 12]
    tracker = tracker_with_s_int(15, s_int)
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=5))
    sampler.set_epoch(2)
    assert sampler.num_pairs == 3
    assert sampler.num_items + sampler.num_pairs == 15
    plan = sampler.plan
    pairs = plan.item_b >= 0
    assert sorted(np.concatenate([plan.item_a[pairs], plan.item_b[pairs]]).tolist()) == s_int
    assert (plan.item_r[~pairs] == 1.0).all() and (plan.item_r[pairs] == 0.5).all()
    assert plan.item_a.dtype == np.int64 and plan.item_b.dtype == np.int64 and plan.item_r.dtype == np.float32


def test_odd_s_int_sample_becomes_a_single():
    s_int = [1, 3, 6, 9, 10]
    tracker = tracker_with_s_int(12, s_int)
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=3))
    sampler.set_epoch(2)
    plan = sampler.plan
    assert sampler.num_pairs == 2 and sampler.num_items == 10
    constituents = set(plan.item_a[plan.item_b >= 0].tolist()) | set(plan.item_b[plan.item_b >= 0].tolist())
    odd = set(s_int) - constituents
    assert len(odd) == 1
    (odd_sample,) = odd
    position = plan.item_a.tolist().index(odd_sample)
    assert plan.item_b[position] == -1 and plan.item_r[position] == 1.0


def test_plan_is_deterministic_for_same_seed_epoch_and_tracker():
    tracker = tracker_with_s_int(30, list(range(0, 30, 3)))
    first = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, seed=7))
    second = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, seed=7))
    first.set_epoch(2)
    second.set_epoch(2)
    assert list(first) == list(second)
    other_seed = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, seed=8))
    other_seed.set_epoch(2)
    assert list(other_seed) != list(first)


def test_set_epoch_with_unchanged_tracker_does_not_redraw():
    tracker = tracker_with_s_int(10, [0, 1, 2, 3])
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=4))
    sampler.set_epoch(2)
    plan = sampler.plan
    sampler.set_epoch(2)
    assert sampler.plan is plan
    tracker.record(np.arange(10), np.full(10, 2.5), np.arange(10) % 2 == 0)
    tracker.end_epoch()
    sampler.set_epoch(2)
    assert sampler.plan is not plan  # The tracker changed: replanned.


def test_order_differs_across_epochs():
    tracker = tracker_with_s_int(40, list(range(0, 40, 4)))
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=8))
    sampler.set_epoch(2)
    epoch2 = list(sampler)
    sampler.set_epoch(3)
    epoch3 = list(sampler)
    assert epoch2 != epoch3
    assert sorted(samples_seen(epoch2)) == sorted(samples_seen(epoch3)) == list(range(40))


@pytest.mark.parametrize(("drop_last", "expected"), [(False, [4, 4, 4, 1]), (True, [4, 4, 4])])
def test_batch_sizes(drop_last, expected):
    tracker = AmenabilityTracker(13)
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, drop_last=drop_last))
    batches = list(sampler)
    assert [len(b) for b in batches] == expected
    assert len(sampler) == len(expected)
    assert all(isinstance(a, int) and isinstance(b, int) and isinstance(r, float) for a, b, r in batches[0])


def test_adaptive_ratio_is_taken_from_tracker_losses():
    tracker = tracker_with_s_int(12, [2, 5, 7, 10])
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, adaptive_ratio=True))
    sampler.set_epoch(2)
    plan = sampler.plan
    pairs = np.flatnonzero(plan.item_b >= 0)
    assert pairs.size == 2
    la = tracker.last_loss[plan.item_a[pairs]]
    lb = tracker.last_loss[plan.item_b[pairs]]
    np.testing.assert_allclose(plan.item_r[pairs], la / (la + lb), rtol=1e-6)
    assert not np.allclose(plan.item_r[pairs], 0.5)


def test_target_ratio_is_used_without_adaptive_ratio():
    tracker = tracker_with_s_int(12, [2, 5, 7, 10])
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, patch_ratio=0.3))
    pairs = [item for batch in sampler for item in batch if item[1] >= 0]
    assert len(pairs) == 2
    assert all(r == pytest.approx(0.3) for _, _, r in pairs)


@pytest.mark.parametrize("seed", [0, 42])
def test_no_pairs_order_equals_seedable_random_sampler(seed):
    num_samples = 37
    tracker = AmenabilityTracker(num_samples)
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=5, seed=seed))
    reference = SeedableRandomSampler(range(num_samples), data_seed=seed)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        reference.set_epoch(epoch)
        ours = [a for batch in sampler for a, b, r in batch]
        assert all(b == -1 and r == 1.0 for batch in sampler for _, b, r in batch)
        assert ours == list(reference)


def test_interpolate_false_ignores_the_tracker():
    tracker = tracker_with_s_int(20, [0, 1, 2, 3, 4, 5])
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=6, seed=1, interpolate=False))
    sampler.set_epoch(2)
    assert sampler.num_pairs == 0 and sampler.num_items == 20
    reference = SeedableRandomSampler(range(20), data_seed=1)
    reference.set_epoch(2)
    assert [a for batch in sampler for a, _, _ in batch] == list(reference)


def test_naive_tracker_pairs_everything():
    tracker = AmenabilityTracker(11, rules=TrackerRules(selective=False))
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=2))
    assert sampler.num_pairs == 5 and sampler.num_items == 6 and len(sampler) == 3
    assert sorted(samples_seen(list(sampler))) == list(range(11))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2, "seed": -1}, "seed"),
        ({"batch_size": 2, "patch_ratio": 1.0}, "patch_ratio"),
        ({"batch_size": 2, "patch_ratio": 0.0}, "patch_ratio"),
        ({"batch_size": 2, "interpolate": "yes"}, "interpolate"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InterTrainBatchSampler(AmenabilityTracker(4), PlanRules(**kwargs))


def test_invalid_tracker_and_epoch_raise():
    with pytest.raises(ValueError, match="AmenabilityTracker"):
        InterTrainBatchSampler(object(), PlanRules(batch_size=2))
    sampler = InterTrainBatchSampler(AmenabilityTracker(4), PlanRules(batch_size=2))
    with pytest.raises(ValueError, match="epoch"):
        sampler.set_epoch(-1)


# ----------------------------------------------------------------------------------------------
# amenable_action="skip": the "skipping instead of interpolating" ablation (paper Sec. 7.8)
# ----------------------------------------------------------------------------------------------


def test_skip_leaves_s_int_out_of_the_epoch():
    s_int = [1, 4, 5, 8, 9, 13, 17, 20, 22]
    tracker = tracker_with_s_int(23, s_int)
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, seed=3, amenable_action="skip"))
    batches = list(sampler)
    assert sorted(samples_seen(batches)) == sorted(set(range(23)) - set(s_int))
    assert all(b == -1 and r == 1.0 for batch in batches for _, b, r in batch)
    assert sampler.num_pairs == 0 and sampler.num_skipped == len(s_int)
    assert sampler.num_items + sampler.num_skipped == 23
    assert len(sampler) == len(batches) == 4


def test_interpolating_sampler_skips_nothing():
    sampler = InterTrainBatchSampler(tracker_with_s_int(10, [0, 1, 2]), PlanRules(batch_size=4))
    assert sampler.num_skipped == 0 and sampler.num_items + sampler.num_pairs == 10


def test_skip_plan_is_deterministic_and_differs_across_epochs():
    tracker = tracker_with_s_int(40, list(range(0, 40, 3)))
    first = InterTrainBatchSampler(tracker, PlanRules(batch_size=5, seed=7, amenable_action="skip"))
    second = InterTrainBatchSampler(tracker, PlanRules(batch_size=5, seed=7, amenable_action="skip"))
    first.set_epoch(2)
    second.set_epoch(2)
    assert list(first) == list(second)
    second.set_epoch(3)
    assert list(first) != list(second)


def test_skip_without_s_int_draws_the_same_plan_as_interpolation():
    tracker = AmenabilityTracker(17)
    skipping = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, seed=2, amenable_action="skip"))
    interpolating = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, seed=2))
    assert list(skipping) == list(interpolating)


def test_skip_trains_everything_when_s_int_holds_every_sample():
    # Skipping all of S_int would give an epoch without items, which ends a Trainer run.
    sampler = InterTrainBatchSampler(AmenabilityTracker(9, rules=TrackerRules(selective=False)), PlanRules(batch_size=4, amenable_action="skip"))
    assert sampler.num_skipped == 0 and sampler.num_pairs == 0
    assert sorted(samples_seen(list(sampler))) == list(range(9))


def test_invalid_amenable_action_raises():
    with pytest.raises(ValueError, match="amenable_action='drop' is not supported: use one of interpolate"):
        InterTrainBatchSampler(AmenabilityTracker(4), PlanRules(batch_size=2, amenable_action="drop"))


# ---------------------------------------------------------------------------------------------
# 4-way composites
def tracker_with_quads(num_samples: int, pairs: list[int], quads: list[int]) -> AmenabilityTracker:
    """A tracker (max_group_size=4) whose S_int is `pairs + quads`, `quads` marked for 4-way composites."""
    state = AmenabilityTracker(num_samples, rules=TrackerRules(max_group_size=4)).state_dict()
    state["reason"][pairs + quads] = 1
    state["in_four_way"][quads] = True
    tracker = AmenabilityTracker(num_samples, rules=TrackerRules(max_group_size=4))
    tracker.load_state_dict(state)
    return tracker


def constituents(item: tuple) -> list[int]:
    return [item[0]] + [x for x in (item[1], *item[3:]) if x >= 0]


def test_quads_cover_every_sample_once_and_remainder_is_paired():
    quads = [0, 3, 4, 7, 9, 10, 14, 15, 18, 21]  # 10 marked: 2 composites of 4, 2 left over for pairs.
    pairs = [1, 2, 5]
    tracker = tracker_with_quads(25, pairs, quads)
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, seed=1))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        items = [item for batch in batches for item in batch]
        assert sorted(x for item in items for x in constituents(item)) == list(range(25))
        fours = [item for item in items if len(item) == 5]
        twos = [item for item in items if len(item) == 3 and item[1] >= 0]
        assert len(fours) == sampler.num_four_way == 2 and len(twos) == sampler.num_pairs == 2
        assert all(set(constituents(item)) <= set(quads) for item in fours)
        assert all(set(constituents(item)) <= set(quads + pairs) for item in twos)
        assert sampler.num_items == 25 - sampler.num_pairs - 3 * sampler.num_four_way == len(items)
        assert len(batches) == len(sampler)


def test_quad_plan_is_deterministic_and_differs_across_epochs():
    def plan(epoch):
        sampler = InterTrainBatchSampler(tracker_with_quads(40, [1, 2, 3], list(range(10, 30))), PlanRules(batch_size=8, seed=5))
        sampler.set_epoch(epoch)
        return list(sampler)

    assert plan(2) == plan(2)
    assert plan(2) != plan(3)


def test_unmarked_four_way_tracker_draws_the_pair_only_plan():
    pairs_only = InterTrainBatchSampler(tracker_with_s_int(23, [1, 4, 5, 8, 9, 13]), PlanRules(batch_size=4, seed=3))
    state = tracker_with_s_int(23, [1, 4, 5, 8, 9, 13]).state_dict()
    four_way_tracker = AmenabilityTracker(23, rules=TrackerRules(max_group_size=4))
    four_way_tracker.load_state_dict({**state, "rules": four_way_tracker.state_dict()["rules"]})
    four_way = InterTrainBatchSampler(four_way_tracker, PlanRules(batch_size=4, seed=3))
    for epoch in (2, 3):
        pairs_only.set_epoch(epoch)
        four_way.set_epoch(epoch)
        assert list(four_way) == list(pairs_only)
        assert four_way.num_four_way == 0


# ---------------------------------------------------------------------------------------------
# Peer selections without interpolation: RS2 random subsets and InfoBatch (selection.py)
# ---------------------------------------------------------------------------------------------
def test_random_subset_epochs_have_the_given_sizes_and_cover_the_data_before_repeating():
    sizes = [7, 7, 5, 4, 9, 3]
    sampler = InterTrainBatchSampler(AmenabilityTracker(10), PlanRules(batch_size=3, seed=2, interpolate=False, data_selection="random_subset", subset_sizes=sizes, num_epochs=6))
    for epoch, size in enumerate(sizes):
        sampler.set_epoch(epoch)
        seen = samples_seen(list(sampler))
        assert len(seen) == size == sampler.num_items and sampler.num_skipped == 10 - size
        assert len(set(seen)) == size and sampler.num_pairs == 0
        assert sorted(seen) == sorted(sampler_order_stream(sizes, seed=2)[sum(sizes[:epoch]) : sum(sizes[: epoch + 1])])
    for start in range(0, 30, 10):  # 35 samples in all: every full cycle of 10 holds each sample once
        assert sorted(sampler_order_stream(sizes, seed=2)[start : start + 10]) == list(range(10))


def sampler_order_stream(sizes, seed):
    from hf_intertrain.method.selection import random_subset

    return [int(i) for epoch in range(len(sizes)) for i in random_subset(10, sizes, epoch, seed)]


def test_random_subset_is_deterministic_per_seed_and_differs_between_seeds():
    sizes = [6, 6, 6]
    plans = []
    for seed in (0, 0, 1):
        sampler = InterTrainBatchSampler(AmenabilityTracker(12), PlanRules(batch_size=4, seed=seed, interpolate=False, data_selection="random_subset", subset_sizes=sizes, num_epochs=3))
        sampler.set_epoch(1)
        plans.append(sampler.plan.item_a.tolist())
    assert plans[0] == plans[1] and plans[0] != plans[2]


def test_random_subset_settings_are_checked():
    with pytest.raises(ValueError, match="random_subset_sizes"):
        PlanRules(batch_size=2, interpolate=False, data_selection="random_subset", num_epochs=1)
    with pytest.raises(ValueError, match="1..4"):
        InterTrainBatchSampler(AmenabilityTracker(4), PlanRules(batch_size=2, interpolate=False, data_selection="random_subset", subset_sizes=[5], num_epochs=1))
    with pytest.raises(ValueError, match="trained without interpolation"):
        PlanRules(batch_size=2, data_selection="random_subset", subset_sizes=[2], num_epochs=1)
    with pytest.raises(ValueError, match="gives 2 epochs but the run has 3"):
        PlanRules(batch_size=2, interpolate=False, data_selection="random_subset", subset_sizes=[2, 2], num_epochs=3)
    with pytest.raises(ValueError, match="plans whole epochs: set num_train_epochs instead of max_steps"):
        PlanRules(batch_size=2, interpolate=False, data_selection="random_subset", subset_sizes=[2])
    sampler = InterTrainBatchSampler(AmenabilityTracker(4), PlanRules(batch_size=2, interpolate=False, data_selection="random_subset", subset_sizes=[2], num_epochs=1))
    with pytest.raises(ValueError, match="one size per epoch"):
        sampler.set_epoch(1)


def tracker_with_losses(losses: np.ndarray) -> AmenabilityTracker:
    tracker = AmenabilityTracker(losses.size)
    tracker.record(np.arange(losses.size), losses, np.ones(losses.size, dtype=bool))
    tracker.end_epoch()
    return tracker


def test_infobatch_prunes_half_of_the_well_learned_samples_and_rescales_the_rest():
    losses = np.where(np.arange(4000) % 4 == 0, 4.0, 1.0)  # mean 1.75: three quarters are well learned
    sampler = InterTrainBatchSampler(tracker_with_losses(losses), PlanRules(batch_size=64, seed=1, interpolate=False, data_selection="infobatch", num_epochs=8))
    sampler.set_epoch(1)
    weights = sampler.loss_weights
    well_learned = losses < losses.mean()
    kept = samples_seen(list(sampler))
    assert len(kept) == len(set(kept)) == sampler.num_items == 4000 - sampler.num_skipped
    pruned = np.setdiff1d(np.arange(4000), kept)
    assert well_learned[pruned].all()  # only well-learned samples are ever left out
    assert abs(pruned.size / well_learned.sum() - 0.5) < 0.03  # with probability 0.5 (3000 coins)
    assert (weights[pruned] == 0).all() and (weights[~well_learned] == 1).all()
    kept_well = np.setdiff1d(np.flatnonzero(well_learned), pruned)
    assert np.allclose(weights[kept_well], 2.0)  # 1 / (1 - 0.5)


def test_infobatch_trains_every_sample_in_its_final_epochs():
    losses = np.linspace(0.1, 2.0, 64)
    sampler = InterTrainBatchSampler(tracker_with_losses(losses), PlanRules(batch_size=8, interpolate=False, data_selection="infobatch", num_epochs=16))
    sampler.set_epoch(13)  # 13 < 0.875 * 16 = 14: pruned
    assert sampler.num_skipped > 0 and sampler.loss_weights is not None
    for epoch in (14, 15):
        sampler.set_epoch(epoch)
        assert sampler.num_skipped == 0 and sampler.loss_weights is None
        assert sorted(samples_seen(list(sampler))) == list(range(64))


def test_infobatch_without_known_losses_trains_everything_as_the_baseline():
    tracker = AmenabilityTracker(20)
    infobatch = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, seed=3, interpolate=False, data_selection="infobatch", num_epochs=4))
    baseline = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, seed=3, interpolate=False))
    assert infobatch.num_skipped == 0 and sorted(samples_seen(list(infobatch))) == list(range(20))
    assert infobatch.loss_weights is None or (infobatch.loss_weights == 1).all()
    assert baseline.loss_weights is None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"infobatch_prune_probability": 1.0, "num_epochs": 4}, "infobatch_prune_probability"),
    ({"infobatch_full_data_fraction": 1.5, "num_epochs": 4}, "infobatch_full_data_fraction"),
    ({}, "num_train_epochs"),
    ({"data_selection": "coreset", "num_epochs": 4}, "data_selection"),
])
def test_infobatch_settings_are_checked(kwargs, match):
    kwargs = {"data_selection": "infobatch", **kwargs}
    with pytest.raises(ValueError, match=match):
        InterTrainBatchSampler(AmenabilityTracker(4), PlanRules(batch_size=2, interpolate=False, **kwargs))


def test_skip_region3_leaves_out_region3_members_and_pairs_region1():
    tracker = AmenabilityTracker(12)
    correct = np.arange(12) < 8
    tracker.record(np.arange(12), np.where(correct, 1.0, 3.0), correct)  # L_corr 1, L_incorr 3, L_mid 2
    tracker.end_epoch()
    losses = np.array([0.5, 0.6, 0.7, 0.8, 2.5, 2.5, 2.5, 2.5, 4.0, 4.0, 2.5, 2.5])
    tracker.record(np.arange(12), losses, correct)  # 0-3 Region 1; 8, 9 Region 3 and increased
    tracker.end_epoch()
    region3 = tracker.s_int_indices(reason=REGION_3).tolist()
    assert region3 == [8, 9] and tracker.s_int_indices(reason=REGION_1).tolist() == [0, 1, 2, 3]
    sampler = InterTrainBatchSampler(tracker, PlanRules(batch_size=4, amenable_action="skip_region3"))
    sampler.set_epoch(2)
    seen = samples_seen(list(sampler))
    assert sampler.num_skipped == 2 and sampler.num_pairs == 2
    assert sorted(seen) == [i for i in range(12) if i not in region3]
    plan = sampler.plan
    pairs = plan.item_b >= 0
    assert sorted(np.concatenate([plan.item_a[pairs], plan.item_b[pairs]]).tolist()) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------------------------
# interpolation_off_fraction: the final epochs train every sample as a single
# ----------------------------------------------------------------------------------------------
def test_final_epochs_train_singles_in_the_baseline_order():
    s_int = [0, 1, 2, 3, 4, 5]
    sampler = InterTrainBatchSampler(
        tracker_with_s_int(20, s_int), PlanRules(batch_size=6, seed=1, num_epochs=8, interpolation_off_fraction=0.25))
    sampler.set_epoch(5)  # 5 < 0.75 * 8 = 6: interpolates
    assert sampler.num_pairs == 3 and sampler.interpolates_in(5)
    reference = SeedableRandomSampler(range(20), data_seed=1)
    for epoch in (6, 7):
        sampler.set_epoch(epoch)
        assert not sampler.interpolates_in(epoch)
        assert sampler.num_pairs == 0 and sampler.num_items == 20 and sampler.num_skipped == 0
        reference.set_epoch(epoch)
        assert [a for batch in sampler for a, _, _ in batch] == list(reference)


def test_zero_interpolation_off_fraction_interpolates_to_the_end():
    sampler = InterTrainBatchSampler(tracker_with_s_int(12, [2, 3, 7, 9]), PlanRules(batch_size=4, num_epochs=4))
    sampler.set_epoch(3)
    assert sampler.num_pairs == 2 and sampler.interpolates_in(3)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"interpolation_off_fraction": 1.0, "num_epochs": 4}, r"\[0, 1\)"),
    ({"interpolation_off_fraction": -0.1, "num_epochs": 4}, r"\[0, 1\)"),
    ({"interpolation_off_fraction": 0.25}, "num_train_epochs instead of max_steps"),
])
def test_interpolation_off_fraction_is_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InterTrainBatchSampler(AmenabilityTracker(4), PlanRules(batch_size=2, **kwargs))
