"""Image-classification data for InterTrain: load and validate a `datasets` split, build timm-style
transforms, serve single and pair items to the trainer, and collate them.

The InterTrain batch sampler (ALGORITHM.md, "Batch plan of an epoch") yields, per batch, item keys
`(a, b, r)`: `a`, `b` are train-split rows (`b == -1` for a single) and `r` is a's share. The
interpolation itself (LinAvg / RandPatch) happens later, on the device, in the trainer; this
module only returns both constituents, each with its own augmentation. Evaluation asks for plain
int keys and gets the usual `pixel_values` / `labels` batches.

Every problem with the user's data is raised as `DataError` with a one-line message naming the
cause and the fix, at load time where possible (images are decoded up front by default), so a
run does not fail hours in.
"""

import hashlib
import io
import logging
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image as PILImage
from torchvision import transforms

from .constants import EMBEDDED_DATASET, SMALL_IMAGE_MAX_SIZE  # noqa: F401 (EMBEDDED_DATASET re-exported)

logger = logging.getLogger(__name__)


EVAL_SPLIT_CANDIDATES: tuple[str, ...] = ("validation", "valid", "val", "test")
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels", "fine_label", "class")
VERIFY_IMAGES_AUTO_MAX_ROWS: int = 100_000
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
"""Colour that transparent pixels are composited onto: white, as images with transparency are
shown on a page. Dropping alpha instead would expose whatever colour the invisible pixels hold."""


class DataError(ValueError):
    """A problem with the user's dataset; the message names the cause and the fix on one line."""


@dataclass
class ImageClassificationData:
    """A validated train split (and optional eval split) with the columns and label names to use.

    Image columns hold undecoded `{"bytes", "path"}` values (`datasets.Image(decode=False)`): the
    torch dataset decodes them itself, so a corrupt image is reported with its row.
    """

    train: datasets.Dataset
    eval: datasets.Dataset | None
    image_column: str
    label_column: str
    label_names: list[str]
    num_labels: int
    train_split: str = "train"
    eval_split: str | None = None

    def first_image_size(self) -> tuple[int, int]:
        """(width, height) of the first train image, to choose the training resolution."""
        value = self.train.select_columns([self.image_column])[0][self.image_column]
        return decode_image(value, self.train_split, 0).size


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------


def load_image_classification_data(
    dataset_name: str,
    dataset_config: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    verify_images: str = "auto",
) -> ImageClassificationData:
    """Load a dataset with `datasets.load_dataset` and check everything training will rely on.

    Args:
        dataset_name: a Hub id or a local path (a folder of parquet files with a README
            `configs:` section, an imagefolder, ...), as `datasets.load_dataset` takes it.
        dataset_config: the dataset's config name, if it has several.
        train_split: the split to train on.
        eval_split: the split to evaluate on; None picks the first existing of
            "validation", "valid", "val", "test", or no evaluation if none exists.
        image_column: None picks the only `datasets.Image` column.
        label_column: None picks the `ClassLabel` column (preferring "label", "labels",
            "fine_label", "class" when several exist), else an integer column of one of those names.
        max_train_samples, max_eval_samples: keep only the first n rows (datasets on the Hub
            and the bundled CIFAR-10 are stored shuffled, so a prefix is a fair sample).
        verify_images: "auto" decodes every image of a split up front when it has at most
            100,000 rows, "all" always, "none" never (decode errors then surface in training,
            still as a `DataError` naming the row).

    Raises:
        DataError: on any problem with the dataset, with a one-line message saying how to fix it.
    """
    if verify_images not in ("auto", "all", "none"):
        raise DataError(f"verify_images must be 'auto', 'all' or 'none', got {verify_images!r}; pick one of those")
    for flag, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if value is not None and value < 1:
            raise DataError(f"--{flag} must be at least 1, got {value}; pass a positive number or leave it unset")

    splits = _load_splits(dataset_name, dataset_config)
    if train_split not in splits:
        raise DataError(
            f"dataset '{dataset_name}' has no split '{train_split}' (splits found: {sorted(splits)}); pass one of them "
            "as --train_split"
        )
    if eval_split is not None and eval_split not in splits:
        raise DataError(
            f"dataset '{dataset_name}' has no split '{eval_split}' (splits found: {sorted(splits)}); pass one of them "
            "as --eval_split or leave it unset"
        )
    if eval_split is None:
        eval_split = next((name for name in EVAL_SPLIT_CANDIDATES if name in splits and name != train_split), None)
        if eval_split is not None:
            logger.info("Evaluating on split '%s' (first of %s found).", eval_split, list(EVAL_SPLIT_CANDIDATES))
    if max_eval_samples is not None and eval_split is None:
        raise DataError(
            f"--max_eval_samples is set but dataset '{dataset_name}' has no eval split (splits found: "
            f"{sorted(splits)}); pass --eval_split or unset --max_eval_samples"
        )

    train = splits[train_split]
    evaluation = splits[eval_split] if eval_split is not None else None
    image_column = _resolve_image_column(train, image_column)
    label_column = _resolve_label_column(train, label_column)

    named = [(train_split, train)] + ([(eval_split, evaluation)] if evaluation is not None else [])
    for split_name, split in named:
        for column, flag in ((image_column, "--image_column"), (label_column, "--label_column")):
            if column not in split.column_names:
                raise DataError(
                    f"split '{split_name}' has no column '{column}' (columns found: {split.column_names}); make every "
                    f"split have it or pass {flag}"
                )
        _check_label_feature(split.features[label_column], label_column)
        if len(split) == 0:
            raise DataError(f"split '{split_name}' of dataset '{dataset_name}' is empty; pick a split with rows")

    train = _take_prefix(train, max_train_samples, "max_train_samples", train_split)
    if evaluation is not None:
        evaluation = _take_prefix(evaluation, max_eval_samples, "max_eval_samples", eval_split)

    train = _undecoded_images(train, image_column, train_split)
    if evaluation is not None:
        evaluation = _undecoded_images(evaluation, image_column, eval_split)

    label_names = _label_names(train, evaluation, label_column, train_split, eval_split)
    named = [(train_split, train)] + ([(eval_split, evaluation)] if evaluation is not None else [])
    for split_name, split in named:
        _check_labels(read_labels(split, label_column, split_name), len(label_names), split_name, label_column)
    for split_name, split in named:
        if verify_images == "all" or (verify_images == "auto" and len(split) <= VERIFY_IMAGES_AUTO_MAX_ROWS):
            verify_split_images(split, image_column, split_name)

    return ImageClassificationData(
        train=train,
        eval=evaluation,
        image_column=image_column,
        label_column=label_column,
        label_names=label_names,
        num_labels=len(label_names),
        train_split=train_split,
        eval_split=eval_split,
    )


def _load_splits(dataset_name: str, dataset_config: str | None) -> datasets.DatasetDict:
    """`datasets.load_dataset` with its not-found / offline / bad-config errors turned into one-line `DataError`s."""
    config_text = f" (config '{dataset_config}')" if dataset_config else ""
    try:
        loaded = datasets.load_dataset(dataset_name, dataset_config, cache_dir=local_cache_dir(dataset_name))
    except (FileNotFoundError, ConnectionError, ValueError, datasets.exceptions.DatasetsError) as error:
        looks_local = os.path.isabs(dataset_name) or dataset_name.startswith((".", "~")) or dataset_name.count("/") > 1
        if looks_local and not os.path.exists(os.path.expanduser(dataset_name)):
            raise DataError(
                f"dataset not found: no file or folder at '{os.path.abspath(os.path.expanduser(dataset_name))}'; pass "
                "an existing local dataset folder or a Hub dataset id"
            ) from error
        cause = _first_line(error)
        root = error
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        if root is not error:
            cause += f" ({type(root).__name__}: {_first_line(root)})"
        empty_split = re.search(r'Instruction "([^"]+)" corresponds to no data', cause)
        if empty_split:
            raise DataError(
                f"split '{empty_split.group(1)}' of dataset '{dataset_name}' is empty; add rows to it or remove its "
                "data files"
            ) from error
        if "BatchSize must be greater than 0" in cause:
            raise DataError(
                f"dataset '{dataset_name}' has a data file without rows ({cause}); add rows to it or remove it"
            ) from error
        raise DataError(
            f"could not load dataset '{dataset_name}'{config_text}: {cause}; pass an existing local dataset folder "
            "(parquet files or an imagefolder) or a Hub dataset id that is reachable or cached (HF_HUB_OFFLINE=1 "
            "needs it cached)"
        ) from error
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(
            f"dataset '{dataset_name}' loaded as {type(loaded).__name__}, not a DatasetDict of splits; pass a "
            "map-style (non-streaming) dataset"
        )
    return loaded


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def local_cache_dir(dataset_name: str) -> str | None:
    """A `datasets` cache folder of its own for a local dataset folder, keyed by its files; None otherwise.

    datasets 5.2 names the cache of a local folder whose README has a `configs:` section after
    the folder's name, config name and file patterns only, so two folders with the same name
    and layout (the bundled CIFAR-10 sample and a full CIFAR-10 copy) share one cache and the
    second load silently returns the first one's rows. Keying the cache on the folder's
    absolute path and every file's size and modification time rules that out, and a rewritten
    file gets a fresh cache instead of stale rows.
    """
    folder = Path(dataset_name).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                stat = os.stat(os.path.join(root, name))
                relative = os.path.relpath(os.path.join(root, name), folder)
                digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    key = f"{folder.resolve().name}-{digest.hexdigest()[:16]}"
    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "hf_intertrain_local", key)


def _resolve_image_column(split: datasets.Dataset, image_column: str | None) -> str:
    columns = split.column_names
    if image_column is not None:
        if image_column not in columns:
            raise DataError(
                f"--image_column '{image_column}' is not a column of the dataset (columns found: {columns}); pass one "
                "of them"
            )
        return image_column
    image_columns = [name for name, feature in split.features.items() if isinstance(feature, datasets.Image)]
    if len(image_columns) == 1:
        return image_columns[0]
    if not image_columns:
        raise DataError(
            f"no image column found: no column has the datasets.Image feature (columns found: {columns}); pass the "
            "column holding the images as --image_column"
        )
    raise DataError(f"several image columns found ({image_columns}); pass the one to train on as --image_column")


def _resolve_label_column(split: datasets.Dataset, label_column: str | None) -> str:
    columns = split.column_names
    if label_column is not None:
        if label_column not in columns:
            raise DataError(
                f"--label_column '{label_column}' is not a column of the dataset (columns found: {columns}); pass one "
                "of them"
            )
        _check_label_feature(split.features[label_column], label_column)
        return label_column
    class_columns = [name for name, feature in split.features.items() if isinstance(feature, datasets.ClassLabel)]
    if len(class_columns) == 1:
        return class_columns[0]
    if class_columns:
        preferred = [name for name in LABEL_COLUMN_CANDIDATES if name in class_columns]
        if preferred:
            return preferred[0]
        raise DataError(f"several label columns found ({class_columns}); pass the one to train on as --label_column")
    named = [name for name in LABEL_COLUMN_CANDIDATES if name in columns]
    if not named:
        raise DataError(
            f"no label column found: no ClassLabel column and none named {list(LABEL_COLUMN_CANDIDATES)} (columns "
            f"found: {columns}); pass the column holding the class ids as --label_column"
        )
    _check_label_feature(split.features[named[0]], named[0])
    return named[0]


def _check_label_feature(feature: Any, column: str) -> None:
    if isinstance(feature, datasets.ClassLabel):
        return
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        return
    raise DataError(
        f"label column '{column}' has feature {feature}, not integer class ids; pass an integer or ClassLabel column "
        "as --label_column (strings can be converted with Dataset.class_encode_column)"
    )


def _take_prefix(split: datasets.Dataset, limit: int | None, flag: str, split_name: str) -> datasets.Dataset:
    if limit is None:
        return split
    if limit > len(split):
        raise DataError(
            f"--{flag} {limit} is larger than split '{split_name}' ({len(split)} rows); lower it to at most "
            f"{len(split)} or leave it unset"
        )
    return split.select(range(limit))


def _undecoded_images(split: datasets.Dataset, image_column: str, split_name: str) -> datasets.Dataset:
    """Cast the image column to `Image(decode=False)`: rows then hold raw bytes or paths, which we decode."""
    feature = split.features[image_column]
    if isinstance(feature, datasets.Image) and not feature.decode:
        return split
    try:
        return split.cast_column(image_column, datasets.Image(decode=False))
    except (TypeError, ValueError) as error:
        raise DataError(
            f"column '{image_column}' of split '{split_name}' has feature {feature}, which cannot be read as images; "
            "pass a column of images, image bytes or image paths as --image_column"
        ) from error


def read_labels(split: datasets.Dataset, label_column: str, split_name: str = "train") -> np.ndarray:
    """The label column as an int64 array, read straight from Arrow (no per-row Python access)."""
    column = split.select_columns([label_column]).with_format("arrow")[:][label_column]
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"split '{split_name}' row {first} has no label (null in column '{label_column}'); fill or remove the "
            "unlabelled rows"
        )
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)


def _label_names(
    train: datasets.Dataset,
    evaluation: datasets.Dataset | None,
    label_column: str,
    train_split: str,
    eval_split: str | None,
) -> list[str]:
    """ClassLabel names; else "0" .. str(max label), the max taken over both splits."""
    feature = train.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        if evaluation is not None:
            eval_feature = evaluation.features[label_column]
            if isinstance(eval_feature, datasets.ClassLabel) and eval_feature.names != feature.names:
                raise DataError(
                    f"splits '{train_split}' and '{eval_split}' have different ClassLabel names in column "
                    f"'{label_column}'; give both splits the same class list"
                )
        return list(feature.names)
    highest = int(read_labels(train, label_column, train_split).max())
    if evaluation is not None:
        highest = max(highest, int(read_labels(evaluation, label_column, eval_split).max()))
    return [str(i) for i in range(max(highest, 0) + 1)]


def _check_labels(labels: np.ndarray, num_labels: int, split_name: str, label_column: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_labels))
    if bad.size == 0:
        return
    row, value = int(bad[0]), int(labels[bad[0]])
    if value == -1:
        raise DataError(
            f"split '{split_name}' row {row} has label -1 (the 'no label' mark of ClassLabel) in column "
            f"'{label_column}'; use a labelled split or filter the unlabelled rows out"
        )
    raise DataError(
        f"split '{split_name}' row {row} has label {value} in column '{label_column}', outside [0, {num_labels}); fix "
        "the labels or the ClassLabel names"
    )


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def decode_image(value: dict[str, Any] | None, split_name: str, row: int) -> PILImage.Image:
    """Fully decode one undecoded `datasets.Image` value (`{"bytes", "path"}`) with PIL.

    `load()` forces the whole decode, so truncated files fail here and not later in a transform.
    """
    try:
        if value is None:
            raise ValueError("the row holds no image")
        if value.get("bytes") is not None:
            image = PILImage.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = PILImage.open(value["path"])
        else:
            raise ValueError("the row holds neither image bytes nor a path")
        image.load()
    except Exception as error:  # any decoder failure is a bad row
        raise DataError(
            f"cannot decode the image of split '{split_name}' row {row} ({type(error).__name__}: "
            f"{_first_line(error)}); fix or remove that row"
        ) from error
    return image


def verify_split_images(split: datasets.Dataset, image_column: str, split_name: str, batch_size: int = 1024) -> None:
    """Decode every image of a split, raising `DataError` at the first bad row."""
    start = time.perf_counter()
    images = split.select_columns([image_column]).with_format("arrow")
    row = 0
    for batch in images.iter(batch_size=batch_size):
        for value in batch.column(image_column).to_pylist():
            decode_image(value, split_name, row)
            row += 1
    logger.info("Verified %d images of split '%s' in %.1f s.", row, split_name, time.perf_counter() - start)


def _integer_image(image: PILImage.Image) -> PILImage.Image:
    """16/32-bit integer or float greyscale ("I;16*", "I", "F") to 8-bit "L".

    16-bit data is scaled by 255/65535. "I" images holding values <= 255 are taken as 8-bit,
    larger ones as 16-bit; "F" images with values in [0, 1] are scaled by 255, others clipped.
    """
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        scaled = array.astype(np.float32) * (255.0 / 65535.0)
    elif image.mode == "F":
        scaled = array * 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else array
    else:
        scaled = array.astype(np.float32) * (255.0 / 65535.0) if array.size and int(array.max()) > 255 else array
    return PILImage.fromarray(np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8), mode="L")


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Any PIL image as 3-channel 8-bit RGB.

    Transparency (RGBA, LA, PA, palette images with a transparent colour) is composited onto
    `ALPHA_BACKGROUND` (white); high bit-depth greyscale is rescaled to 8 bits rather than
    clipped (a plain `convert("RGB")` would turn most 16-bit pixels white); CMYK, greyscale,
    palette and the rest use PIL's conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode.startswith("I") or image.mode == "F":
        image = _integer_image(image)
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return PILImage.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------


def build_transforms(
    data_config: dict[str, Any],
    image_size: int,
    is_training: bool,
    native_size: int | None = None,
    padding_mode: str = "constant",
) -> Callable[[PILImage.Image], torch.Tensor]:
    """PIL image -> normalised float32 tensor [3, image_size, image_size].

    `data_config` is `timm.data.resolve_data_config({}, model=model)`: its mean, std,
    interpolation and crop_pct are used, its input size is not (`image_size` is). Every image
    goes through `to_rgb` first.

    Small images (image_size <= 64, the CIFAR recipe of ALGORITHM.md's hyper-parameters):
    train = resize, RandomCrop(image_size, padding=image_size // 8), horizontal flip,
    normalise; eval = resize, center crop (a no-op on square images), normalise (see
    `SmallImageTransform`). The padding is zeros (`padding_mode="constant"`) as in the standard
    CIFAR ResNet recipe (He et al., 2016) that the paper's CIFAR setup follows; pass "reflect"
    to avoid black borders.

    Larger images: `timm.data.create_transform`, i.e. train = RandomResizedCrop(image_size,
    scale (0.08, 1)) + flip + normalise (colour jitter off: the paper's ImageNet recipe has
    none); eval = resize to image_size / crop_pct + CenterCrop(image_size) + normalise.

    Args:
        data_config: timm's data config of the model (mean, std, interpolation, crop_pct).
        image_size: the training resolution (square).
        is_training: random augmentation if True, a deterministic transform otherwise.
        native_size: the dataset's image side, if known; informative only. Small images are
            resized exactly when their shorter side differs from image_size, checked per image
            (so CIFAR at 32 is never resized), which keeps datasets of mixed sizes correct
            whatever the hint says.
        padding_mode: numpy pad mode of the small-image random crop ("constant" = zeros,
            "reflect", "edge" or "symmetric").
    """
    mean = tuple(float(v) for v in data_config.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in data_config.get("std", (0.229, 0.224, 0.225)))
    interpolation = data_config.get("interpolation") or "bilinear"
    if image_size < 1:
        raise ValueError(
            f"image_size must be positive, got {image_size}; pass the training resolution, e.g. 32 for CIFAR"
        )

    if image_size > SMALL_IMAGE_MAX_SIZE:
        import timm.data

        timm_transform = timm.data.create_transform(
            input_size=image_size,
            is_training=is_training,
            color_jitter=None,
            interpolation=interpolation,
            mean=mean,
            std=std,
            crop_pct=data_config.get("crop_pct"),
            crop_mode=data_config.get("crop_mode"),
        )
        return transforms.Compose([to_rgb, *timm_transform.transforms])

    return SmallImageTransform(image_size, mean, std, is_training, interpolation, padding_mode)


class SmallImageTransform:
    """The CIFAR-style transform of `build_transforms` for images of at most 64 pixels.

    Same operations as torchvision's `Resize`, `RandomCrop(padding=...)`,
    `RandomHorizontalFlip`, `ToDtype(scale=True)` and `Normalize`, written as a few numpy slices
    on the decoded array: torchvision's per-transform dispatch costs several times the work
    itself on 32x32 images. Randomness comes from Python's `random`, as in timm's transforms:
    `transformers.set_seed` seeds it and DataLoader workers re-seed it per worker.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        is_training: bool,
        interpolation: str = "bilinear",
        padding_mode: str = "constant",
    ):
        if padding_mode not in ("constant", "reflect", "edge", "symmetric"):
            raise ValueError(
                f"padding_mode must be 'constant', 'reflect', 'edge' or 'symmetric', got {padding_mode!r}; pick one of "
                "those"
            )
        from timm.data.transforms import str_to_pil_interp

        self.image_size = image_size
        self.padding = image_size // 8 if is_training else 0
        self.is_training = is_training
        self.resample = str_to_pil_interp(interpolation)
        self.padding_mode = padding_mode
        std_array = np.asarray(std, dtype=np.float32)
        self.scale = torch.from_numpy(1.0 / (255.0 * std_array)).view(3, 1, 1)
        self.shift = torch.from_numpy(np.asarray(mean, dtype=np.float32) / std_array).view(3, 1, 1)

    def __call__(self, image: PILImage.Image) -> torch.Tensor:
        image = to_rgb(image)
        size = self.image_size
        if min(image.size) != size:
            width, height = image.size
            short = min(width, height)
            image = image.resize((int(width * size / short), int(height * size / short)), self.resample)
        array = np.asarray(image)
        height, width = array.shape[:2]
        if self.is_training:
            pad = self.padding
            top = random.randrange(height + 2 * pad - size + 1) - pad
            left = random.randrange(width + 2 * pad - size + 1) - pad
            array = self._padded_crop(array, top, left)
            if random.random() < 0.5:
                array = array[:, ::-1]
        else:
            top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
            array = array[top : top + size, left : left + size]
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:
            array = array.copy()
        pixels = torch.from_numpy(array).permute(2, 0, 1).float()
        return pixels.mul_(self.scale).sub_(self.shift)

    def _padded_crop(self, array: np.ndarray, top: int, left: int) -> np.ndarray:
        """The size x size window at (top, left) of `array` padded by `self.padding` on every side."""
        size, (height, width) = self.image_size, array.shape[:2]
        if 0 <= top and 0 <= left and top + size <= height and left + size <= width:
            return array[top : top + size, left : left + size]
        if self.padding_mode != "constant":
            pad = self.padding
            padded = np.pad(array, ((pad, pad), (pad, pad), (0, 0)), mode=self.padding_mode)
            return padded[top + pad : top + pad + size, left + pad : left + pad + size]
        window = np.zeros((size, size, array.shape[2]), dtype=array.dtype)
        rows, cols = slice(max(top, 0), min(top + size, height)), slice(max(left, 0), min(left + size, width))
        window[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = array[rows, cols]
        return window


# ----------------------------------------------------------------------------------------------
# Torch dataset and collator
# ----------------------------------------------------------------------------------------------


ItemKey = int | tuple[int, int, float] | tuple[int, int, float, int, int]

EXTRA_CONSTITUENTS = ("b", "c", "d")
"""Key suffixes of the constituents after a: "pixel_values_b", "labels_c", "sample_index_d", ..."""


def _is_row(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def parse_item_key(key: Any, size: int, split_name: str = "train") -> tuple[int, int, float, int, int]:
    """An int row, an `(a, b, r)` or an `(a, b, r, c, d)` sampler key as `(a, b, r, c, d)`.

    A single has `b = c = d = -1` and `r = 1.0`; a pair has `c = d = -1`; a 4-way composite has all four rows.
    """
    if _is_row(key):
        a, b, ratio, c, d = int(key), -1, 1.0, -1, -1
    elif (
        isinstance(key, (tuple, list))
        and len(key) in (3, 5)
        and all(_is_row(x) for i, x in enumerate(key) if i != 2)
        and isinstance(key[2], Real)
    ):
        a, b, ratio = int(key[0]), int(key[1]), float(key[2])
        c, d = (int(key[3]), int(key[4])) if len(key) == 5 else (-1, -1)
    else:
        raise TypeError(
            f"dataset keys must be an int row, an (a, b, r) or an (a, b, r, c, d) tuple, got {key!r}; use the "
            "InterTrain batch sampler or a plain sampler"
        )
    if not 0 <= a < size or not all(-1 <= x < size for x in (b, c, d)):
        raise IndexError(
            f"item key {key!r} is out of range for split '{split_name}' with {size} rows; rows must lie in [0, {size}) "
            "and b may be -1 for a single"
        )
    if (c >= 0) != (d >= 0) or (c >= 0 and b < 0):
        raise ValueError(f"item key {key!r} is neither a pair nor a 4-way composite; give all of b, c, d, or c = d = -1")
    if b >= 0 and not 0.0 <= ratio <= 1.0:
        raise ValueError(f"item key {key!r} has ratio {ratio} outside [0, 1]; r is a's share of the pair")
    return a, b, ratio, c, d


class ImageClassificationDataset(torch.utils.data.Dataset):
    """One split as a torch dataset of InterTrain items.

    Key `i` (int) -> {"pixel_values", "labels", "sample_index"} of row i.
    Key `(a, b, r)` -> the same for row a, plus, when `b >= 0`, "pixel_values_b", "labels_b",
    "sample_index_b" and "interp_ratio" = r (a's share, ALGORITHM.md "Operators"). Key
    `(a, b, r, c, d)` (a 4-way composite) adds the same three keys with suffixes `_c` and `_d`.
    Each constituent is decoded and augmented independently. `__getitems__` fetches all rows of a
    batch from Arrow in one call; labels are held in memory as one array.
    """

    def __init__(
        self,
        split: datasets.Dataset,
        transform: Callable[[PILImage.Image], torch.Tensor],
        image_column: str,
        label_column: str,
        split_name: str = "train",
    ):
        self.images = _undecoded_images(split.select_columns([image_column]), image_column, split_name)
        self.labels = read_labels(split, label_column, split_name)
        self.transform = transform
        self.image_column = image_column
        self.split_name = split_name

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: ItemKey) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[ItemKey]) -> list[dict[str, Any]]:
        parsed = [parse_item_key(key, len(self), self.split_name) for key in keys]
        rows = sorted({row for a, b, _, c, d in parsed for row in (a, b, c, d) if row >= 0})
        values = dict(zip(rows, self.images[rows][self.image_column]))
        items = []
        for a, b, ratio, c, d in parsed:
            item = {"pixel_values": self._pixels(values[a], a), "labels": int(self.labels[a]), "sample_index": a}
            for suffix, row in zip(EXTRA_CONSTITUENTS, (b, c, d)):
                if row >= 0:
                    item.update(
                        {
                            f"pixel_values_{suffix}": self._pixels(values[row], row),
                            f"labels_{suffix}": int(self.labels[row]),
                            f"sample_index_{suffix}": row,
                        }
                    )
            if b >= 0:
                item["interp_ratio"] = ratio
            items.append(item)
        return items

    def _pixels(self, value: dict[str, Any], row: int) -> torch.Tensor:
        return self.transform(decode_image(value, self.split_name, row))


class InterTrainCollator:
    """Stack InterTrain items into a batch: 4-way composites first, then pairs (each in their given order), then singles.

    Always: "pixel_values" [B, 3, H, W], "labels" int64 [B], "sample_index" int64 [B]. When the
    batch holds P > 0 pairs, rows 0..P-1 of those are the pairs' a-constituents and the batch also
    has "pixel_values_b" [P, 3, H, W], "labels_b" int64 [P], "sample_index_b" int64 [P] and
    "interp_ratio" float32 [P]. With Q > 0 4-way composites among them (rows 0..Q-1), "pixel_values_c",
    "labels_c", "sample_index_c" and the same `_d` keys hold their third and fourth constituents ([Q, ...]); their
    "interp_ratio" is nominal (the shares come with the partition). A batch without pairs has only the three a-keys, so the same
    collator serves evaluation; "sample_index" is left out when the items lack it, as after the
    Trainer's `remove_unused_columns` drops keys the model's `forward` does not take.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError(
                "InterTrainCollator got an empty batch; the sampler must yield at least one item per batch"
            )
        quads = [item for item in features if "pixel_values_c" in item]
        pairs = quads + [item for item in features if "pixel_values_b" in item and "pixel_values_c" not in item]
        ordered = pairs + [item for item in features if "pixel_values_b" not in item]
        batch = {
            "pixel_values": torch.stack([item["pixel_values"] for item in ordered]),
            "labels": torch.tensor([item["labels"] for item in ordered], dtype=torch.int64),
        }
        if all("sample_index" in item for item in ordered):
            batch["sample_index"] = torch.tensor([item["sample_index"] for item in ordered], dtype=torch.int64)
        if pairs:
            batch["pixel_values_b"] = torch.stack([item["pixel_values_b"] for item in pairs])
            batch["labels_b"] = torch.tensor([item["labels_b"] for item in pairs], dtype=torch.int64)
            batch["sample_index_b"] = torch.tensor([item["sample_index_b"] for item in pairs], dtype=torch.int64)
            batch["interp_ratio"] = torch.tensor([item["interp_ratio"] for item in pairs], dtype=torch.float32)
        for suffix in EXTRA_CONSTITUENTS[1:] if quads else ():
            batch[f"pixel_values_{suffix}"] = torch.stack([item[f"pixel_values_{suffix}"] for item in quads])
            batch[f"labels_{suffix}"] = torch.tensor([item[f"labels_{suffix}"] for item in quads], dtype=torch.int64)
            batch[f"sample_index_{suffix}"] = torch.tensor([item[f"sample_index_{suffix}"] for item in quads], dtype=torch.int64)
        return batch


class ItemDataset(torch.utils.data.Dataset):
    """Any map-style dataset of {"pixel_values", "labels"} dicts, served with InterTrain item keys.

    For users who bring their own dataset to the trainer: `(a, b, r)` keys fetch both rows and
    name them as `ImageClassificationDataset` does. Randomness of augmentation is the wrapped
    dataset's own (each row fetched separately, so constituents are augmented independently).
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: ItemKey) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[ItemKey]) -> list[dict[str, Any]]:
        items = []
        for a, b, ratio, c, d in (parse_item_key(key, len(self), "train") for key in keys):
            item = self._row(a)
            for suffix, row in zip(EXTRA_CONSTITUENTS, (b, c, d)):
                if row >= 0:
                    other = self._row(row)
                    item.update(
                        {
                            f"pixel_values_{suffix}": other["pixel_values"],
                            f"labels_{suffix}": other["labels"],
                            f"sample_index_{suffix}": row,
                        }
                    )
            if b >= 0:
                item["interp_ratio"] = ratio
            items.append(item)
        return items

    def _row(self, row: int) -> dict[str, Any]:
        example = self.dataset[row]
        if not isinstance(example, dict) or "pixel_values" not in example or "labels" not in example:
            found = sorted(example) if isinstance(example, dict) else type(example).__name__
            raise ValueError(
                f"train_dataset row {row} must be a dict with 'pixel_values' and 'labels', got {found}; use "
                "ImageClassificationDataset or a dataset that returns those keys"
            )
        pixels = torch.as_tensor(example["pixel_values"])
        return {"pixel_values": pixels.as_subclass(torch.Tensor), "labels": int(example["labels"]), "sample_index": row}


class BatchSeededDataset(torch.utils.data.Dataset):
    """Fetches each batch with Python's, numpy's and torch's CPU RNGs seeded by (seed, epoch, the batch's items).

    Augmentation then depends on the epoch plan only, not on how many batches were fetched before or in which
    process: a run resumed mid-epoch (whose skipped batches are never fetched) augments the remaining batches as
    the uninterrupted run did, whatever `dataloader_num_workers`. The global RNG states are restored after each
    fetch, so the training step's own randomness (dropout) is what transformers saves in its checkpoints.
    `epoch` is set by the trainer before each epoch's iterator is made (persistent workers keep the value of the
    epoch they started in; the batch's items still differ from epoch to epoch).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list[dict[str, Any]]:
        entropy = [self.seed, self.epoch]
        for key in keys:
            if isinstance(key, (tuple, list)):
                entropy += [int(key[0]), int(key[1]) + 1] + [int(x) + 1 for x in key[3:]]
            else:
                entropy.append(int(key))
        seeds = np.random.SeedSequence(entropy).generate_state(3)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(int(seeds[0]))
            np.random.seed(int(seeds[1]))
            torch.default_generator.manual_seed(int(seeds[2]))
            try:
                return self.dataset.__getitems__(keys)
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


def as_item_dataset(dataset: Any) -> torch.utils.data.Dataset:
    """The dataset itself if it already serves InterTrain item keys, else wrapped in `ItemDataset`."""
    if isinstance(dataset, (ImageClassificationDataset, ItemDataset)):
        return dataset
    return ItemDataset(dataset)
