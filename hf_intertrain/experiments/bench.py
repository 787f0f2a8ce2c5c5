"""`hf-intertrain bench-sampler` and `bench-loader`: what InterTrain's bookkeeping and its input path cost.

`bench-sampler`: the cost of InterTrain's per-epoch bookkeeping at dataset scale.

InterTrain decides every epoch, for every sample, whether it is interpolated next epoch (docs/method.md,
"Selective interpolation") and then plans the epoch's batches ("Batch plan of an epoch"). Both run on the host
between two epochs, while the accelerator waits, so they must stay cheap at ImageNet-1k (1,281,167 samples) and
ImageNet-21k (14,197,122 samples) scale. This benchmark runs the real `AmenabilityTracker` and
`InterTrainBatchSampler` on simulated losses (no model, no data) and reports:

- `epoch_seconds`: mean over the measured epochs of `tracker.end_epoch()` + the next epoch's plan.
- `record_seconds`: mean per epoch of `tracker.record` over every constituent, in the chunks the trainer flushes
  (`records.RECORD_FLUSH_EVERY` steps of `batch_size` items); spread over the epoch's steps, so not part of
  `epoch_seconds`.
- `peak_mb`: the process's peak resident set size (`ru_maxrss`), Python, numpy and torch included; `rss_before_mb`
  is the same peak before the tracker exists, so `peak_mb - rss_before_mb` bounds the bookkeeping's own memory
  (the simulation's own per-sample arrays, two float32 values per sample, are included).

Simulated losses: every sample has a fixed difficulty (log-normal) scaled each epoch by a log-normal noise and a
slowly decreasing factor; a sample is correct when its loss is below 0.7 (about ln 2), with 5 % of the labels
flipped. This populates all three regions, so after the warm-up epochs (epoch 0 and 1 never interpolate) the plan
pairs a steady share of the samples, as in training.

`bench-loader` times the input path alone (`bench_loader`): the batches of an epoch plan with a given share of
pairs, fetched through the `workers` or the `device` pipeline (docs/method.md, "Choices where the paper is silent")
until their pixels are normalised on the device, ready for the model; `--with_model` adds a timm model's forward and
backward per batch, so the two numbers side by side say whether a run is input- or compute-bound.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..constants import EMBEDDED_DATASET
from ..method.records import RECORD_FLUSH_EVERY
from ..method.sampler import InterTrainBatchSampler, PlanRules
from ..method.tracker import REGION_1, AmenabilityTracker


@dataclass
class BenchSamplerArguments:
    """What `hf-intertrain bench-sampler` simulates."""

    num_samples: int = field(
        default=1_281_167,
        metadata={"help": "Training-set size N: 1281167 is ImageNet-1k, 14197122 ImageNet-21k."},
    )
    epochs: int = field(default=3, metadata={"help": "Measured epochs (after the warm-up epochs)."})
    warmup_epochs: int = field(
        default=2,
        metadata={"help": "Unmeasured epochs first: epochs 0 and 1 never interpolate (docs/method.md), so 2 reaches the steady state."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the simulated losses and of the sampler."})
    batch_size: int = field(default=64, metadata={"help": "Items per batch (the paper's 64)."})
    interpolation: str = field(
        default="randpatch",
        metadata={
            "help": "'randpatch' (pairs get the target ratio) or 'linavg' (adaptive ratio gathered from the tracker's losses).",
            "choices": ["randpatch", "linavg"],
        },
    )

    def __post_init__(self):
        for name in ("num_samples", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}={getattr(self, name)} must be at least 1; pass a positive number")
        if self.warmup_epochs < 0 or self.seed < 0:
            raise ValueError("--warmup_epochs and --seed must be non-negative; pass 0 or more")
        if self.interpolation not in ("randpatch", "linavg"):
            raise ValueError(f"--interpolation={self.interpolation!r} is not supported: use randpatch or linavg")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (`ru_maxrss` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class SimulatedLosses:
    """Per-sample losses and correctness for one epoch, from a fixed difficulty and per-epoch noise."""

    def __init__(self, num_samples: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.difficulty = self.rng.lognormal(mean=0.3, sigma=1.0, size=num_samples).astype(np.float32)
        self.flipped = self.rng.random(num_samples, dtype=np.float32) < 0.05

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(loss float32, correct bool) of every sample in `epoch`."""
        noise = self.rng.lognormal(mean=0.0, sigma=0.3, size=self.difficulty.shape).astype(np.float32)
        loss = self.difficulty * noise * np.float32(1.0 / (1.0 + 0.1 * epoch))
        correct = (loss < 0.7) ^ self.flipped
        return loss, correct


def record_epoch(tracker: AmenabilityTracker, sampler: InterTrainBatchSampler, loss: np.ndarray, correct: np.ndarray) -> float:
    """Record every constituent of the epoch's plan in the trainer's flush chunks; the seconds spent in `record`."""
    item_a, item_b = sampler.plan.item_a, sampler.plan.item_b
    chunk = RECORD_FLUSH_EVERY * sampler.batch_size
    seconds = 0.0
    for start in range(0, item_a.shape[0], chunk):
        b = item_b[start : start + chunk]
        index = np.concatenate([item_a[start : start + chunk], b[b >= 0]])
        started = time.perf_counter()
        tracker.record(index, loss[index], correct[index])
        seconds += time.perf_counter() - started
    return seconds


def bench_sampler(args: BenchSamplerArguments) -> dict[str, Any]:
    """Simulate `warmup_epochs + epochs` epochs; the measured costs as a JSON-ready dict."""
    rss_before = peak_rss_mb()
    losses = SimulatedLosses(args.num_samples, args.seed)
    tracker = AmenabilityTracker(args.num_samples)
    sampler = InterTrainBatchSampler(
        tracker, PlanRules(batch_size=args.batch_size, seed=args.seed, adaptive_ratio=args.interpolation == "linavg")
    )
    sampler.set_epoch(0)
    end_epoch_s, plan_s, record_s, fractions = [], [], [], []
    for epoch in range(args.warmup_epochs + args.epochs):
        loss, correct = losses.epoch(epoch)
        recording = record_epoch(tracker, sampler, loss, correct)
        fraction = 2 * sampler.num_pairs / args.num_samples
        started = time.perf_counter()
        tracker.end_epoch()
        judged = time.perf_counter()
        sampler.set_epoch(epoch + 1)
        planned = time.perf_counter()
        if epoch >= args.warmup_epochs:
            end_epoch_s.append(judged - started)
            plan_s.append(planned - judged)
            record_s.append(recording)
            fractions.append(fraction)
    return {
        "num_samples": args.num_samples,
        "epochs": args.epochs,
        "warmup_epochs": args.warmup_epochs,
        "interpolation": args.interpolation,
        "epoch_seconds": float(np.mean(np.add(end_epoch_s, plan_s))),
        "end_epoch_seconds": float(np.mean(end_epoch_s)),
        "plan_seconds": float(np.mean(plan_s)),
        "record_seconds": float(np.mean(record_s)),
        "interpolated_fraction": [round(f, 4) for f in fractions],
        "next_interpolated_fraction": round(2 * sampler.num_pairs / args.num_samples, 4),
        "peak_mb": round(peak_rss_mb(), 1),
        "rss_before_mb": round(rss_before, 1),
        "peak_mb_source": "ru_maxrss (peak resident set size of the whole process)",
    }


def run_bench_sampler(args: BenchSamplerArguments) -> dict[str, Any]:
    """Run the benchmark and print its result as one JSON line."""
    result = bench_sampler(args)
    print(json.dumps(result))
    return result


@dataclass
class BenchLoaderArguments:
    """What `hf-intertrain bench-loader` times."""

    data_pipeline: str = field(
        default="device",
        metadata={
            "help": "'workers' (PIL decode and augmentation per image in the loader workers) or 'device' (row keys "
            "through the loader; images gathered from the decoded cache, or decoded per batch, and augmented in "
            "batches on the device).",
            "choices": ["workers", "device"],
        },
    )
    uncached: bool = field(
        default=False,
        metadata={"help": "device: decode the encoded files every batch even when the cache fits (the path of "
                  "datasets too large to cache)."},
    )
    dataset_name: str = field(
        default=EMBEDDED_DATASET,
        metadata={"help": "Hub dataset id or local path (default: the embedded CIFAR-10 sample)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name, if any."})
    train_split: str = field(default="train", metadata={"help": "Split whose images are served."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Serve the first N rows only."})
    image_size: int | None = field(
        default=None, metadata={"help": "Square input size (default: the first image's larger side)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Items per batch (a pair is one item)."})
    dataloader_num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes."})
    batches: int = field(default=50, metadata={"help": "Timed batches, after one untimed warm-up batch."})
    interpolated_fraction: float = field(
        default=0.5, metadata={"help": "Share of the samples planned in pairs (0: the baseline's singles only)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the plan and of the augmentation."})
    with_model: str | None = field(
        default=None,
        metadata={"help": "A timm model name: add its forward and backward (cross-entropy) on every batch."},
    )
    device: str | None = field(
        default=None, metadata={"help": "Torch device (default: cuda when available, else cpu)."}
    )

    def __post_init__(self):
        if self.data_pipeline not in ("workers", "device"):
            raise ValueError(f"--data_pipeline={self.data_pipeline!r} is not supported: use workers or device")
        for name in ("batch_size", "batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}={getattr(self, name)} must be at least 1; pass a positive number")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"--dataloader_num_workers={self.dataloader_num_workers} must be 0 or more")
        if not 0.0 <= self.interpolated_fraction <= 1.0:
            raise ValueError(f"--interpolated_fraction={self.interpolated_fraction} must lie in [0, 1]")
        if self.uncached and self.data_pipeline != "device":
            raise ValueError("--uncached applies to --data_pipeline device only; drop it or pass --data_pipeline device")


def planned_sampler(num_samples: int, fraction: float, batch_size: int, seed: int) -> InterTrainBatchSampler:
    """An `InterTrainBatchSampler` whose tracker puts `fraction` of the samples (drawn at random) in S_int."""
    tracker = AmenabilityTracker(num_samples)
    chosen = np.random.default_rng(seed).permutation(num_samples)[: int(round(fraction * num_samples))]
    if chosen.size >= 2:
        state = tracker.state_dict()
        state["reason"][chosen] = REGION_1
        tracker.load_state_dict(state)
    return InterTrainBatchSampler(tracker, PlanRules(batch_size=batch_size, seed=seed, interpolate=chosen.size >= 2))


def bench_loader(args: BenchLoaderArguments) -> dict[str, Any]:
    """Fetch `1 + batches` batches of the plan through the pipeline until their pixels are normalised on the device
    (and through the model); the timed throughput as a JSON-ready dict."""
    import timm
    import timm.data
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from ..data import (
        BatchSeededDataset,
        DeviceImageDataset,
        InterTrainCollator,
        build_device_datasets,
        load_image_classification_data,
        materialize_pixels,
    )
    from ..data.device import PIXEL_KEYS
    from .run import build_split_datasets

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_image_classification_data(
        args.dataset_name, args.dataset_config, train_split=args.train_split,
        max_train_samples=args.max_train_samples, verify_images="none",
    )
    data = dataclasses.replace(data, eval=None, eval_split=None)
    image_size = args.image_size or max(data.first_image_size())
    model, data_config = None, {}
    if args.with_model:
        model = timm.create_model(args.with_model, num_classes=data.num_labels).to(device).train()
        data_config = timm.data.resolve_data_config({}, model=model)
    started = time.perf_counter()
    if args.uncached:
        dataset, _ = build_device_datasets(data, data_config, image_size, device, cache=False)
    else:
        dataset, _ = build_split_datasets(data, data_config, image_size, args.data_pipeline, device)
    prepare_seconds = time.perf_counter() - started
    sampler = planned_sampler(len(dataset), args.interpolated_fraction, args.batch_size, args.seed)
    seeded = BatchSeededDataset(dataset, args.seed)
    workers = args.dataloader_num_workers
    loader = DataLoader(
        seeded, batch_sampler=sampler, collate_fn=InterTrainCollator(), num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )

    def epochs():
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            seeded.epoch = epoch
            yield from loader
            epoch += 1

    def step(batch: dict) -> None:
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        batch = materialize_pixels(batch, device)
        if model is not None:
            loss = F.cross_entropy(model(batch["pixel_values"]).float(), batch["labels"])
            loss.backward()
            model.zero_grad(set_to_none=True)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    stream = epochs()
    started = time.perf_counter()
    step(next(stream))  # warm-up: worker start, the cache's move to a GPU, kernel selection
    synchronize()
    warmup_seconds = time.perf_counter() - started
    items = images = 0
    started = time.perf_counter()
    for _ in range(args.batches):
        batch = next(stream)
        items += len(batch["labels"])
        images += sum(len(batch[key]) for key in PIXEL_KEYS if key in batch)
        step(batch)
    synchronize()
    seconds = time.perf_counter() - started
    stream.close()  # ends the loader's iterator and its workers
    return {
        "pipeline": args.data_pipeline,
        "cached": isinstance(dataset, DeviceImageDataset) and dataset.cached,
        "dataset_name": args.dataset_name,
        "num_samples": len(dataset),
        "image_size": image_size,
        "batch_size": args.batch_size,
        "dataloader_num_workers": workers,
        "batches": args.batches,
        "interpolated_fraction": round(2 * sampler.num_pairs / len(dataset), 4),
        "device": str(device),
        "with_model": args.with_model,
        "prepare_seconds": round(prepare_seconds, 3),
        "warmup_seconds": round(warmup_seconds, 3),
        "seconds": seconds,
        "items": items,
        "images": images,
        "items_per_second": items / seconds,
        "images_per_second": images / seconds,
        "batches_per_second": args.batches / seconds,
    }


def run_bench_loader(args: BenchLoaderArguments) -> dict[str, Any]:
    """Run the input-path benchmark and print its result as one JSON line."""
    result = bench_loader(args)
    print(json.dumps(result))
    return result
