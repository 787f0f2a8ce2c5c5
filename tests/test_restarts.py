"""Restarts with `--resume_from_checkpoint last` always make progress: a checkpoint is written whole or not at all,
`last` resumes from the newest complete one, and rotation keeps it (docs/method.md, "Distributed training and resume").

The runs are real `hf-intertrain train` processes, killed with SIGKILL. They are forked from a server that imported
torch, transformers and hf_intertrain once, so a restart costs what a resume costs, not an interpreter start.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools
import json
import multiprocessing
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from conftest import TINY_TRAINING, make_dataset, make_model, make_split
from hf_intertrain import InterTrainArguments, InterTrainTrainer
from hf_intertrain.checkpoint import STAGING_DIR_NAME, TRAINER_STATE_NAME, last_complete_checkpoint

NUM_TRAIN, NUM_EVAL, EPOCHS = 48, 16, 5  # 3 steps in epochs 0 and 1, fewer once pairs are planned: 12 in all
RUN_FLAGS = [
    "--model_name", "test_resnet", "--model_kwargs", '{"output_stride": 16}', "--image_size", "32",
    "--per_device_train_batch_size", "16", "--learning_rate", "0.05",
    "--optim", "sgd", "--seed", "0", "--eval_strategy", "epoch", "--logging_strategy", "epoch",
    "--save_strategy", "steps", "--save_steps", "1",
    "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--report_to", "none",
]  # fmt: skip
LAST = ["--resume_from_checkpoint", "last"]
EVENTS_PER_SAVE = 18  # calls of `_write_points` per checkpoint, before and after each
LIMIT = ["--save_total_limit", "2"]  # the killed runs rotate; the references keep every checkpoint


# ----------------------------------------------------------------------------------------------
# Training processes that kill themselves
# ----------------------------------------------------------------------------------------------


def _write_points():
    """(owner, name) of every function that writes part of a checkpoint: InterTrain's state, the weights, the timm
    config, torch.save (training args, optimizer, scheduler, RNG state), the Trainer state and the rename. A save
    calls them in this order, but for the training args, saved before the timm config."""
    import transformers.modeling_utils
    import transformers.trainer_callback

    import hf_intertrain.trainer

    return [
        (hf_intertrain.trainer, "save_state"),
        (transformers.modeling_utils, "safe_save_file"),
        (hf_intertrain.trainer, "make_loadable"),
        (torch, "save"),
        (transformers.trainer_callback.TrainerState, "save_to_json"),
        (hf_intertrain.trainer, "publish_checkpoint"),
    ]


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _train(argv: list[str], log_path: str, datasets_cache: str, kill: tuple | None) -> None:
    """`hf-intertrain train argv` in this process, its output in `log_path`; `kill` is None, ("event", n): SIGKILL
    before or after the n-th call of a write point, counting both, or ("seconds", s): SIGKILL after s seconds."""
    import datasets

    from hf_intertrain.cli import main

    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    datasets.config.HF_DATASETS_CACHE = Path(datasets_cache)
    torch.set_num_threads(1)  # every attempt alike, and fast beside other work on a small machine
    if kill is not None and kill[0] == "seconds":
        timer = threading.Timer(kill[1], _die)
        timer.daemon = True
        timer.start()
    if kill is not None and kill[0] == "event":
        events = itertools.count(1)

        def tick():
            if next(events) == kill[1]:
                _die()

        for owner, name in _write_points():
            original = getattr(owner, name)

            def wrapped(*args, _original=original, **kwargs):
                tick()
                result = _original(*args, **kwargs)
                tick()
                return result

            setattr(owner, name, wrapped)
    sys.exit(main(["train", *argv]))


class Launcher:
    """Starts `_train` in processes forked from a server that has imported hf_intertrain (multiprocessing's
    forkserver), and waits for each."""

    def __init__(self, datasets_cache: Path):
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["hf_intertrain.cli", "hf_intertrain.experiments.run"])
        self.datasets_cache = str(datasets_cache)

    def run(self, argv: list[str], log_path: Path, kill: tuple | None = None, timeout: float = 300) -> int:
        process = self.context.Process(target=_train, args=(argv, str(log_path), self.datasets_cache, kill))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise AssertionError(f"training did not end within {timeout} s; see {log_path}")
        return process.exitcode


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    return Launcher(tmp_path_factory.mktemp("datasets_cache"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    make_split(NUM_TRAIN, seed=0).to_parquet(str(folder / "train.parquet"))
    make_split(NUM_EVAL, seed=1).to_parquet(str(folder / "test.parquet"))
    return folder


def _flags(dataset: Path, output_dir: Path, pipeline: str, epochs: int = EPOCHS) -> list[str]:
    paths = ["--dataset_name", str(dataset), "--output_dir", str(output_dir)]
    return [*RUN_FLAGS, *paths, "--data_pipeline", pipeline, "--num_train_epochs", str(epochs)]


def _outcome(output_dir: Path) -> dict:
    """What must not depend on interruptions: the run report's per-epoch statistics and evaluations (without
    seconds), its final accuracy and steps, the logged statistics and evaluations, and the final weights."""
    report = json.loads((output_dir / "intertrain_run.json").read_text())
    seconds = ("epoch_seconds", "cumulative_train_seconds")
    epochs = [{k: v for k, v in row.items() if k not in seconds} for row in report["epochs"]]
    history = json.loads((output_dir / TRAINER_STATE_NAME).read_text())["log_history"]
    logged = [
        {k: v for k, v in entry.items() if k.startswith("intertrain/") and k != "intertrain/epoch_seconds"}
        | {k: v for k, v in entry.items() if k in ("eval_loss", "eval_top1", "epoch", "step")}
        for entry in history
        if "intertrain/items" in entry or "eval_loss" in entry
    ]
    return {
        "epochs": json.loads(json.dumps(epochs).replace("NaN", '"nan"')),
        "logged": json.loads(json.dumps(logged).replace("NaN", '"nan"')),
        "eval_accuracy": report["eval_accuracy"],
        "optimizer_steps": report["optimizer_steps"],
        "weights": safetensors.torch.load_file(str(output_dir / "model.safetensors")),
    }


def _assert_same_outcome(resumed: dict, reference: dict) -> None:
    assert resumed["optimizer_steps"] == reference["optimizer_steps"]
    assert resumed["epochs"] == reference["epochs"]
    assert resumed["logged"] == reference["logged"]
    assert resumed["eval_accuracy"] == reference["eval_accuracy"]
    assert resumed["weights"].keys() == reference["weights"].keys()
    for key, value in reference["weights"].items():
        torch.testing.assert_close(resumed["weights"][key], value, rtol=1e-6, atol=1e-7, msg=key)


def _assert_only_complete_checkpoints(output_dir: Path, limit: int) -> None:
    checkpoints = sorted(output_dir.glob("checkpoint-*"))
    assert 0 < len(checkpoints) <= limit
    assert all((c / TRAINER_STATE_NAME).is_file() for c in checkpoints)
    assert not (output_dir / STAGING_DIR_NAME).exists()


def _reference(launcher, dataset: Path, output_dir: Path, pipeline: str, epochs: int = EPOCHS) -> dict:
    """The outcome of an uninterrupted run (it keeps every checkpoint)."""
    log = output_dir.parent / f"{output_dir.name}.log"
    assert launcher.run(_flags(dataset, output_dir, pipeline, epochs), log) == 0, log.read_text()[-3000:]
    return _outcome(output_dir)


@pytest.fixture(scope="module", params=["workers", "device"])
def reference(request, launcher, dataset, tmp_path_factory):
    """The uninterrupted run of each input path: (input path, output_dir, outcome)."""
    output_dir = tmp_path_factory.mktemp(f"reference_{request.param}")
    return request.param, output_dir, _reference(launcher, dataset, output_dir, request.param)


def test_reference_saves_every_step_and_interpolates(reference):
    _, output_dir, outcome = reference
    assert [row["epoch"] for row in outcome["epochs"]] == list(range(EPOCHS))
    assert [row["pairs"] > 0 for row in outcome["epochs"]] == [False, False, True, True, True]
    assert outcome["optimizer_steps"] == 12
    _assert_only_complete_checkpoints(output_dir, limit=outcome["optimizer_steps"])
    assert last_complete_checkpoint(output_dir) == (str(output_dir / "checkpoint-12"), [])


def _kill_and_restart(launcher, dataset, output_dir: Path, pipeline: str, kills: list[tuple], epochs=EPOCHS) -> dict:
    """Train with `kills[0]`, then restart with `last` and each next kill until an attempt ends, or once more without
    a kill; what the kills did."""
    log_dir = output_dir.parent / f"{output_dir.name}_logs"
    log_dir.mkdir()
    flags = _flags(dataset, output_dir, pipeline, epochs) + LIMIT
    done = {"killed": 0, "killed_inside_a_save": 0, "resumed_from": [], "attempts": []}
    for attempt, kill in enumerate([*kills, None]):
        if attempt:
            checkpoint, incomplete = last_complete_checkpoint(output_dir)
            assert not incomplete  # a kill never leaves a half-written checkpoint-N
            done["resumed_from"].append(int(checkpoint.rsplit("-", 1)[1]))
        staging = output_dir / STAGING_DIR_NAME
        if staging.exists():  # left by the previous kill: marked, so that the next save is seen to replace it
            (staging / "left_by_a_kill").touch()
        log = log_dir / f"{attempt}.log"
        started = time.perf_counter()
        code = launcher.run(flags + (LAST if attempt else []), log, kill)
        done["attempts"].append((kill, code, round(time.perf_counter() - started, 1)))
        if code == 0:
            return done
        assert code == -signal.SIGKILL, f"attempt {attempt} with {kill} failed:\n{log.read_text()[-3000:]}"
        done["killed"] += 1
        done["killed_inside_a_save"] += staging.exists() and not (staging / "left_by_a_kill").exists()
    raise AssertionError("the last attempt had no kill and still did not finish")


def _random_kills(seed: int, count: int) -> list[tuple]:
    """The first kill inside the second save, after the weights and before trainer_state.json; then `count` kills,
    two in three at a random write point of the first two saves of an attempt, the others at a random time in its
    first second (while it loads the checkpoint or trains its first steps)."""
    rng = random.Random(seed)
    kills = [("event", EVENTS_PER_SAVE + 15)]
    for i in range(count):
        if i % 3 == 2:
            kills.append(("seconds", round(rng.uniform(0.2, 1.0), 3)))
        else:
            kills.append(("event", rng.randint(1, 2 * EVENTS_PER_SAVE)))
    return kills


def test_run_killed_at_random_moments_and_inside_saves_ends_where_the_uninterrupted_run_ends(
    launcher, dataset, reference, tmp_path
):
    pipeline, _, outcome = reference
    output_dir = tmp_path / "out"
    done = _kill_and_restart(launcher, dataset, output_dir, pipeline, _random_kills(seed=0, count=8))
    print(f"{pipeline}: {done}")
    assert done["resumed_from"][0] == 1  # killed while writing checkpoint-2: checkpoint-1 is the last complete one
    assert done["killed"] >= 6 and done["killed_inside_a_save"] >= 3
    assert done["resumed_from"] == sorted(done["resumed_from"])  # never back to an older checkpoint
    _assert_same_outcome(_outcome(output_dir), outcome)
    _assert_only_complete_checkpoints(output_dir, limit=2)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["workers", "device"])
def test_run_killed_thirty_times_ends_where_the_uninterrupted_run_ends(launcher, dataset, tmp_path, pipeline):
    epochs = 10  # 22 steps
    outcome = _reference(launcher, dataset, tmp_path / "reference", pipeline, epochs)
    output_dir = tmp_path / "out"
    done = _kill_and_restart(launcher, dataset, output_dir, pipeline, _random_kills(seed=1, count=30), epochs)
    print(f"{pipeline}: {done}")
    assert done["killed"] >= 20 and done["killed_inside_a_save"] >= 10
    assert done["resumed_from"] == sorted(done["resumed_from"])
    _assert_same_outcome(_outcome(output_dir), outcome)
    _assert_only_complete_checkpoints(output_dir, limit=2)


def test_last_skips_a_half_written_newest_checkpoint_names_it_and_ends_as_uninterrupted(
    launcher, dataset, reference, tmp_path
):
    pipeline, reference_dir, outcome = reference
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    shutil.copytree(reference_dir / "checkpoint-5", output_dir / "checkpoint-5")
    # What a kill inside a save left before checkpoints were atomic: the weights, but no trainer_state.json.
    shutil.copytree(reference_dir / "checkpoint-5", output_dir / "checkpoint-7")
    (output_dir / "checkpoint-7" / TRAINER_STATE_NAME).unlink()
    log = tmp_path / "resumed.log"

    assert launcher.run(_flags(dataset, output_dir, pipeline) + LAST, log) == 0, log.read_text()[-3000:]
    skipped = [line for line in log.read_text().splitlines() if "--resume_from_checkpoint last" in line]
    assert skipped == [
        "hf-intertrain: --resume_from_checkpoint last: resuming from checkpoint-5, skipped incomplete, without "
        "trainer_state.json: checkpoint-7 (a save was interrupted; left in place)"
    ]
    _assert_same_outcome(_outcome(output_dir), outcome)


def test_last_without_a_complete_checkpoint_names_the_incomplete_ones(launcher, dataset, tmp_path):
    output_dir = tmp_path / "out"
    (output_dir / "checkpoint-3").mkdir(parents=True)
    (output_dir / "checkpoint-6").mkdir()
    log = tmp_path / "resumed.log"
    assert launcher.run(_flags(dataset, output_dir, "workers") + LAST, log) == 2
    assert log.read_text().splitlines()[-1] == (
        f"hf-intertrain: error: --resume_from_checkpoint last: no complete checkpoint in {output_dir} (incomplete, "
        "without trainer_state.json: checkpoint-6, checkpoint-3); start the run without --resume_from_checkpoint"
    )


# ----------------------------------------------------------------------------------------------
# Atomic checkpoints in one process: staging, best model, rotation
# ----------------------------------------------------------------------------------------------


def _trainer(output_dir: Path, **overrides) -> InterTrainTrainer:
    settings = {**TINY_TRAINING, "num_train_epochs": 2, "save_strategy": "epoch", **overrides}
    return InterTrainTrainer(
        model=make_model(output_stride=16),
        args=InterTrainArguments(output_dir=str(output_dir), **settings),
        train_dataset=make_dataset(32, seed=0, training=True),
        eval_dataset=make_dataset(16, seed=3),
    )


def test_best_model_checkpoint_names_the_final_folder(tmp_path):
    trainer = _trainer(tmp_path, eval_strategy="epoch", metric_for_best_model="eval_loss", load_best_model_at_end=True)
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.parent == tmp_path and best.name == f"checkpoint-{trainer.state.best_global_step}"
    for checkpoint in tmp_path.glob("checkpoint-*"):
        saved = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())["best_model_checkpoint"]
        assert saved is None or Path(saved).parent == tmp_path


def test_rotation_keeps_the_last_complete_checkpoint_and_a_stale_staged_one_is_replaced(tmp_path):
    # Left by a killed run: a half-written checkpoint-4 staged (a file the new save would not write) and an
    # incomplete checkpoint-9 written by an earlier version.
    stale = tmp_path / STAGING_DIR_NAME / "checkpoint-4"
    stale.mkdir(parents=True)
    (stale / "stale.bin").write_bytes(b"half")
    (tmp_path / "checkpoint-9").mkdir()
    (tmp_path / "checkpoint-9" / "model.safetensors").write_bytes(b"half")
    future = time.time() + 3600  # newest by mtime too, as transformers' rotation orders them
    os.utime(tmp_path / "checkpoint-9", (future, future))

    trainer = _trainer(tmp_path, save_total_limit=1)
    trainer.train()
    assert trainer.state.global_step == 4
    assert last_complete_checkpoint(tmp_path) == (str(tmp_path / "checkpoint-4"), ["checkpoint-9"])
    assert not (tmp_path / "checkpoint-4" / "stale.bin").exists()
    assert not (tmp_path / STAGING_DIR_NAME).exists()
    assert not (tmp_path / "checkpoint-2").exists()  # rotated: the limit is 1
