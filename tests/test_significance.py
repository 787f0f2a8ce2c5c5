import numpy as np
import pytest

from hf_intertrain.experiments.significance import outcome, pack_correct, paired_bootstrap, unpack_correct


@pytest.mark.parametrize("num_images", [1, 7, 8, 10_000])
def test_correctness_round_trips_through_its_packed_text(num_images):
    correct = np.random.default_rng(num_images).random(num_images) < 0.7
    text = pack_correct(correct)
    assert isinstance(text, str) and len(text) <= 4 * (num_images // 8 + 3) / 3 + 4
    np.testing.assert_array_equal(unpack_correct(text, num_images), correct)


def test_identical_runs_differ_by_nothing_with_no_spread():
    correct = np.random.default_rng(0).random(500) < 0.6
    assert paired_bootstrap([correct], [correct], resamples=200) == (0.0, 0.0, 0.0)


def test_interval_pools_seeds_and_covers_the_difference():
    generator = np.random.default_rng(1)
    peer = [generator.random(2000) < 0.70 for _ in range(3)]
    challenger = [p | (generator.random(2000) < 0.05) for p in peer]  # about 1.5 points better on every seed
    difference, low, high = paired_bootstrap(challenger, peer, resamples=500)
    expected = np.mean([c.mean() - p.mean() for c, p in zip(challenger, peer)])
    assert difference == pytest.approx(expected)
    assert 0 < low < difference < high
    assert paired_bootstrap(peer, challenger, resamples=500)[2] < 0  # the other way round: below zero
    assert paired_bootstrap(challenger, peer, resamples=500) == (difference, low, high)  # its own seed


def test_a_small_difference_on_few_images_is_within_noise():
    generator = np.random.default_rng(2)
    peer = generator.random(300) < 0.7
    challenger = peer.copy()
    challenger[:3] = ~challenger[:3]
    _, low, high = paired_bootstrap([challenger], [peer], resamples=500)
    assert outcome(low, high, 1.0, 1.05) == "within noise"


def test_outcome_needs_the_whole_interval_on_one_side_and_the_time_for_a_win():
    assert outcome(0.001, 0.02, 1.0, 1.05) == "wins"
    assert outcome(0.001, 0.02, 1.2, 1.05) == "slower"
    assert outcome(-0.02, -0.001, 0.8, 1.05) == "loses"
    assert outcome(-0.01, 0.01, 0.8, 1.05) == "within noise"


def test_the_runs_must_share_their_seeds():
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap([np.ones(3, bool)], [])
