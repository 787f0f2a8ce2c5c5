import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import random
import shutil

import numpy as np
import pytest
import safetensors.numpy
import torch
from transformers import TrainerCallback

from conftest import TINY_TRAINING, comparable_history, make_dataset, make_device_dataset, make_model, make_split, with_four_way_members
from hf_intertrain import InterTrainArguments, InterTrainTrainer
from hf_intertrain.data import BatchSeededDataset
from hf_intertrain.checkpoint import INTERTRAIN_META_NAME, INTERTRAIN_STATE_NAME

NUM_SAMPLES = 88  # 5 full batches of 16 and one of 8
COMMON = dict(TINY_TRAINING, num_train_epochs=5, logging_strategy="epoch", save_strategy="epoch")


class SaveAtSteps(TrainerCallback):
    def __init__(self, steps):
        self.steps = set(steps)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            control.should_save = True


class Preempted(Exception):
    pass


class DieAfterSave(SaveAtSteps):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            raise Preempted


@pytest.fixture(scope="module")
def data():
    # Random crops and flips: a resumed run must redraw the augmentation of the batches it has left.
    return make_dataset(NUM_SAMPLES, seed=0, training=True), make_dataset(40, seed=3)


def _trainer(output_dir, data, model_seed=0, callbacks=(), train_dataset=None, **overrides):
    train, evaluation = data
    args = InterTrainArguments(output_dir=str(output_dir), **{**COMMON, **overrides})
    return InterTrainTrainer(
        model=make_model(output_stride=16, drop_rate=0.3, seed=model_seed),  # dropout: the RNGs must resume too
        args=args,
        train_dataset=train if train_dataset is None else train_dataset,
        eval_dataset=evaluation,
        callbacks=list(callbacks),
    )


def _outcome(trainer):
    """What must not depend on an interruption: statistics, tracker, weights, schedule, final eval loss."""
    history = comparable_history(trainer.intertrain_history)
    logged = comparable_history([entry for entry in trainer.state.log_history if "intertrain/items" in entry])
    return {
        "history": history,
        "logged": logged,
        "tracker": trainer.tracker.state_dict(),
        "params": [p.detach().clone() for p in trainer.model.parameters()],
        "global_step": trainer.state.global_step,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "eval_loss": trainer.evaluate()["eval_loss"],
    }


def _assert_same_outcome(resumed, reference):
    assert resumed["global_step"] == reference["global_step"]
    assert resumed["history"] == reference["history"]
    assert resumed["logged"] == reference["logged"]
    assert resumed["tracker"].keys() == reference["tracker"].keys()
    for key, value in reference["tracker"].items():
        np.testing.assert_array_equal(resumed["tracker"][key], value, err_msg=key)
    for p, q in zip(resumed["params"], reference["params"]):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert resumed["lr"] == pytest.approx(reference["lr"], abs=1e-12)
    assert resumed["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-6)


@pytest.fixture(scope="module")
def references(tmp_path_factory, data):
    """Uninterrupted runs that leave checkpoints behind: A at every epoch end and at mid-epoch steps 3 (epoch 0)
    and 14 (epoch 2, interpolating); B with gradient accumulation 2 at every optimizer step, so its epoch-end
    steps are saved before the epoch is closed."""
    runs = {}
    for name, overrides, callbacks in (
        ("A", {"save_strategy": "epoch"}, [SaveAtSteps([3, 14])]),
        ("B", {"save_strategy": "steps", "save_steps": 1, "gradient_accumulation_steps": 2}, []),
    ):
        output_dir = tmp_path_factory.mktemp(f"reference_{name}")
        trainer = _trainer(output_dir, data, callbacks=callbacks, **overrides)
        trainer.train()
        runs[name] = (output_dir, overrides, trainer.epoch_update_steps, _outcome(trainer))
    return runs


def test_references_interpolate_from_epoch_2_with_shrinking_epochs(references):
    _, _, steps, outcome = references["A"]
    pairs = [row["intertrain/pairs"] for row in outcome["history"]]
    assert pairs[:2] == [0, 0] and all(p > 0 for p in pairs[2:])
    assert steps[:2] == [6, 6] and all(s < 6 for s in steps[2:])
    assert steps[2] >= 3  # so that step 14 is inside epoch 2
    _, _, steps_b, _ = references["B"]
    assert steps_b[:2] == [3, 3] and steps_b[2] >= 2  # so that step 7 is inside epoch 2


@pytest.mark.parametrize(
    "reference, step",
    [
        pytest.param("A", 3, id="mid_epoch_0"),
        pytest.param("A", 12, id="end_of_epoch_1"),
        pytest.param("A", 14, id="mid_interpolating_epoch_2"),
        pytest.param("B", 3, id="accumulation_saved_before_epoch_0_closed"),
        pytest.param("B", 7, id="accumulation_mid_epoch_2"),
    ],
)
def test_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path, data, references, reference, step):
    output_dir, overrides, steps, outcome = references[reference]
    checkpoint = tmp_path / f"checkpoint-{step}"
    shutil.copytree(output_dir / f"checkpoint-{step}", checkpoint)
    # Different initial weights: everything that matters must come from the checkpoint.
    resumed = _trainer(tmp_path, data, model_seed=7, **{**overrides, "save_strategy": "no"})
    resumed.train(resume_from_checkpoint=str(checkpoint))
    _assert_same_outcome(_outcome(resumed), outcome)


def test_run_killed_mid_epoch_loses_no_history_and_resumes_the_same_plan(tmp_path, data, references):
    _, _, _, outcome = references["A"]
    killed = _trainer(tmp_path, data, callbacks=[DieAfterSave([14])], save_strategy="epoch")
    with pytest.raises(Preempted):
        killed.train()

    resumed = _trainer(tmp_path, data, model_seed=7, save_strategy="epoch")
    resumed.load_intertrain_state(str(tmp_path / "checkpoint-14"))
    assert resumed.tracker.epoch == 2
    assert [row["epoch"] for row in resumed.intertrain_history] == [0, 1]
    assert comparable_history(resumed.intertrain_history) == comparable_history(killed.intertrain_history)
    # The 2 steps of epoch 2 done before the kill are in the checkpoint: 32 items, pairs giving two records.
    killed.recorder.flush()
    np.testing.assert_array_equal(resumed.tracker.epoch_buffers()[2], killed.tracker.epoch_buffers()[2])
    assert resumed.tracker.epoch_buffers()[2].sum() > 32

    resumed = _trainer(tmp_path, data, model_seed=7, save_strategy="epoch")
    resumed.train(resume_from_checkpoint=True)  # the last checkpoint of output_dir
    _assert_same_outcome(_outcome(resumed), outcome)


def test_checkpoint_holds_the_intertrain_state_as_safetensors_and_json(references):
    output_dir, _, steps, _ = references["A"]
    mid = output_dir / "checkpoint-3"
    state = safetensors.numpy.load_file(str(mid / INTERTRAIN_STATE_NAME))
    meta = json.loads((mid / INTERTRAIN_META_NAME).read_text())
    assert int(state["epoch"][0]) == 0 and state["epoch_count"].sum() == 3 * 16
    assert meta["mid_epoch"] is True and meta["epoch_update_steps"] == [6]
    assert meta["settings"]["num_samples"] == NUM_SAMPLES and meta["plan_layout"]["per_device_train_batch_size"] == 16
    end = output_dir / "checkpoint-12"
    state = safetensors.numpy.load_file(str(end / INTERTRAIN_STATE_NAME))
    meta = json.loads((end / INTERTRAIN_META_NAME).read_text())
    assert int(state["epoch"][0]) == 2 and state["epoch_count"].sum() == 0
    assert meta["mid_epoch"] is False and [row["epoch"] for row in meta["history"]] == [0, 1]
    for checkpoint in (mid, end):
        assert sorted(p.name for p in checkpoint.glob("intertrain*")) == [INTERTRAIN_META_NAME, INTERTRAIN_STATE_NAME]


def test_checkpoint_of_another_dataset_size_is_refused(tmp_path, data, references):
    output_dir, _, _, _ = references["A"]
    trainer = _trainer(tmp_path, data, train_dataset=make_dataset(80, seed=0), save_strategy="epoch")
    with pytest.raises(ValueError, match="num_samples=88 but this run has num_samples=80"):
        trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-12"))


def test_checkpoint_of_other_intertrain_settings_is_refused(tmp_path, data, references):
    output_dir, _, _, _ = references["A"]
    trainer = _trainer(tmp_path, data, interpolation="linavg", save_strategy="epoch")
    with pytest.raises(ValueError, match="interpolation='randpatch' but this run has interpolation='linavg'"):
        trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-12"))


def test_mid_epoch_checkpoint_refuses_another_batch_size_but_an_epoch_end_accepts_it(tmp_path, data, references):
    output_dir, _, _, _ = references["A"]
    trainer = _trainer(tmp_path / "mid", data, per_device_train_batch_size=8, save_strategy="no")
    refused = "per_device_train_batch_size=16 but this run has per_device_train_batch_size=8"
    with pytest.raises(ValueError, match=refused):
        trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-14"))

    trainer = _trainer(tmp_path / "end", data, per_device_train_batch_size=8, save_strategy="no")
    trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-12"))
    assert [row["epoch"] for row in trainer.intertrain_history] == [0, 1, 2, 3, 4]
    for row in trainer.intertrain_history:
        assert row["intertrain/items"] + row["intertrain/pairs"] == NUM_SAMPLES
    assert trainer.epoch_update_steps[:2] == [6, 6] and trainer.epoch_update_steps[2] > 6


def test_checkpoint_without_intertrain_state_is_refused(tmp_path, data, references):
    output_dir, _, _, _ = references["A"]
    checkpoint = tmp_path / "checkpoint-12"
    shutil.copytree(output_dir / "checkpoint-12", checkpoint)
    (checkpoint / INTERTRAIN_META_NAME).unlink()
    trainer = _trainer(tmp_path, data, save_strategy="no")
    with pytest.raises(ValueError, match="not written by InterTrainTrainer"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_batch_augmentation_depends_on_the_plan_and_leaves_global_rngs_untouched(data):
    train, _ = data
    seeded = BatchSeededDataset(train, seed=0)
    keys = [(3, 5, 0.5), (7, -1, 1.0)]
    first = seeded.__getitems__(keys)
    random.random(), np.random.rand(), torch.rand(1)  # other draws in between must not matter
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    again = seeded.__getitems__(keys)
    assert random.getstate() == states[0]
    np.testing.assert_array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    for a, b in zip(first, again):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["sample_index"] == b["sample_index"]
    assert torch.equal(first[0]["pixel_values_b"], again[0]["pixel_values_b"])
    # Another epoch, or the same sample in another batch, is augmented afresh.
    seeded.epoch = 1
    other_epoch = seeded.__getitems__(keys)
    seeded.epoch = 0
    other_batch = seeded.__getitems__([(7, -1, 1.0)])
    assert not all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(first, other_epoch))
    assert not torch.equal(first[1]["pixel_values"], other_batch[0]["pixel_values"])


def test_augmentation_does_not_depend_on_dataloader_workers(tmp_path, data):
    results = []
    for workers in (0, 2):
        trainer = _trainer(
            tmp_path / str(workers), data, num_train_epochs=1, save_strategy="no", dataloader_num_workers=workers
        )
        trainer.train()
        results.append([p.detach().clone() for p in trainer.model.parameters()])
    for p, q in zip(*results):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("four_way", ["randpatch4", "mosaic4"])
def test_resume_mid_epoch_with_four_way_composites_ends_where_the_uninterrupted_run_ends(tmp_path, data, four_way):
    settings = {"four_way": four_way, "num_train_epochs": 3, "save_strategy": "no"}
    reference = with_four_way_members(_trainer(tmp_path / "reference", data, callbacks=[SaveAtSteps([2])], **settings))
    reference.train()
    assert reference.intertrain_history[0]["intertrain/four_way_composites"] == 8
    assert reference.epoch_update_steps[0] == 4  # 88 - 4 - 24 = 60 items in batches of 16
    checkpoint = tmp_path / "reference" / "checkpoint-2"
    assert safetensors.numpy.load_file(str(checkpoint / INTERTRAIN_STATE_NAME))["in_four_way"][:32].all()

    resumed = _trainer(tmp_path / "resumed", data, model_seed=7, **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    _assert_same_outcome(_outcome(resumed), _outcome(reference))


def test_device_pipeline_resumed_mid_epoch_ends_where_the_uninterrupted_run_ends(tmp_path_factory, tmp_path):
    cache = tmp_path_factory.mktemp("pixels")
    data = (
        make_device_dataset(make_split(NUM_SAMPLES, seed=0), cache, training=True),  # cropped and flipped on the device
        make_device_dataset(make_split(40, seed=3), cache, split_name="test"),
    )
    settings = {"num_train_epochs": 3, "save_strategy": "no", "data_pipeline": "device"}
    reference = _trainer(tmp_path / "reference", data, callbacks=[SaveAtSteps([14])], **settings)
    reference.train()
    checkpoint = tmp_path / "reference" / "checkpoint-14"
    meta = json.loads((checkpoint / INTERTRAIN_META_NAME).read_text())
    assert meta["mid_epoch"] is True and meta["settings"]["data_pipeline"] == "device"
    assert reference.intertrain_history[2]["intertrain/pairs"] > 0

    resumed = _trainer(tmp_path / "resumed", data, model_seed=7, **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    _assert_same_outcome(_outcome(resumed), _outcome(reference))


def test_resume_mid_epoch_with_cutmix_and_mixup_ends_where_the_uninterrupted_run_ends(tmp_path, data):
    settings = {"cutmix_alpha": 1.0, "mixup_alpha": 1.0, "label_smoothing_factor": 0.1, "num_train_epochs": 4}
    reference = _trainer(tmp_path / "reference", data, callbacks=[SaveAtSteps([14])], save_strategy="no", **settings)
    reference.train()
    assert reference.intertrain_history[2]["intertrain/pairs"] > 0  # step 14 is inside an interpolating epoch
    unmixed = _trainer(tmp_path / "unmixed", data, save_strategy="no", num_train_epochs=4)
    unmixed.train()
    assert unmixed.evaluate()["eval_loss"] != pytest.approx(reference.evaluate()["eval_loss"], rel=1e-6)

    resumed = _trainer(tmp_path / "resumed", data, model_seed=7, save_strategy="no", **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "reference" / "checkpoint-14"))
    _assert_same_outcome(_outcome(resumed), _outcome(reference))
