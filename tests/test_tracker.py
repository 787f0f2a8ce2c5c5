import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math

import numpy as np
import pytest

from hf_intertrain.method.tracker import (
    NAIVE, NOT_INTERPOLATED, REGION_1, REGION_3, AmenabilityTracker, EpochSummary, TrackerRules,
)

# Epoch 0 table used by most tests: samples 0-3 correct with loss 1.0, samples 4-7 incorrect
# with loss 3.0, so after it L_corr = 1.0, L_incorr = 3.0, L_mid = 2.0.
N = 8
CORRECT0 = np.array([True] * 4 + [False] * 4)
LOSS0 = np.array([1.0] * 4 + [3.0] * 4)


def run_epoch(tracker: AmenabilityTracker, losses, correct) -> EpochSummary:
    losses = np.asarray(losses, dtype=np.float32)
    tracker.record(np.arange(len(losses)), losses, np.asarray(correct, dtype=bool))
    return tracker.end_epoch()


def tracker_after_epoch0(**kwargs) -> AmenabilityTracker:
    """A tracker in epoch 1 whose averages are L_corr=1, L_incorr=3, L_mid=2."""
    tracker = AmenabilityTracker(N, rules=TrackerRules(**kwargs))
    run_epoch(tracker, LOSS0, CORRECT0)
    return tracker


def int_code_state(tracker: AmenabilityTracker) -> dict[str, np.ndarray]:
    """The tracker's state as saved before the rules were one entry: a setting per entry, the choices as int codes."""
    state = tracker.state_dict()
    rules = TrackerRules.from_dict(json.loads(state.pop("rules").tobytes()))
    codes = {
        "threshold_average": ("pooled", "epoch_mean", "ema", "last_epoch"),
        "region1_rule": ("l_mid", "accuracy", "avg_loss"),
        "region3_rule": ("increase", "l_incorr"),
    }
    settings = {
        "selective": np.array([rules.selective]),
        "regions": np.array(rules.regions, dtype=np.int64),
        "max_group_size": np.array([rules.max_group_size], dtype=np.int64),
        **{key: np.array([names.index(getattr(rules, key))], dtype=np.int64) for key, names in codes.items()},
        "region3_increases": np.array([rules.region3_increases], dtype=np.int64),
        "region3_epochs": np.array([rules.region3_epochs], dtype=np.int64),
    }
    return {**settings, **state}


def test_averages_after_epoch0_are_the_class_means():
    tracker = tracker_after_epoch0()
    assert tracker.averages() == (1.0, 3.0, 2.0)


def test_epoch0_and_epoch1_have_no_interpolation():
    tracker = AmenabilityTracker(N)
    assert not tracker.interpolated.any()
    summary0 = run_epoch(tracker, LOSS0, CORRECT0)
    assert summary0.next_interpolated == 0
    assert not tracker.interpolated.any() and tracker.epoch == 1
    # Epoch 1: sample 0 in Region 1 (0.5 < 2) is judged with epoch 0's averages.
    run_epoch(tracker, [0.5] + [2.5] * 7, CORRECT0)
    assert tracker.epoch == 2
    assert tracker.interpolated[0]


def test_undefined_averages_judge_nobody():
    # Only correct observations in epoch 0: L_incorr is undefined, so epoch 1 judges nobody.
    tracker = AmenabilityTracker(N)
    run_epoch(tracker, [0.1] * N, [True] * N)
    l_corr, l_incorr, l_mid = tracker.averages()
    assert l_corr == pytest.approx(0.1) and math.isnan(l_incorr) and math.isnan(l_mid)
    summary = run_epoch(tracker, [0.01] * N, [True] * N)
    assert summary.next_interpolated == 0
    assert (summary.region_1, summary.region_2, summary.region_3) == (0, 0, 0)
    assert math.isnan(summary.l_mid)
    assert not tracker.interpolated.any()
    # Once an incorrect observation is pooled, judging starts.
    run_epoch(tracker, [0.01] * 7 + [5.0], [True] * 7 + [False])
    summary = run_epoch(tracker, [0.01] * N, [True] * N)
    assert summary.next_interpolated > 0


def test_region1_noint_sample_is_interpolated_next_epoch():
    tracker = tracker_after_epoch0()
    run_epoch(tracker, [1.9] + [2.5] * 7, CORRECT0)
    assert tracker.interpolated.tolist() == [True] + [False] * 7
    assert tracker.reason[0] == REGION_1
    assert tracker.s_int_indices().tolist() == [0]
    assert tracker.s_noint_indices().tolist() == list(range(1, N))


def test_region2_noint_sample_stays_noint():
    tracker = tracker_after_epoch0()
    # L_mid = 2 and L_incorr = 3 are both inside Region 2.
    summary = run_epoch(tracker, [2.0, 2.5, 3.0, 2.5, 2.5, 2.5, 2.5, 2.5], CORRECT0)
    assert summary.region_2 == N
    assert not tracker.interpolated.any()


def test_region3_noint_sample_is_interpolated_only_when_loss_increased():
    tracker = tracker_after_epoch0()
    # Previous non-interpolated losses: 1.0 (samples 0-3) and 3.0 (samples 4-7).
    run_epoch(tracker, [3.5, 2.5, 2.5, 2.5, 3.5, 2.5, 2.5, 2.5], CORRECT0)
    # Sample 0: 1.0 -> 3.5 increased; sample 4: 3.0 -> 3.5 increased.
    assert tracker.s_int_indices().tolist() == [0, 4]
    assert tracker.reason[0] == REGION_3 and tracker.reason[4] == REGION_3


def test_region3_noint_sample_with_decreased_loss_stays_noint():
    tracker = AmenabilityTracker(N)
    run_epoch(tracker, [1.0] * 4 + [3.0] * 3 + [9.0], CORRECT0)
    # Averages: L_corr = 1, L_incorr = (9 + 9) / 4 = 4.5, L_mid = 2.75.
    assert tracker.averages() == (1.0, 4.5, 2.75)
    run_epoch(tracker, [3.0] * 7 + [8.0], CORRECT0)  # Sample 7: Region 3 but 9 -> 8 decreased.
    assert not tracker.interpolated.any()


def test_region3_sample_without_previous_noint_loss_stays_noint():
    tracker = AmenabilityTracker(N)
    # Sample 7 is not recorded in epoch 0, so it has no previous non-interpolated loss.
    tracker.record(np.arange(7), LOSS0[:7], CORRECT0[:7])
    tracker.end_epoch()
    assert math.isnan(tracker.prev_noint_loss[7])
    run_epoch(tracker, [2.5] * 7 + [9.0], CORRECT0)
    assert not tracker.interpolated[7]
    assert not np.isnan(tracker.prev_noint_loss[7])


def test_equal_loss_in_region3_is_not_an_increase():
    tracker = tracker_after_epoch0()
    run_epoch(tracker, [2.5] * 4 + [3.0] * 3 + [3.0], CORRECT0)
    assert not tracker.interpolated.any()
    tracker = AmenabilityTracker(N)
    run_epoch(tracker, [1.0] * 4 + [3.0] * 3 + [5.0], CORRECT0)  # L_incorr = 3.5
    run_epoch(tracker, [2.5] * 7 + [5.0], CORRECT0)  # Region 3, loss equal to previous.
    assert not tracker.interpolated.any()


def test_region1_interpolated_sample_stays_while_below_lmid_and_returns_otherwise():
    tracker = tracker_after_epoch0()
    run_epoch(tracker, [0.5, 0.5] + [2.5] * 6, CORRECT0)  # Epoch 1: samples 0, 1 admitted.
    assert tracker.s_int_indices().tolist() == [0, 1]
    # Epoch 2 judged with averages of epochs 0 and 1 (samples 0, 1 were S_noInt in epoch 1).
    l_corr, l_incorr, l_mid = tracker.averages()
    run_epoch(tracker, [l_mid - 0.1, l_mid + 0.1] + [2.5] * 6, CORRECT0)
    assert tracker.s_int_indices().tolist() == [0]
    assert tracker.reason[0] == REGION_1
    # Still below L_mid: stays another epoch.
    run_epoch(tracker, [0.0] + [2.5] * 7, CORRECT0)
    assert tracker.s_int_indices().tolist() == [0]


def test_region3_sample_returns_to_noint_after_one_epoch():
    tracker = tracker_after_epoch0()
    run_epoch(tracker, [3.5] + [2.5] * 7, CORRECT0)
    assert tracker.reason[0] == REGION_3
    # Whatever its interpolated loss, it returns; even a Region 1 loss does not keep it.
    run_epoch(tracker, [0.1] + [2.5] * 7, CORRECT0)
    assert not tracker.interpolated.any()
    tracker = tracker_after_epoch0()
    run_epoch(tracker, [3.5] + [2.5] * 7, CORRECT0)
    run_epoch(tracker, [10.0] + [2.5] * 7, CORRECT0)
    assert not tracker.interpolated.any()


def test_interpolated_losses_are_not_pooled_into_averages():
    tracker = tracker_after_epoch0()
    run_epoch(tracker, [0.5] + [2.0] * 3 + [3.0] * 4, CORRECT0)  # Sample 0 admitted.
    before = tracker.averages()
    # Epoch 2: every S_noInt sample repeats the same class means, sample 0 (S_int) logs 100.
    run_epoch(tracker, [100.0] + [1.0] * 3 + [3.0] * 4, [False] + [True] * 3 + [False] * 4)
    l_corr, l_incorr, _ = tracker.averages()
    # Epochs 0-2 pooled: correct = 4*1 + (0.5 + 3*2) + 3*1 over 11, incorrect = 3.0.
    assert l_corr == pytest.approx((4.0 + 6.5 + 3.0) / 11)
    assert l_incorr == pytest.approx(3.0)
    assert before[1] == pytest.approx(3.0)
    assert tracker.last_loss[0] == 100.0
    assert tracker.prev_noint_loss[0] == 0.5


def test_averages_pool_all_completed_epochs():
    tracker = AmenabilityTracker(4)
    run_epoch(tracker, [1.0, 2.0, 10.0, 20.0], [True, True, False, False])
    run_epoch(tracker, [3.0, 4.0, 30.0, 40.0], [True, True, False, False])
    assert tracker.averages() == pytest.approx((2.5, 25.0, 13.75))


def test_decision_uses_averages_of_earlier_epochs_only():
    tracker = tracker_after_epoch0()  # L_mid = 2 from epoch 0.
    # Epoch 1's own records would lower L_mid to 1.875, but its decision uses L_mid = 2.
    summary = run_epoch(tracker, [1.5] * 4 + [2.0] * 4, CORRECT0)
    assert summary.l_mid == 2.0
    assert summary.region_1 == 4 and summary.region_2 == 4
    assert tracker.s_int_indices().tolist() == [0, 1, 2, 3]
    assert tracker.averages() == pytest.approx((1.25, 2.5, 1.875))


def test_regions_1_only_never_admits_region3():
    tracker = tracker_after_epoch0(regions=(1,))
    run_epoch(tracker, [0.5] + [2.5] * 3 + [3.5] * 4, CORRECT0)
    assert tracker.s_int_indices().tolist() == [0]
    full = tracker_after_epoch0()
    run_epoch(full, [0.5] + [2.5] * 3 + [3.5] * 4, CORRECT0)
    assert full.s_int_indices().tolist() == [0, 4, 5, 6, 7]


def test_naive_mode_interpolates_everyone_every_epoch():
    tracker = AmenabilityTracker(N, rules=TrackerRules(selective=False))
    assert tracker.interpolated.all()
    for _ in range(3):
        summary = run_epoch(tracker, LOSS0, CORRECT0)
        assert summary.num_interpolated == N and summary.next_interpolated == N
    assert (tracker.reason == NAIVE).all()
    assert all(math.isnan(x) for x in tracker.averages())


def test_unrecorded_sample_returns_to_noint():
    tracker = tracker_after_epoch0()
    run_epoch(tracker, [0.5, 0.5] + [2.5] * 6, CORRECT0)
    tracker.record(np.arange(1, N), np.full(N - 1, 0.5), CORRECT0[1:])
    summary = tracker.end_epoch()
    assert summary.num_recorded == N - 1
    assert not tracker.interpolated[0] and tracker.interpolated[1]
    assert tracker.last_loss[0] == 0.5


def test_adaptive_ratio_values_and_fallback():
    tracker = AmenabilityTracker(5)
    assert tracker.adaptive_ratio(np.array([0]), np.array([1])).tolist() == [0.5]  # Unknown.
    tracker.record(np.arange(4), np.array([1.0, 3.0, 0.0, 0.0]), np.ones(4, dtype=bool))
    tracker.end_epoch()
    r = tracker.adaptive_ratio(np.array([0, 1, 2, 0]), np.array([1, 0, 3, 4]))
    assert r.dtype == np.float32
    # 1/(1+3), 3/(3+1), both zero -> 0.5, sample 4 unknown -> 0.5.
    assert r.tolist() == [0.25, 0.75, 0.5, 0.5]


def test_adaptive_ratio_rejects_mismatched_shapes():
    tracker = AmenabilityTracker(5)
    with pytest.raises(ValueError, match="same shape"):
        tracker.adaptive_ratio(np.array([0, 1]), np.array([1]))


def test_duplicate_records_are_averaged_with_ties_counted_correct():
    tracker = AmenabilityTracker(3)
    # Sample 0: losses 1 and 3, one correct, one not -> mean 2, tie -> correct.
    # Sample 1: 4 incorrect twice; sample 2: once incorrect with loss 6.
    tracker.record(np.array([0, 1, 0]), np.array([1.0, 4.0, 3.0]), np.array([True, False, False]))
    tracker.record(np.array([1, 2]), np.array([4.0, 6.0]), np.array([False, False]))
    summary = tracker.end_epoch()
    assert summary.num_recorded == 3
    assert tracker.last_loss.tolist() == [2.0, 4.0, 6.0]
    assert tracker.averages() == (2.0, 5.0, 3.5)


def test_non_finite_loss_raises_naming_the_sample():
    tracker = AmenabilityTracker(N)
    with pytest.raises(ValueError, match="sample 5 is nan"):
        tracker.record(np.array([2, 5]), np.array([1.0, np.nan]), np.array([True, True]))
    with pytest.raises(ValueError, match="sample 3 is inf"):
        tracker.record(np.array([3]), np.array([np.inf]), np.array([True]))
    assert tracker.epoch_buffers()[2].sum() == 0  # Nothing half-recorded.


def test_record_validates_shapes_and_indices():
    tracker = AmenabilityTracker(N)
    with pytest.raises(ValueError, match="equal"):
        tracker.record(np.array([0, 1]), np.array([1.0]), np.array([True, True]))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        tracker.record(np.array([8]), np.array([1.0]), np.array([True]))
    with pytest.raises(ValueError, match="integer"):
        tracker.record(np.array([0.0]), np.array([1.0]), np.array([True]))
    with pytest.raises(ValueError, match="0/1"):
        tracker.record(np.array([0]), np.array([1.0]), np.array([2]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 4, "regions": (2,)}, "regions"),
        ({"num_samples": 4, "regions": ()}, "regions"),
        ({"num_samples": 4, "regions": (1, 1)}, "regions"),
        ({"num_samples": 4, "selective": "yes"}, "selective"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        num_samples, rules = kwargs["num_samples"], {k: v for k, v in kwargs.items() if k != "num_samples"}
        AmenabilityTracker(num_samples, rules=TrackerRules(**rules))


def test_state_dict_roundtrip_gives_identical_decisions(tmp_path):
    from safetensors.numpy import load_file, save_file

    tracker = tracker_after_epoch0()
    run_epoch(tracker, [0.5, 3.5, 2.5, 2.5, 3.5, 2.5, 2.5, 2.5], CORRECT0)
    tracker.record(np.array([0, 1]), np.array([0.3, 0.7]), np.array([True, False]))  # Mid-epoch.
    save_file(tracker.state_dict(), tmp_path / "tracker.safetensors")
    resumed = AmenabilityTracker(N)
    resumed.load_state_dict(load_file(tmp_path / "tracker.safetensors"))
    assert resumed.epoch == tracker.epoch
    losses = np.array([1.5, 2.5, 0.1, 2.5, 4.0, 2.5, 3.9, 2.5], dtype=np.float32)
    rest = np.arange(2, N)
    for t in (tracker, resumed):
        t.record(rest, losses[rest], CORRECT0[rest])
    assert resumed.end_epoch() == tracker.end_epoch()
    np.testing.assert_array_equal(resumed.reason, tracker.reason)
    np.testing.assert_array_equal(resumed.last_loss, tracker.last_loss)
    assert resumed.averages() == tracker.averages()


def test_mismatched_load_is_refused():
    state = tracker_after_epoch0().state_dict()
    with pytest.raises(ValueError, match="num_samples=8"):
        AmenabilityTracker(9).load_state_dict(state)
    with pytest.raises(ValueError, match="regions"):
        AmenabilityTracker(N, rules=TrackerRules(regions=(1,))).load_state_dict(state)
    with pytest.raises(ValueError, match="selective"):
        AmenabilityTracker(N, rules=TrackerRules(selective=False)).load_state_dict(state)
    del state["reason"]
    with pytest.raises(ValueError, match="missing"):
        AmenabilityTracker(N).load_state_dict(state)


def test_summary_counts():
    tracker = tracker_after_epoch0()
    summary = run_epoch(tracker, [0.5, 0.5, 2.5, 2.5, 3.5, 2.5, 2.0, 3.0], CORRECT0)
    assert summary.to_dict() == {
        "epoch": 1,
        "num_recorded": 8,
        "num_interpolated": 0,
        "region_1": 2,
        "region_2": 5,
        "region_3": 1,
        "l_corr": 1.0,
        "l_incorr": 3.0,
        "l_mid": 2.0,
        "next_interpolated": 3,
        "num_four_way": 0,
        "next_four_way": 0,
        "l_avg": 2.0,
        "correct_below_l_mid": 0.5,
        "incorrect_below_l_mid": 0.0,
        "admitted_region_1": 2,
        "admitted_region_3": 1,
        "left_s_int": 0,
    }
    summary = run_epoch(tracker, [0.5] * N, CORRECT0)
    assert summary.epoch == 2 and summary.num_interpolated == 3


def test_epoch_buffers_can_be_replaced_by_their_sum_over_ranks():
    rank0, rank1 = AmenabilityTracker(4), AmenabilityTracker(4)
    rank0.record(np.array([0, 1]), np.array([1.0, 5.0]), np.array([True, False]))
    rank1.record(np.array([2, 3, 0]), np.array([1.0, 5.0, 3.0]), np.array([True, False, True]))
    summed = [a + b for a, b in zip(rank0.epoch_buffers(), rank1.epoch_buffers())]
    for t in (rank0, rank1):
        t.set_epoch_buffers(*summed)
    assert rank0.end_epoch().num_recorded == rank1.end_epoch().num_recorded == 4
    assert rank0.averages() == rank1.averages() == (1.5, 5.0, 3.25)
    with pytest.raises(ValueError, match="shape"):
        rank0.set_epoch_buffers(np.zeros(3), np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="correct_count > count"):
        rank0.set_epoch_buffers(np.zeros(4), np.ones(4), np.zeros(4))


def test_state_arrays_are_read_only():
    tracker = AmenabilityTracker(N)
    with pytest.raises(ValueError):
        tracker.reason[0] = REGION_1
    assert tracker.reason.dtype == np.int8 and (tracker.reason == NOT_INTERPOLATED).all()
    assert tracker.last_loss.dtype == np.float32


# ----------------------------------------------------------------------------------------------
# Skipped samples (the sampler's amenable_action="skip"): no record in the epoch
# ----------------------------------------------------------------------------------------------


def record_all_but(tracker: AmenabilityTracker, skipped: list[int], losses, correct) -> EpochSummary:
    keep = np.array([i for i in range(N) if i not in skipped])
    tracker.record(keep, np.asarray(losses, dtype=np.float32)[keep], np.asarray(correct)[keep])
    return tracker.end_epoch()


def test_skipped_region1_sample_is_trained_and_judged_again_next_epoch():
    tracker = tracker_after_epoch0()
    run_epoch(tracker, [0.5] + [1.0] * 3 + [3.0] * 4, CORRECT0)
    assert tracker.reason[0] == REGION_1
    summary = record_all_but(tracker, [0], LOSS0, CORRECT0)  # Epoch 2: sample 0 is skipped.
    assert summary.num_recorded == N - 1
    assert tracker.reason[0] == NOT_INTERPOLATED  # Back to S_noInt: trained without interpolation.
    assert tracker.last_loss[0] == 0.5 and tracker.prev_noint_loss[0] == 0.5  # Its losses are kept.
    run_epoch(tracker, [0.5] + [1.0] * 3 + [3.0] * 4, CORRECT0)  # Epoch 3: trained, judged, Region 1 again.
    assert tracker.reason[0] == REGION_1


def test_skipped_region3_sample_is_compared_with_its_loss_before_the_skip():
    for loss_after_skip, expected in ((11.0, REGION_3), (9.0, NOT_INTERPOLATED)):
        tracker = tracker_after_epoch0()
        run_epoch(tracker, [1.0] * 4 + [10.0] + [3.0] * 3, CORRECT0)  # Region 3 and increased: interpolate.
        assert tracker.reason[4] == REGION_3
        record_all_but(tracker, [4], LOSS0, CORRECT0)  # Skipped in epoch 2.
        assert tracker.reason[4] == NOT_INTERPOLATED and tracker.prev_noint_loss[4] == 10.0
        losses = [1.0] * 4 + [loss_after_skip] + [3.0] * 3
        run_epoch(tracker, losses, CORRECT0)
        assert tracker.reason[4] == expected


# ---------------------------------------------------------------------------------------------
# Four-way selection
def test_four_way_selection_climbs_one_rung_per_epoch():
    tracker = tracker_after_epoch0(max_group_size=4)  # L_corr = 1, L_incorr = 3, L_mid = 2 throughout.
    run_epoch(tracker, [0.5, 0.5, 1.5, 1.5, 3.0, 3.0, 3.0, 3.0], CORRECT0)
    assert tracker.s_int_indices().tolist() == [0, 1, 2, 3]
    assert not tracker.in_four_way.any()  # New Region-1 entrants start as pairs, however easy.
    assert tracker.averages() == (1.0, 3.0, 2.0)

    summary = run_epoch(tracker, [0.5, 1.5, 2.5, 0.9, 3.0, 3.0, 3.0, 3.0], CORRECT0)
    # 0 and 3: interpolated loss below L_corr -> 4-way; 1: Region 1 above L_corr -> pair; 2: >= L_mid -> out.
    assert tracker.s_int_four_way_indices().tolist() == [0, 3]
    assert tracker.s_int_pair_indices().tolist() == [1]
    assert summary.num_four_way == 0 and summary.next_four_way == 2

    summary = run_epoch(tracker, [1.5, 0.5, 3.0, 0.5, 3.0, 3.0, 3.0, 3.0], CORRECT0)
    # 0 falls back one rung to a pair, 3 stays 4-way, pair member 1 is promoted.
    assert tracker.s_int_four_way_indices().tolist() == [1, 3]
    assert tracker.s_int_pair_indices().tolist() == [0]
    assert summary.num_four_way == 2 and summary.next_four_way == 2

    run_epoch(tracker, [1.5, 2.5, 3.0, 0.5, 3.0, 3.0, 3.0, 3.0], CORRECT0)
    # A 4-way member at L_mid or above leaves S_int (the paper's Region-1 exit), no stop at pairs.
    assert tracker.s_int_four_way_indices().tolist() == [3]
    assert tracker.s_int_pair_indices().tolist() == [0]
    assert not tracker.interpolated[1]


def test_region3_members_are_never_put_in_four_way_composites():
    tracker = tracker_after_epoch0(max_group_size=4)
    run_epoch(tracker, [1.0, 1.0, 1.0, 1.0, 3.5, 3.0, 3.0, 3.0], CORRECT0)
    assert tracker.reason[4] == REGION_3
    run_epoch(tracker, [1.0, 1.0, 1.0, 1.0, 0.01, 3.0, 3.0, 3.0], CORRECT0)
    assert not tracker.in_four_way.any()
    assert tracker.reason[4] == NOT_INTERPOLATED  # Region-3 members return to S_noInt.


def test_pairs_only_tracker_never_marks_four_way_members():
    tracker = tracker_after_epoch0()
    run_epoch(tracker, [0.5, 0.5, 1.5, 1.5, 3.0, 3.0, 3.0, 3.0], CORRECT0)
    run_epoch(tracker, [0.01] * 4 + [3.0] * 4, CORRECT0)
    assert tracker.s_int_indices().tolist() == [0, 1, 2, 3]
    assert not tracker.in_four_way.any() and tracker.s_int_four_way_indices().size == 0
    assert tracker.s_int_pair_indices().tolist() == [0, 1, 2, 3]


def test_four_way_state_roundtrip_and_refusals():
    tracker = tracker_after_epoch0(max_group_size=4)
    run_epoch(tracker, [0.5, 0.5, 1.5, 1.5, 3.0, 3.0, 3.0, 3.0], CORRECT0)
    run_epoch(tracker, [0.5, 1.5, 2.5, 0.9, 3.0, 3.0, 3.0, 3.0], CORRECT0)
    state = tracker.state_dict()
    restored = AmenabilityTracker(N, rules=TrackerRules(max_group_size=4))
    restored.load_state_dict(state)
    assert restored.s_int_four_way_indices().tolist() == [0, 3]
    with pytest.raises(ValueError, match="max_group_size=4 but this tracker has 2"):
        AmenabilityTracker(N).load_state_dict(state)
    old = {k: v for k, v in int_code_state(AmenabilityTracker(N)).items() if k not in ("max_group_size", "in_four_way")}
    AmenabilityTracker(N).load_state_dict(old)  # Saved before 4-way composites existed.


@pytest.mark.parametrize(
    "kwargs, match",
    [({"max_group_size": 3}, "max_group_size must be 2 or 4"), ({"max_group_size": 4, "selective": False}, "needs selective=True")],
)
def test_invalid_group_size_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AmenabilityTracker(N, rules=TrackerRules(**kwargs))


def test_region1_four_way_selection_groups_every_region1_member_on_its_second_epoch():
    robust, region1 = (tracker_after_epoch0(max_group_size=4, four_way_selection=s) for s in ("robust", "region1"))
    for tracker in (robust, region1):
        run_epoch(tracker, [0.5, 0.5, 1.5, 1.5, 3.0, 3.0, 3.0, 3.0], CORRECT0)
        run_epoch(tracker, [0.5, 1.5, 2.5, 0.9, 3.0, 3.0, 3.0, 3.0], CORRECT0)
    assert robust.s_int_four_way_indices().tolist() == [0, 3]
    assert region1.s_int_four_way_indices().tolist() == [0, 1, 3]  # 1.5 < L_mid suffices
    with pytest.raises(ValueError, match="four_way_selection must be one of"):
        AmenabilityTracker(N, rules=TrackerRules(max_group_size=4, four_way_selection="all"))


# ---------------------------------------------------------------------------------------------
# Threshold averages: pooled, epoch_mean, ema, last_epoch
def three_epochs_of_different_sizes(kind: str) -> AmenabilityTracker:
    """Epoch 0: 4 correct at 1, 2 incorrect at 4. Epoch 1: one correct at 3, one incorrect at 10. Epoch 2: one correct at 5."""
    tracker = AmenabilityTracker(6, rules=TrackerRules(regions=(1,), threshold_average=kind))
    run_epoch(tracker, [1.0] * 4 + [4.0] * 2, [True] * 4 + [False] * 2)
    tracker.record(np.array([0, 4]), np.array([3.0, 10.0]), np.array([True, False]))
    tracker.end_epoch()
    tracker.record(np.array([0]), np.array([5.0]), np.array([True]))
    tracker.end_epoch()
    return tracker


def test_threshold_averages_by_hand():
    tracker = three_epochs_of_different_sizes("pooled")
    # (L_corr, L_incorr, L_mid), L_avg of every kind, whichever is configured.
    expected = {
        "pooled": ((4 + 3 + 5) / 6, (8 + 10) / 3, 4.0, (12 + 3 + 10 + 5) / 9),
        "epoch_mean": ((1 + 3 + 5) / 3, (4 + 10) / 2, 5.0, (2 + 6.5 + 5) / 3),  # Epoch 2 has no incorrect mean.
        "ema": (0.5 * (0.5 * 1 + 0.5 * 3) + 0.5 * 5, 0.5 * 4 + 0.5 * 10, 5.25, 0.5 * (0.5 * 2 + 0.5 * 6.5) + 0.5 * 5),
        "last_epoch": (5.0, 10.0, 7.5, 5.0),  # L_incorr falls back to epoch 1, the last with an incorrect record.
    }
    for kind, (l_corr, l_incorr, l_mid, l_avg) in expected.items():
        assert tracker.averages(kind) == pytest.approx((l_corr, l_incorr, l_mid)), kind
        assert tracker.average_loss(kind) == pytest.approx(l_avg), kind
        configured = three_epochs_of_different_sizes(kind)
        assert configured.averages() == pytest.approx((l_corr, l_incorr, l_mid)), kind
        assert configured.average_loss() == pytest.approx(l_avg), kind
    assert tracker.averages() == tracker.averages("pooled")
    with pytest.raises(ValueError, match="kind must be one of"):
        tracker.averages("mean")


def test_ema_uses_the_fixed_decay_and_the_first_epoch_initialises_it():
    from hf_intertrain.method.thresholds import EMA_DECAY

    assert EMA_DECAY == 0.5
    tracker = AmenabilityTracker(2, rules=TrackerRules(regions=(1,), threshold_average="ema"))  # Both samples stay in S_noInt.
    means = [(1.0, 4.0), (3.0, 10.0), (2.0, 6.0)]
    ema = None
    for l_corr, l_incorr in means:
        run_epoch(tracker, [l_corr, l_incorr], [True, False])
        ema = (l_corr, l_incorr) if ema is None else tuple(EMA_DECAY * e + (1 - EMA_DECAY) * m for e, m in zip(ema, (l_corr, l_incorr)))
        assert tracker.averages()[:2] == pytest.approx(ema)
    assert tracker.averages()[:2] == pytest.approx((0.25 * 1 + 0.25 * 3 + 0.5 * 2, 0.25 * 4 + 0.25 * 10 + 0.5 * 6))


def test_decision_uses_the_configured_threshold_average():
    # L_mid after three_epochs_of_different_sizes: pooled 4, epoch_mean 5, ema 5.25, last_epoch 7.5.
    expected = {"pooled": (4.0, []), "epoch_mean": (5.0, [1]), "ema": (5.25, [1]), "last_epoch": (7.5, [1, 2])}
    for kind, (l_mid, s_int) in expected.items():
        tracker = three_epochs_of_different_sizes(kind)
        summary = run_epoch(tracker, [0.0, 4.5, 6.0, 0.0, 0.0, 0.0], [False, True, True, False, False, False])
        assert summary.l_mid == l_mid, kind
        # Samples 0 and 3-5 are incorrect with loss 0: Region 1 under every kind.
        assert tracker.s_int_indices().tolist() == sorted(s_int + [0, 3, 4, 5]), kind


def test_pooled_is_the_default_threshold_average():
    assert AmenabilityTracker(N).rules.threshold_average == "pooled"
    tracker = three_epochs_of_different_sizes("pooled")
    assert tracker.averages() == pytest.approx((2.0, 6.0, 4.0))


# ---------------------------------------------------------------------------------------------
# Per-epoch diagnostics: Fig. 5 efficacy of L_mid, admissions (Fig. 6, 8a), departures
def test_summary_diagnostics_count_only_noint_records_and_decisions():
    tracker = tracker_after_epoch0()  # L_corr = 1, L_incorr = 3, L_mid = 2.
    summary = run_epoch(tracker, [0.5, 0.5, 2.5, 1.5, 3.5, 1.0, 2.5, 2.5], CORRECT0)
    assert summary.correct_below_l_mid == 0.75  # 0.5, 0.5, 1.5 of 0.5, 0.5, 2.5, 1.5.
    assert summary.incorrect_below_l_mid == 0.25  # 1.0 of 3.5, 1.0, 2.5, 2.5.
    assert (summary.admitted_region_1, summary.admitted_region_3, summary.left_s_int) == (4, 1, 0)
    assert tracker.s_int_indices().tolist() == [0, 1, 3, 4, 5]
    l_mid = tracker.averages()[2]
    assert l_mid == pytest.approx(0.5 * (9.0 / 8 + 21.5 / 8))
    # Epoch 2: S_int members 0, 3 stay, 1 and 5 rise above L_mid, Region-3 member 4 returns. Their records
    # (sample 1 correct at 2.5, sample 4 incorrect at 0.1) are not S_noInt records and do not count.
    summary = run_epoch(tracker, [0.1, 2.5, 0.5, 0.2, 0.1, 5.0, 1.0, 2.5], CORRECT0)
    assert summary.correct_below_l_mid == 1.0  # Sample 2 alone.
    assert summary.incorrect_below_l_mid == 0.5  # Samples 6 (1.0) and 7 (2.5).
    assert (summary.admitted_region_1, summary.admitted_region_3, summary.left_s_int) == (2, 0, 3)
    assert tracker.s_int_indices().tolist() == [0, 2, 3, 6]


def test_summary_diagnostics_are_nan_without_l_mid_or_records():
    tracker = AmenabilityTracker(N)
    summary = run_epoch(tracker, LOSS0, CORRECT0)
    assert math.isnan(summary.correct_below_l_mid) and math.isnan(summary.incorrect_below_l_mid)
    assert (summary.admitted_region_1, summary.admitted_region_3, summary.left_s_int) == (0, 0, 0)
    summary = run_epoch(tracker, [0.5] * N, [True] * N)  # L_mid defined, but no incorrect record.
    assert summary.correct_below_l_mid == 1.0 and math.isnan(summary.incorrect_below_l_mid)
    naive = AmenabilityTracker(N, rules=TrackerRules(selective=False))
    for _ in range(2):
        summary = run_epoch(naive, LOSS0, CORRECT0)
    assert math.isnan(summary.correct_below_l_mid) and summary.left_s_int == 0


# ---------------------------------------------------------------------------------------------
# Ablations of the thresholds (paper Sec. 7.6 to 7.8)
def test_accuracy_region1_is_the_correct_samples_and_members_stay_while_correct():
    correct1 = [True, False, True, False, False, False, False, False]
    losses1 = [2.5, 0.5, 2.5, 2.5, 2.5, 3.5, 2.5, 2.5]
    tracker = tracker_after_epoch0(region1_rule="accuracy")
    summary = run_epoch(tracker, losses1, correct1)
    # Correct samples 0 and 2 (loss above L_mid) are Region 1; incorrect sample 1 (loss 0.5) is not.
    assert (summary.region_1, summary.region_2, summary.region_3) == (2, 5, 1)
    assert tracker.s_int_indices(reason=REGION_1).tolist() == [0, 2]
    assert tracker.s_int_indices(reason=REGION_3).tolist() == [5]
    method = tracker_after_epoch0()
    run_epoch(method, losses1, correct1)
    assert method.s_int_indices().tolist() == [1, 5]
    # Epoch 2 (L_incorr = 2.6): member 0 is correct at loss 9 and stays; member 2 is incorrect at 0.1 and leaves.
    run_epoch(tracker, [9.0, 2.5, 0.1, 2.5, 2.5, 2.5, 2.5, 2.5], [True] + [False] * 7)
    assert tracker.s_int_indices().tolist() == [0]


def test_avg_loss_region1_uses_the_average_of_all_noint_losses():
    correct0 = [True] * 6 + [False] * 2
    losses1 = [1.7, 1.2, 1.0] + [2.5] * 5
    trackers = {}
    for rule in ("avg_loss", "l_mid"):
        tracker = AmenabilityTracker(N, rules=TrackerRules(regions=(1,), region1_rule=rule))
        run_epoch(tracker, [1.0] * 6 + [3.0] * 2, correct0)  # L_corr 1, L_incorr 3, L_mid 2, L_avg 1.5.
        summary = run_epoch(tracker, losses1, correct0)
        assert summary.l_avg == 1.5 and summary.l_mid == 2.0
        trackers[rule] = tracker
    assert trackers["avg_loss"].s_int_indices().tolist() == [1, 2]
    assert trackers["l_mid"].s_int_indices().tolist() == [0, 1, 2]
    tracker = trackers["avg_loss"]
    l_avg = tracker.average_loss()
    assert l_avg == pytest.approx((12.0 + 16.4) / 16, rel=1e-6) and l_avg + 0.1 < tracker.averages()[2]
    run_epoch(tracker, [2.5, l_avg - 0.1, l_avg + 0.1] + [2.5] * 5, correct0)
    assert tracker.s_int_indices().tolist() == [1]  # Member 2 is below L_mid but not below L_avg: it leaves.


def test_l_incorr_region3_admits_without_the_increase_test():
    for rule, expected in (("increase", []), ("l_incorr", [7])):
        tracker = AmenabilityTracker(N, rules=TrackerRules(region3_rule=rule))
        run_epoch(tracker, [1.0] * 4 + [3.0] * 3 + [9.0], CORRECT0)  # L_incorr = 4.5, L_mid = 2.75.
        run_epoch(tracker, [3.0] * 7 + [8.0], CORRECT0)  # Sample 7: Region 3 but 9 -> 8 decreased.
        assert tracker.s_int_indices().tolist() == expected, rule
    run_epoch(tracker, [3.5] * 7 + [8.0], CORRECT0)  # L_mid = 3.1875, L_incorr = 4.375: only 7 in Region 3.
    assert not tracker.interpolated.any()  # After one epoch it returns, like any Region-3 member.


def test_region3_with_k_2_needs_two_consecutive_increases():
    tracker = tracker_after_epoch0(region3_increases=2)  # Thresholds stay 1, 3, 2 throughout.
    # Previous losses of 4-7: 3.0. Epoch 1: 4 and 6 increase once, 5 and 7 decrease.
    run_epoch(tracker, [1.0] * 4 + [3.5, 2.5, 3.5, 2.5], CORRECT0)
    assert tracker.s_int_indices(reason=REGION_3).size == 0
    assert tracker.increases[4:].tolist() == [1, 0, 1, 0]
    method = tracker_after_epoch0()
    run_epoch(method, [1.0] * 4 + [3.5, 2.5, 3.5, 2.5], CORRECT0)
    assert method.s_int_indices(reason=REGION_3).tolist() == [4, 6]
    # Epoch 2: 4 increases again (second in a row) and is admitted; 6 decreases; 7 increases once.
    summary = run_epoch(tracker, [1.0] * 4 + [4.0, 2.0, 3.0, 3.0], CORRECT0)
    assert tracker.s_int_indices(reason=REGION_3).tolist() == [4] and summary.admitted_region_3 == 1
    assert tracker.increases[4:].tolist() == [0, 0, 0, 1]  # Admission restarts the count.
    # Epoch 3: 6 increases once after its decrease (not admitted), 7 a second time (admitted).
    run_epoch(tracker, [1.0] * 4 + [0.5, 2.5, 3.5, 3.5], CORRECT0)
    assert tracker.s_int_indices(reason=REGION_3).tolist() == [7]


def test_region3_epochs_keeps_members_for_their_period_even_without_records():
    for record_member in (True, False):
        tracker = tracker_after_epoch0(region3_epochs=2)
        run_epoch(tracker, [1.0] * 4 + [3.5] + [3.0] * 3, CORRECT0)
        assert tracker.reason[4] == REGION_3
        skipped = [] if record_member else [4]
        record_all_but(tracker, skipped, [1.0] * 4 + [0.1] + [3.0] * 3, CORRECT0)  # Epoch 2: first of two.
        assert tracker.reason[4] == REGION_3
        summary = record_all_but(tracker, skipped, [1.0] * 4 + [0.1] + [3.0] * 3, CORRECT0)
        assert tracker.reason[4] == NOT_INTERPOLATED and summary.left_s_int == 1


def test_region3_only_admits_no_region1_sample():
    tracker = tracker_after_epoch0(regions=(3,))
    summary = run_epoch(tracker, [0.5] + [2.5] * 3 + [3.5] * 4, CORRECT0)
    assert summary.region_1 == 1 and summary.admitted_region_1 == 0
    assert tracker.s_int_indices().tolist() == [4, 5, 6, 7]
    assert tracker.s_int_indices(reason=REGION_3).tolist() == [4, 5, 6, 7]
    assert tracker.s_int_indices(reason=REGION_1).size == 0


def test_s_int_indices_by_reason():
    tracker = tracker_after_epoch0()
    run_epoch(tracker, [0.5] + [2.5] * 3 + [3.5] + [2.5] * 3, CORRECT0)
    assert tracker.s_int_indices().tolist() == [0, 4]
    assert tracker.s_int_indices(REGION_1).tolist() == [0]
    assert tracker.s_int_indices(reason=REGION_3).tolist() == [4]
    assert tracker.s_int_indices(reason=NAIVE).size == 0
    assert AmenabilityTracker(3, rules=TrackerRules(selective=False)).s_int_indices(reason=NAIVE).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="reason must be one of"):
        tracker.s_int_indices(reason=NOT_INTERPOLATED)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold_average": "mean"}, "threshold_average must be one of"),
        ({"region1_rule": "loss"}, "region1_rule must be one of"),
        ({"region3_rule": "always"}, "region3_rule must be one of"),
        ({"region3_increases": 0}, r"region3_increases must be an int in \[1, 255\]"),
        ({"region3_increases": True}, "region3_increases must be an int"),
        ({"region3_epochs": 256}, "region3_epochs must be an int"),
        ({"selective": False, "threshold_average": "ema"}, "threshold_average needs selective=True"),
        ({"regions": (3,), "region1_rule": "accuracy"}, "needs Region 1 in regions"),
        ({"regions": (1,), "region3_rule": "l_incorr"}, "region3_rule needs Region 3 in regions"),
        ({"regions": (1,), "region3_increases": 2, "region3_epochs": 2}, "region3_increases, region3_epochs need Region 3"),
        ({"region3_rule": "l_incorr", "region3_increases": 2}, "drops the increase test"),
        ({"max_group_size": 4, "regions": (3,)}, "max_group_size=4 needs Region 1"),
        ({"max_group_size": 4, "region1_rule": "avg_loss"}, "max_group_size=4 needs Region 1"),
    ],
)
def test_invalid_threshold_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AmenabilityTracker(N, rules=TrackerRules(**kwargs))


# ---------------------------------------------------------------------------------------------
# Checkpointing of the threshold settings
def assert_same_summary(a: EpochSummary, b: EpochSummary) -> None:
    da, db = a.to_dict(), b.to_dict()
    assert da.keys() == db.keys()
    for key in da:
        assert da[key] == db[key] or (math.isnan(da[key]) and math.isnan(db[key])), key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold_average": "epoch_mean"},
        {"threshold_average": "ema"},
        {"threshold_average": "last_epoch"},
        {"region1_rule": "accuracy"},
        {"region1_rule": "avg_loss", "regions": (1,)},
        {"region3_rule": "l_incorr", "region3_epochs": 2},
        {"region3_increases": 2, "regions": (3,)},
    ],
)
def test_threshold_settings_state_roundtrip(tmp_path, kwargs):
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    n = 40
    tracker = AmenabilityTracker(n, rules=TrackerRules(**kwargs))
    for _ in range(4):
        losses = rng.gamma(2.0, 1.0, n)
        tracker.record(np.arange(n), losses, losses < 2.0)
        tracker.end_epoch()
    save_file(tracker.state_dict(), tmp_path / "tracker.safetensors")
    resumed = AmenabilityTracker(n, rules=TrackerRules(**kwargs))
    resumed.load_state_dict(load_file(tmp_path / "tracker.safetensors"))
    np.testing.assert_array_equal(resumed.increases, tracker.increases)
    for _ in range(3):
        losses = rng.gamma(2.0, 1.0, n)
        for t in (tracker, resumed):
            t.record(np.arange(n), losses, losses < 2.0)
        assert_same_summary(resumed.end_epoch(), tracker.end_epoch())
        np.testing.assert_array_equal(resumed.reason, tracker.reason)
        for kind in ("pooled", "epoch_mean", "ema", "last_epoch"):
            assert resumed.averages(kind) == tracker.averages(kind)
            assert resumed.average_loss(kind) == tracker.average_loss(kind)
    with pytest.raises(ValueError, match="resume with the same"):
        AmenabilityTracker(n).load_state_dict(tracker.state_dict())


def test_state_saved_before_threshold_settings_loads_as_pooled():
    tracker = tracker_after_epoch0()
    run_epoch(tracker, [0.5, 3.5, 2.5, 2.5, 3.5, 2.5, 2.5, 2.5], CORRECT0)
    new_keys = {
        "threshold_average", "region1_rule", "region3_rule", "region3_increases", "region3_epochs",
        "epoch_mean_sum", "epoch_mean_count", "ema_mean", "last_epoch_mean", "increases", "region3_left",
    }
    old = {k: v for k, v in int_code_state(tracker).items() if k not in new_keys}
    resumed = AmenabilityTracker(N)
    resumed.load_state_dict(old)
    assert resumed.s_int_indices(reason=REGION_3).tolist() == [1, 4]
    losses = [0.1, 0.1, 0.1, 2.5, 4.0, 2.5, 3.9, 2.5]
    assert_same_summary(run_epoch(resumed, losses, CORRECT0), run_epoch(tracker, losses, CORRECT0))
    np.testing.assert_array_equal(resumed.reason, tracker.reason)  # Region-3 members 1 and 4 returned.
    assert resumed.averages() == tracker.averages()
    with pytest.raises(ValueError, match="threshold_average='pooled' but this tracker has 'ema'"):
        AmenabilityTracker(N, rules=TrackerRules(threshold_average="ema")).load_state_dict(old)


def test_mismatched_threshold_average_is_refused():
    state = AmenabilityTracker(N, rules=TrackerRules(threshold_average="ema")).state_dict()
    with pytest.raises(ValueError, match="threshold_average='ema' but this tracker has 'pooled'; resume with the same threshold_average"):
        AmenabilityTracker(N).load_state_dict(state)
    state = int_code_state(AmenabilityTracker(N, rules=TrackerRules(threshold_average="ema")))
    state["threshold_average"] = np.array([9])
    with pytest.raises(ValueError, match="corrupt"):
        AmenabilityTracker(N, rules=TrackerRules(threshold_average="ema")).load_state_dict(state)
    state = AmenabilityTracker(N, rules=TrackerRules(region3_increases=2)).state_dict()
    with pytest.raises(ValueError, match="region3_increases=2 but this tracker has 1"):
        AmenabilityTracker(N).load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# Bound on the adaptive LinAvg ratio
def test_adaptive_ratio_is_bounded_and_symmetric():
    from hf_intertrain.method.tracker import ADAPTIVE_RATIO_MIN

    assert ADAPTIVE_RATIO_MIN == 0.25
    tracker = AmenabilityTracker(6)
    tracker.record(np.arange(5), np.array([0.0, 2.0, 1e-6, 1.0, 1.5]), np.ones(5, dtype=bool))
    tracker.end_epoch()
    a, b = np.array([0, 2, 3, 0, 5]), np.array([1, 1, 4, 5, 0])
    # Zero loss -> 0.25 (not 0); about zero -> 0.25; 1/(1+1.5) = 0.4 inside the bound; unknown -> 0.5.
    assert tracker.adaptive_ratio(a, b).tolist() == [0.25, 0.25, pytest.approx(0.4), 0.5, 0.5]
    assert tracker.adaptive_ratio(b, a).tolist() == [0.75, 0.75, pytest.approx(0.6), 0.5, 0.5]


def test_a_state_saved_under_the_older_in_quads_name_loads():
    saved = int_code_state(AmenabilityTracker(6, rules=TrackerRules(max_group_size=4)))
    saved["reason"][:4] = 1
    saved["in_four_way"][:4] = True
    saved["in_quads"] = saved.pop("in_four_way")
    tracker = AmenabilityTracker(6, rules=TrackerRules(max_group_size=4))
    tracker.load_state_dict(saved)
    assert tracker.s_int_four_way_indices().tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Rules: one checked object, saved once
def test_rules_are_normalised_and_round_trip_through_json():
    rules = TrackerRules(regions=[3, 1], max_group_size=np.int64(4), region3_increases=np.int64(1))
    assert rules.regions == (1, 3) and type(rules.max_group_size) is int
    assert TrackerRules.from_dict(json.loads(json.dumps(rules.to_dict()))) == rules
    assert TrackerRules.from_dict({"region1_rule": "accuracy"}) == TrackerRules(region1_rule="accuracy")  # absent: default


def test_state_holds_the_rules_once_as_json():
    rules = TrackerRules(regions=(1,), threshold_average="ema", region1_rule="avg_loss")
    state = AmenabilityTracker(N, rules=rules).state_dict()
    assert state["rules"].dtype == np.uint8 and TrackerRules.from_dict(json.loads(state["rules"].tobytes())) == rules
    assert not {"selective", "regions", "max_group_size", "threshold_average", "region1_rule"} & set(state)


def test_a_differing_rule_is_named_and_corrupt_rules_are_refused():
    state = AmenabilityTracker(N, rules=TrackerRules(max_group_size=4, four_way_selection="region1")).state_dict()
    with pytest.raises(ValueError, match="four_way_selection='region1' but this tracker has 'robust'; resume with the same four_way_selection"):
        AmenabilityTracker(N, rules=TrackerRules(max_group_size=4)).load_state_dict(state)
    state["rules"] = np.frombuffer(b'{"region1_rule": "loss"}', dtype=np.uint8)
    with pytest.raises(ValueError, match="'rules' holds no valid TrackerRules.*corrupt"):
        AmenabilityTracker(N).load_state_dict(state)
    state["rules"] = np.frombuffer(b"\xff{", dtype=np.uint8)
    with pytest.raises(ValueError, match="corrupt"):
        AmenabilityTracker(N).load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"selective": False}, {"max_group_size": 4}, {"region1_rule": "accuracy", "threshold_average": "ema"}, {"region3_increases": 2, "regions": (3,)}],
)
def test_a_state_with_int_codes_loads_with_identical_decisions(kwargs):
    tracker = tracker_after_epoch0(**kwargs)
    run_epoch(tracker, [0.5, 0.5, 1.5, 1.5, 3.5, 3.0, 3.0, 3.0], CORRECT0)
    resumed = AmenabilityTracker(N, rules=TrackerRules(**kwargs))
    resumed.load_state_dict(int_code_state(tracker))
    for losses in ([0.5, 1.5, 2.5, 0.9, 3.0, 4.0, 3.0, 3.0], [0.1] * 4 + [3.5] * 4):
        assert_same_summary(run_epoch(resumed, losses, CORRECT0), run_epoch(tracker, losses, CORRECT0))
        np.testing.assert_array_equal(resumed.reason, tracker.reason)
        np.testing.assert_array_equal(resumed.in_four_way, tracker.in_four_way)


def test_a_state_with_int_codes_loads_under_either_four_way_selection():
    saved = int_code_state(AmenabilityTracker(N, rules=TrackerRules(max_group_size=4)))  # four_way_selection not saved
    AmenabilityTracker(N, rules=TrackerRules(max_group_size=4, four_way_selection="region1")).load_state_dict(saved)


def test_a_region1_rule_is_a_function_and_a_table_entry(monkeypatch):
    from hf_intertrain.method.tracker.decision import REGION1_RULES, Rule

    with pytest.raises(ValueError, match="region1_rule must be one of"):
        TrackerRules(region1_rule="everyone")
    monkeypatch.setitem(REGION1_RULES, "everyone", Rule(lambda records, thresholds: records.recorded, "every recorded sample"))
    tracker = tracker_after_epoch0(region1_rule="everyone")
    run_epoch(tracker, [2.5] * N, CORRECT0)
    assert tracker.s_int_indices(reason=REGION_1).tolist() == list(range(N))
