import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import os
import time

import numpy as np
import pytest
from transformers.trainer_utils import get_last_checkpoint

from conftest import TINY_TRAINING
from hf_intertrain import InterTrainArguments
from hf_intertrain.checkpoint import (
    INTERTRAIN_META_NAME,
    INTERTRAIN_STATE_NAME,
    MID_EPOCH_SETTINGS,
    RESUME_SETTINGS,
    STAGING_DIR_NAME,
    TRAINER_STATE_NAME,
    intertrain_settings,
    last_complete_checkpoint,
    load_state,
    plan_layout,
    publish_checkpoint,
    rotate_checkpoints,
    save_state,
    saved_setting,
    staging_dir,
    steps_done_in_epoch,
)
from hf_intertrain.method.tracker import AmenabilityTracker

NUM_SAMPLES = 10
# A value other than the default for every resume setting: a setting appended to RESUME_SETTINGS needs one here.
OTHER_VALUES = {
    "interpolation": "linavg",
    "split_propagation": False,
    "adaptive_interpolation": False,
    "selective_interpolation": False,
    "amenability_regions": "1",
    "amenable_action": "skip",
    "patch_ratio": 0.25,
    "four_way": "randpatch4",
    "four_way_selection": "region1",
    "threshold_average": "ema",
    "region1_rule": "accuracy",
    "region3_rule": "l_incorr",
    "region3_increases": 2,
    "region3_epochs": 2,
    "data_selection": "infobatch",
    "random_subset_sizes": "5,5",
    "infobatch_prune_probability": 0.3,
    "infobatch_full_data_fraction": 0.25,
    "composite_loss_weight": 2.0,
    "data_pipeline": "device",
    "interpolation_off_fraction": 0.25,
    "mixup_alpha": 1.0,
    "cutmix_alpha": 1.0,
    "mixup_prob": 0.5,
    "mixup_switch_prob": 0.25,
    "mixup_mode": "elem",
    "label_smoothing_factor": 0.1,
}
# Settings whose other value needs another configuration in both runs (peer methods train without interpolation).
SHARED_OVERRIDES = {"data_selection": {"interpolation": "none"}}


def _args(tmp_path, **overrides):
    return InterTrainArguments(output_dir=str(tmp_path), **{**TINY_TRAINING, **overrides})


def _save(tmp_path, args, mid_epoch=False, **meta):
    tracker = AmenabilityTracker(NUM_SAMPLES)
    tracker.record(np.arange(4), np.linspace(0.1, 0.4, 4, dtype=np.float32), np.ones(4, dtype=bool))
    meta = {
        "settings": intertrain_settings(args, NUM_SAMPLES),
        "plan_layout": plan_layout(args, num_processes=1),
        "mid_epoch": mid_epoch,
        **meta,
    }
    checkpoint = tmp_path / "checkpoint-3"
    save_state(checkpoint, tracker.state_dict(), meta)
    return checkpoint, tracker.state_dict()


def test_state_and_meta_round_trip_through_safetensors_and_json(tmp_path):
    args = _args(tmp_path)
    checkpoint, saved = _save(tmp_path, args, history=[{"epoch": 0, "intertrain/items": 10.0}])
    assert sorted(p.name for p in checkpoint.iterdir()) == [INTERTRAIN_META_NAME, INTERTRAIN_STATE_NAME]
    state, meta = load_state(checkpoint, intertrain_settings(args, NUM_SAMPLES), plan_layout(args, 1))
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    assert meta["history"] == [{"epoch": 0, "intertrain/items": 10.0}]


def test_settings_hold_the_dataset_size_and_every_resume_setting_as_checkpoints_store_them(tmp_path):
    settings = intertrain_settings(_args(tmp_path), NUM_SAMPLES)
    assert list(settings) == ["num_samples", *RESUME_SETTINGS]
    assert settings["num_samples"] == NUM_SAMPLES
    assert settings["amenability_regions"] == [1, 3]  # the parsed regions, as every earlier checkpoint stored them
    assert set(OTHER_VALUES) == set(RESUME_SETTINGS)


@pytest.mark.parametrize("name", RESUME_SETTINGS)
def test_a_checkpoint_of_another_setting_is_refused(tmp_path, name):
    shared = SHARED_OVERRIDES.get(name, {})
    checkpoint, _ = _save(tmp_path, _args(tmp_path, **shared), mid_epoch=name in MID_EPOCH_SETTINGS)
    other = _args(tmp_path, **shared, **{name: OTHER_VALUES[name]})
    with pytest.raises(ValueError, match=f"was made with {name}=.* but this run has {name}=.*: resume with the same"):
        load_state(checkpoint, intertrain_settings(other, NUM_SAMPLES), plan_layout(other, 1))


def test_a_checkpoint_of_another_dataset_size_is_refused(tmp_path):
    args = _args(tmp_path)
    checkpoint, _ = _save(tmp_path, args)
    with pytest.raises(ValueError, match="num_samples=10 but this run has num_samples=12"):
        load_state(checkpoint, intertrain_settings(args, 12), plan_layout(args, 1))


def test_mid_epoch_checkpoint_refuses_another_plan_layout_but_an_epoch_end_accepts_it(tmp_path):
    args = _args(tmp_path)
    other = _args(tmp_path, per_device_train_batch_size=8)
    mid, _ = _save(tmp_path / "mid", args, mid_epoch=True)
    refused = "per_device_train_batch_size=16 but this run has per_device_train_batch_size=8"
    with pytest.raises(ValueError, match=refused):
        load_state(mid, intertrain_settings(other, NUM_SAMPLES), plan_layout(other, 1))
    with pytest.raises(ValueError, match="num_processes=1 but this run has num_processes=2: it was saved mid-epoch"):
        load_state(mid, intertrain_settings(args, NUM_SAMPLES), plan_layout(args, 2))
    end, _ = _save(tmp_path / "end", args, mid_epoch=False)
    load_state(end, intertrain_settings(other, NUM_SAMPLES), plan_layout(other, 2))


def test_a_checkpoint_made_before_a_setting_existed_still_loads(tmp_path):
    args = _args(tmp_path)
    checkpoint, _ = _save(tmp_path, args)
    meta = json.loads((checkpoint / INTERTRAIN_META_NAME).read_text())
    del meta["settings"]["four_way_selection"]
    (checkpoint / INTERTRAIN_META_NAME).write_text(json.dumps(meta))
    load_state(checkpoint, intertrain_settings(args, NUM_SAMPLES), plan_layout(args, 1))


def test_a_checkpoint_made_before_data_pipeline_was_recorded_loads_as_the_workers_path(tmp_path):
    checkpoint, _ = _save(tmp_path, _args(tmp_path, data_pipeline="device"), mid_epoch=True)
    assert saved_setting(checkpoint, "data_pipeline") == "device"
    meta = json.loads((checkpoint / INTERTRAIN_META_NAME).read_text())
    del meta["settings"]["data_pipeline"]
    (checkpoint / INTERTRAIN_META_NAME).write_text(json.dumps(meta))

    assert saved_setting(checkpoint, "data_pipeline") == "workers"
    workers = _args(tmp_path, data_pipeline="workers")
    load_state(checkpoint, intertrain_settings(workers, NUM_SAMPLES), plan_layout(workers, 1))
    device = _args(tmp_path, data_pipeline="device")
    with pytest.raises(ValueError, match="made with data_pipeline='workers' but this run has data_pipeline='device'"):
        load_state(checkpoint, intertrain_settings(device, NUM_SAMPLES), plan_layout(device, 1))
    assert saved_setting(tmp_path / "nowhere", "data_pipeline") is None


def test_another_data_pipeline_resumes_from_an_epochs_end_but_not_mid_epoch(tmp_path):
    device, workers = _args(tmp_path, data_pipeline="device"), _args(tmp_path, data_pipeline="workers")
    at_end, _ = _save(tmp_path / "end", device)
    load_state(at_end, intertrain_settings(workers, NUM_SAMPLES), plan_layout(workers, 1))
    mid, _ = _save(tmp_path / "mid", device, mid_epoch=True)
    with pytest.raises(ValueError, match="data_pipeline='device' but this run has data_pipeline='workers': it was saved mid-epoch"):
        load_state(mid, intertrain_settings(workers, NUM_SAMPLES), plan_layout(workers, 1))


def test_a_folder_without_intertrain_state_is_refused(tmp_path):
    args = _args(tmp_path)
    with pytest.raises(ValueError, match="not written by InterTrainTrainer"):
        load_state(tmp_path, intertrain_settings(args, NUM_SAMPLES), plan_layout(args, 1))


def test_a_resumed_global_step_is_located_in_the_recorded_variable_length_epochs():
    lengths = [6, 6, 4]
    assert steps_done_in_epoch("ckpt", 12, 2, lengths) == 0
    assert steps_done_in_epoch("ckpt", 15, 2, lengths) == 3
    assert steps_done_in_epoch("ckpt", 12, 1, lengths) == 6  # saved after epoch 1's last step, before it closed
    with pytest.raises(ValueError, match="global step 17 is not in epoch 2 of the recorded epoch lengths"):
        steps_done_in_epoch("ckpt", 17, 2, lengths)


def _checkpoint(folder, step, complete=True, age=0.0):
    """A `checkpoint-step` folder with weights, and `trainer_state.json` when complete; mtime `age` seconds ago."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        (path / TRAINER_STATE_NAME).write_text("{}")
    mtime = time.time() - age
    os.utime(path, (mtime, mtime))
    return path


def test_last_complete_checkpoint_is_the_newest_with_trainer_state_and_names_the_newer_incomplete_ones(tmp_path):
    for step in (2, 10):
        _checkpoint(tmp_path, step)
    for step in (9, 11, 12):
        _checkpoint(tmp_path, step, complete=False)
    _checkpoint(tmp_path / STAGING_DIR_NAME, 30)  # staged: not a checkpoint until renamed
    (tmp_path / "checkpoint-40").write_text("a file")
    (tmp_path / "checkpoint-final").mkdir()
    assert last_complete_checkpoint(tmp_path) == (str(tmp_path / "checkpoint-10"), ["checkpoint-12", "checkpoint-11"])


def test_last_complete_checkpoint_agrees_with_transformers_when_every_checkpoint_is_complete(tmp_path):
    for step in (3, 12, 100):
        _checkpoint(tmp_path, step)
    assert last_complete_checkpoint(tmp_path) == (get_last_checkpoint(str(tmp_path)), [])


def test_without_a_complete_checkpoint_there_is_none_and_every_incomplete_one_is_named(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") == (None, [])
    assert last_complete_checkpoint(tmp_path) == (None, [])
    _checkpoint(tmp_path, 4, complete=False)
    _checkpoint(tmp_path, 8, complete=False)
    assert last_complete_checkpoint(tmp_path) == (None, ["checkpoint-8", "checkpoint-4"])


def test_publishing_renames_the_staged_folder_replaces_one_of_the_same_step_and_removes_the_staging(tmp_path):
    old = _checkpoint(tmp_path, 5, complete=False)
    (old / "stale.bin").write_bytes(b"old")
    staged = _checkpoint(tmp_path / STAGING_DIR_NAME, 5)
    publish_checkpoint(staged, old)
    assert sorted(p.name for p in old.iterdir()) == ["model.safetensors", TRAINER_STATE_NAME]
    assert not os.path.exists(staging_dir(tmp_path))
    assert last_complete_checkpoint(tmp_path) == (str(old), [])


def test_rotation_keeps_the_newest_complete_checkpoint_and_the_kept_ones_and_leaves_incomplete_ones(tmp_path):
    best = _checkpoint(tmp_path, 1, age=50)
    for step, age in ((2, 40), (3, 30), (4, 20)):
        _checkpoint(tmp_path, step, age=age)
    _checkpoint(tmp_path, 9, complete=False, age=-3600)  # newest by mtime and by step, yet incomplete
    rotate_checkpoints(tmp_path, 2, keep=[str(best)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-4", "checkpoint-9"]
    rotate_checkpoints(tmp_path, 1, keep=[None])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-9"]
    rotate_checkpoints(tmp_path, None, keep=[])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-9"]
