"""Tests of hf_intertrain/data/rng.py: seeding the host generators for a block and restoring them after it."""

import random

import numpy as np
import pytest
import torch

from hf_intertrain.data import preserved_host_rngs


def host_states() -> tuple:
    return random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()


def assert_states_equal(before: tuple, after: tuple) -> None:
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    assert torch.equal(after[2], before[2])


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


@pytest.mark.parametrize("seeds", [None, (1, 2, 3)])
def test_all_three_generators_are_restored_after_the_block(seeds):
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    before = host_states()

    with preserved_host_rngs(seeds):
        draws()

    assert_states_equal(before, host_states())


def test_generators_are_restored_when_the_block_raises():
    before = host_states()

    with pytest.raises(KeyError), preserved_host_rngs((1, 2, 3)):
        draws()
        raise KeyError("boom")

    assert_states_equal(before, host_states())


def test_the_same_seeds_give_the_same_draws_and_other_seeds_other_draws():
    with preserved_host_rngs((11, 22, 33)):
        first = draws()
    draws()  # draws between the blocks must not matter
    with preserved_host_rngs((11, 22, 33)):
        again = draws()
    with preserved_host_rngs((11, 22, 34)):
        other = draws()

    assert first == again
    assert other[:2] == first[:2] and other[2] != first[2]  # each seed drives its own generator


def test_seeds_go_to_python_numpy_and_torch_in_that_order():
    with preserved_host_rngs((7, 8, 9)):
        seeded = draws()
    random.seed(7), np.random.seed(8), torch.manual_seed(9)

    assert seeded == draws()


def test_seeds_must_be_three():
    with pytest.raises(ValueError, match="seeds must be three ints"), preserved_host_rngs((1, 2)):
        pass
