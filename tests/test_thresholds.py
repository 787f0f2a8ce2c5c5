"""ThresholdAverages: every reading of the running average of eq. 4, by hand."""

import math

import numpy as np
import pytest

from hf_intertrain.method.thresholds import EMA_DECAY, ThresholdAverages


def folded(*epochs):
    averages = ThresholdAverages()
    for sums, counts in epochs:
        averages.fold(sums, counts)
    return averages


def test_every_reading_of_two_epochs_of_different_sizes():
    # Epoch 0: 8 correct at mean 2, 2 incorrect at mean 4; epoch 1: 2 correct at mean 1, no incorrect.
    averages = folded(([16.0, 8.0], [8, 2]), ([2.0, 0.0], [2, 0]))
    assert averages.means("pooled") == pytest.approx((18 / 10, 4.0, 26 / 12))
    assert averages.means("epoch_mean") == pytest.approx(((2 + 1) / 2, 4.0, (24 / 10 + 1) / 2))
    ema_correct = EMA_DECAY * 2 + (1 - EMA_DECAY) * 1
    assert averages.means("ema") == pytest.approx((ema_correct, 4.0, EMA_DECAY * 2.4 + (1 - EMA_DECAY) * 1))
    assert averages.means("last_epoch") == pytest.approx((1.0, 4.0, 1.0))  # incorrect: the last epoch that had any


def test_undefined_until_observed_and_unknown_kind_refused():
    assert all(math.isnan(x) for x in ThresholdAverages().means("pooled"))
    assert math.isnan(folded(([3.0, 0.0], [3, 0])).means("ema")[1])
    with pytest.raises(ValueError, match="kind must be one of"):
        ThresholdAverages().means("median")


def test_state_round_trip_and_corrupt_shape_refused():
    averages = folded(([16.0, 8.0], [8, 2]), ([2.0, 3.0], [2, 1]))
    restored = ThresholdAverages()
    restored.load_state_dict(averages.state_dict())
    for kind in ("pooled", "epoch_mean", "ema", "last_epoch"):
        assert restored.means(kind) == averages.means(kind)
    state = averages.state_dict()
    state["ema_mean"] = np.zeros(2)
    with pytest.raises(ValueError, match="'ema_mean' has shape"):
        ThresholdAverages().load_state_dict(state)
