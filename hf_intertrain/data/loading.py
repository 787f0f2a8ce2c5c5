"""Load an image-classification dataset with `datasets` and check everything training will rely on.

Every problem with the user's data is raised as `DataError` with a one-line message naming the
cause and the fix, at load time where possible (images are decoded up front by default), so a
run does not fail hours in.
"""

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .errors import DataError, first_line
from .images import decode_image, verify_split_images

logger = logging.getLogger(__name__)

EVAL_SPLIT_CANDIDATES: tuple[str, ...] = ("validation", "valid", "val", "test")
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels", "fine_label", "class")
VERIFY_IMAGES_AUTO_MAX_ROWS: int = 100_000


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


def verify_images_as_asked(split: datasets.Dataset, image_column: str, split_name: str, verify_images: str) -> bool:
    """Decode every image of `split` (`verify_split_images`) when `verify_images` asks it: "all", or "auto" for a
    split of at most `VERIFY_IMAGES_AUTO_MAX_ROWS` rows; whether it did."""
    if verify_images == "all" or (verify_images == "auto" and len(split) <= VERIFY_IMAGES_AUTO_MAX_ROWS):
        verify_split_images(split, image_column, split_name)
        return True
    return False


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

    train = undecoded_images(train, image_column, train_split)
    if evaluation is not None:
        evaluation = undecoded_images(evaluation, image_column, eval_split)

    label_names = _label_names(train, evaluation, label_column, train_split, eval_split)
    named = [(train_split, train)] + ([(eval_split, evaluation)] if evaluation is not None else [])
    for split_name, split in named:
        _check_labels(read_labels(split, label_column, split_name), len(label_names), split_name, label_column)
    for split_name, split in named:
        verify_images_as_asked(split, image_column, split_name, verify_images)

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
        cause = first_line(error)
        root = error
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        if root is not error:
            cause += f" ({type(root).__name__}: {first_line(root)})"
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


def _given_column(columns: list[str], column: str, flag: str) -> str:
    """A column the user named, refused in one line when the dataset lacks it."""
    if column not in columns:
        raise DataError(f"{flag} '{column}' is not a column of the dataset (columns found: {columns}); pass one of them")
    return column


def _resolve_image_column(split: datasets.Dataset, image_column: str | None) -> str:
    columns = split.column_names
    if image_column is not None:
        return _given_column(columns, image_column, "--image_column")
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
        _given_column(columns, label_column, "--label_column")
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


def undecoded_images(split: datasets.Dataset, image_column: str, split_name: str) -> datasets.Dataset:
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
