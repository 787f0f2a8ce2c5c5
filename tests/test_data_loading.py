"""Tests of hf_intertrain/data/loading.py: split and column detection, and one-line load-time errors."""

from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import (
    FLAT_CONFIG,
    NAMES,
    SHARED_CIFAR10,
    default_features,
    encode,
    image_value,
    noise_image,
    write_dataset,
    write_split,
)

from hf_intertrain.data import (
    EMBEDDED_DATASET,
    DataError,
    ImageClassificationDataset,
    build_transforms,
    load_image_classification_data,
)

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

pytestmark = pytest.mark.usefixtures("datasets_cache_in_tmp")


# ----------------------------------------------------------------------------------------------
# Column and split detection
# ----------------------------------------------------------------------------------------------


def test_detects_image_and_classlabel_columns_and_prefers_validation_split(tmp_path):
    features = datasets.Features(
        {"note": datasets.Value("string"), "picture": datasets.Image(), "target": datasets.ClassLabel(names=NAMES)}
    )
    pictures = [image_value(encode(noise_image(i))) for i in range(2)]
    for split in ("train", "validation", "test"):
        write_split(tmp_path / "d", split, {"note": ["x", "y"], "picture": pictures, "target": [2, 0]}, features)

    data = load_image_classification_data(str(tmp_path / "d"))

    assert (data.image_column, data.label_column) == ("picture", "target")
    assert data.eval_split == "validation"
    assert data.label_names == NAMES and data.num_labels == 3
    assert data.train.features["picture"] == datasets.Image(decode=False)


def test_eval_split_falls_back_to_test_then_to_none(tmp_path):
    with_test = load_image_classification_data(str(write_dataset(tmp_path / "a", {"train": 3, "test": 2})))
    train_only = load_image_classification_data(str(write_dataset(tmp_path / "b", {"train": 3})))

    assert with_test.eval_split == "test" and len(with_test.eval) == 2
    assert train_only.eval is None and train_only.eval_split is None


def test_explicit_columns_select_among_several_image_columns(tmp_path):
    features = datasets.Features(
        {"left": datasets.Image(), "right": datasets.Image(), "category": datasets.Value("int64")}
    )
    images = [image_value(encode(noise_image(i))) for i in range(3)]
    write_split(tmp_path / "d", "train", {"left": images, "right": images[::-1], "category": [0, 4, 1]}, features)

    with pytest.raises(DataError, match=r"several image columns found \(\['left', 'right'\]\).*--image_column"):
        load_image_classification_data(str(tmp_path / "d"), label_column="category")
    data = load_image_classification_data(str(tmp_path / "d"), image_column="right", label_column="category")

    assert (data.image_column, data.label_column) == ("right", "category")
    assert data.label_names == ["0", "1", "2", "3", "4"]


def test_integer_label_column_found_by_name_gets_string_names_up_to_max_label(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "labels": datasets.Value("int32")})
    images = [image_value(encode(noise_image(i))) for i in range(3)]
    write_split(tmp_path / "d", "train", {"img": images, "labels": [0, 3, 1]}, features)
    write_split(tmp_path / "d", "test", {"img": [image_value(encode(noise_image(7)))], "labels": [5]}, features)

    data = load_image_classification_data(str(tmp_path / "d"))

    assert data.label_column == "labels"
    assert data.label_names == [str(i) for i in range(6)]


def test_imagefolder_with_class_subfolders_loads_images_from_paths(tmp_path):
    for split in ("train", "test"):
        for index, name in enumerate(NAMES):
            folder = tmp_path / "folder" / split / name
            folder.mkdir(parents=True)
            noise_image(index, (20, 24)).save(folder / f"{name}_{index}.png")

    data = load_image_classification_data(str(tmp_path / "folder"))
    transform = build_transforms(FLAT_CONFIG, 16, is_training=False)
    dataset = ImageClassificationDataset(data.eval, transform, data.image_column, data.label_column)

    assert data.label_names == NAMES and data.eval_split == "test"
    assert data.first_image_size() == (20, 24)
    assert dataset[0]["pixel_values"].shape == (3, 16, 16)


@pytest.mark.skipif(not SHARED_CIFAR10.is_dir(), reason="no CIFAR-10 copy at ../shared/data/cifar10")
def test_max_samples_take_the_first_rows_of_cifar10():
    data = load_image_classification_data(str(SHARED_CIFAR10), max_train_samples=300, max_eval_samples=100)
    source = pq.read_table(SHARED_CIFAR10 / "plain_text" / "train-00000-of-00001.parquet", columns=["label"])

    assert (len(data.train), len(data.eval), data.eval_split) == (300, 100, "test")
    assert data.train["label"][:] == source.column("label").to_pylist()[:300]
    assert data.label_names == CIFAR10_NAMES
    assert data.first_image_size() == (32, 32)


def test_embedded_cifar10_sample_loads_offline_with_classlabel_names():
    raw = datasets.load_dataset(EMBEDDED_DATASET)
    data = load_image_classification_data(EMBEDDED_DATASET)
    labels = np.asarray(data.train["label"][:])

    assert (raw["train"].num_rows, raw["test"].num_rows) == (5000, 1000)
    assert raw["train"].features["label"].names == CIFAR10_NAMES
    assert data.image_column == "img" and data.eval_split == "test"
    assert np.bincount(labels, minlength=10).min() >= 400  # class-balanced prefix
    assert sum(f.stat().st_size for f in Path(EMBEDDED_DATASET).rglob("*")) < 8e6


# ----------------------------------------------------------------------------------------------
# Load-time errors: one line, naming the cause and the fix
# ----------------------------------------------------------------------------------------------


def assert_one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_train_split_names_the_splits_found(tmp_path):
    write_dataset(tmp_path / "d", {"validation": 2, "test": 2})
    with pytest.raises(DataError) as error:
        load_image_classification_data(str(tmp_path / "d"))
    message = assert_one_line(error)
    assert "no split 'train'" in message and "['test', 'validation']" in message and "--train_split" in message


def test_missing_dataset_path_names_the_path(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(DataError) as error:
        load_image_classification_data(str(missing))
    message = assert_one_line(error)
    assert "dataset not found" in message and str(missing) in message


def test_missing_requested_eval_split_names_the_splits_found(tmp_path):
    write_dataset(tmp_path / "d", {"train": 2, "test": 2})
    with pytest.raises(DataError, match=r"no split 'valid'.*\['test', 'train'\].*--eval_split"):
        load_image_classification_data(str(tmp_path / "d"), eval_split="valid")


def test_no_image_column_names_the_columns_and_the_flag(tmp_path):
    features = datasets.Features({"blob": datasets.Value("binary"), "label": datasets.ClassLabel(names=NAMES)})
    write_split(tmp_path / "d", "train", {"blob": [b"x"], "label": [0]}, features)
    with pytest.raises(DataError) as error:
        load_image_classification_data(str(tmp_path / "d"))
    message = assert_one_line(error)
    assert "no image column" in message and "['blob', 'label']" in message and "--image_column" in message


def test_no_label_column_names_the_columns_and_the_flag(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    write_split(tmp_path / "d", "train", {"image": [image_value(encode(noise_image(0)))], "caption": ["cat"]}, features)
    with pytest.raises(DataError) as error:
        load_image_classification_data(str(tmp_path / "d"))
    message = assert_one_line(error)
    assert "no label column" in message and "['image', 'caption']" in message and "--label_column" in message


@pytest.mark.parametrize("flag", ["image_column", "label_column"])
def test_given_column_that_does_not_exist_is_named_with_the_columns_found(tiny, flag):
    with pytest.raises(DataError) as error:
        load_image_classification_data(str(tiny), **{flag: "missing"})
    message = assert_one_line(error)
    assert f"--{flag} 'missing'" in message and "['image', 'label']" in message


def test_empty_split_is_rejected(tmp_path):
    write_dataset(tmp_path / "d", {"train": 2})
    pq.ParquetWriter(tmp_path / "d" / "test.parquet", default_features().arrow_schema).close()  # no rows
    with pytest.raises(DataError) as error:
        load_image_classification_data(str(tmp_path / "d"))
    assert "split 'test' of dataset" in assert_one_line(error) and "is empty" in str(error.value)


def test_data_file_without_rows_is_named_as_such(tmp_path):
    write_dataset(tmp_path / "d", {"train": 2, "test": 0})
    with pytest.raises(DataError, match=r"has a data file without rows"):
        load_image_classification_data(str(tmp_path / "d"))


def test_label_outside_classlabel_range_names_row_and_value(tmp_path):
    write_dataset(tmp_path / "d", {"train": 4}, labels={"train": [0, 2, 7, 1]})
    with pytest.raises(DataError) as error:
        load_image_classification_data(str(tmp_path / "d"))
    message = assert_one_line(error)
    assert "row 2 has label 7" in message and "[0, 3)" in message


def test_classlabel_minus_one_is_reported_as_unlabelled_row(tmp_path):
    write_dataset(tmp_path / "d", {"train": 3, "test": 3}, labels={"test": [1, -1, -1]})
    with pytest.raises(DataError) as error:
        load_image_classification_data(str(tmp_path / "d"))
    message = assert_one_line(error)
    assert "split 'test' row 1 has label -1" in message and "no label" in message


def test_negative_integer_label_names_row_and_value(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    images = [image_value(encode(noise_image(i))) for i in range(3)]
    write_split(tmp_path / "d", "train", {"image": images, "label": [1, 0, -4]}, features)
    with pytest.raises(DataError, match=r"row 2 has label -4"):
        load_image_classification_data(str(tmp_path / "d"))


def test_max_train_samples_larger_than_split_names_both_numbers_and_the_fix(tiny):
    with pytest.raises(DataError) as error:
        load_image_classification_data(str(tiny), max_train_samples=10)
    message = assert_one_line(error)
    assert "--max_train_samples 10" in message and "(6 rows)" in message and "at most 6" in message


def test_max_eval_samples_larger_than_split_names_both_numbers(tiny):
    with pytest.raises(DataError, match=r"--max_eval_samples 4 is larger than split 'validation' \(3 rows\)"):
        load_image_classification_data(str(tiny), max_eval_samples=4)


@pytest.mark.parametrize("flag", ["max_train_samples", "max_eval_samples"])
def test_max_samples_below_one_is_rejected(tiny, flag):
    with pytest.raises(DataError, match=rf"--{flag} must be at least 1, got 0"):
        load_image_classification_data(str(tiny), **{flag: 0})


def corrupt_dataset(folder: Path) -> Path:
    good = encode(noise_image(0), "JPEG")
    images = [image_value(good), image_value(good), image_value(good[: len(good) // 2]), image_value(b"not an image")]
    write_split(folder, "train", {"image": images, "label": [0, 1, 2, 0]}, default_features())
    return folder


def test_corrupt_image_is_found_at_load_time_with_split_and_row(tmp_path):
    with pytest.raises(DataError) as error:
        load_image_classification_data(str(corrupt_dataset(tmp_path / "d")))
    message = assert_one_line(error)
    assert "split 'train' row 2" in message and "fix or remove that row" in message


def test_corrupt_image_unverified_still_raises_data_error_naming_the_row_in_training(tmp_path):
    data = load_image_classification_data(str(corrupt_dataset(tmp_path / "d")), verify_images="none")
    transform = build_transforms(FLAT_CONFIG, 32, is_training=True)
    dataset = ImageClassificationDataset(data.train, transform, data.image_column, data.label_column)

    assert dataset[(0, 1, 0.5)]["labels_b"] == 1
    with pytest.raises(DataError, match=r"split 'train' row 3 .*fix or remove that row"):
        dataset.__getitems__([0, 3])
