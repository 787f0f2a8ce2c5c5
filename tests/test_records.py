import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from hf_intertrain.method.records import RECORD_FLUSH_EVERY, LossRecorder
from hf_intertrain.method.tracker import AmenabilityTracker
from hf_intertrain.method.tracker.summary import PlanCounts, epoch_statistics

NUM_SAMPLES = 8


@dataclass
class FakeAccelerator:
    """The accelerator as the recorder sees it: `peers` other processes that recorded exactly what this one did,
    or, with `peer_offset`, whose checksum differs by that much."""

    num_processes: int = 1
    is_main_process: bool = True
    peer_offset: float = 0.0
    device: torch.device = torch.device("cpu")

    def reduce(self, tensor, reduction="sum"):
        assert reduction == "sum"
        return tensor * self.num_processes

    def gather(self, tensor):
        peers = [tensor + self.peer_offset] * (self.num_processes - 1)
        return torch.cat([tensor, *peers])


def _step(indices, losses, correct=None):
    """One step's records: a single slot of constituents."""
    losses = torch.tensor(losses, dtype=torch.float32)
    correct = torch.ones(len(indices), dtype=torch.bool) if correct is None else torch.tensor(correct)
    return [(torch.tensor(indices), losses, correct)]


def _recorder(**kwargs):
    return LossRecorder(AmenabilityTracker(NUM_SAMPLES), **kwargs)


def test_records_stay_on_the_device_until_every_flush_every_steps():
    recorder = _recorder()
    for step in range(RECORD_FLUSH_EVERY - 1):
        recorder.add(_step([step % NUM_SAMPLES], [0.5]))
    assert recorder.pending_steps == RECORD_FLUSH_EVERY - 1
    assert recorder.tracker.epoch_buffers()[2].sum() == 0
    recorder.add(_step([0], [0.5]))
    assert recorder.pending_steps == 0
    assert recorder.tracker.epoch_buffers()[2].sum() == RECORD_FLUSH_EVERY


def test_slots_of_a_step_are_recorded_together_and_detached():
    recorder = _recorder(flush_every=1)
    loss = torch.tensor([0.25, 1.5], requires_grad=True)
    recorder.add(
        [(torch.tensor([3]), loss[:1] * 1, torch.tensor([True])), (torch.tensor([5]), loss[1:] * 1, torch.tensor([False]))]
    )
    loss_sum, correct_count, count = recorder.tracker.epoch_buffers()
    assert count.tolist() == [0, 0, 0, 1, 0, 1, 0, 0]
    assert loss_sum[[3, 5]].tolist() == [0.25, 1.5] and correct_count[[3, 5]].tolist() == [1, 0]


def test_non_finite_losses_are_counted_and_not_recorded():
    recorder = _recorder()
    recorder.add(_step([0, 1, 2, 3], [0.5, float("inf"), float("nan"), 0.7]))
    recorder.flush()
    loss_sum, _, count = recorder.tracker.epoch_buffers()
    assert recorder.nonfinite_losses == 2
    assert count.tolist() == [1, 0, 0, 1, 0, 0, 0, 0] and np.isfinite(loss_sum).all()


def test_closing_the_epoch_reports_the_non_finite_count_and_restarts_it():
    recorder = _recorder()
    recorder.add(_step(list(range(NUM_SAMPLES)), [0.5] * (NUM_SAMPLES - 1) + [float("inf")]))
    summary, nonfinite = recorder.close_epoch(FakeAccelerator())
    assert (summary.epoch, nonfinite, recorder.nonfinite_losses) == (0, 1, 0)
    assert recorder.tracker.epoch == 1 and recorder.tracker.epoch_buffers()[2].sum() == 0


def test_one_process_reduce_and_checksum_change_nothing():
    recorder = _recorder()
    recorder.add(_step([0, 1, 1], [0.5, 0.25, float("inf")]))
    recorder.flush()
    before = [b.copy() for b in recorder.tracker.epoch_buffers()]
    assert recorder.reduce_epoch(FakeAccelerator()) == 1
    for a, b in zip(before, recorder.tracker.epoch_buffers()):
        np.testing.assert_array_equal(a, b)
    recorder.check_ranks_agree(FakeAccelerator())
    state, nonfinite = recorder.global_state(FakeAccelerator(), at_epoch_boundary=False)
    assert nonfinite == 1 and state["epoch_count"].tolist() == before[2].tolist()


def test_reduce_sums_every_process_records_and_non_finite_counts():
    recorder = _recorder()
    recorder.add(_step([0, 1, 1], [0.5, 0.25, float("inf")]))
    recorder.flush()
    loss_sum, correct_count, count = (b.copy() for b in recorder.tracker.epoch_buffers())
    assert recorder.reduce_epoch(FakeAccelerator(num_processes=2)) == 2
    summed = recorder.tracker.epoch_buffers()
    np.testing.assert_array_equal(summed[0], 2 * loss_sum)
    np.testing.assert_array_equal(summed[1], 2 * correct_count)
    np.testing.assert_array_equal(summed[2], 2 * count)


def test_mid_epoch_global_state_holds_all_processes_records_but_each_keeps_its_own():
    recorder = _recorder()
    recorder.add(_step([2, 3], [0.5, 0.75]))
    recorder.flush()
    own = recorder.tracker.epoch_buffers()[2].copy()
    state, _ = recorder.global_state(FakeAccelerator(num_processes=2), at_epoch_boundary=False)
    np.testing.assert_array_equal(state["epoch_count"], 2 * own)
    np.testing.assert_array_equal(recorder.tracker.epoch_buffers()[2], own)


def test_ranks_whose_trackers_agree_pass_and_diverging_ones_stop():
    recorder = _recorder()
    recorder.add(_step(list(range(NUM_SAMPLES)), [0.1 * (i + 1) for i in range(NUM_SAMPLES)]))
    recorder.close_epoch(FakeAccelerator())
    recorder.check_ranks_agree(FakeAccelerator(num_processes=2))
    with pytest.raises(RuntimeError, match="trackers diverged across processes at epoch 1"):
        recorder.check_ranks_agree(FakeAccelerator(num_processes=2, peer_offset=1.0))


def test_restored_epoch_records_are_kept_by_the_main_process_only():
    recorder = _recorder()
    recorder.add(_step([0, 1], [0.5, 0.25]))
    recorder.flush()
    state = recorder.tracker.state_dict()
    main, other = _recorder(), _recorder()
    main.restore(state, 3, FakeAccelerator(num_processes=2))
    other.restore(state, 3, FakeAccelerator(num_processes=2, is_main_process=False))
    assert main.tracker.epoch_buffers()[2].sum() == 2 and main.nonfinite_losses == 3
    assert other.tracker.epoch_buffers()[2].sum() == 0 and other.nonfinite_losses == 0
    np.testing.assert_array_equal(other.tracker.last_loss, main.tracker.last_loss)


def test_epoch_statistics_count_the_plan_and_the_decisions():
    recorder = _recorder()
    recorder.add(_step(list(range(NUM_SAMPLES)), [0.5] * NUM_SAMPLES))
    summary, _ = recorder.close_epoch(FakeAccelerator())
    plan = PlanCounts(num_samples=8, items=3, pairs=1, four_way=1, skipped=1)
    stats = epoch_statistics(summary, plan, nonfinite_losses=2, seconds=1.5, four_way=True)
    assert stats["intertrain/interpolated_fraction"] == 6 / 8
    assert (stats["intertrain/items"], stats["intertrain/pairs"], stats["intertrain/skipped"]) == (3, 1, 1)
    assert (stats["intertrain/four_way_composites"], stats["intertrain/constituents_per_item"]) == (1, 7 / 3)
    assert stats["intertrain/nonfinite_losses"] == 2 and stats["intertrain/epoch_seconds"] == 1.5
    pairs_only = epoch_statistics(summary, plan, 0, 1.0)
    assert not any(key in pairs_only for key in ("intertrain/four_way_composites", "intertrain/next_four_way"))
