"""`hf-intertrain bench-sampler`: the cost of InterTrain's per-epoch bookkeeping at dataset scale.

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
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .records import RECORD_FLUSH_EVERY
from .sampler import InterTrainBatchSampler
from .tracker import AmenabilityTracker


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
        tracker, batch_size=args.batch_size, seed=args.seed, adaptive_ratio=args.interpolation == "linavg"
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
