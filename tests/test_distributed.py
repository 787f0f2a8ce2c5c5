import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math
import socket
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from conftest import REPO, make_dataset, make_device_dataset, make_split, pixel_digest
from hf_intertrain.data import BatchSeededDataset, InterTrainCollator, materialize_pixels
from hf_intertrain.method.sampler import InterTrainBatchSampler, PlanRules
from hf_intertrain.method.tracker import AmenabilityTracker

NUM_SAMPLES, BATCH_SIZE, EPOCHS = 70, 8, 3  # 9 batches in epoch 0: the second process's last batch is padding
SCRIPT = REPO / "tests" / "distributed" / "train_tiny.py"
CONFIG = REPO / "recipes" / "accelerate" / "cpu_multi_process.yaml"
TRAIN_SCRIPT = REPO / "recipes" / "train.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["workers", "device"])
def launched(request, tmp_path_factory):
    """One `accelerate launch` of two CPU processes per data pipeline: an uninterrupted run, a run killed after a
    mid-epoch checkpoint in epoch 2 and resumed from it, and a misconfigured run (see tests/distributed/train_tiny.py).
    The device-path launch also mixes its singles with CutMix."""
    output_dir = tmp_path_factory.mktemp(f"distributed_{request.param}")
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CONFIG), "--num_processes", "2", "--main_process_port", str(_free_port()),
        str(SCRIPT), "--output_dir", str(output_dir), "--data_pipeline", request.param,
        "--num_samples", str(NUM_SAMPLES), "--batch_size", str(BATCH_SIZE), "--epochs", str(EPOCHS), "--resume_check",
    ]
    if request.param == "device":
        command += ["--cutmix_alpha", "1.0"]  # the device run also mixes its singles: resume and ranks must agree
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    def load(run):
        reports = [json.loads((output_dir / f"{run}_rank{r}.json").read_text()) for r in range(2)]
        trackers = [safetensors.numpy.load_file(str(output_dir / f"{run}_rank{r}.safetensors")) for r in range(2)]
        return reports, trackers

    diverging = [json.loads((output_dir / f"diverging_rank{r}.json").read_text()) for r in range(2)]
    return load("full"), load("resumed"), diverging, (request.param, tmp_path_factory.mktemp("pixels"))


def _without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "intertrain/epoch_seconds"} for row in rows]


def test_two_processes_train_one_plan_with_global_coverage(launched):
    (reports, _), _, _, _ = launched
    assert [r["num_processes"] for r in reports] == [2, 2]
    history = reports[0]["history"]
    assert [row["epoch"] for row in history] == list(range(EPOCHS))
    for row in history:
        assert row["intertrain/items"] + row["intertrain/pairs"] == NUM_SAMPLES
    assert [row["intertrain/pairs"] > 0 for row in history] == [False, False, True]
    # Each process trains its shard: ceil(batches / 2) optimizer steps per epoch, padded to the same count.
    expected = [math.ceil(math.ceil(row["intertrain/items"] / BATCH_SIZE) / 2) for row in history]
    for report in reports:
        assert report["epoch_update_steps"] == expected
        assert report["global_step"] == sum(expected)


def test_every_sample_is_recorded_and_counted_once_in_the_statistics(launched):
    (reports, _), _, _, _ = launched
    local = [np.array(r["local_counts"]) for r in reports]
    total = np.array(reports[0]["global_counts"])
    assert total.shape == (EPOCHS, NUM_SAMPLES)
    np.testing.assert_array_equal(local[0] + local[1], total)  # one all-reduce: nothing dropped or added
    np.testing.assert_array_equal(np.array(reports[1]["global_counts"]), total)
    assert (total >= 1).all()  # no sample dropped by the sharding
    assert (total <= 2).all() and (total[0] == 2).sum() == 10  # only even_batches padding is trained twice
    assert (local[0] > 0).sum(axis=1).min() > 0 and (local[1] > 0).sum(axis=1).min() > 0
    for row in reports[0]["history"][1:]:  # averages defined from epoch 1: every sample in exactly one region
        assert row["intertrain/region_1"] + row["intertrain/region_2"] + row["intertrain/region_3"] == NUM_SAMPLES


def test_both_processes_hold_the_same_tracker_and_log_the_same_statistics(launched):
    (reports, trackers), _, _, _ = launched
    assert trackers[0].keys() == trackers[1].keys()
    for key in trackers[0]:
        np.testing.assert_array_equal(trackers[0][key], trackers[1][key], err_msg=key)
    assert int(trackers[0]["epoch"][0]) == EPOCHS
    assert _without_seconds(reports[0]["history"]) == _without_seconds(reports[1]["history"])
    assert reports[0]["logged"] == reports[1]["logged"] == [
        {k: v for k, v in row.items() if k != "epoch"} for row in _without_seconds(reports[0]["history"])
    ]
    assert reports[0]["eval_loss"] == pytest.approx(reports[1]["eval_loss"], rel=1e-6)


def test_run_killed_mid_epoch_and_relaunched_ends_where_the_uninterrupted_run_ends(launched):
    (full_reports, full_trackers), (resumed_reports, resumed_trackers), _, _ = launched
    for rank in range(2):
        for key in full_trackers[rank]:
            np.testing.assert_array_equal(resumed_trackers[rank][key], full_trackers[rank][key], err_msg=key)
        assert _without_seconds(resumed_reports[rank]["history"]) == _without_seconds(full_reports[rank]["history"])
        assert resumed_reports[rank]["global_step"] == full_reports[rank]["global_step"]
        assert resumed_reports[rank]["eval_loss"] == pytest.approx(full_reports[rank]["eval_loss"], rel=1e-6)
    # Epoch 2's records: the checkpoint's (both processes' first step, restored on rank 0) plus the rest.
    full_local = [np.array(r["local_counts"])[2] for r in full_reports]
    resumed_local = [np.array(r["local_counts"])[0] for r in resumed_reports]
    np.testing.assert_array_equal(np.array(resumed_reports[0]["global_counts"])[0], full_local[0] + full_local[1])
    assert resumed_local[1].sum() < full_local[1].sum() and resumed_local[0].sum() > full_local[0].sum()
    for rank in range(2):  # every batch trained after the resume got the pixels it got in the uninterrupted run
        full = {_batch_key(entry): entry[2] for entry in full_reports[rank]["batch_digests"]}
        resumed = resumed_reports[rank]["batch_digests"]
        assert resumed and all(full[_batch_key(entry)] == entry[2] for entry in resumed)


def test_both_processes_resume_last_from_the_complete_checkpoint_they_wrote_together(launched):
    (full_reports, _), (resumed_reports, _), _, _ = launched
    step = sum(full_reports[0]["epoch_update_steps"][:2]) + 1
    for report in resumed_reports:  # the half-written checkpoint of the next step is skipped, and left in place
        assert report["resumed_from"] == f"checkpoint-{step}"
        assert report["output_dir_files"] == [f"checkpoint-{step}", f"checkpoint-{step + 1}"]  # nothing staged left
        assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= set(report["checkpoint_files"])


def _batch_key(entry: list) -> tuple:
    """(epoch, rows of every constituent) of a recorded batch digest."""
    epoch, rows, _ = entry
    return epoch, tuple(tuple(constituent) for constituent in rows)


def test_two_processes_draw_the_augmentation_a_single_process_draws_for_the_same_batch(launched):
    """Epochs 0 and 1 (no pairs yet) have the same plan in any process layout: every batch a rank trained must
    reach the model with the pixels the same batch gets when one process fetches the plan alone."""
    (reports, _), _, _, (pipeline, cache) = launched
    if pipeline == "device":
        dataset = make_device_dataset(make_split(NUM_SAMPLES, seed=0), cache, training=True)
    else:
        dataset = make_dataset(NUM_SAMPLES, seed=0, training=True)
    seeded = BatchSeededDataset(dataset, seed=0)
    sampler = InterTrainBatchSampler(AmenabilityTracker(NUM_SAMPLES), PlanRules(batch_size=BATCH_SIZE, seed=0))
    alone = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        seeded.epoch = epoch
        for keys in sampler:
            batch = materialize_pixels(InterTrainCollator()(seeded.__getitems__(keys)), "cpu")
            alone[_batch_key([epoch, *pixel_digest(batch)])] = pixel_digest(batch)[1]
    matched = 0
    for report in reports:
        for entry in report["batch_digests"]:
            if entry[0] < 2 and _batch_key(entry) in alone:
                assert alone[_batch_key(entry)] == entry[2], _batch_key(entry)
                matched += 1
    # Every full batch of both epochs; the 6-item last one is completed by even_batches from the plan's start, so
    # it is another batch, with its own draws.
    assert matched == 2 * (NUM_SAMPLES // BATCH_SIZE)


def test_processes_whose_trackers_diverge_stop_with_a_clear_error(launched):
    _, _, diverging, _ = launched
    for report in diverging:
        assert "trackers diverged across processes at epoch 2" in report["outcome"]
        assert report["epochs_closed"] == 1  # epoch 1 was judged differently; its checksum stopped the run


def test_four_way_composites_are_planned_recorded_and_decided_alike_on_both_processes(tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CONFIG), "--num_processes", "2", "--main_process_port", str(_free_port()),
        str(SCRIPT), "--output_dir", str(tmp_path),
        "--num_samples", str(NUM_SAMPLES), "--batch_size", str(BATCH_SIZE), "--epochs", "2", "--four_way", "randpatch4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"full_rank{r}.json").read_text()) for r in range(2)]
    trackers = [safetensors.numpy.load_file(str(tmp_path / f"full_rank{r}.safetensors")) for r in range(2)]

    first = reports[0]["history"][0]
    assert (first["intertrain/four_way_composites"], first["intertrain/pairs"]) == (8, 4)
    assert first["intertrain/items"] == NUM_SAMPLES - 4 - 3 * 8
    counts = np.array(reports[0]["global_counts"][0])
    # Every constituent recorded over both ranks; the 2-item last batch is padded to a full one by accelerate's
    # even_batches, so up to BATCH_SIZE - 2 items (and their constituents) are recorded twice.
    assert counts.min() == 1 and 0 < counts.sum() - NUM_SAMPLES <= 4 * (BATCH_SIZE - 2)
    assert sum(reports[0]["local_counts"][0]) + sum(reports[1]["local_counts"][0]) == counts.sum()
    assert _without_seconds(reports[0]["logged"]) == _without_seconds(reports[1]["logged"])
    for key in trackers[0]:
        np.testing.assert_array_equal(trackers[0][key], trackers[1][key], err_msg=key)


def test_readme_cpu_command_shards_one_run_over_two_processes(tmp_path):
    """The README's `accelerate launch --config_file recipes/accelerate/cpu_multi_process.yaml recipes/train.py`,
    without --use_cpu, on a machine without a GPU: two ranks, each training half the batches of one run."""
    data = tmp_path / "data"
    data.mkdir()
    make_split(48, seed=0).to_parquet(str(data / "train.parquet"))
    make_split(16, seed=1).to_parquet(str(data / "test.parquet"))
    output_dir = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CONFIG), "--main_process_port", str(_free_port()), str(TRAIN_SCRIPT),
        "--dataset_name", str(data), "--model_name", "test_resnet", "--model_kwargs", '{"output_stride": 16}',
        "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
        "--disable_tqdm", "true", "--log_level", "info", "--log_level_replica", "info", "--output_dir", str(output_dir),
    ]
    # CUDA_VISIBLE_DEVICES="" makes any machine one without a GPU, where the config's processes must use the CPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    logs = result.stdout + result.stderr
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in logs
    # Both processes see a global batch of 2 x 8; a process training alone would see 8.
    assert logs.count("Total train batch size (w. parallel, distributed & accumulation) = 16") == 2
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == math.ceil(48 / 8 / 2)  # alone, each process would take 6 steps
    assert json.loads((output_dir / "intertrain_run.json").read_text())["items_trained"] == 48


def test_two_processes_train_compiled_inside_ddp_with_one_plan(tmp_path):
    """`--torch_compile` under DDP: each process compiles its backbone once (train and eval graphs) and both still
    train one plan; a single process checks compiled against eager losses (tests/test_compile.py)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CONFIG), "--num_processes", "2", "--main_process_port", str(_free_port()),
        str(SCRIPT), "--output_dir", str(tmp_path), "--torch_compile_backend", "aot_eager",
        "--num_samples", str(NUM_SAMPLES), "--batch_size", str(BATCH_SIZE), "--epochs", str(EPOCHS),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"full_rank{r}.json").read_text()) for r in range(2)]
    trackers = [safetensors.numpy.load_file(str(tmp_path / f"full_rank{r}.safetensors")) for r in range(2)]

    assert [r["backbone_compiled"] for r in reports] == [True, True]
    assert [r["compiled_graphs"] for r in reports] == [2, 2]  # per process: the full batch, with and without gradients
    assert [row["intertrain/pairs"] > 0 for row in reports[0]["history"]] == [False, False, True]
    assert _without_seconds(reports[0]["logged"]) == _without_seconds(reports[1]["logged"])
    for key in trackers[0]:
        np.testing.assert_array_equal(trackers[0][key], trackers[1][key], err_msg=key)
    assert reports[0]["eval_loss"] == pytest.approx(reports[1]["eval_loss"], rel=1e-6)
