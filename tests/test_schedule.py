import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import get_scheduler

from hf_intertrain.method.schedule import EpochProgress, follow_epoch_progress, nominal_update_steps_per_epoch


def _optimizer(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_nominal_step_maps_each_epoch_onto_a_full_nominal_epoch():
    progress = EpochProgress(nominal_steps_per_epoch=10)
    progress.begin_epoch(epoch=2, steps_before_epoch=25, steps_in_epoch=4)
    assert progress.nominal_step(25) == 20
    assert progress.nominal_step(27) == 25
    assert progress.nominal_step(29) == 30


def test_linear_schedule_reaches_zero_exactly_at_the_last_step_of_shrinking_epochs():
    optimizer = _optimizer()
    epoch_steps = [10, 10, 7, 5]
    progress = EpochProgress(nominal_steps_per_epoch=10)
    scheduler = follow_epoch_progress(
        get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=40), progress
    )
    lrs, done = [], 0
    for epoch, steps in enumerate(epoch_steps):
        progress.begin_epoch(epoch, done, steps)
        for _ in range(steps):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            done += 1
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert min(lrs) > 0
    # the LR at the start of each epoch equals the plain schedule's LR at the start of that epoch
    starts = [0, 10, 20, 27]
    for epoch, start in enumerate(starts):
        assert lrs[start] == pytest.approx(1.0 - epoch * 10 / 40)


def test_non_lambda_schedulers_are_left_unchanged():
    optimizer = _optimizer()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    assert follow_epoch_progress(plateau, EpochProgress(5)) is plateau


def test_nominal_steps_per_epoch_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        EpochProgress(nominal_steps_per_epoch=0)


def test_nominal_epoch_counts_the_optimizer_steps_of_n_singles_per_process():
    assert nominal_update_steps_per_epoch(96, 16, drop_last=False, num_processes=1, accumulation_steps=1) == 6
    assert nominal_update_steps_per_epoch(100, 16, drop_last=False, num_processes=1, accumulation_steps=1) == 7
    assert nominal_update_steps_per_epoch(100, 16, drop_last=True, num_processes=1, accumulation_steps=1) == 6
    assert nominal_update_steps_per_epoch(100, 16, drop_last=False, num_processes=2, accumulation_steps=2) == 2
    assert nominal_update_steps_per_epoch(4, 16, drop_last=True, num_processes=1, accumulation_steps=1) == 1
