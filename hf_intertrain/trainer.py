"""`InterTrainTrainer`: the glue between InterTrain's parts and `transformers.Trainer`.

The parts know nothing of the Trainer: `composition` turns a collated batch into inputs, logits and the loss,
`records.LossRecorder` carries every constituent's loss to the `AmenabilityTracker` (and across processes), the
tracker turns losses into decisions, the `InterTrainBatchSampler` turns decisions into an epoch plan, and
`checkpoint` writes InterTrain's state and refuses a checkpoint a run cannot continue. This class wires them into
the Trainer's own loop, logging, checkpoints and distributed launch.

Maintenance note: besides the public hooks (`get_train_dataloader`, `compute_loss`, `floating_point_ops`,
`create_scheduler`, `create_model_card`), eight private Trainer methods are overridden, each calling the parent
unchanged: `_build_accelerator_args` (hands accelerate a dynamo plugin that compiles nothing, where the parent's would
compile the whole model from `--torch_compile`; `compilation.compile_features` compiles the backbone instead),
`_run_epoch` (re-plans the epoch and passes its real length on, as transformers fixes it from the first
dataloader), `_init_training_state` (maps a resumed global step to (epoch, step) through the recorded epoch lengths),
`_save_checkpoint` (adds InterTrain's state and makes the checkpoint atomic), `_get_output_dir` and
`_push_from_checkpoint` (the parent's, except while the parent's `_save_checkpoint` runs: then they point it at the
staging folder and hold its hub push back until the rename), `_save` (makes the folder loadable by timm) and
`_prepare_inputs` (makes the device pipeline's pixels; `training_step` and `prediction_step` both call it).
`_save_checkpoint` redoes two parts of the parent's for the final folder name: its `best_model_checkpoint` rule
(copied into `_point_best_model_checkpoint_at`) and its closing rotation (`checkpoint.rotate_checkpoints`: the
parent's `rotate_checkpoints` over complete checkpoints only, always keeping the one just written); compare them with
the parent's when upgrading transformers. An `on_epoch_end` callback closes the epoch before the parent's
`_maybe_log_save_evaluate` (see `_EpochBoundary`). Mid-epoch resume relies on the parent's `_run_epoch` skipping
`steps_trained_in_current_epoch` batches with accelerate's `skip_first_batches` (the skipped batches are not
fetched) and restoring the RNG states after the first fetched batch; when the whole epoch was trained before the
checkpoint, `_end_intertrain_epoch` restores them with the parent's `_load_rng_state` instead. Multi-process runs
rely on accelerate's `BatchSamplerShard` with `even_batches=True`. `tests/test_resume.py`, `tests/test_restarts.py`
and `tests/test_distributed.py` check all of it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import DynamoBackend, TorchDynamoPlugin
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, seed_worker

from .checkpoint import (
    TRAINER_STATE_NAME,
    clear_staging,
    intertrain_settings,
    load_state,
    plan_layout,
    publish_checkpoint,
    rotate_checkpoints,
    save_state,
    staging_dir,
    steps_done_in_epoch,
)
from .method.composition import (
    MIXING_STREAM,
    MaskSeeder,
    check_composable,
    compose_batch,
    composite_weights,
    constituent_losses,
    draws_masks,
    mix_singles,
    slot_logits,
)
from .compilation import compile_features, features_compiled
from .config import InterTrainArguments
from .data import BatchSeededDataset, InterTrainCollator, as_item_dataset
from .data.device import DeviceImageDataset, dataset_pipeline, materialize_pixels, prefers_channels_last
from .hub import image_size_of, make_loadable, resolve_repo_id
from .method.mixing import BatchMixing
from .model_card import card_facts, card_inputs, write_model_card
from .method.records import LossRecorder, PlanCounts, epoch_statistics
from .method.sampler import InterTrainBatchSampler
from .method.schedule import EpochProgress, follow_epoch_progress, nominal_update_steps_per_epoch
from .method.split import unwrap_timm_model
from .method.tracker import AmenabilityTracker

logger = logging.getLogger(__name__)


class _EpochBoundary(TrainerCallback):
    """Closes InterTrain's epoch before the Trainer logs, evaluates and checkpoints at the epoch's end.

    The epoch's statistics go through `Trainer.log` (so `log_history`, TensorBoard and W&B get them), whose
    `on_log` event clears `control.should_log`. With `logging_strategy="epoch"` the default flow has just set that
    flag for the Trainer's own epoch log (`loss`, `grad_norm`, `learning_rate`), which would then be dropped: the
    flag is put back, so every epoch logs both, as two entries at the same step (statistics first).
    """

    def __init__(self, trainer: InterTrainTrainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        should_log = control.should_log
        self.trainer._end_intertrain_epoch()
        control.should_log = should_log
        return control


class InterTrainTrainer(Trainer):
    """A `transformers.Trainer` that trains timm image classifiers on interpolated inputs (InterTrain).

    Use it as the plain Trainer: `InterTrainTrainer(model, args, train_dataset=..., eval_dataset=...)`. The model is
    a `transformers.TimmWrapperForImageClassification` (preferred: it saves Hub-ready checkpoints) or a timm model;
    the train dataset yields dicts with `pixel_values` and `labels` (any map-style dataset: it is wrapped so that
    the sampler's pairs can be fetched).

    Per epoch the trainer logs the `intertrain/*` statistics of `tracker.summary.epoch_statistics` (interpolated fraction,
    items, pairs, regions, ...) through the Trainer's own `log`, so `log_history`, TensorBoard and W&B get them
    beside the Trainer's `loss`, `grad_norm` and `learning_rate`; `intertrain_history` keeps them too.

    Distributed runs (`accelerate launch`, see `recipes/accelerate/`): every process computes the same epoch plan
    and `accelerator.prepare` shards its batches; `records.LossRecorder` sums the processes' records once per epoch.
    Checkpoints hold InterTrain's state (`checkpoint.py`); `resume_from_checkpoint` restores it and trains the rest
    of the same plan, also from a mid-epoch checkpoint.

    Choices where the method is silent (docs/method.md, "Choices where the paper is silent"), besides those of
    `composition.py` (losses, RandPatch seeds), `records.py` (non-finite losses, processes) and `checkpoint.py`
    (what a resume must share): each batch is fetched (augmented) with RNGs seeded by (seed, epoch, its items), so
    a resumed run draws the augmentations of the uninterrupted one (with a `data.DeviceImageDataset` the fetch draws
    the augmentation's parameters and `_prepare_inputs` makes the pixels on the device, see `data/device.py`); the
    loss of a batch is the mean over its items, divided by the accumulation steps like the plain Trainer;
    `num_train_epochs` must be whole, and with `max_steps > 0` the schedule follows steps, not epochs; with
    `torch_compile` the backbone's `forward_features` is compiled, in place, and the head, split propagation and the
    loss run eager (`compilation.compile_features`).
    """

    args: InterTrainArguments

    # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: PreTrainedModel | torch.nn.Module | None = None,
        args: InterTrainArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        **kwargs: Any,
    ):
        # Args
        if args is None:
            args = InterTrainArguments(output_dir="intertrain_output")
        if not isinstance(args, InterTrainArguments):
            raise ValueError(
                f"args is a {type(args).__name__}: InterTrainTrainer needs InterTrainArguments (it extends "
                "TrainingArguments, so pass the same fields to InterTrainArguments)"
            )
        if args.max_steps <= 0 and float(args.num_train_epochs) != int(args.num_train_epochs):
            raise ValueError(
                f"num_train_epochs={args.num_train_epochs} must be a whole number: InterTrain decides per epoch "
                "which samples to interpolate"
            )

        # Model (unwrap_timm_model refuses a model without timm's forward_features / forward_head)
        if model is None:
            raise ValueError("InterTrainTrainer needs a model: a TimmWrapperForImageClassification or a timm model")
        timm_model = unwrap_timm_model(model)

        # Dataset
        if train_dataset is None:
            raise ValueError("InterTrainTrainer needs a train_dataset (items with 'pixel_values' and 'labels')")
        train_dataset = as_item_dataset(train_dataset)
        if len(train_dataset) == 0:
            raise ValueError("train_dataset is empty: InterTrain needs at least one training sample")
        self.data_pipeline = dataset_pipeline(args.data_pipeline, train_dataset)
        if isinstance(train_dataset, DeviceImageDataset):
            image_size = self._intertrain_image_size = (train_dataset.image_size, train_dataset.image_size)
        else:
            image_size = self._intertrain_image_size = image_size_of(train_dataset)

        # Interpolation: check the model can be split now, not at epoch 2
        self.feature_layout, self.feature_grid = check_composable(
            timm_model, image_size, args.interpolation, args.split_propagation, args.patch_ratio, args.four_way
        )

        # Tracker, sampler and recorder
        self.tracker = AmenabilityTracker(len(train_dataset), rules=args.tracker_rules())
        self.intertrain_sampler = InterTrainBatchSampler(self.tracker, args.plan_rules())
        self.recorder = LossRecorder(self.tracker)
        self._mixing = (
            BatchMixing(
                timm_model.num_classes, args.mixup_alpha, args.cutmix_alpha, args.mixup_prob, args.mixup_switch_prob,
                args.mixup_mode, args.label_smoothing_factor,
            )
            if args.mixes
            else None
        )
        self._channels_last = prefers_channels_last(timm_model)
        self.intertrain_history: list[dict[str, float]] = []
        self._epoch_update_steps: list[int] = []
        self._epoch_progress: EpochProgress | None = None
        self._epoch_started_at = time.perf_counter()
        self._resumed_epoch_seconds = 0.0
        self._rng_state_to_restore: str | None = None
        self._batch_seeded_dataset: BatchSeededDataset | None = None
        self._staging_run_dir: str | None = None

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator if data_collator is not None else InterTrainCollator(),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            **kwargs,
        )
        self._mask_seeder = MaskSeeder(args.seed, args.process_index)
        self._mixing_seeder = MaskSeeder(args.seed, args.process_index, stream=MIXING_STREAM)
        self.add_callback(_EpochBoundary(self))

        # torch.compile: the backbone only, in place (accelerate compiles nothing, see _build_accelerator_args)
        if args.torch_compile:
            compile_features(
                timm_model, args.torch_compile_backend, args.torch_compile_mode, args.compile_fallback,
                full_batches=(args.per_device_train_batch_size, args.per_device_eval_batch_size),
            )

    @property
    def backbone_compiled(self) -> bool:
        """Whether the model's `forward_features` runs compiled (`--torch_compile`, unless it fell back to eager)."""
        return features_compiled(unwrap_timm_model(self.accelerator.unwrap_model(self.model)))

    def _build_accelerator_args(self, **kwargs) -> dict[str, Any]:
        """The parent's accelerator arguments, with a dynamo plugin that compiles nothing.

        From `--torch_compile` the parent's plugin would have accelerate compile the whole model, whose graph split
        propagation breaks every batch; `compilation.compile_features` compiles the backbone instead (docs/method.md,
        "Choices where the paper is silent"). A `dynamo_backend` of accelerate's launch config is ignored, with a
        warning: the compile settings are the run's own arguments, which the fingerprint of `compare` records.
        """
        accelerator_args = super()._build_accelerator_args(**kwargs)
        launched = accelerator_args.get("dynamo_plugin")
        if launched is not None and launched.backend != DynamoBackend.NO and not self.args.torch_compile:
            logger.warning(
                "hf-intertrain: accelerate's dynamo_backend %s is ignored: pass --torch_compile true (and "
                "--torch_compile_backend) to compile the backbone",
                launched.backend.value.lower(),
            )
        accelerator_args["dynamo_plugin"] = TorchDynamoPlugin(backend="no")
        return accelerator_args

    @property
    def epoch_update_steps(self) -> list[int]:
        """Optimizer steps per process of every epoch begun so far (epochs shrink as pairs are planned)."""
        return list(self._epoch_update_steps)

    # ----------------------------------------------------------------------------------------------------------
    # Data and loss
    def get_train_dataloader(self) -> DataLoader:
        """Batches of `per_device_train_batch_size` items of the epoch plan, the same on every process (docs/method.md,
        "Batch plan of an epoch"); `accelerator.prepare` shards them as it does for any batch sampler."""
        args = self.args
        params: dict[str, Any] = {
            "batch_sampler": self.intertrain_sampler,
            "collate_fn": self.data_collator,
            "num_workers": args.dataloader_num_workers,
            "pin_memory": args.dataloader_pin_memory and torch.cuda.is_available(),
            "persistent_workers": args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
            "worker_init_fn": partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        }
        if args.dataloader_num_workers > 0:
            params["prefetch_factor"] = args.dataloader_prefetch_factor
            params["multiprocessing_context"] = args.dataloader_multiprocessing_context
        self._batch_seeded_dataset = BatchSeededDataset(self.train_dataset, self.intertrain_sampler.seed)
        return self.accelerator.prepare(DataLoader(self._batch_seeded_dataset, **params))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Pairs and composites built on the training device, the singles mixed by timm's Mixup / CutMix when it is
        on, their loss (see `composition.py`) and every constituent's record for the amenability metric
        (docs/method.md, "Loss" and "Mixup and CutMix"). Outside training: cross-entropy."""
        if not model.training or "sample_index" not in inputs:
            logits = self._logits(model, inputs["pixel_values"])
            loss = F.cross_entropy(logits.float(), inputs["labels"])
            return (loss, {"logits": logits}) if return_outputs else loss
        args = self.args
        generator = self._mask_seeder(self.state.global_step) if draws_masks(inputs, args.interpolation) else None
        composed = compose_batch(
            inputs, interpolation=args.interpolation, four_way=args.four_way, feature_grid=self.feature_grid,
            patch_ratio=args.patch_ratio, split=self.feature_layout is not None, generator=generator,
        )
        single_targets = None
        if self._mixing is not None:
            seed = self._mixing_seeder.step_seed(self.state.global_step)
            composed, single_targets = mix_singles(composed, inputs["labels"], self._mixing, seed)
        logits = slot_logits(composed, model, lambda pixel_values: self._logits(model, pixel_values))
        loss_weight = self._loss_weight(inputs)
        weights = composite_weights(composed, args.composite_loss_weight)
        if weights is not None:
            loss_weight = weights if loss_weight is None else loss_weight * weights
        loss, records = constituent_losses(
            logits, inputs, composed.shares, loss_weight, single_targets, args.label_smoothing_factor
        )
        self.recorder.add(records)
        return (loss, {"logits": logits[0]}) if return_outputs else loss

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The parent's (tensors to the device), then the device pipeline's pixels made from the batch's
        `PixelRequest`s, every constituent at once (`data.device.materialize_pixels`); other batches pass as
        they are."""
        inputs = super()._prepare_inputs(inputs)
        return materialize_pixels(inputs, self.args.device, self._channels_last)

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """The parent's count; a device-pipeline batch, which reaches it still as `PixelRequest`s, is counted as the
        pixels they become."""
        pixels = inputs.get("pixel_values")
        if pixels is not None and not isinstance(pixels, torch.Tensor):
            height, width = self.intertrain_image_size
            inputs = {**inputs, "pixel_values": torch.empty((len(pixels), 3, height, width), device="meta")}
        return super().floating_point_ops(inputs)

    def _loss_weight(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-item loss weights of the epoch plan (InfoBatch's rescaled samples; None when every weight is 1)."""
        weights = self.intertrain_sampler.loss_weights
        if weights is None:
            return None
        index = inputs["sample_index"].cpu().numpy()
        return torch.from_numpy(weights[index]).to(inputs["sample_index"].device)

    def _logits(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits through the (possibly DDP-wrapped) model's own forward, whatever the wrapper class returns."""
        if isinstance(self.accelerator.unwrap_model(model, keep_torch_compile=False), PreTrainedModel):
            return model(pixel_values=pixel_values).logits
        return model(pixel_values)

    # ----------------------------------------------------------------------------------------------------------
    # Epochs, schedule and logging
    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The Trainer's scheduler sized for full epochs and re-indexed by epoch progress (see `schedule.py`), so
        that it ends at the last step of the last epoch however much the epochs shrink."""
        if self.lr_scheduler is not None or self.args.max_steps > 0:
            return super().create_scheduler(num_training_steps, optimizer)
        args = self.args
        nominal = nominal_update_steps_per_epoch(
            len(self.train_dataset),
            args.per_device_train_batch_size,
            drop_last=args.dataloader_drop_last,
            num_processes=self.accelerator.num_processes,
            accumulation_steps=args.gradient_accumulation_steps,
        )
        self._epoch_progress = EpochProgress(nominal_steps_per_epoch=nominal)
        scheduler = super().create_scheduler(nominal * int(args.num_train_epochs), optimizer)
        self.lr_scheduler = follow_epoch_progress(scheduler, self._epoch_progress)
        return self.lr_scheduler

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, *args, **kwargs):
        """Plan the epoch, then run the parent's epoch with this epoch's real length (it shrinks with pairs)."""
        planning_started = time.perf_counter()
        self.intertrain_sampler.set_epoch(epoch)
        if self._batch_seeded_dataset is not None:
            self._batch_seeded_dataset.epoch = epoch
        steps_in_epoch = len(train_dataloader)
        num_update_steps_per_epoch = math.ceil(steps_in_epoch / self.args.gradient_accumulation_steps)
        del self._epoch_update_steps[epoch:]
        self._epoch_update_steps.append(num_update_steps_per_epoch)
        steps_before = sum(self._epoch_update_steps[:epoch])
        if self._epoch_progress is not None:
            self._epoch_progress.begin_epoch(epoch, steps_before, num_update_steps_per_epoch)
        if self.args.max_steps <= 0:
            remaining_epochs = int(self.args.num_train_epochs) - epoch
            self.state.max_steps = steps_before + remaining_epochs * num_update_steps_per_epoch
            for callback in self.callback_handler.callbacks:
                bar = getattr(callback, "training_bar", None) if isinstance(callback, ProgressCallback) else None
                if bar is not None:
                    bar.total = self.state.max_steps
                    bar.refresh()
        self._epoch_started_at = planning_started - self._resumed_epoch_seconds
        self._resumed_epoch_seconds = 0.0
        resume = kwargs.get("resume_from_checkpoint")
        if (
            resume is not None
            and epoch == kwargs.get("epochs_trained")
            and not self.args.ignore_data_skip
            and kwargs.get("steps_trained_in_current_epoch", 0) >= steps_in_epoch
        ):
            # Saved after the epoch's last step but before the epoch was closed: the parent skips the whole epoch
            # without restoring the RNG states, so they are restored when the epoch closes.
            self._rng_state_to_restore = resume
        return super()._run_epoch(
            model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, *args, **kwargs
        )

    def _end_intertrain_epoch(self) -> None:
        """Close the epoch: records summed over processes, the next epoch decided, the statistics logged."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        plan = PlanCounts.of(self.intertrain_sampler)  # before the tracker decides, which re-plans the sampler
        if self.args.max_steps > 0:  # the run may stop mid-epoch: count what it trained
            args = self.args
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * self.accelerator.num_processes
            plan = plan.trained(self._steps_done_in_epoch(), per_step)
        summary, nonfinite = self.recorder.close_epoch(self.accelerator)
        seconds = time.perf_counter() - self._epoch_started_at  # planning and the decisions count, as in the paper
        stats = epoch_statistics(summary, plan, nonfinite, seconds, four_way=self.args.four_way != "none")
        self.intertrain_history.append({"epoch": summary.epoch, **stats})
        self.log(dict(stats))
        if self._rng_state_to_restore is not None:
            self._load_rng_state(self._rng_state_to_restore)
            self._rng_state_to_restore = None

    def _steps_done_in_epoch(self) -> int:
        """Optimizer steps of the tracker's current epoch trained so far (the same on every process)."""
        return self.state.global_step - sum(self._epoch_update_steps[: self.tracker.epoch])

    # ----------------------------------------------------------------------------------------------------------
    # Checkpoints (see `checkpoint.py`)
    def _at_epoch_boundary(self) -> bool:
        """No step of the tracker's current epoch trained yet."""
        return self._steps_done_in_epoch() == 0

    def _save_checkpoint(self, model, trial) -> None:
        """The parent's checkpoint with InterTrain's state, written whole or not at all (docs/method.md,
        "Distributed training and resume").

        Every process writes its files (the RNG states too) into `checkpoint.STAGING_DIR_NAME`, where the parent's
        checkpoint is redirected through `_get_output_dir`; once all have written, the saving process renames the
        folder to `checkpoint-N`, then pushes it and rotates with `checkpoint.rotate_checkpoints`, which keeps the
        checkpoint just written. A kill at any moment leaves the previous checkpoints and either no `checkpoint-N`
        or a complete one.
        """
        self.recorder.flush()
        state, nonfinite = self.recorder.global_state(self.accelerator, self._at_epoch_boundary())
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = os.path.join(staging_dir(run_dir), name), os.path.join(run_dir, name)
        if self.args.should_save:
            clear_staging(run_dir)
        self.accelerator.wait_for_everyone()  # no process writes into the staging folder before it is cleared
        if self.args.should_save:
            self.save_intertrain_state(staged, state, nonfinite)
        self._staging_run_dir = staging_dir(run_dir)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_run_dir = None
        self._point_best_model_checkpoint_at(run_dir, staged)
        self.accelerator.wait_for_everyone()  # every process's files are in the staged folder
        if self.args.should_save:
            publish_checkpoint(staged, final)
        self.accelerator.wait_for_everyone()  # the checkpoint has its final name on every process
        if self.args.push_to_hub:
            self._push_from_checkpoint(final)
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.args.save_total_limit, keep=[final, self.state.best_model_checkpoint])

    def _get_output_dir(self, trial) -> str:
        """The parent's run folder, or the staging folder while `_save_checkpoint` has the parent write into it."""
        if self._staging_run_dir is not None:
            return self._staging_run_dir
        return super()._get_output_dir(trial=trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The parent's push, of the checkpoint under its final name: deferred while the parent saves it staged (an
        upload runs in the background and must not read a folder that is about to be renamed)."""
        if self._staging_run_dir is None:
            super()._push_from_checkpoint(checkpoint_folder)

    def _point_best_model_checkpoint_at(self, run_dir: str, staged: str) -> None:
        """`state.best_model_checkpoint` as the parent sets it, against the final folder names rather than the
        staging folder it saw; the staged `trainer_state.json` is rewritten when that changed it."""
        best_step = self.state.best_global_step
        if self.args.save_strategy not in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST) or not best_step:
            return
        best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
        if best_step != self.state.global_step and not os.path.exists(best):
            return
        if best != self.state.best_model_checkpoint:
            self.state.best_model_checkpoint = best
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))

    def save_intertrain_state(
        self, output_dir: str, state: dict[str, np.ndarray] | None = None, nonfinite_losses: int | None = None
    ) -> None:
        """Write the tracker state (default: this process's, complete only in a one-process run), the epoch's
        non-finite loss count (default: this process's) and the epoch plan's inputs into `output_dir`."""
        at_boundary = self._at_epoch_boundary()
        meta = {
            "settings": intertrain_settings(self.args, len(self.train_dataset), data_pipeline=self.data_pipeline),
            "plan_layout": plan_layout(self.args, self.accelerator.num_processes),
            "mid_epoch": not at_boundary,
            "epoch_update_steps": self._epoch_update_steps,
            "epoch_seconds_done": 0.0 if at_boundary else time.perf_counter() - self._epoch_started_at,
            "nonfinite_losses": self.recorder.nonfinite_losses if nonfinite_losses is None else nonfinite_losses,
            "history": self.intertrain_history,
        }
        save_state(output_dir, self.tracker.state_dict() if state is None else state, meta)

    def load_intertrain_state(self, checkpoint_dir: str) -> None:
        """Restore the tracker, epoch lengths and history; raises a ValueError for a checkpoint this run cannot
        continue (see `checkpoint.load_state`)."""
        settings = intertrain_settings(self.args, len(self.train_dataset), data_pipeline=self.data_pipeline)
        state, meta = load_state(checkpoint_dir, settings, plan_layout(self.args, self.accelerator.num_processes))
        self.recorder.restore(state, int(meta["nonfinite_losses"]), self.accelerator)
        self._epoch_update_steps = list(meta["epoch_update_steps"])
        self._resumed_epoch_seconds = float(meta["epoch_seconds_done"])
        self.intertrain_history = list(meta["history"])

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        """The parent's state; on resume, InterTrain's state and the (epoch, step) of its variable-length epochs."""
        epochs_trained, steps_trained_in_current_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is None:
            return epochs_trained, steps_trained_in_current_epoch
        self.load_intertrain_state(resume_from_checkpoint)
        epochs_trained = self.tracker.epoch
        done_in_epoch = steps_done_in_epoch(
            resume_from_checkpoint, self.state.global_step, epochs_trained, self._epoch_update_steps
        )
        if self.args.ignore_data_skip:
            return epochs_trained, 0
        return epochs_trained, done_in_epoch * self.args.gradient_accumulation_steps

    # ----------------------------------------------------------------------------------------------------------
    # Hub: checkpoints loadable by timm and transformers, model cards
    @property
    def intertrain_image_size(self) -> tuple[int, int]:
        """The training resolution (height, width), read once from the first training item."""
        return self._intertrain_image_size

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The parent's save, then the folder (final model or checkpoint) made loadable by timm too: config.json gets
        the `pretrained_cfg` of the eval transform and the weights native timm keys (`hub.make_loadable`)."""
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            timm_model = unwrap_timm_model(self.accelerator.unwrap_model(self.model))
            make_loadable(output_dir or self.args.output_dir, timm_model, self.intertrain_image_size)

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        dataset_name: str | None = None,
    ) -> None:
        """Write README.md (Hub metadata and InterTrain's report, see `model_card.py`), its plot and
        `intertrain_card.json` into `output_dir`, on the main process. The parent's signature plus `dataset_name`
        (a Hub id or local path); the arguments of `model_card.card_inputs` given once are kept for later calls,
        such as the one `push_to_hub` makes with only `model_name` and `tags`; `tasks` and `dataset_args` are unused.
        """
        if not self.is_world_process_zero():
            return
        given = card_inputs(dataset_name or dataset, dataset_tags, finetuned_from, license, language)
        self._card_defaults = {**getattr(self, "_card_defaults", {}), **given}
        repo_id = resolve_repo_id(self.args.hub_model_id, self.args.output_dir, self.hub_model_id)
        facts = card_facts(
            self,
            model_name=model_name or repo_id.split("/")[-1],
            repo_id=repo_id,
            tags=[tags] if isinstance(tags, str) else tags,
            **self._card_defaults,
        )
        write_model_card(facts, self.args.output_dir)
