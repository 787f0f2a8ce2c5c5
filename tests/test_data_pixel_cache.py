"""Tests of hf_intertrain/data/pixel_cache.py: the decoded uint8 cache, its reuse, its rebuilds and its refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

from conftest import NAMES, REPO, default_features, encode, image_value, noise_image, write_dataset, write_split
from hf_intertrain.data import DataError, decode_image, load_image_classification_data, to_rgb
from hf_intertrain.data import pixel_cache
from hf_intertrain.data.pixel_cache import cache_paths, first_image_size, load_pixel_cache


def image_split(images: list) -> datasets.Dataset:
    """An in-memory split of PIL images (stored as PNG) or raw bytes, labelled 0, 1, 2, 0, ..."""
    encoded = [image if isinstance(image, bytes) else encode(image) for image in images]
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=NAMES)})
    labels = [i % len(NAMES) for i in range(len(images))]
    return datasets.Dataset.from_dict({"image": [image_value(data) for data in encoded], "label": labels}, features=features)


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    """In-memory splits keep their caches under tmp_path."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    return tmp_path / pixel_cache.CACHE_PREFIX


@pytest.fixture
def decodes(monkeypatch):
    """The rows decoded while building caches, in order."""
    rows, original = [], pixel_cache.decode_image

    def counting(value, split_name, row):
        rows.append(row)
        return original(value, split_name, row)

    monkeypatch.setattr(pixel_cache, "decode_image", counting)
    return rows


def paths(split: datasets.Dataset) -> tuple[Path, Path]:
    return cache_paths(split, "image", first_image_size(split, "image"))


def test_cache_holds_every_image_at_its_stored_size_as_the_workers_decoder_decodes_it(cache_root):
    images = [noise_image(1, (40, 24)), noise_image(2, (40, 24), mode="L"), noise_image(3, (40, 24))]
    split = image_split(images[:2] + [encode(images[2], "JPEG")])

    pixels = load_pixel_cache(split, "image")

    assert pixels.shape == (3, 24, 40, 3) and pixels.dtype == np.uint8 and not pixels.flags.writeable
    for row in range(3):
        expected = np.asarray(to_rgb(decode_image(split[row]["image"], "train", row)))
        np.testing.assert_array_equal(pixels[row], expected)
    assert sorted(path.suffix for path in cache_root.iterdir()) == [".json", ".npy"]


def test_a_loaded_split_gets_its_cache_beside_its_arrow_files(tmp_path, datasets_cache_in_tmp):
    data = load_image_classification_data(str(write_dataset(tmp_path / "data", {"train": 5, "test": 2})))

    pixels = load_pixel_cache(data.train, data.image_column)

    arrow_files = [entry["filename"] for entry in data.train.cache_files]
    assert arrow_files and Path(pixels.filename).parent == Path(arrow_files[0]).parent
    marker = json.loads(Path(pixels.filename).with_suffix(".json").read_text())
    assert marker["shape"] == [5, 32, 32, 3] and marker["split"] == "train"


def test_a_second_load_reads_the_cache_without_decoding(cache_root, decodes):
    split = image_split([noise_image(i) for i in range(5)])
    first = load_pixel_cache(split, "image")
    assert decodes == [0, 0, 1, 2, 3, 4]  # the first image's size, then the build

    second = load_pixel_cache(split, "image")

    assert decodes == [0, 0, 1, 2, 3, 4, 0] and second.filename == first.filename
    np.testing.assert_array_equal(second, first)


def _no_marker(data_path: Path, marker_path: Path) -> None:
    marker_path.unlink()


def _truncated(data_path: Path, marker_path: Path) -> None:
    data_path.write_bytes(data_path.read_bytes()[: data_path.stat().st_size // 2])


def _garbled_marker(data_path: Path, marker_path: Path) -> None:
    marker_path.write_text("{not json")


def _edit_marker(**changes):
    def edit(data_path: Path, marker_path: Path) -> None:
        marker_path.write_text(json.dumps({**json.loads(marker_path.read_text()), **changes}))

    return edit


@pytest.mark.parametrize(
    "damage",
    [_no_marker, _truncated, _garbled_marker, _edit_marker(shape=[4, 16, 16, 3]), _edit_marker(key="0" * 32),
     _edit_marker(content="0" * 32), _edit_marker(format=1)],
    ids=["pixels_without_marker", "truncated", "garbled_marker", "other_shape", "other_key", "other_content",
         "old_format"],
)
def test_a_damaged_cache_is_rebuilt_not_read(cache_root, decodes, damage):
    split = image_split([noise_image(i) for i in range(4)])
    expected = np.array(load_pixel_cache(split, "image"))
    data_path, marker_path = paths(split)
    damage(data_path, marker_path)
    decodes.clear()

    again = load_pixel_cache(split, "image")

    assert decodes == [0, 0, 1, 2, 3]  # rebuilt
    np.testing.assert_array_equal(again, expected)
    assert json.loads(marker_path.read_text())["shape"] == [4, 32, 32, 3]


KILLED_BUILD = """
import os, signal, sys
import datasets
sys.path.insert(0, {tests!r})
from conftest import encode, image_value, noise_image
from hf_intertrain.data import pixel_cache
from test_data_pixel_cache import image_split

datasets.config.HF_DATASETS_CACHE = {root!r}
original = pixel_cache.decode_image
def dying(value, split_name, row):
    if row == 3 and len(sys.argv) > 1:  # half-way through the build: killed, as a preempted job is
        os.kill(os.getpid(), signal.SIGKILL)
    return original(value, split_name, row)
pixel_cache.decode_image = dying
pixel_cache.load_pixel_cache(image_split([noise_image(i) for i in range(6)]), "image")
"""


def test_a_build_killed_half_way_leaves_no_cache_that_is_read(tmp_path, cache_root, decodes):
    script = KILLED_BUILD.format(tests=str(REPO / "tests"), root=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", script, "die"], env=env, capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    split = image_split([noise_image(i) for i in range(6)])
    data_path, marker_path = paths(split)
    leftovers = [path.name for path in cache_root.iterdir()]
    assert not data_path.exists() and not marker_path.exists()
    assert len(leftovers) == 1 and leftovers[0].startswith(data_path.name) and leftovers[0].endswith(".tmp")
    decodes.clear()

    pixels = load_pixel_cache(split, "image")

    assert decodes == [0, 0, 1, 2, 3, 4, 5]  # rebuilt from scratch
    np.testing.assert_array_equal(pixels[5], np.asarray(noise_image(5)))


def test_a_dataset_changed_under_the_same_fingerprint_is_rebuilt(cache_root, decodes):
    before = image_split([noise_image(i) for i in range(3)])
    load_pixel_cache(before, "image")
    after = image_split([noise_image(10 + i) for i in range(3)])
    after._fingerprint = before._fingerprint
    assert paths(after) == paths(before)
    decodes.clear()

    pixels = load_pixel_cache(after, "image")

    assert decodes == [0, 0, 1, 2]
    np.testing.assert_array_equal(pixels[1], np.asarray(noise_image(11)))


def test_a_rewritten_dataset_folder_gets_a_cache_of_its_own(tmp_path, datasets_cache_in_tmp):
    folder = write_dataset(tmp_path / "data", {"train": 4})
    before = load_pixel_cache(load_image_classification_data(str(folder)).train, "image")
    columns = {"image": [image_value(encode(noise_image(50 + i))) for i in range(4)], "label": [0, 1, 2, 0]}
    write_split(folder, "train", columns, default_features())

    after = load_pixel_cache(load_image_classification_data(str(folder)).train, "image")

    assert after.filename != before.filename
    np.testing.assert_array_equal(after[1], np.asarray(noise_image(51)))
    np.testing.assert_array_equal(before[1], np.asarray(noise_image(1)))  # the old file is left as it was


def test_images_of_several_sizes_are_not_cached_and_that_is_remembered(cache_root, decodes):
    split = image_split([noise_image(0), noise_image(1), noise_image(2, (40, 32)), noise_image(3)])

    assert load_pixel_cache(split, "image") is None
    assert decodes == [0, 0, 1, 2]  # stopped at the first image of another size
    marker = json.loads(paths(split)[1].read_text())
    assert marker["mixed_sizes"] == {"row": 2, "size": [32, 40]} and not paths(split)[0].exists()
    decodes.clear()
    assert load_pixel_cache(split, "image") is None and decodes == [0]


def test_an_undecodable_image_fails_the_build_naming_its_row_and_leaves_nothing(cache_root):
    split = image_split([noise_image(0), noise_image(1), b"not an image"])

    with pytest.raises(DataError, match=r"^cannot decode the image of split 'test' row 2 \(UnidentifiedImageError"):
        load_pixel_cache(split, "image", split_name="test")
    assert list(cache_root.iterdir()) == []
