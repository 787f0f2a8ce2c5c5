"""InterTrain's part of a checkpoint: the tracker state (safetensors) and the plan's inputs and history (JSON).

A run resumed from a checkpoint must continue the same InterTrain run: the same dataset size and InterTrain
settings (`RESUME_SETTINGS`), and from a mid-epoch checkpoint also the same batches for the rest of the epoch
(`plan_layout`). `load_state` refuses anything else with a message naming the first difference (docs/method.md,
"Distributed training and resume"). No pickle: safetensors and JSON only.

A checkpoint is written whole or not at all: the trainer writes it into `STAGING_DIR_NAME`, then `publish_checkpoint`
renames it to `checkpoint-N`; `last_complete_checkpoint` is what `--resume_from_checkpoint last` resumes from
(docs/method.md, "Distributed training and resume").
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import numpy as np
import safetensors.numpy
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from .config import MID_EPOCH, RESUME, settings_with

INTERTRAIN_STATE_NAME = "intertrain_state.safetensors"
INTERTRAIN_META_NAME = "intertrain_state.json"
TRAINER_STATE_NAME = "trainer_state.json"
"""The file `Trainer._save_checkpoint` writes last (transformers' name): a checkpoint folder without it is
incomplete."""

STAGING_DIR_NAME = "_checkpoint_staging"
"""The folder of `output_dir` a checkpoint is written into before it is renamed: no `checkpoint-*` name, so that
neither `get_last_checkpoint` nor the `save_total_limit` rotation sees it, and a leading `_`, so that hub uploads of
`output_dir` skip it. Whatever a killed run left there is removed by the next save."""

CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
"""The checkpoint folder names of transformers' `get_last_checkpoint` (`checkpoint-N`, N the global step)."""

RESUME_SETTINGS: tuple[str, ...] = settings_with(RESUME)
"""The `InterTrainArguments` fields a resumed run must share with its checkpoint (the `RESUME` role of their
declaration in `config.py`); the model card shows these too. A checkpoint made before a field existed still loads,
compared as `SETTINGS_BEFORE_RECORDED` says where that applies. `data_pipeline` is among them because the two
pipelines draw different augmentations; the trainer stores the resolved value ('workers' or 'device'), never 'auto'."""

SETTINGS_BEFORE_RECORDED: dict[str, Any] = {"data_pipeline": "workers"}
"""The value a setting had in checkpoints and runs made before it was recorded, where that is not simply unknown:
every run before `data_pipeline` existed used the workers path."""


MID_EPOCH_SETTINGS: tuple[str, ...] = tuple(name for name in settings_with(MID_EPOCH) if name in RESUME_SETTINGS)
"""Settings a resume must share only from a mid-epoch checkpoint, like the plan layout: the rest of that epoch must draw
its augmentations as planned. From an epoch's end a run may switch input paths (same augmentation distributions,
other draws), e.g. resume a CLI run made on the device path with a dataset of its own."""

PLAN_LAYOUT: tuple[str, ...] = tuple(name for name in settings_with(MID_EPOCH) if name not in RESUME_SETTINGS)
"""The `TrainingArguments` fields an epoch's batches depend on besides the tracker (with the number of processes)."""


def saved_setting(checkpoint_dir: str | os.PathLike, name: str) -> Any:
    """A setting as a checkpoint recorded it (`SETTINGS_BEFORE_RECORDED` for an older one; None when unknown)."""
    try:
        with open(os.path.join(checkpoint_dir, INTERTRAIN_META_NAME)) as f:
            settings = json.load(f).get("settings", {})
    except (OSError, ValueError):
        return None
    return settings.get(name, SETTINGS_BEFORE_RECORDED.get(name))


def _stored_value(args: Any, name: str) -> Any:
    if name == "amenability_regions":
        return list(args.regions)  # the parsed regions, as checkpoints have always stored them
    return getattr(args, name)


def intertrain_settings(args: Any, num_samples: int, **resolved: Any) -> dict[str, Any]:
    """The dataset size and the `RESUME_SETTINGS` of `args` (`InterTrainArguments`), as a checkpoint stores them;
    `resolved` gives the values a run resolved itself (the trainer's `data_pipeline`, never 'auto')."""
    settings = {name: resolved[name] if name in resolved else _stored_value(args, name) for name in RESUME_SETTINGS}
    return {"num_samples": int(num_samples), **settings}


def plan_layout(args: Any, num_processes: int) -> dict[str, Any]:
    """What an epoch's batches depend on besides the tracker: must match to resume mid-epoch."""
    return {**{name: getattr(args, name) for name in PLAN_LAYOUT}, "num_processes": int(num_processes)}


def save_state(output_dir: str | os.PathLike, tracker_state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the tracker state and `meta` (JSON-able; `load_state` reads its `settings`, `plan_layout` and
    `mid_epoch`) into the checkpoint folder `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in tracker_state.items()}
    safetensors.numpy.save_file(arrays, os.path.join(output_dir, INTERTRAIN_STATE_NAME))
    with open(os.path.join(output_dir, INTERTRAIN_META_NAME), "w") as f:
        json.dump(meta, f, indent=2)


def load_state(
    checkpoint_dir: str | os.PathLike, settings: dict[str, Any], layout: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint's tracker state and meta, refusing one this run cannot continue.

    Args:
        checkpoint_dir: The checkpoint folder.
        settings: This run's `intertrain_settings`.
        layout: This run's `plan_layout`.

    Raises:
        ValueError: When the checkpoint has no InterTrain state, was made with another dataset size or other
            InterTrain settings, or was saved mid-epoch with another plan layout.
    """
    meta_path = os.path.join(checkpoint_dir, INTERTRAIN_META_NAME)
    if not os.path.isfile(meta_path):
        raise ValueError(
            f"{checkpoint_dir} has no {INTERTRAIN_META_NAME}: it was not written by InterTrainTrainer, so its "
            "interpolation state is unknown; start a new run instead of resuming"
        )
    with open(meta_path) as f:
        meta = json.load(f)
    saved = {**SETTINGS_BEFORE_RECORDED, **meta["settings"]}
    mid_epoch = {name: saved.pop(name) for name in MID_EPOCH_SETTINGS if name in saved}
    refuse_differences(
        checkpoint_dir, saved, settings, "resume with the same dataset and InterTrain settings, or start a new output_dir"
    )
    if meta["mid_epoch"]:
        refuse_differences(
            checkpoint_dir,
            {**meta["plan_layout"], **mid_epoch},
            {**layout, **settings},
            "it was saved mid-epoch, so the rest of the epoch needs the same batches: resume with the same "
            "settings, or from a checkpoint saved at an epoch's end",
        )
    return safetensors.numpy.load_file(os.path.join(checkpoint_dir, INTERTRAIN_STATE_NAME)), meta


def steps_done_in_epoch(
    checkpoint_dir: str | os.PathLike, global_step: int, epoch: int, epoch_update_steps: list[int]
) -> int:
    """Optimizer steps of `epoch` done at a checkpoint's `global_step`, from the epoch lengths it recorded (InterTrain's
    epochs differ in length, so the Trainer's `global_step // steps_per_epoch` does not apply).

    Raises:
        ValueError: When the step is not inside that epoch (an inconsistent checkpoint).
    """
    done = global_step - sum(epoch_update_steps[:epoch])
    if not 0 <= done <= (epoch_update_steps[epoch] if epoch < len(epoch_update_steps) else 0):
        raise ValueError(
            f"{checkpoint_dir}: global step {global_step} is not in epoch {epoch} of the recorded epoch lengths "
            f"{epoch_update_steps}; the checkpoint is inconsistent, resume from another one"
        )
    return done


def refuse_differences(
    checkpoint_dir: str | os.PathLike, saved: dict[str, Any], current: dict[str, Any], fix: str
) -> None:
    """Raise a ValueError naming the first saved setting whose value differs from this run's (a setting the
    checkpoint does not have is not compared)."""
    for key, value in saved.items():
        if current.get(key) != value:
            raise ValueError(
                f"checkpoint {checkpoint_dir} was made with {key}={value!r} but this run has "
                f"{key}={current.get(key)!r}: {fix}"
            )


def is_complete(checkpoint_dir: str | os.PathLike) -> bool:
    """Whether a checkpoint folder was written to the end: it holds `trainer_state.json`, the Trainer's last file.

    InterTrainTrainer writes its own state before the Trainer's, so a folder with `trainer_state.json` but no
    `intertrain_state.json` was made by another trainer: complete, and refused by `load_state` with its own message.
    """
    return os.path.isfile(os.path.join(checkpoint_dir, TRAINER_STATE_NAME))


def last_complete_checkpoint(folder: str | os.PathLike) -> tuple[str | None, list[str]]:
    """The newest complete `checkpoint-N` folder of `folder` (None if there is none), and the names of the newer
    incomplete ones passed over, newest first.

    A run killed while an earlier version of InterTrainTrainer (or the plain Trainer) was saving leaves a newest
    folder without `trainer_state.json`, which `get_last_checkpoint` would pick; the folders are left in place for the
    user to inspect. Every process of a launch resolves the same folder: it reads the listing only, and no checkpoint
    appears before all processes have reached a save (its rename follows a barrier).
    """
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return None, []
    steps = {name: int(match.group(1)) for name in names if (match := CHECKPOINT_NAME.match(name))}
    skipped = []
    for name in sorted(steps, key=steps.get, reverse=True):
        path = os.path.join(folder, name)
        if not os.path.isdir(path):
            continue
        if is_complete(path):
            return path, skipped
        skipped.append(name)
    return None, skipped


def rotate_checkpoints(run_dir: str | os.PathLike, save_total_limit: int | None, keep: list[str | None]) -> None:
    """Delete the oldest complete checkpoints of `run_dir` beyond `save_total_limit`, never the newest nor one of
    `keep` (the checkpoint just written, the best one).

    transformers' `rotate_checkpoints` orders by mtime (by step where mtimes are too close to tell) and keeps the
    last in that order: an incomplete folder, or a newer-numbered one an earlier run left, could be that last while
    the checkpoint just written is deleted. Here the same rule applies to complete checkpoints only and `keep` is
    kept too, so the last complete checkpoint always survives; incomplete folders are neither counted nor deleted
    (`last` names them).
    """
    if save_total_limit is None or save_total_limit <= 0:
        return
    complete = [
        path
        for path in sort_checkpoints(str(run_dir), use_mtime=True)
        if CHECKPOINT_NAME.match(os.path.basename(path)) and is_complete(path)
    ]
    protected = {os.path.normpath(path) for path in [*keep, *complete[-1:]] if path is not None}
    remaining = len(complete)
    for path in complete:
        if remaining <= save_total_limit:
            break
        if os.path.normpath(path) not in protected:
            shutil.rmtree(path, ignore_errors=True)
            remaining -= 1


def staging_dir(run_dir: str | os.PathLike) -> str:
    """Where the trainer writes the checkpoints of `run_dir` before `publish_checkpoint` renames them."""
    return os.path.join(run_dir, STAGING_DIR_NAME)


def clear_staging(run_dir: str | os.PathLike) -> None:
    """Remove what a killed or failed save left in the staging folder, so that a checkpoint of the same step is
    written into an empty folder, never on top of a stale one."""
    shutil.rmtree(staging_dir(run_dir), ignore_errors=True)


def publish_checkpoint(staged: str | os.PathLike, final: str | os.PathLike) -> None:
    """Give a fully written checkpoint folder its final name in one rename.

    Its files are flushed to disk before the rename and the rename after it, so that a crash at any moment leaves
    either no `final` folder or a complete one. A `final` folder already there (a checkpoint of the same step, from a
    run resumed from an earlier one) is moved into the staging folder first and removed once replaced. The emptied
    staging folder goes too.
    """
    for root, _, files in os.walk(staged):
        for name in files:
            _flush(os.path.join(root, name))
        _flush(root)
    replaced = None
    if os.path.lexists(final):
        replaced = os.path.join(os.path.dirname(staged), "replaced-" + os.path.basename(final))
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
    os.rename(staged, final)
    _flush(os.path.dirname(os.path.abspath(final)))
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(staged))  # left only by an interrupted save
    except OSError:
        pass


def _flush(path: str) -> None:
    """fsync a file or folder (a folder makes its entries, e.g. a rename, durable); a no-op where the platform cannot
    open a folder for it (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
