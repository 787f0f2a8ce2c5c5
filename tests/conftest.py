"""Shared fixtures: generated image datasets and tiny timm models (no network, no Hub)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path

import datasets
import numpy as np
import pytest
import transformers
from PIL import Image as PILImage
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from hf_intertrain.data import ImageClassificationDataset, build_transforms

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
FLAT_CONFIG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear", "crop_pct": 1.0}

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


def make_model(architecture: str = "test_resnet", num_labels: int = 4, seed: int = 0, **model_args):
    """A TimmWrapperForImageClassification with reproducible initial weights."""
    transformers.set_seed(seed)
    config = TimmWrapperConfig(architecture=architecture, num_labels=num_labels, model_args=model_args or None)
    return TimmWrapperForImageClassification(config)


@pytest.fixture(scope="session")
def tiny_train_dataset():
    return make_dataset(96, seed=0)
