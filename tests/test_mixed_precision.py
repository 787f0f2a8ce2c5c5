import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from conftest import TINY_TRAINING, make_dataset, make_model
from hf_intertrain import InterTrainArguments, InterTrainTrainer
from hf_intertrain.method.composition import compose_batch, constituent_losses, slot_logits
from hf_intertrain.method.split import unwrap_timm_model

COMMON = TINY_TRAINING
# Two RandPatch/LinAvg pairs and two singles.
KEYS = [(0, 1, 0.7), (2, 3, 0.4), (4, -1, 1.0), (5, -1, 1.0)]


def _trainer(tmp_path, dataset, **overrides):
    args = InterTrainArguments(output_dir=str(tmp_path), **{**COMMON, "num_train_epochs": 1, **overrides})
    return InterTrainTrainer(model=make_model(output_stride=16), args=args, train_dataset=dataset)


def _batch(trainer):
    return trainer.data_collator(trainer.train_dataset.__getitems__(KEYS))


def _records(trainer, inputs, dtype=None):
    """(batch loss, recorded indices and losses) of one training batch as the trainer computes them, optionally
    under CPU autocast; the same RandPatch masks every call."""
    args, model = trainer.args, trainer.model
    model.train()
    composed = compose_batch(
        inputs, interpolation=args.interpolation, four_way=args.four_way, feature_grid=trainer.feature_grid,
        patch_ratio=args.patch_ratio, split=trainer.feature_layout is not None,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = slot_logits(composed, model, lambda x: model(pixel_values=x).logits)
        loss, records = constituent_losses(logits, inputs, composed.shares)
    return loss, torch.cat([r[0] for r in records]), torch.cat([r[1] for r in records]).detach()


def test_bf16_autocast_on_cpu_trains_with_bf16_logits_and_float32_records(tmp_path):
    # bf16 matmuls are slow on CPUs without bf16 units: 48 samples, 3 epochs (pairs from epoch 2).
    trainer = _trainer(tmp_path, make_dataset(48, seed=0), bf16=True, use_cpu=True, num_train_epochs=3)
    classifier_dtypes, record_dtypes = set(), set()
    unwrap_timm_model(trainer.model).get_classifier().register_forward_hook(
        lambda module, args, output: classifier_dtypes.add(output.dtype)
    )
    add = trainer.recorder.add

    def spy(records):
        record_dtypes.update(r[1].dtype for r in records)
        add(records)

    trainer.recorder.add = spy
    initial = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()

    assert trainer.accelerator.mixed_precision == "bf16"
    assert classifier_dtypes == {torch.bfloat16}
    assert record_dtypes == {torch.float32}
    history = trainer.intertrain_history
    assert [row["intertrain/pairs"] > 0 for row in history] == [False, False, True]
    assert all(row["intertrain/nonfinite_losses"] == 0 for row in history)
    assert trainer.tracker.last_loss.dtype == np.float32 and np.isfinite(trainer.tracker.last_loss).all()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(initial, trainer.model.parameters()))


@pytest.mark.parametrize("dtype, rtol", [(torch.bfloat16, 3e-2), (torch.float16, 3e-3)], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "settings",
    [
        {"interpolation": "randpatch"},
        {"interpolation": "randpatch", "split_propagation": False},
        {"interpolation": "linavg"},
    ],
    ids=["randpatch_split", "randpatch", "linavg"],
)
def test_interpolated_losses_under_cpu_autocast_match_float32(tmp_path, tiny_train_dataset, settings, dtype, rtol):
    trainer = _trainer(tmp_path, tiny_train_dataset, **settings)
    inputs = _batch(trainer)
    assert inputs["pixel_values_b"].shape[0] == 2
    loss32, index32, recorded32 = _records(trainer, inputs)
    loss, index, recorded = _records(trainer, inputs, dtype)

    assert torch.equal(index, index32) and index.tolist() == [0, 2, 4, 5, 1, 3]
    assert recorded.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.isfinite(recorded).all()
    torch.testing.assert_close(recorded, recorded32, rtol=rtol, atol=rtol)
    torch.testing.assert_close(loss, loss32, rtol=rtol, atol=rtol)


def _fp16_scaled_step(trainer, inputs):
    """One fp16-autocast training step through a GradScaler; returns (loss, scaler, parameters before)."""
    optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.model.train()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = trainer.compute_loss(trainer.model, inputs)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, scaler, before


def test_fp16_gradscaler_steps_on_an_interpolated_batch(tmp_path, tiny_train_dataset):
    trainer = _trainer(tmp_path, tiny_train_dataset)
    inputs = _batch(trainer)
    loss, scaler, before = _fp16_scaled_step(trainer, inputs)

    assert scaler.get_scale() == 2.0**10  # no overflow, so the scale is kept and the step was taken
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    trainer.recorder.flush()
    assert trainer.recorder.nonfinite_losses == 0 and trainer.tracker.epoch_buffers()[2].sum() == 6


def test_overflowing_fp16_step_is_skipped_and_its_losses_are_not_recorded(tmp_path, tiny_train_dataset):
    trainer = _trainer(tmp_path, tiny_train_dataset)
    inputs = _batch(trainer)
    steps = []
    add = trainer.recorder.add
    trainer.recorder.add = lambda records: (steps.append(torch.cat([r[1] for r in records])), add(records))
    with torch.no_grad():
        unwrap_timm_model(trainer.model).get_classifier().weight.mul_(1e6)  # fp16 logits overflow to inf
    loss, scaler, before = _fp16_scaled_step(trainer, inputs)

    assert not torch.isfinite(loss)
    assert scaler.get_scale() < 2.0**10  # the GradScaler skipped the step
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    nonfinite = int((~torch.isfinite(steps[-1])).sum())
    trainer.recorder.flush()  # the tracker would raise on a non-finite loss
    loss_sum, _, count = trainer.tracker.epoch_buffers()
    assert trainer.recorder.nonfinite_losses == nonfinite > 0
    assert count.sum() == 6 - nonfinite and np.isfinite(loss_sum).all()

    trainer.callback_handler.on_epoch_end(trainer.args, trainer.state, trainer.control)  # closes the epoch
    assert trainer.intertrain_history[-1]["intertrain/nonfinite_losses"] == float(nonfinite)
    assert trainer.recorder.nonfinite_losses == 0
