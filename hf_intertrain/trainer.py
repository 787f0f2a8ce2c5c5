"""`InterTrainTrainer`: the glue between InterTrain's parts and `transformers.Trainer`.

The parts know nothing of the Trainer: the operators combine tensors, `split` pools per constituent, the
`AmenabilityTracker` turns losses into decisions and the `InterTrainBatchSampler` turns decisions into an epoch
plan. This class wires them into the Trainer's own loop, logging, checkpoints and distributed launch.

Maintenance note: besides the public hooks (`get_train_dataloader`, `compute_loss`, `create_scheduler`,
`create_model_card`), three private Trainer methods are overridden because transformers fixes the epoch length
from the first dataloader: `_run_epoch` (re-plans the epoch and passes its real length on, keeping the parent's
signature), `_init_training_state` (maps a resumed global step to (epoch, step) through the recorded epoch
lengths) and `_save_checkpoint` (adds InterTrain's state to every checkpoint). Each calls the parent unchanged.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np
import safetensors.numpy
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, seed_worker

from .config import InterTrainArguments
from .data import InterTrainCollator, as_item_dataset
from .operators import cell_rectangle_masks, linavg, randpatch
from .sampler import InterTrainBatchSampler
from .schedule import EpochProgress, follow_epoch_progress
from .split import FeatureLayout, check_splittable, feature_grid, forward_split, unwrap_timm_model
from .tracker import AmenabilityTracker

INTERTRAIN_STATE_NAME = "intertrain_state.safetensors"
INTERTRAIN_META_NAME = "intertrain_state.json"
_RECORD_FLUSH_EVERY = 256


class _EpochBoundary(TrainerCallback):
    """Closes InterTrain's epoch before the Trainer evaluates and checkpoints at the epoch's end."""

    def __init__(self, trainer: InterTrainTrainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer._end_intertrain_epoch()


class InterTrainTrainer(Trainer):
    """A `transformers.Trainer` that trains timm image classifiers on interpolated inputs (InterTrain).

    Use it as the plain Trainer: `InterTrainTrainer(model, args, train_dataset=..., eval_dataset=...)`.
    The model is a `transformers.TimmWrapperForImageClassification` (preferred: it saves Hub-ready checkpoints)
    or a timm model. The train dataset yields dicts with `pixel_values` and `labels` (an `ImageClassificationDataset`,
    or any map-style dataset, which is wrapped so that the sampler's pairs can be fetched).

    Per epoch the trainer logs, through the Trainer's own `log` (so `log_history`, TensorBoard and W&B get it):
    `intertrain/interpolated_fraction`, `intertrain/items`, `intertrain/pairs` (items + pairs == N always),
    `intertrain/region_1..3`, `intertrain/epoch_seconds` (training time of the epoch, evaluation excluded).

    Choices where ALGORITHM.md is silent:
        - Per-sample losses come from the training forward pass (cross-entropy per constituent, in float32).
        - RandPatch rectangles are drawn on the training device's host with a generator seeded by (seed, process,
          global step, micro-batch), so a resumed run draws the same rectangles.
        - The loss of a batch is the mean over its items, divided by the accumulation steps like the plain Trainer.
        - `num_train_epochs` must be whole; with `max_steps > 0` the schedule follows steps, not epochs.
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

        # Model
        if model is None:
            raise ValueError("InterTrainTrainer needs a model: a TimmWrapperForImageClassification or a timm model")
        timm_model = unwrap_timm_model(model)
        if not (hasattr(timm_model, "forward_features") and hasattr(timm_model, "forward_head")):
            raise ValueError(
                f"{type(model).__name__} is not a timm model (no forward_features/forward_head): use "
                "transformers.TimmWrapperForImageClassification or timm.create_model"
            )

        # Dataset
        if train_dataset is None:
            raise ValueError("InterTrainTrainer needs a train_dataset (items with 'pixel_values' and 'labels')")
        train_dataset = as_item_dataset(train_dataset)
        if len(train_dataset) == 0:
            raise ValueError("train_dataset is empty: InterTrain needs at least one training sample")
        image_size = tuple(train_dataset[0]["pixel_values"].shape[-2:])

        # Interpolation: check the model can be split now, not at epoch 2
        self.feature_layout: FeatureLayout | None = None
        self.feature_grid: tuple[int, int] | None = None
        if args.interpolation == "randpatch":
            if args.split_propagation:
                self.feature_layout = check_splittable(timm_model, image_size)
                self.feature_grid = self.feature_layout.grid
            else:
                self.feature_grid = feature_grid(timm_model, image_size)
            cell_rectangle_masks(1, self.feature_grid, args.patch_ratio)

        # Tracker and sampler
        self.tracker = AmenabilityTracker(
            len(train_dataset), selective=args.selective_interpolation, regions=args.regions
        )
        self.intertrain_sampler = InterTrainBatchSampler(
            self.tracker,
            batch_size=args.per_device_train_batch_size,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            interpolate=args.interpolates,
            adaptive_ratio=args.interpolation == "linavg" and args.adaptive_interpolation,
            target_ratio=args.patch_ratio,
            drop_last=args.dataloader_drop_last,
        )
        self.intertrain_history: list[dict[str, float]] = []
        self._records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._epoch_update_steps: list[int] = []
        self._epoch_progress: EpochProgress | None = None
        self._epoch_started_at = time.perf_counter()
        self._micro_step = (-1, 0)
        self._mask_generator = torch.Generator()

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator if data_collator is not None else InterTrainCollator(),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            **kwargs,
        )
        self.add_callback(_EpochBoundary(self))

    # ----------------------------------------------------------------------------------------------------------
    # Data
    def get_train_dataloader(self) -> DataLoader:
        """A dataloader over the epoch plan: each batch holds `per_device_train_batch_size` items (pairs or singles).

        The batch sampler makes the same plan on every process (ALGORITHM.md, "Batch plan of an epoch");
        `accelerator.prepare` shards its batches across processes as it does for any batch sampler.
        """
        args = self.args
        params: dict[str, Any] = {
            "batch_sampler": self.intertrain_sampler,
            "collate_fn": self.data_collator,
            "num_workers": args.dataloader_num_workers,
            "pin_memory": args.dataloader_pin_memory and torch.cuda.is_available(),
            "persistent_workers": args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
            "worker_init_fn": lambda worker_id: seed_worker(
                worker_id, num_workers=args.dataloader_num_workers, rank=args.process_index
            ),
        }
        if args.dataloader_num_workers > 0:
            params["prefetch_factor"] = args.dataloader_prefetch_factor
            params["multiprocessing_context"] = args.dataloader_multiprocessing_context
        return self.accelerator.prepare(DataLoader(self.train_dataset, **params))

    # ----------------------------------------------------------------------------------------------------------
    # Loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Item loss `r * L_a + (1 - r) * L_b` (paper eq. 2 and 3), mean over the batch's items.

        Pairs are interpolated here, on the training device; with split propagation each constituent's logits
        come from its own cells of the final feature map. Every constituent's loss and correctness is recorded
        for the amenability metric (ALGORITHM.md, "Loss"). Outside training this is plain cross-entropy.
        """
        if not model.training or "sample_index" not in inputs:
            logits = self._logits(model, inputs["pixel_values"])
            loss = F.cross_entropy(logits.float(), inputs["labels"])
            return (loss, {"logits": logits}) if return_outputs else loss

        x_a, y_a, index_a = inputs["pixel_values"], inputs["labels"], inputs["sample_index"]
        x_b = inputs.get("pixel_values_b")
        num_pairs = 0 if x_b is None else x_b.shape[0]
        ratio = torch.ones(x_a.shape[0], device=x_a.device, dtype=torch.float32)
        cell_mask = None
        if num_pairs:
            if self.args.interpolation == "linavg":
                pair_ratio = inputs["interp_ratio"].float()
                mixed = linavg(x_a[:num_pairs], x_b, pair_ratio)
            else:
                pair_mask = cell_rectangle_masks(
                    num_pairs, self.feature_grid, self.args.patch_ratio, generator=self._next_mask_generator()
                ).to(x_a.device)
                mixed, pair_ratio = randpatch(x_a[:num_pairs], x_b, pair_mask)
                if self.feature_layout is not None:
                    cell_mask = torch.ones((x_a.shape[0], *self.feature_grid), dtype=torch.bool, device=x_a.device)
                    cell_mask[:num_pairs] = pair_mask
            pixel_values = torch.cat([mixed, x_a[num_pairs:]])
            ratio = torch.cat([pair_ratio.to(ratio), ratio[num_pairs:]])
        else:
            pixel_values = x_a

        if cell_mask is not None:
            rows_b = torch.arange(num_pairs, device=x_a.device)
            logits_a, logits_b = forward_split(model, pixel_values, cell_mask, rows_b=rows_b)
        else:
            logits = self._logits(model, pixel_values)
            logits_a, logits_b = logits, logits[:num_pairs]

        loss_a = F.cross_entropy(logits_a.float(), y_a, reduction="none")
        item_loss = ratio * loss_a
        records = [(index_a, loss_a, logits_a.argmax(-1) == y_a)]
        if num_pairs:
            y_b = inputs["labels_b"]
            loss_b = F.cross_entropy(logits_b.float(), y_b, reduction="none")
            item_loss = item_loss + F.pad((1 - ratio[:num_pairs]) * loss_b, (0, x_a.shape[0] - num_pairs))
            records.append((inputs["sample_index_b"], loss_b, logits_b.argmax(-1) == y_b))
        self._record(records)
        loss = item_loss.mean()
        return (loss, {"logits": logits_a}) if return_outputs else loss

    def _logits(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits through the (possibly DDP-wrapped) model's own forward, whatever the wrapper class returns."""
        if isinstance(self.accelerator.unwrap_model(model), PreTrainedModel):
            return model(pixel_values=pixel_values).logits
        return model(pixel_values)

    def _next_mask_generator(self) -> torch.Generator:
        """A generator seeded by (seed, process, global step, micro-batch): resumable and distinct per rank."""
        step, micro = self._micro_step
        micro = micro + 1 if step == self.state.global_step else 0
        self._micro_step = (self.state.global_step, micro)
        key = (self.args.seed, self.args.process_index, self.state.global_step, micro)
        return self._mask_generator.manual_seed(hash(key) & 0x7FFF_FFFF_FFFF_FFFF)

    def _record(self, records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Keep the step's per-constituent records on the device; move them to the tracker in chunks."""
        index = torch.cat([r[0] for r in records])
        loss = torch.cat([r[1] for r in records]).detach().float()
        correct = torch.cat([r[2] for r in records])
        self._records.append((index, loss, correct))
        if len(self._records) >= _RECORD_FLUSH_EVERY:
            self._flush_records()

    def _flush_records(self) -> None:
        if not self._records:
            return
        index, loss, correct = (torch.cat(parts).cpu().numpy() for parts in zip(*self._records))
        self._records.clear()
        self.tracker.record(index, loss, correct)

    # ----------------------------------------------------------------------------------------------------------
    # Epochs, schedule and logging
    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The Trainer's scheduler sized for full epochs and re-indexed by epoch progress (see `schedule.py`), so
        that it ends at the last step of the last epoch however much the epochs shrink."""
        if self.lr_scheduler is not None or self.args.max_steps > 0:
            return super().create_scheduler(num_training_steps, optimizer)
        self._epoch_progress = EpochProgress(nominal_steps_per_epoch=self._nominal_update_steps_per_epoch())
        nominal_total = self._epoch_progress.nominal_steps_per_epoch * int(self.args.num_train_epochs)
        scheduler = super().create_scheduler(nominal_total, optimizer)
        self.lr_scheduler = follow_epoch_progress(scheduler, self._epoch_progress)
        return self.lr_scheduler

    def _nominal_update_steps_per_epoch(self) -> int:
        """Optimizer steps per process of an epoch without interpolation (N singles)."""
        args = self.args
        num_samples, batch_size = len(self.train_dataset), args.per_device_train_batch_size
        batches = num_samples // batch_size if args.dataloader_drop_last else math.ceil(num_samples / batch_size)
        per_process = math.ceil(batches / max(1, self.accelerator.num_processes))
        return max(1, math.ceil(per_process / args.gradient_accumulation_steps))

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, *args, **kwargs):
        """Plan the epoch, then run the parent's epoch with this epoch's real length (it shrinks with pairs)."""
        self.intertrain_sampler.set_epoch(epoch)
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
            self._update_progress_bar_total()
        self._epoch_started_at = time.perf_counter()
        return super()._run_epoch(
            model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, *args, **kwargs
        )

    def _update_progress_bar_total(self) -> None:
        for callback in self.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None) if isinstance(callback, ProgressCallback) else None
            if bar is not None:
                bar.total = self.state.max_steps
                bar.refresh()

    def _end_intertrain_epoch(self) -> None:
        """Close the epoch: gather records, decide the next epoch's interpolation, log the epoch's statistics."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self._epoch_started_at
        self._flush_records()
        self._reduce_epoch_records()
        num_samples = len(self.train_dataset)
        items, pairs = self.intertrain_sampler.num_items, self.intertrain_sampler.num_pairs
        summary = self.tracker.end_epoch()
        self._check_ranks_agree()
        stats = {
            "intertrain/interpolated_fraction": 2 * pairs / num_samples,
            "intertrain/items": float(items),
            "intertrain/pairs": float(pairs),
            "intertrain/region_1": float(summary.region_1),
            "intertrain/region_2": float(summary.region_2),
            "intertrain/region_3": float(summary.region_3),
            "intertrain/next_interpolated": float(summary.next_interpolated),
            "intertrain/epoch_seconds": seconds,
        }
        self.intertrain_history.append({"epoch": summary.epoch, **stats})
        self.log(dict(stats))

    def _reduce_epoch_records(self) -> None:
        """Sum every rank's records of this epoch so each rank's tracker sees all samples (one collective)."""
        if self.accelerator.num_processes <= 1:
            return
        loss_sum, correct_count, count = self.tracker.epoch_buffers()
        stacked = torch.from_numpy(
            np.stack([loss_sum.astype(np.float64), correct_count.astype(np.float64), count.astype(np.float64)])
        ).to(self.accelerator.device)
        stacked = self.accelerator.reduce(stacked, reduction="sum").cpu().numpy()
        self.tracker.set_epoch_buffers(
            stacked[0].astype(loss_sum.dtype), stacked[1].astype(correct_count.dtype), stacked[2].astype(count.dtype)
        )

    def _check_ranks_agree(self) -> None:
        """Raise if the ranks' trackers diverged (a cheap checksum, gathered once per epoch)."""
        if self.accelerator.num_processes <= 1:
            return
        interpolated = self.tracker.interpolated
        checksum = torch.tensor(
            [float(interpolated.sum()), float(np.flatnonzero(interpolated).sum() % 1_000_003)],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        gathered = self.accelerator.gather(checksum[None]).cpu()
        if not torch.all(gathered == gathered[0]):
            raise RuntimeError(
                f"InterTrain trackers diverged across ranks at epoch {self.tracker.epoch}: every process must see "
                "the same dataset, seed and InterTrain settings"
            )

    # ----------------------------------------------------------------------------------------------------------
    # Checkpoints
    def _settings(self) -> dict[str, Any]:
        args = self.args
        return {
            "num_samples": len(self.train_dataset),
            "interpolation": args.interpolation,
            "split_propagation": args.split_propagation,
            "adaptive_interpolation": args.adaptive_interpolation,
            "selective_interpolation": args.selective_interpolation,
            "amenability_regions": list(args.regions),
            "patch_ratio": args.patch_ratio,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "seed": args.data_seed if args.data_seed is not None else args.seed,
        }

    def _save_checkpoint(self, model, trial) -> None:
        """The parent's checkpoint plus InterTrain's state (safetensors + JSON, no pickle)."""
        self._flush_records()
        super()._save_checkpoint(model, trial)
        state = self._global_tracker_state()
        if not self.args.should_save:
            return
        output_dir = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self.save_intertrain_state(output_dir, state)

    def _global_tracker_state(self) -> dict[str, np.ndarray]:
        """The tracker state with this epoch's records of all ranks (the live buffers stay per rank)."""
        state = self.tracker.state_dict()
        if self.accelerator.num_processes > 1:
            saved = self.tracker.epoch_buffers()
            self._reduce_epoch_records()
            state = self.tracker.state_dict()
            self.tracker.set_epoch_buffers(*saved)
        return state

    def save_intertrain_state(self, output_dir: str, state: dict[str, np.ndarray] | None = None) -> None:
        """Write the tracker state and the epoch plan's inputs into `output_dir`."""
        os.makedirs(output_dir, exist_ok=True)
        state = self.tracker.state_dict() if state is None else state
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.path.join(output_dir, INTERTRAIN_STATE_NAME))
        meta = {
            "settings": self._settings(),
            "epoch_update_steps": self._epoch_update_steps,
            "history": self.intertrain_history,
        }
        with open(os.path.join(output_dir, INTERTRAIN_META_NAME), "w") as f:
            json.dump(meta, f, indent=2)

    def load_intertrain_state(self, checkpoint_dir: str) -> None:
        """Restore the tracker and epoch history from a checkpoint, refusing one made with other settings."""
        with open(os.path.join(checkpoint_dir, INTERTRAIN_META_NAME)) as f:
            meta = json.load(f)
        current = self._settings()
        for key, value in meta["settings"].items():
            if current.get(key) != value:
                raise ValueError(
                    f"checkpoint {checkpoint_dir} was made with {key}={value!r} but this run has {key}={current.get(key)!r}: "
                    "resume with the same dataset and InterTrain settings, or start a new output_dir"
                )
        state = safetensors.numpy.load_file(os.path.join(checkpoint_dir, INTERTRAIN_STATE_NAME))
        if self.accelerator.num_processes > 1 and not self.accelerator.is_main_process:
            # Epoch records in the checkpoint are already global: only one rank may contribute them again.
            for name in state:
                if name.startswith("epoch_"):
                    state[name] = np.zeros_like(state[name])
        self.tracker.load_state_dict(state)
        self._epoch_update_steps = list(meta["epoch_update_steps"])
        self.intertrain_history = list(meta["history"])

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        """The parent's state; on resume, InterTrain's state and the (epoch, step) of its variable-length epochs."""
        epochs_trained, steps_trained_in_current_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is None:
            return epochs_trained, steps_trained_in_current_epoch
        if not os.path.isfile(os.path.join(resume_from_checkpoint, INTERTRAIN_META_NAME)):
            raise ValueError(
                f"{resume_from_checkpoint} has no {INTERTRAIN_META_NAME}: it was not written by InterTrainTrainer, so "
                "its interpolation state is unknown; start a new run instead of resuming"
            )
        self.load_intertrain_state(resume_from_checkpoint)
        epochs_trained = self.tracker.epoch
        done_in_epoch = self.state.global_step - sum(self._epoch_update_steps[:epochs_trained])
        steps_trained_in_current_epoch = 0 if self.args.ignore_data_skip else done_in_epoch * self.args.gradient_accumulation_steps
        return epochs_trained, steps_trained_in_current_epoch
