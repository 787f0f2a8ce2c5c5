"""Tests of hf_intertrain/method/tracker/summary.py: the `intertrain/*` statistics' names and the epoch-row join."""

import math

from hf_intertrain.method.tracker.summary import (
    EPOCH_STATISTICS, FOUR_WAY_STATISTICS, PREFIX, REGION_COUNTS, EpochSummary, PlanCounts, epoch_statistics, joined_epochs,
)

SUMMARY = EpochSummary(
    epoch=2, num_recorded=8, num_interpolated=2, region_1=3, region_2=4, region_3=1, l_corr=1.0, l_incorr=3.0,
    l_mid=2.0, next_interpolated=4, next_four_way=1,
)


def test_statistics_are_logged_under_their_names_in_order():
    plan = PlanCounts(num_samples=8, items=3, pairs=1, four_way=1, skipped=1)
    assert list(epoch_statistics(SUMMARY, plan, 0, 1.0)) == [PREFIX + name for name in EPOCH_STATISTICS]
    with_four_way = epoch_statistics(SUMMARY, plan, 0, 1.0, four_way=True)
    assert list(with_four_way) == [PREFIX + name for name in EPOCH_STATISTICS + FOUR_WAY_STATISTICS]
    assert all(type(value) is float for value in with_four_way.values())
    assert math.isnan(with_four_way["intertrain/correct_below_l_mid"]) and with_four_way["intertrain/next_four_way"] == 1


def test_joined_epochs_pair_each_epoch_with_the_evaluation_after_it():
    plan = PlanCounts(8, 6, 1, 0, 0)
    history = [{"epoch": epoch, **epoch_statistics(SUMMARY, plan, 0, 1.5)} for epoch in range(3)]
    log_history = [
        {"loss": 2.0, "epoch": 0.5},
        {"eval_top1": 0.1, "epoch": 1.0},
        {"eval_top1": 0.2, "epoch": 1.0},  # the last evaluation at an epoch wins
        {"eval_top1": 0.3, "epoch": 3.0},
        {"train_runtime": 9.0},
    ]
    rows = joined_epochs(history, log_history)
    assert [evaluation and evaluation["eval_top1"] for _, evaluation in rows] == [0.2, None, 0.3]
    assert list(rows[0][0]) == ["epoch", *EPOCH_STATISTICS] and rows[1][0]["epoch"] == 1


def test_the_card_and_the_comparison_read_logged_statistics():
    from hf_intertrain.model_card import _FIG5_KEYS, _ROW_KEYS

    assert set(_ROW_KEYS + _FIG5_KEYS) <= set(EPOCH_STATISTICS)
    assert set(REGION_COUNTS) <= set(EPOCH_STATISTICS)
    # compare_report.epoch_rows reads these from the run report's rows.
    assert {"items", "pairs", "interpolated_fraction", "four_way_composites"} <= set(EPOCH_STATISTICS + FOUR_WAY_STATISTICS)
