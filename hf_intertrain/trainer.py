"""`InterTrainTrainer`: the glue between InterTrain's parts and `transformers.Trainer`.

The parts know nothing of the Trainer: the operators combine tensors, `split` pools per constituent, the
`AmenabilityTracker` turns losses into decisions and the `InterTrainBatchSampler` turns decisions into an epoch
plan. This class wires them into the Trainer's own loop, logging, checkpoints and distributed launch.

Maintenance note: besides the public hooks (`get_train_dataloader`, `compute_loss`, `create_scheduler`,
`create_model_card`), three private Trainer methods are overridden because transformers fixes the epoch length
from the first dataloader: `_run_epoch` (re-plans the epoch and passes its real length on, keeping the parent's
signature), `_init_training_state` (maps a resumed global step to (epoch, step) through the recorded epoch
lengths) and `_save_checkpoint` (adds InterTrain's state to every checkpoint). Each calls the parent unchanged.
Mid-epoch resume relies on the parent's `_run_epoch` skipping `steps_trained_in_current_epoch` batches with
accelerate's `skip_first_batches` (the skipped batches are not fetched) and restoring the RNG states after the
first fetched batch; when the whole epoch was trained before the checkpoint, `_end_intertrain_epoch` restores
them with the parent's `_load_rng_state` instead. Multi-process runs rely on accelerate's `BatchSamplerShard`
with `even_batches=True`. `tests/test_resume.py` and `tests/test_distributed.py` check all of it.
"""

from __future__ import annotations

import json
import logging
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
from .data import EXTRA_CONSTITUENTS, BatchSeededDataset, InterTrainCollator, as_item_dataset
from .hub import image_size_of, make_loadable, resolve_repo_id
from .model_card import card_facts, write_model_card
from .operators import cell_rectangle_masks, linavg, mosaic4, quadrant_owner, quadrant_splits, randpatch, randpatch4
from .sampler import InterTrainBatchSampler
from .schedule import EpochProgress, follow_epoch_progress
from .split import FeatureLayout, check_splittable, feature_grid, forward_split_by_owner, unwrap_timm_model
from .tracker import AmenabilityTracker

logger = logging.getLogger(__name__)

INTERTRAIN_STATE_NAME = "intertrain_state.safetensors"
INTERTRAIN_META_NAME = "intertrain_state.json"
_RECORD_FLUSH_EVERY = 256


def _refuse_differences(checkpoint_dir: str, saved: dict[str, Any], current: dict[str, Any], fix: str) -> None:
    """Raise a ValueError naming the first setting whose saved value differs from this run's."""
    for key, value in saved.items():
        if current.get(key) != value:
            raise ValueError(
                f"checkpoint {checkpoint_dir} was made with {key}={value!r} but this run has "
                f"{key}={current.get(key)!r}: {fix}"
            )


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
    `intertrain/interpolated_fraction`, `intertrain/items`, `intertrain/pairs`, `intertrain/skipped` (items + pairs +
    skipped == N always; skipped is 0 unless `amenable_action="skip"`), `intertrain/region_1..3`,
    `intertrain/next_interpolated`, `intertrain/nonfinite_losses` and `intertrain/epoch_seconds` (training time of
    the epoch on the main process, evaluation excluded). With `four_way` also `intertrain/composites_4` (4-way
    composites; items + pairs + 3 * composites_4 + skipped == N), `intertrain/constituents_per_item` and
    `intertrain/next_in_quads`. All but the seconds are global: the same on every process
    of a distributed run.

    Distributed runs (`accelerate launch`, see `recipes/accelerate/`): every process computes the same epoch plan
    and `accelerator.prepare` shards its batches. Each process records its own constituents; at the epoch's end
    one all-reduce sums the records of all processes into every tracker, and a gathered checksum of the decisions
    raises if the trackers ever differ.

    Checkpoints hold the tracker state (`intertrain_state.safetensors`, with the current epoch's records of all
    processes) and the plan's inputs and epoch history (`intertrain_state.json`); `resume_from_checkpoint`
    restores them and trains the rest of the same plan, also from a mid-epoch checkpoint.

    Choices where ALGORITHM.md is silent:
        - Per-sample losses come from the training forward pass (cross-entropy per constituent, in float32, also
          under bf16/fp16 autocast). A non-finite loss (an fp16 overflow, whose step the GradScaler skips) is not
          recorded: that sample counts as unrecorded in the epoch (see `AmenabilityTracker`), and the number of
          such losses is logged as `intertrain/nonfinite_losses`.
        - With several processes, accelerate's `even_batches` completes the last round of batches with items
          from the start of the plan, which are trained twice (as in any accelerate run). Their two records are
          averaged into one observation by the tracker: no sample is dropped, none is counted twice.
        - RandPatch rectangles are drawn on the training device's host with a generator seeded by (seed, process,
          global step, micro-batch), and each batch is fetched (augmented) with RNGs seeded by (seed, epoch, its
          items), so a resumed run draws the same rectangles and augmentations as the uninterrupted one.
        - Resuming refuses a checkpoint of another dataset size or other InterTrain settings; from a mid-epoch
          checkpoint it also needs the same seed, batch size, accumulation steps, drop_last and process count
          (the rest of the plan must be the same batches). At an epoch boundary those may change.
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
        image_size = self._intertrain_image_size = image_size_of(train_dataset)

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
            if args.four_way != "none":
                quadrant_splits(1, self.feature_grid)

        # Tracker and sampler
        self.tracker = AmenabilityTracker(
            len(train_dataset),
            selective=args.selective_interpolation,
            regions=args.regions,
            max_group_size=args.max_group_size,
            four_way_selection=args.four_way_selection,
        )
        self.intertrain_sampler = InterTrainBatchSampler(
            self.tracker,
            batch_size=args.per_device_train_batch_size,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            interpolate=args.interpolates,
            adaptive_ratio=args.interpolation == "linavg" and args.adaptive_interpolation,
            target_ratio=args.patch_ratio,
            drop_last=args.dataloader_drop_last,
            amenable_action=args.amenable_action,
        )
        self.intertrain_history: list[dict[str, float]] = []
        self._records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._epoch_update_steps: list[int] = []
        self._epoch_progress: EpochProgress | None = None
        self._epoch_started_at = time.perf_counter()
        self._micro_step = (-1, 0)
        self._mask_generator = torch.Generator()
        self._nonfinite_losses = 0
        self._resumed_epoch_seconds = 0.0
        self._rng_state_to_restore: str | None = None
        self._batch_seeded_dataset: BatchSeededDataset | None = None

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
        self._batch_seeded_dataset = BatchSeededDataset(self.train_dataset, self.intertrain_sampler.seed)
        return self.accelerator.prepare(DataLoader(self._batch_seeded_dataset, **params))

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

        x_a = inputs["pixel_values"]
        x_b, x_c = inputs.get("pixel_values_b"), inputs.get("pixel_values_c")
        batch = x_a.shape[0]
        num_groups = 0 if x_b is None else x_b.shape[0]  # Rows 0..G-1: 4-way composites, then pairs.
        num_quads = 0 if x_c is None else x_c.shape[0]
        num_pairs = num_groups - num_quads
        ones = torch.ones(batch, device=x_a.device, dtype=torch.float32)
        shares = [ones]  # Per slot a, b, c, d: each constituent's share r_i of its item (eq. 2, sum_i r_i L_i).
        owner = None
        if not num_groups:
            pixel_values = x_a
        elif self.args.interpolation == "linavg":
            pair_ratio = inputs["interp_ratio"].float()
            pixel_values = torch.cat([linavg(x_a[:num_groups], x_b, pair_ratio), x_a[num_groups:]])
            shares = [torch.cat([pair_ratio, ones[num_groups:]]), 1 - pair_ratio]
        else:
            pixel_values, shares, owner = self._composites(inputs, num_quads, num_pairs)

        if owner is not None:
            sizes = (batch, num_groups, num_quads, num_quads)
            rows = torch.cat([torch.arange(n, device=x_a.device) for n in sizes])
            slots = torch.cat([torch.full((n,), k, device=x_a.device) for k, n in enumerate(sizes)])
            logits = forward_split_by_owner(model, pixel_values, owner, rows, slots).split(sizes)[: len(shares)]
        else:
            full = self._logits(model, pixel_values)
            logits = [full, full[:num_groups]][: len(shares)]

        suffixes = ("",) + tuple(f"_{s}" for s in EXTRA_CONSTITUENTS)
        item_loss = torch.zeros(batch, device=x_a.device, dtype=torch.float32)
        records = []
        for suffix, share, slot_logits in zip(suffixes, shares, logits):
            labels = inputs[f"labels{suffix}"]
            loss = F.cross_entropy(slot_logits.float(), labels, reduction="none")
            item_loss = item_loss + F.pad(share * loss, (0, batch - share.shape[0]))
            records.append((inputs[f"sample_index{suffix}"], loss, slot_logits.argmax(-1) == labels))
        self._record(records)
        loss = item_loss.mean()
        return (loss, {"logits": logits[0]}) if return_outputs else loss

    def _composites(
        self, inputs: dict[str, torch.Tensor], num_quads: int, num_pairs: int
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """RandPatch pairs and 4-way composites of a batch (rows: composites, pairs, singles).

        Returns the inputs, each slot's shares (a for every row, b for composites and pairs, c and d for
        composites) and, with split propagation, the owning slot of every feature-grid cell. The pair rectangles are
        drawn before the composites' split points, so a batch without composites draws exactly what pairs-only does.
        """
        x_a, x_b = inputs["pixel_values"], inputs["pixel_values_b"]
        device, grid, num_groups = x_a.device, self.feature_grid, num_quads + num_pairs
        generator = self._next_mask_generator()
        pair_mask = cell_rectangle_masks(num_pairs, grid, self.args.patch_ratio, generator=generator).to(device)
        mixed, pair_ratio = randpatch(x_a[num_quads:num_groups], x_b[num_quads:], pair_mask)
        share_a = torch.ones(x_a.shape[0], device=device, dtype=torch.float32)
        share_a[num_quads:num_groups] = pair_ratio
        shares = [share_a, 1 - share_a[:num_groups]]
        owner = None
        if self.feature_layout is not None:
            owner = torch.zeros((x_a.shape[0], *grid), dtype=torch.long, device=device)
            owner[num_quads:num_groups] = (~pair_mask).long()
        if num_quads:
            splits = quadrant_splits(num_quads, grid, generator=generator)  # host-side: mosaic4 groups by split
            compose = randpatch4 if self.args.four_way == "randpatch4" else mosaic4
            constituents = [x_a[:num_quads], x_b[:num_quads], inputs["pixel_values_c"], inputs["pixel_values_d"]]
            mixed_quads, quad_ratio = compose(constituents, splits, grid)
            mixed = torch.cat([mixed_quads, mixed])
            share_a[:num_quads] = quad_ratio[:, 0]
            shares = [share_a, torch.cat([quad_ratio[:, 1], 1 - pair_ratio]), quad_ratio[:, 2], quad_ratio[:, 3]]
            owner[:num_quads] = quadrant_owner(splits, grid).to(device)
        return torch.cat([mixed, x_a[num_groups:]]), shares, owner

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
        key = [self.args.seed, self.args.process_index, self.state.global_step, micro]
        return self._mask_generator.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0]))

    def _record(self, records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Keep the step's per-constituent records on the device; move them to the tracker in chunks."""
        index = torch.cat([r[0] for r in records])
        loss = torch.cat([r[1] for r in records]).detach().float()
        correct = torch.cat([r[2] for r in records])
        self._records.append((index, loss, correct))
        if len(self._records) >= _RECORD_FLUSH_EVERY:
            self._flush_records()

    def _flush_records(self) -> None:
        """Hand the kept records to the tracker, leaving out non-finite losses (counted, see the class docstring)."""
        if not self._records:
            return
        index, loss, correct = (torch.cat(parts).cpu().numpy() for parts in zip(*self._records))
        self._records.clear()
        finite = np.isfinite(loss)
        if not finite.all():
            self._nonfinite_losses += int(finite.size - np.count_nonzero(finite))
            index, loss, correct = index[finite], loss[finite], correct[finite]
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
            self._update_progress_bar_total()
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
        self._flush_records()
        nonfinite = self._reduce_epoch_records()
        self._nonfinite_losses = 0
        num_samples = len(self.train_dataset)
        sampler = self.intertrain_sampler  # read before end_epoch, which makes it plan the next membership
        items, pairs, quads, skipped = sampler.num_items, sampler.num_pairs, sampler.num_quads, sampler.num_skipped
        summary = self.tracker.end_epoch()
        self._check_ranks_agree()
        seconds = time.perf_counter() - self._epoch_started_at  # planning and the decision count, like the paper's
        if nonfinite:
            logger.warning(
                f"epoch {summary.epoch}: {nonfinite} constituent losses were not finite (fp16 overflow or diverging "
                "training) and were not recorded; their samples are trained without interpolation next epoch"
            )
        stats = {
            "intertrain/interpolated_fraction": (2 * pairs + 4 * quads) / num_samples,
            "intertrain/items": float(items),
            "intertrain/pairs": float(pairs),
            "intertrain/skipped": float(skipped),
            "intertrain/region_1": float(summary.region_1),
            "intertrain/region_2": float(summary.region_2),
            "intertrain/region_3": float(summary.region_3),
            "intertrain/next_interpolated": float(summary.next_interpolated),
            "intertrain/nonfinite_losses": float(nonfinite),
            "intertrain/epoch_seconds": seconds,
        }
        if self.args.four_way != "none":
            stats["intertrain/composites_4"] = float(quads)
            stats["intertrain/constituents_per_item"] = (num_samples - skipped) / max(1, items)
            stats["intertrain/next_in_quads"] = float(summary.next_in_quads)
        self.intertrain_history.append({"epoch": summary.epoch, **stats})
        self.log(dict(stats))
        if self._rng_state_to_restore is not None:
            self._load_rng_state(self._rng_state_to_restore)
            self._rng_state_to_restore = None

    def _reduce_epoch_records(self) -> int:
        """Sum every process's records of this epoch into each tracker (one all-reduce, every process must call it).

        Returns:
            The number of non-finite losses left out this epoch, over all processes.
        """
        if self.accelerator.num_processes <= 1:
            return self._nonfinite_losses
        num_samples = self.tracker.num_samples
        loss_sum, correct_count, count = self.tracker.epoch_buffers()
        flat = np.concatenate([loss_sum, correct_count, count, [self._nonfinite_losses]], dtype=np.float64)
        flat = self.accelerator.reduce(torch.from_numpy(flat).to(self.accelerator.device), reduction="sum")
        bounds = [num_samples, 2 * num_samples, 3 * num_samples]
        loss_sum, correct_count, count, nonfinite = np.split(flat.cpu().numpy(), bounds)
        self.tracker.set_epoch_buffers(loss_sum, correct_count, count)
        return int(nonfinite[0])

    def _check_ranks_agree(self) -> None:
        """Raise if the processes' trackers diverged: a checksum of decisions and averages, gathered once per epoch."""
        if self.accelerator.num_processes <= 1:
            return
        interpolated = self.tracker.interpolated
        l_corr, l_incorr, _ = self.tracker.averages()
        checksum = np.nan_to_num(
            [
                np.count_nonzero(interpolated),
                np.flatnonzero(interpolated).sum(dtype=np.float64),
                np.flatnonzero(self.tracker.in_quads).sum(dtype=np.float64),
                l_corr,
                l_incorr,
                np.nansum(self.tracker.last_loss, dtype=np.float64),
            ],
            nan=-1.0,
        )
        checksum = torch.tensor(checksum, dtype=torch.float64, device=self.accelerator.device)
        gathered = self.accelerator.gather(checksum[None]).cpu()
        if not torch.all(gathered == gathered[0]):
            raise RuntimeError(
                f"InterTrain trackers diverged across processes at epoch {self.tracker.epoch}: every process must "
                "see the same dataset, seed and InterTrain settings"
            )

    # ----------------------------------------------------------------------------------------------------------
    # Checkpoints
    def _settings(self) -> dict[str, Any]:
        """InterTrain's settings: a checkpoint made with others is refused."""
        args = self.args
        return {
            "num_samples": len(self.train_dataset),
            "interpolation": args.interpolation,
            "split_propagation": args.split_propagation,
            "adaptive_interpolation": args.adaptive_interpolation,
            "selective_interpolation": args.selective_interpolation,
            "amenability_regions": list(args.regions),
            "amenable_action": args.amenable_action,
            "patch_ratio": args.patch_ratio,
            "four_way": args.four_way,
            "four_way_selection": args.four_way_selection,
        }

    def _plan_layout(self) -> dict[str, Any]:
        """What an epoch's batches depend on besides the tracker: must match to resume mid-epoch."""
        args = self.args
        return {
            "seed": args.seed,
            "data_seed": args.data_seed,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "dataloader_drop_last": args.dataloader_drop_last,
            "num_processes": self.accelerator.num_processes,
        }

    def _at_epoch_boundary(self) -> bool:
        """No step of the tracker's current epoch trained yet (the same answer on every process)."""
        return self.state.global_step == sum(self._epoch_update_steps[: self.tracker.epoch])

    def _save_checkpoint(self, model, trial) -> None:
        """InterTrain's state (safetensors + JSON, no pickle), then the parent's checkpoint.

        Written first, so that a checkpoint with the Trainer's state (`trainer_state.json`, written last) has it.
        """
        self._flush_records()
        state, nonfinite = self._global_tracker_state()
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            output_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            self.save_intertrain_state(output_dir, state, nonfinite)
        super()._save_checkpoint(model, trial)

    def _global_tracker_state(self) -> tuple[dict[str, np.ndarray], int]:
        """The tracker state with this epoch's records of all processes (each process keeps its own buffers), and
        the epoch's non-finite loss count. Every process calls it: mid-epoch it is one all-reduce."""
        if self.accelerator.num_processes <= 1 or self._at_epoch_boundary():
            return self.tracker.state_dict(), self._nonfinite_losses
        own = self.tracker.epoch_buffers()
        nonfinite = self._reduce_epoch_records()
        state = self.tracker.state_dict()
        self.tracker.set_epoch_buffers(*own)
        return state, nonfinite

    def save_intertrain_state(
        self, output_dir: str, state: dict[str, np.ndarray] | None = None, nonfinite_losses: int | None = None
    ) -> None:
        """Write the tracker state and the epoch plan's inputs into `output_dir`.

        Args:
            output_dir: The checkpoint folder.
            state: The tracker state to write; default: this process's (complete only in a one-process run).
            nonfinite_losses: Non-finite losses left out so far this epoch; default: this process's count.
        """
        os.makedirs(output_dir, exist_ok=True)
        state = self.tracker.state_dict() if state is None else state
        arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
        safetensors.numpy.save_file(arrays, os.path.join(output_dir, INTERTRAIN_STATE_NAME))
        meta = {
            "settings": self._settings(),
            "plan_layout": self._plan_layout(),
            "mid_epoch": not self._at_epoch_boundary(),
            "epoch_update_steps": self._epoch_update_steps,
            "epoch_seconds_done": 0.0 if self._at_epoch_boundary() else time.perf_counter() - self._epoch_started_at,
            "nonfinite_losses": self._nonfinite_losses if nonfinite_losses is None else nonfinite_losses,
            "history": self.intertrain_history,
        }
        with open(os.path.join(output_dir, INTERTRAIN_META_NAME), "w") as f:
            json.dump(meta, f, indent=2)

    def load_intertrain_state(self, checkpoint_dir: str) -> None:
        """Restore the tracker, epoch lengths and history, refusing a checkpoint this run cannot continue.

        Raises:
            ValueError: When the checkpoint has no InterTrain state, was made with another dataset size or other
                InterTrain settings, or was saved mid-epoch with another plan layout (see `_plan_layout`).
        """
        meta_path = os.path.join(checkpoint_dir, INTERTRAIN_META_NAME)
        if not os.path.isfile(meta_path):
            raise ValueError(
                f"{checkpoint_dir} has no {INTERTRAIN_META_NAME}: it was not written by InterTrainTrainer, so its "
                "interpolation state is unknown; start a new run instead of resuming"
            )
        with open(meta_path) as f:
            meta = json.load(f)
        _refuse_differences(
            checkpoint_dir,
            meta["settings"],
            self._settings(),
            "resume with the same dataset and InterTrain settings, or start a new output_dir",
        )
        if meta["mid_epoch"]:
            _refuse_differences(
                checkpoint_dir,
                meta["plan_layout"],
                self._plan_layout(),
                "it was saved mid-epoch, so the rest of the epoch needs the same batches: resume with the same "
                "settings, or from a checkpoint saved at an epoch's end",
            )
        state = safetensors.numpy.load_file(os.path.join(checkpoint_dir, INTERTRAIN_STATE_NAME))
        nonfinite = int(meta["nonfinite_losses"])
        if self.accelerator.num_processes > 1 and not self.accelerator.is_main_process:
            # The checkpoint's epoch records are already summed over processes: only one process may hold them.
            for name in state:
                if name.startswith("epoch_"):
                    state[name] = np.zeros_like(state[name])
            nonfinite = 0
        self.tracker.load_state_dict(state)
        self._nonfinite_losses = nonfinite
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
        done_in_epoch = self.state.global_step - sum(self._epoch_update_steps[:epochs_trained])
        steps = self._epoch_update_steps
        if not 0 <= done_in_epoch <= (steps[epochs_trained] if epochs_trained < len(steps) else 0):
            raise ValueError(
                f"{resume_from_checkpoint}: global step {self.state.global_step} is not in epoch {epochs_trained} of "
                f"the recorded epoch lengths {steps}; the checkpoint is inconsistent, resume from another one"
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
        """The parent's save, then the folder made loadable by timm too (`hub.make_loadable`): config.json gets the
        `pretrained_cfg` of the eval transform and the weights native timm keys. Runs for the final model and for
        every checkpoint (both go through `_save`)."""
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
        `intertrain_card.json` into `output_dir`, on the main process.

        The parent's signature plus `dataset_name` (a Hub id or local path). `dataset_name`, `finetuned_from`,
        `license` and `language` given once are kept for later calls, such as the one `push_to_hub` makes with
        only `model_name` and `tags`. `dataset_tags` overrides the Hub dataset ids; `dataset` stands in for
        `dataset_name`; `tasks` and `dataset_args` are not used (the task is image classification).
        """
        if not self.is_world_process_zero():
            return
        if dataset_name is None and dataset:
            dataset_name = dataset if isinstance(dataset, str) else dataset[0]
        given = {
            "dataset_name": dataset_name,
            "dataset_ids": [dataset_tags] if isinstance(dataset_tags, str) else dataset_tags,
            "base_model": finetuned_from,
            "license": license,
            "language": language,
        }
        self._card_defaults = {**getattr(self, "_card_defaults", {}), **{k: v for k, v in given.items() if v is not None}}
        repo_id = resolve_repo_id(self.args.hub_model_id, self.args.output_dir, self.hub_model_id)
        facts = card_facts(
            self,
            model_name=model_name or repo_id.split("/")[-1],
            repo_id=repo_id,
            tags=[tags] if isinstance(tags, str) else tags,
            **self._card_defaults,
        )
        write_model_card(facts, self.args.output_dir)
