import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io
import random
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import timm
import torch
from PIL import Image as PILImage
from torch.utils.data import DataLoader

from hf_intertrain.data import (
    EMBEDDED_DATASET,
    DataError,
    ImageClassificationDataset,
    InterTrainCollator,
    ItemDataset,
    as_item_dataset,
    build_transforms,
    load_image_classification_data,
    to_rgb,
)

# The full CIFAR-10 copy where this machine has it, else the bundled sample (its first rows).
CIFAR10 = "/work/shared/data/cifar10" if Path("/work/shared/data/cifar10").is_dir() else EMBEDDED_DATASET
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
NAMES = ["cat", "dog", "fox"]
FLAT_CONFIG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear", "crop_pct": 0.875}

datasets.disable_progress_bars()


# ----------------------------------------------------------------------------------------------
# Helpers: tiny datasets written as parquet (loaded back through datasets.load_dataset)
# ----------------------------------------------------------------------------------------------


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


@pytest.fixture(autouse=True)
def datasets_cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the Arrow caches of the throwaway datasets written here out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "tiny", {"train": 6, "validation": 3, "test": 3})


def flat_dataset(images: list, labels: list[int], is_training: bool = False) -> ImageClassificationDataset:
    """An in-memory 32x32 split of PIL images (stored as PNG) or encoded bytes, normalised with 0.5/0.5."""
    encoded = [image if isinstance(image, bytes) else encode(image) for image in images]
    split = datasets.Dataset.from_dict(
        {"image": [image_value(data) for data in encoded], "label": labels},
        features=datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=NAMES)}),
    )
    return ImageClassificationDataset(split, build_transforms(FLAT_CONFIG, 32, is_training), "image", "label")


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


def test_max_samples_take_the_first_rows_of_cifar10():
    data = load_image_classification_data(CIFAR10, max_train_samples=300, max_eval_samples=100)
    source = pq.read_table(Path(CIFAR10) / "plain_text" / "train-00000-of-00001.parquet", columns=["label"])

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


# ----------------------------------------------------------------------------------------------
# Images and transforms
# ----------------------------------------------------------------------------------------------


def test_transparent_pixels_are_composited_onto_white():
    rgba = PILImage.new("RGBA", (2, 1), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (0, 0, 200, 255))

    assert np.asarray(to_rgb(rgba)).tolist() == [[[255, 255, 255], [0, 0, 200]]]


def test_half_transparent_greyscale_alpha_blends_with_white():
    assert to_rgb(PILImage.new("LA", (1, 1), (0, 128))).getpixel((0, 0)) == (127, 127, 127)


def test_palette_transparent_colour_becomes_white_and_others_keep_their_colour():
    palette = PILImage.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    reloaded = PILImage.open(io.BytesIO(encode(palette)))

    assert np.asarray(to_rgb(reloaded)).tolist() == [[[255, 255, 255], [200, 10, 10]]]


def test_sixteen_bit_greyscale_is_rescaled_not_clipped():
    image = PILImage.open(io.BytesIO(encode(PILImage.fromarray(np.full((2, 2), 40000, np.uint16)))))

    assert image.mode == "I;16"
    assert to_rgb(image).getpixel((0, 0)) == (156, 156, 156)  # 40000 * 255 / 65535


@pytest.mark.parametrize(
    "image, fmt",
    [
        (noise_image(1, mode="L"), "PNG"),
        (PILImage.new("P", (32, 32), 3), "GIF"),
        (PILImage.new("RGBA", (32, 32), (1, 2, 3, 100)), "PNG"),
        (PILImage.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"),
        (PILImage.fromarray(np.full((32, 32), 1000, np.uint16)), "PNG"),
    ],
    ids=["L", "P", "RGBA", "CMYK", "I16"],
)
def test_every_image_mode_gives_three_channel_float_pixels(image, fmt):
    dataset = flat_dataset([encode(image, fmt)], [0])

    pixels = dataset[0]["pixel_values"]

    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    assert torch.isfinite(pixels).all()


def test_cmyk_red_decodes_to_rgb_red():
    dataset = flat_dataset([encode(PILImage.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG")], [0])
    rgb = dataset[0]["pixel_values"] * 0.5 + 0.5

    assert torch.allclose(rgb[:, 16, 16], torch.tensor([1.0, 0.0, 0.0]), atol=0.02)


def test_train_transform_is_random_and_eval_transform_is_deterministic():
    image = noise_image(3)
    train, evaluate = build_transforms(FLAT_CONFIG, 32, True), build_transforms(FLAT_CONFIG, 32, False)
    random.seed(0)

    train_outputs = [train(image) for _ in range(6)]
    eval_outputs = [evaluate(image) for _ in range(3)]

    assert any(not torch.equal(train_outputs[0], other) for other in train_outputs[1:])
    assert all(torch.equal(eval_outputs[0], other) for other in eval_outputs[1:])


def test_small_train_output_is_a_zero_padded_crop_possibly_flipped():
    image = noise_image(4)
    pixels = np.asarray(image).astype(np.float32) / 127.5 - 1.0
    padded = np.pad(pixels, ((4, 4), (4, 4), (0, 0)), constant_values=-1.0)  # zero pixel after normalising
    train = build_transforms(FLAT_CONFIG, 32, True)
    random.seed(1)

    for _ in range(5):
        output = train(image).permute(1, 2, 0).numpy()
        candidates = [padded[i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        candidates += [c[:, ::-1] for c in candidates]
        assert min(np.abs(output - c).max() for c in candidates) < 1e-5


@pytest.mark.parametrize("is_training", [True, False])
@pytest.mark.parametrize(
    "image_size, source_size", [(32, (32, 32)), (32, (50, 40)), (24, (32, 32)), (96, (160, 120)), (96, (60, 60))]
)
def test_output_size_is_image_size_for_small_and_large_images(is_training, image_size, source_size):
    transform = build_transforms(FLAT_CONFIG, image_size, is_training, native_size=max(source_size))

    assert transform(noise_image(5, source_size)).shape == (3, image_size, image_size)


@pytest.mark.parametrize("image_size", [32, 96])
def test_normalisation_uses_the_models_data_config(image_size):
    config = timm.data.resolve_data_config({}, model=timm.create_model("test_resnet", pretrained=False))
    grey = PILImage.new("RGB", (128, 128), (51, 102, 204))

    pixels = build_transforms(config, image_size, is_training=False)(grey)
    expected = (torch.tensor([51, 102, 204]) / 255.0 - torch.tensor(config["mean"])) / torch.tensor(config["std"])

    assert config["mean"] == (0.5, 0.5, 0.5)  # test_resnet's own normalisation, not ImageNet's
    assert torch.allclose(pixels[:, image_size // 2, image_size // 2], expected.float(), atol=1e-5)


def test_large_eval_transform_resizes_by_crop_pct_then_center_crops():
    config = dict(FLAT_CONFIG, crop_pct=0.5)
    image = PILImage.new("RGB", (200, 200), (0, 0, 0))
    image.paste((255, 255, 255), (50, 50, 150, 150))  # white centre half: exactly the 0.5 crop

    pixels = build_transforms(config, 80, is_training=False)(image)

    assert pixels.shape == (3, 80, 80)
    assert pixels[:, 2:-2, 2:-2].min() > 0.95  # all white inside, no black border kept


# ----------------------------------------------------------------------------------------------
# Dataset items and collation
# ----------------------------------------------------------------------------------------------


def test_int_key_gives_pixels_label_and_sample_index():
    dataset = flat_dataset([noise_image(i) for i in range(3)], [2, 0, 1])

    item = dataset[2]

    assert set(item) == {"pixel_values", "labels", "sample_index"}
    assert (item["labels"], item["sample_index"]) == (1, 2)


def test_tuple_key_gives_both_constituents_and_the_ratio():
    dataset = flat_dataset([noise_image(i) for i in range(3)], [2, 0, 1])

    pair, single = dataset.__getitems__([(0, 2, 0.3), (1, -1, 1.0)])

    assert (pair["labels"], pair["sample_index"], pair["interp_ratio"]) == (2, 0, 0.3)
    assert (pair["labels_b"], pair["sample_index_b"]) == (1, 2)
    assert torch.equal(pair["pixel_values_b"], dataset[2]["pixel_values"])  # eval transform: deterministic
    assert set(single) == {"pixel_values", "labels", "sample_index"} and single["sample_index"] == 1


def test_pair_constituents_get_independent_augmentation():
    dataset = flat_dataset([noise_image(0)], [0], is_training=True)
    random.seed(2)

    items = dataset.__getitems__([(0, 0, 0.5)] * 4)

    assert any(not torch.equal(item["pixel_values"], item["pixel_values_b"]) for item in items)


def test_out_of_range_keys_are_rejected():
    dataset = flat_dataset([noise_image(0)], [0])
    with pytest.raises(IndexError, match="out of range"):
        dataset[(0, 1, 0.5)]
    with pytest.raises(IndexError, match="out of range"):
        dataset[1]


def single(index: int, label: int) -> dict:
    return {"pixel_values": torch.full((3, 4, 4), float(index)), "labels": label, "sample_index": index}


def pair(a: int, b: int, ratio: float) -> dict:
    item = single(a, a % 3)
    item.update(pixel_values_b=torch.full((3, 4, 4), float(b)), labels_b=b % 3, sample_index_b=b, interp_ratio=ratio)
    return item


def test_collator_puts_pairs_first_in_their_order_then_singles():
    batch = InterTrainCollator()([single(7, 1), pair(3, 9, 0.25), single(5, 2), pair(4, 8, 0.75)])

    assert batch["sample_index"].tolist() == [3, 4, 7, 5]
    assert batch["labels"].tolist() == [0, 1, 1, 2]
    assert batch["sample_index_b"].tolist() == [9, 8]
    assert batch["labels_b"].tolist() == [0, 2]
    assert batch["interp_ratio"].tolist() == [0.25, 0.75]
    assert batch["pixel_values"].shape == (4, 3, 4, 4) and batch["pixel_values_b"].shape == (2, 3, 4, 4)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [3.0, 4.0, 7.0, 5.0]
    assert batch["pixel_values_b"][:, 0, 0, 0].tolist() == [9.0, 8.0]
    assert batch["labels"].dtype == batch["sample_index"].dtype == batch["labels_b"].dtype == torch.int64
    assert batch["interp_ratio"].dtype == torch.float32


def test_collator_batch_without_pairs_has_only_the_a_keys():
    batch = InterTrainCollator()([single(1, 0), single(2, 1)])

    assert set(batch) == {"pixel_values", "labels", "sample_index"}
    assert batch["sample_index"].tolist() == [1, 2]


def test_collator_leaves_out_sample_index_when_items_lack_it():
    items = [{"pixel_values": torch.zeros(3, 4, 4), "labels": 1}, {"pixel_values": torch.ones(3, 4, 4), "labels": 0}]

    batch = InterTrainCollator()(items)

    assert set(batch) == {"pixel_values", "labels"} and batch["labels"].tolist() == [1, 0]


def test_dataloader_with_a_batch_sampler_of_item_keys_yields_collated_batches():
    dataset = flat_dataset([noise_image(i) for i in range(5)], [0, 1, 2, 0, 1], is_training=True)
    batches = [[(4, -1, 1.0), (0, 3, 0.5), (2, -1, 1.0)], [1]]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=InterTrainCollator())

    first, second = list(loader)

    assert first["sample_index"].tolist() == [0, 4, 2] and first["sample_index_b"].tolist() == [3]
    assert first["labels"].tolist() == [0, 1, 2] and first["labels_b"].tolist() == [0]
    assert first["pixel_values"].shape == (3, 3, 32, 32)
    assert set(second) == {"pixel_values", "labels", "sample_index"}


def test_plain_dataset_wrapped_for_item_keys_serves_pairs():
    rows = [{"pixel_values": np.full((3, 2, 2), i, np.float32), "labels": torch.tensor(i % 2)} for i in range(4)]
    dataset = as_item_dataset(rows)

    item = dataset[(1, 2, 0.6)]

    assert isinstance(dataset, ItemDataset) and len(dataset) == 4
    assert (item["labels"], item["labels_b"], item["sample_index_b"], item["interp_ratio"]) == (1, 0, 2, 0.6)
    assert torch.equal(item["pixel_values_b"], torch.full((3, 2, 2), 2.0))
    assert as_item_dataset(dataset) is dataset


# ----------------------------------------------------------------------------------------------
# 4-way composites (issue 6)
# ----------------------------------------------------------------------------------------------


def quad(a: int, b: int, c: int, d: int) -> dict:
    item = pair(a, b, 0.25)
    for suffix, row in (("c", c), ("d", d)):
        item.update({f"pixel_values_{suffix}": torch.full((3, 4, 4), float(row)), f"labels_{suffix}": row % 3, f"sample_index_{suffix}": row})
    return item


def test_five_tuple_key_gives_all_four_constituents():
    dataset = flat_dataset([noise_image(i) for i in range(5)], [0, 1, 2, 0, 1])

    item = dataset[(4, 0, 0.25, 3, 1)]

    assert [item[f"sample_index{s}"] for s in ("", "_b", "_c", "_d")] == [4, 0, 3, 1]
    assert [item[f"labels{s}"] for s in ("", "_b", "_c", "_d")] == [1, 0, 0, 1]
    assert torch.equal(item["pixel_values_c"], dataset[3]["pixel_values"])
    wrapped = as_item_dataset([dataset[i] for i in range(5)])
    assert wrapped[(4, 0, 0.25, 3, 1)]["sample_index_d"] == 1 and torch.equal(wrapped[(4, 0, 0.25, 3, 1)]["pixel_values_d"], dataset[1]["pixel_values"])


@pytest.mark.parametrize("key", [(0, -1, 1.0, 1, 2), (0, 1, 0.25, 2, -1), (0, 1, 0.25, 2)])
def test_malformed_four_way_keys_are_rejected(key):
    dataset = flat_dataset([noise_image(i) for i in range(3)], [0, 1, 2])
    with pytest.raises((ValueError, TypeError), match="4-way composite|tuple"):
        dataset[key]


def test_collator_puts_four_way_composites_first_then_pairs_then_singles():
    batch = InterTrainCollator()([single(7, 1), pair(3, 9, 0.25), quad(10, 11, 12, 13), single(5, 2)])

    assert batch["sample_index"].tolist() == [10, 3, 7, 5]
    assert batch["sample_index_b"].tolist() == [11, 9]
    assert batch["sample_index_c"].tolist() == [12] and batch["sample_index_d"].tolist() == [13]
    assert batch["labels_c"].tolist() == [0] and batch["labels_d"].tolist() == [1]
    assert batch["pixel_values_c"].shape == (1, 3, 4, 4) and batch["pixel_values_d"][:, 0, 0, 0].tolist() == [13.0]
    assert set(InterTrainCollator()([pair(3, 9, 0.5)])) == {"pixel_values", "labels", "sample_index", "pixel_values_b", "labels_b", "sample_index_b", "interp_ratio"}
