"""Facts shared by several modules, in one place; this module imports nothing heavier than `pathlib`.

`config.py` builds its flags from these tuples (the Region-1 and Region-3 rules from the tracker's tables in
`method/tracker/decision.py`, where their functions are), and the data, hub and run modules agree on what a small
image is.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DATASET: str = str(Path(__file__).resolve().parent / "sample_data" / "cifar10")
"""A real CIFAR-10 sample shipped in the package (first 5000 train / 1000 test rows of CIFAR-10),
loadable offline with `datasets.load_dataset(EMBEDDED_DATASET)`, for tests and smoke runs."""

SMALL_IMAGE_MAX_SIZE: int = 64
"""Images of at most this many pixels a side are CIFAR-like: trained at their own size with pad-and-crop
augmentation and evaluated without a crop; larger ones get the ImageNet-style transforms."""

INTERPOLATIONS: tuple[str, ...] = ("randpatch", "linavg", "none")
"""How pairs are combined: RandPatch, LinAvg, or not at all (the plain Trainer baseline)."""

FOUR_WAY_COMPOSITES: tuple[str, ...] = ("none", "randpatch4", "mosaic4")
"""4-way composite operators (or none: pairs only, the paper)."""

AMENABLE_ACTIONS: tuple[str, ...] = ("interpolate", "skip", "skip_region3")
"""What the plan does with S_int: pair it (InterTrain), leave it out of the epoch, or leave out only its Region-3
members and pair the rest (the ablations of the paper's Sec. 7.8, Table 4)."""

DATA_SELECTIONS: tuple[str, ...] = ("none", "random_subset", "infobatch")
"""Which samples a run without interpolation trains each epoch: all of them, an RS2 random subset, or InfoBatch's
soft-pruned selection (the peer methods of `selection.py`)."""

FOUR_WAY_SELECTIONS: tuple[str, ...] = ("robust", "region1")
"""`robust`: the tracker's four-way rule; `region1`: its ablation, every Region-1 member on its second epoch."""

THRESHOLD_AVERAGES: tuple[str, ...] = ("pooled", "epoch_mean", "ema", "last_epoch")
"""How the tracker averages L_corr / L_incorr over completed epochs: every observation pooled (the default), the mean
of per-epoch means, their exponential moving average, or the last epoch's means."""

DATA_PIPELINES: tuple[str, ...] = ("auto", "workers", "device")
"""Where images are decoded and augmented: per image in the DataLoader workers, or in batches on the training
device from a decoded uint8 cache or the encoded files (`data/device.py`); `auto` picks by the cache budget."""

EXTRA_CONSTITUENTS: tuple[str, ...] = ("b", "c", "d")
"""Suffixes of the constituents after the first in a collated batch (`pixel_values_b`, `labels_c`, ...): a pair has
a and b, a 4-way composite a, b, c and d."""

MIXUP_MODES: tuple[str, ...] = ("batch", "pair", "elem")
"""timm's `Mixup` modes: one draw per batch, per pair of rows, or per row."""

COMPILE_FALLBACKS: tuple[str, ...] = ("eager", "stop")
"""What a `--torch_compile` run does where the backend cannot compile here (no C++ compiler, a backend's package
missing): train eager after one warning line, or stop with a one-line error."""
