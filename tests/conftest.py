"""Shared fixtures: generated image datasets and tiny timm models (no network, no Hub)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import hashlib
import io
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from PIL import Image as PILImage
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from hf_intertrain.data import DeviceTransform, ImageClassificationDataset, build_device_dataset, build_transforms

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
FLAT_CONFIG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear", "crop_pct": 1.0}
NAMES = ["cat", "dog", "fox"]  # class names of the generated parquet datasets below

# TrainingArguments of the tiny training runs in the tests: SGD, linear decay, no evaluation or checkpoints.
TINY_TRAINING = dict(
    per_device_train_batch_size=16,
    learning_rate=0.05,
    optim="sgd",
    lr_scheduler_type="linear",
    eval_strategy="no",
    save_strategy="no",
    report_to="none",
    seed=0,
    disable_tqdm=True,
    dataloader_num_workers=0,
)

datasets.disable_progress_bars()


def make_split(num_rows: int, num_classes: int = 4, size: int = 32, seed: int = 0) -> datasets.Dataset:
    """Images whose colour depends on the class (learnable), plus noise; a ClassLabel column."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_rows)
    palette = rng.integers(0, 256, (num_classes, 3))
    images = []
    for label in labels:
        pixels = palette[label] + rng.normal(0, 40, (size, size, 3))
        images.append(PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"class_{i}" for i in range(num_classes)])}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)


def make_dataset(num_rows: int, num_classes: int = 4, size: int = 32, seed: int = 0, training: bool = False):
    """An ImageClassificationDataset over generated images (deterministic transform unless training)."""
    split = make_split(num_rows, num_classes, size, seed)
    transform = build_transforms(FLAT_CONFIG, size, is_training=training)
    return ImageClassificationDataset(split, transform, "image", "label")


def make_device_dataset(
    split: datasets.Dataset,
    cache_root: Path,
    training: bool = False,
    size: int = 32,
    split_name: str = "train",
    cache: bool = True,
):
    """A DeviceImageDataset of a split (FLAT_CONFIG normalisation); an in-memory split's cache goes under `cache_root`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(cache_root))
        transform = DeviceTransform.from_data_config(FLAT_CONFIG, size, is_training=training)
        return build_device_dataset(split, "image", "label", transform, split_name, cache)


def make_model(architecture: str = "test_resnet", num_labels: int = 4, seed: int = 0, **model_args):
    """A TimmWrapperForImageClassification with reproducible initial weights."""
    transformers.set_seed(seed)
    config = TimmWrapperConfig(architecture=architecture, num_labels=num_labels, model_args=model_args or None)
    return TimmWrapperForImageClassification(config)


def with_four_way_members(trainer):
    """Start the run with 8 composites of 4 and 4 pairs in epoch 0 (samples 0-31 marked, 32-39 paired)."""
    state = trainer.tracker.state_dict()
    state["reason"][:40] = 1
    state["in_four_way"][:32] = True
    trainer.tracker.load_state_dict(state)
    return trainer


@pytest.fixture(scope="session")
def tiny_train_dataset():
    return make_dataset(96, seed=0)


# Tiny datasets written as parquet and loaded back through datasets.load_dataset (tests of hf_intertrain.data).


def encode(image: PILImage.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise_image(seed: int, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> PILImage.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return PILImage.fromarray(array[..., 0] if channels == 1 else array, mode=mode)


def image_value(image_bytes: bytes | None) -> dict:
    return {"bytes": image_bytes, "path": None}


def default_features() -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})


def write_split(folder: Path, split: str, columns: dict, features: datasets.Features) -> None:
    """Write one split as `<folder>/<split>.parquet` with the `datasets` feature metadata, bypassing
    datasets' own encoding so that invalid values (bad labels, corrupt bytes) can be stored."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=features.arrow_schema), folder / f"{split}.parquet")


def write_dataset(folder: Path, splits: dict[str, int], labels: dict[str, list[int]] | None = None) -> Path:
    """A parquet dataset with `image` (Image) and `label` (ClassLabel of NAMES) columns."""
    for offset, (split, rows) in enumerate(splits.items()):
        split_labels = (labels or {}).get(split, [i % len(NAMES) for i in range(rows)])
        images = [image_value(encode(noise_image(100 * offset + i))) for i in range(rows)]
        write_split(folder, split, {"image": images, "label": split_labels}, default_features())
    return folder


def flat_dataset(images: list, labels: list[int], is_training: bool = False) -> ImageClassificationDataset:
    """An in-memory 32x32 split of PIL images (stored as PNG) or encoded bytes, normalised with 0.5/0.5."""
    encoded = [image if isinstance(image, bytes) else encode(image) for image in images]
    split = datasets.Dataset.from_dict(
        {"image": [image_value(data) for data in encoded], "label": labels},
        features=datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=NAMES)}),
    )
    return ImageClassificationDataset(split, build_transforms(FLAT_CONFIG, 32, is_training), "image", "label")


@pytest.fixture
def datasets_cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the Arrow caches of the throwaway datasets written by a test out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "tiny", {"train": 6, "validation": 3, "test": 3})


def comparable_history(rows: list[dict]) -> list[dict]:
    """Per-epoch statistics without the wall-clock seconds and with NaN (an undefined threshold) made comparable."""
    return [
        {k: ("nan" if isinstance(v, float) and v != v else v) for k, v in row.items() if k != "intertrain/epoch_seconds"}
        for row in rows
    ]


def pixel_digest(batch: dict) -> list:
    """[rows of every constituent, sha256 of all pixels] of a collated batch as it reaches the model."""
    suffixes = [s for s in ("", "_b", "_c", "_d") if f"sample_index{s}" in batch]
    rows = [batch[f"sample_index{s}"].tolist() for s in suffixes]
    pixels = torch.cat([batch[f"pixel_values{s}"].contiguous() for s in suffixes]).cpu().numpy()
    return [rows, hashlib.sha256(pixels.tobytes()).hexdigest()]
