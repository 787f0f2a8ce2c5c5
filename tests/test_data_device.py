"""Tests of hf_intertrain/data/device.py: the device pipeline's dataset, its batches of pixel requests, the pixels
they become on the device, and the choice of pipeline."""

import logging
import pickle

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import FLAT_CONFIG, NAMES, encode, image_value, make_device_dataset, make_split, noise_image, write_dataset
from hf_intertrain.data import (
    BatchSeededDataset,
    DeviceImageDataset,
    InterTrainCollator,
    PixelItems,
    PixelRequest,
    PixelRequests,
    choose_data_pipeline,
    load_image_classification_data,
    materialize_pixels,
    read_labels,
)
from hf_intertrain.data import device as device_module
from hf_intertrain.data.device import build_device_datasets, cache_budget
from hf_intertrain.data.device_transforms import normalize, pad_crop_flip
from hf_intertrain.data.items import batch_seeds
from hf_intertrain.data.rng import preserved_host_rngs

MEAN, STD = FLAT_CONFIG["mean"], FLAT_CONFIG["std"]
FIRST = [5, (1, 7, 0.3), (2, -1, 1.0)]
SECOND = [(9, 11, 0.25, 3, 4), (0, -1, 1.0), (6, 13, 0.5)]


def image_split(images: list, fmt: str = "PNG") -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=NAMES)})
    values = [image_value(encode(image, fmt)) for image in images]
    return datasets.Dataset.from_dict({"image": values, "label": [i % 3 for i in range(len(images))]}, features=features)


def fetched(dataset, keys: list, epoch: int = 0, seed: int = 0, device: str = "cpu") -> dict:
    """One batch as the trainer makes it: fetched under its seeds, collated, its pixels made on the device."""
    seeded = BatchSeededDataset(dataset, seed)
    seeded.epoch = epoch
    return materialize_pixels(InterTrainCollator()(seeded.__getitems__(keys)), device)


def pixels_of(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key.startswith("pixel_values")}


@pytest.fixture
def training_rows(tmp_path):
    return make_device_dataset(make_split(14, seed=1), tmp_path, training=True)


def test_device_dataset_serves_pixel_requests_for_every_key_shape(tmp_path):
    split = make_split(6)
    dataset = make_device_dataset(split, tmp_path, training=True)

    single, pair, quad = dataset.__getitems__([5, (1, 2, 0.4), (3, 4, 0.25, 0, 2)])

    assert isinstance(pair["pixel_values_b"], PixelRequest) and pair["pixel_values_b"].row == 2
    assert single["pixel_values"].draws.shape == (3,) and single["pixel_values"].encoded == b""  # cached: rows only
    labels = read_labels(split, "label")
    assert [quad[f"labels{s}"] for s in ("", "_b", "_c", "_d")] == labels[[3, 4, 0, 2]].tolist()
    batch = InterTrainCollator()([single, pair, quad])
    assert [request.row for request in batch["pixel_values"]] == batch["sample_index"].tolist() == [3, 1, 5]
    assert [request.row for request in batch["pixel_values_d"]] == [2]
    assert (dataset.image_size, len(dataset), dataset.cached) == (32, 6, True)
    uncached = make_device_dataset(split, tmp_path, cache=False)
    request = uncached[4]["pixel_values"]
    stored = split.cast_column("image", datasets.Image(decode=False))[4]["image"]["bytes"]
    assert request.draws is None and request.encoded == stored  # eval, not cached: the file


def test_the_collator_makes_a_batch_of_requests_of_arrays_in_item_order(training_rows):
    items = BatchSeededDataset(training_rows, seed=0).__getitems__(SECOND)
    a_requests = [item["pixel_values"] for item in (items[0], items[2], items[1])]  # composites, pairs, singles

    batch = InterTrainCollator()(items)

    requests = batch["pixel_values"]
    assert isinstance(requests, PixelRequests) and len(requests) == 3
    assert requests.rows.tolist() == [9, 6, 0] and requests.rows.dtype == np.int64
    np.testing.assert_array_equal(requests.draws, np.stack([request.draws for request in a_requests]))
    assert [(request.row, request.draws.tolist()) for request in requests] == [
        (request.row, request.draws.tolist()) for request in a_requests
    ]
    assert pickle.loads(pickle.dumps(requests)).rows.tolist() == [9, 6, 0]
    both = PixelRequests.of([requests, batch["pixel_values_b"]])
    assert both.rows.tolist() == [9, 6, 0, 11, 13] and both.draws.shape == (5, 3)


def test_requests_of_two_datasets_or_of_mixed_splits_are_refused(training_rows, tmp_path):
    train = training_rows.__getitems__([1])[0]["pixel_values"]
    evaluation = make_device_dataset(make_split(3), tmp_path / "eval").__getitems__([2])[0]["pixel_values"]

    with pytest.raises(ValueError, match="come from 2 datasets"):
        PixelRequests.of([train, evaluation])
    with pytest.raises(ValueError, match="mixes training requests"):
        PixelRequests.of([train, PixelRequest(train.source, 2, None)])


def test_seeded_fetch_draws_what_the_seeded_global_generator_draws_and_leaves_it_alone(training_rows):
    seeds = batch_seeds(0, 4, SECOND)
    with preserved_host_rngs(seeds):
        expected = InterTrainCollator()(training_rows.__getitems__(SECOND))
    np.random.seed(123)
    state = np.random.get_state()

    got = InterTrainCollator()(training_rows.getitems_seeded(SECOND, seeds))

    for key in ("pixel_values", "pixel_values_b", "pixel_values_c", "pixel_values_d"):
        np.testing.assert_array_equal(got[key].draws, expected[key].draws)
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]
    other = InterTrainCollator()(training_rows.getitems_seeded(SECOND, [1, 2, 3]))
    assert not np.array_equal(got["pixel_values"].draws, other["pixel_values"].draws)


def test_a_cached_batch_is_fetched_as_arrays_that_collate_as_its_items_do(training_rows):
    items = training_rows.__getitems__(SECOND + FIRST)

    fast, slow = InterTrainCollator()(items), InterTrainCollator()(list(items))

    assert isinstance(items, PixelItems) and list(fast) == list(slow)
    for key, value in fast.items():
        if isinstance(value, PixelRequests):
            assert value.rows.tolist() == slow[key].rows.tolist() and np.array_equal(value.draws, slow[key].draws)
        else:
            assert torch.equal(value, slow[key]), key
    assert pickle.loads(pickle.dumps(items)).rows.tolist() == items.rows.tolist()


def test_a_cached_batch_draws_what_the_row_by_row_fetch_draws(training_rows, tmp_path):
    uncached = make_device_dataset(make_split(14, seed=1), tmp_path / "files", training=True, cache=False)
    keys = [(i % 14, (i + 5) % 14, 0.5) for i in range(140)]  # 280 constituents: two of the row fetch's draw blocks
    seeds = batch_seeds(0, 1, keys)

    arrays = InterTrainCollator()(training_rows.getitems_seeded(keys, seeds))
    rows = InterTrainCollator()(uncached.getitems_seeded(keys, seeds))

    assert not uncached.cached
    for key in ("pixel_values", "pixel_values_b"):
        assert arrays[key].rows.tolist() == rows[key].rows.tolist()
        np.testing.assert_array_equal(arrays[key].draws, rows[key].draws)
    again = InterTrainCollator()(training_rows.getitems_seeded(keys, seeds))  # the reused generator is re-seeded
    np.testing.assert_array_equal(again["pixel_values_b"].draws, arrays["pixel_values_b"].draws)


def test_every_constituent_becomes_a_padded_crop_of_its_own_row(training_rows):
    batch = fetched(training_rows, SECOND)
    pad, images = 4, torch.from_numpy(np.array(training_rows.cache)).permute(0, 3, 1, 2)
    offsets = [(top, left, flip) for top in range(-pad, pad + 1) for left in range(-pad, pad + 1) for flip in (0, 1)]
    tops, lefts, flips = (torch.tensor(column) for column in zip(*offsets))

    for suffix in ("", "_b", "_c", "_d"):
        out = batch[f"pixel_values{suffix}"]
        assert out.shape == (len(batch[f"sample_index{suffix}"]), 3, 32, 32) and out.dtype == torch.float32
        for i, row in enumerate(batch[f"sample_index{suffix}"].tolist()):
            repeated = images[row : row + 1].repeat(len(offsets), 1, 1, 1)
            candidates = normalize(pad_crop_flip(repeated, 32, tops, lefts, flips.bool()), MEAN, STD)
            assert any(torch.equal(out[i], candidate) for candidate in candidates), (suffix, row)


def test_a_batch_draws_its_augmentation_from_its_epoch_and_items_alone(training_rows):
    first = fetched(training_rows, FIRST, epoch=1)
    second = fetched(training_rows, SECOND, epoch=1)
    second_again = fetched(training_rows, SECOND, epoch=1)  # in the other order
    first_again = fetched(training_rows, FIRST, epoch=1)

    for batch, again in ((first, first_again), (second, second_again)):
        assert all(torch.equal(batch[key], again[key]) for key in pixels_of(batch))
    for other in (fetched(training_rows, FIRST, epoch=2), fetched(training_rows, FIRST, epoch=1, seed=1)):
        assert not all(torch.equal(first[key], other[key]) for key in ("pixel_values", "pixel_values_b"))


@pytest.mark.parametrize("fmt, size", [("PNG", 32), ("JPEG", 32), ("PNG", 80)])
def test_a_split_served_from_its_files_gives_the_pixels_of_its_cache(tmp_path, fmt, size):
    split = image_split([noise_image(i, (size, size)) for i in range(14)], fmt)
    for training in (True, False):
        cached = make_device_dataset(split, tmp_path, training=training, size=size)
        uncached = make_device_dataset(split, tmp_path, training=training, size=size, cache=False)
        assert cached.cached and not uncached.cached
        for keys in (FIRST, SECOND):
            keys = keys if training else [key if isinstance(key, int) else key[0] for key in keys]
            from_cache, from_files = fetched(cached, keys, epoch=3), fetched(uncached, keys, epoch=3)
            assert pixels_of(from_cache).keys() == pixels_of(from_files).keys()
            for key, value in pixels_of(from_cache).items():
                assert torch.equal(value, from_files[key]), (training, key)


def test_eval_pixels_are_the_workers_eval_transforms(tmp_path, datasets_cache_in_tmp):
    from hf_intertrain.experiments.run import build_split_datasets

    data = load_image_classification_data(str(write_dataset(tmp_path / "data", {"train": 6, "test": 3})))

    train, evaluation = build_split_datasets(data, FLAT_CONFIG, 32, choose_data_pipeline("auto", data))

    assert isinstance(train, DeviceImageDataset) and isinstance(evaluation, DeviceImageDataset)
    assert (train.cached, evaluation.cached, evaluation.split_name, len(evaluation)) == (True, True, "test", 3)
    assert train.transform.is_training and not evaluation.transform.is_training
    _, workers_eval = build_split_datasets(data, FLAT_CONFIG, 32, "workers")
    batch = materialize_pixels(InterTrainCollator()(evaluation.__getitems__([2, 0, 1])), "cpu")
    for i, row in enumerate([2, 0, 1]):
        assert torch.equal(batch["pixel_values"][i], workers_eval[row]["pixel_values"])


def test_loader_workers_carry_the_requests_of_the_same_augmentation(training_rows):
    plan = [FIRST, SECOND, [3, 8, (10, 12, 0.5)]]

    def batches(workers: int) -> list[dict]:
        loader = DataLoader(
            BatchSeededDataset(training_rows, seed=0), batch_sampler=plan, collate_fn=InterTrainCollator(),
            num_workers=workers,
        )
        return [materialize_pixels(batch, "cpu") for batch in loader]

    for alone, with_workers in zip(batches(0), batches(2)):
        assert all(torch.equal(value, with_workers[key]) for key, value in pixels_of(alone).items())


def test_a_pickled_device_dataset_carries_the_cache_path_not_its_pixels(tmp_path):
    dataset = make_device_dataset(make_split(40), tmp_path, training=True)

    blob = pickle.dumps(dataset)

    assert len(blob) < dataset.cache.nbytes // 4
    clone = pickle.loads(blob)
    assert clone.key == dataset.key and clone.cache_path == dataset.cache_path
    np.testing.assert_array_equal(clone.cache, dataset.cache)


def test_requests_of_a_dataset_that_is_gone_are_refused(tmp_path):
    batch = InterTrainCollator()(make_device_dataset(make_split(3), tmp_path).__getitems__([0, 1]))
    stale = [PixelRequest("no-such-dataset", request.row, None) for request in batch["pixel_values"]]

    with pytest.raises(KeyError, match="a DeviceImageDataset this process no longer holds"):
        materialize_pixels({**batch, "pixel_values": stale}, "cpu")
    plain = {"pixel_values": torch.zeros(2, 3, 4, 4), "labels": torch.zeros(2)}
    assert materialize_pixels(plain, "cpu") is plain


# ----------------------------------------------------------------------------------------------
# Choosing the pipeline
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def loaded(tmp_path, datasets_cache_in_tmp):
    return load_image_classification_data(str(write_dataset(tmp_path / "data", {"train": 10, "test": 2})))


def test_cache_budget_is_half_the_available_host_memory_and_a_quarter_of_the_free_device_memory(monkeypatch):
    monkeypatch.setattr(device_module, "free_host_memory", lambda: 8000)
    monkeypatch.setattr(device_module, "free_device_memory", lambda device: None)
    assert cache_budget("cpu") == 4000
    monkeypatch.setattr(device_module, "free_device_memory", lambda device: 12000)
    assert cache_budget("cuda") == 3000
    monkeypatch.setattr(device_module, "free_device_memory", lambda device: 100000)
    assert cache_budget("cuda") == 4000


def test_auto_picks_the_device_when_the_decoded_splits_fit_the_budget(loaded, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=device_module.__name__)
    needed = 12 * 32 * 32 * 3  # train and test
    assert choose_data_pipeline("workers", loaded) == "workers"
    monkeypatch.setattr(device_module, "cache_budget", lambda device=None: needed - 1)
    assert choose_data_pipeline("device", loaded) == "device"  # asked for: served from the files if need be
    assert choose_data_pipeline("auto", loaded) == "workers"
    assert "exceed the cache budget" in caplog.text and "using workers" in caplog.text
    train, evaluation = build_device_datasets(loaded, FLAT_CONFIG, 32)
    assert not train.cached and not evaluation.cached
    monkeypatch.setattr(device_module, "cache_budget", lambda device=None: needed)
    assert choose_data_pipeline("auto", loaded) == "device"
    with pytest.raises(ValueError, match="data_pipeline='gpu' is not supported: use one of auto, workers, device"):
        choose_data_pipeline("gpu", loaded)


def test_auto_keeps_the_workers_path_for_images_of_several_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    split = image_split([noise_image(0), noise_image(1, (40, 32))])
    data = device_module.ImageClassificationData(split, None, "image", "label", NAMES, 3)

    assert choose_data_pipeline("auto", data) == "workers"
    train, _ = build_device_datasets(data, FLAT_CONFIG, 32)
    assert not train.cached and len(fetched(train, [0, 1])["pixel_values"]) == 2  # device: from its files
