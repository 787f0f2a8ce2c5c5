"""Tests of hf_intertrain/data/items.py: item keys, the datasets that serve them, the collator, batch seeds."""

import random

import numpy as np
import pytest
import torch
from conftest import flat_dataset, noise_image
from torch.utils.data import DataLoader

from hf_intertrain.data import (
    EXTRA_CONSTITUENTS,
    InterTrainCollator,
    InterTrainItemDataset,
    ItemDataset,
    KeyedItems,
    as_item_dataset,
    batch_seeds,
    parse_item_key,
    parse_item_keys,
)


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
# 4-way composites
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


class ConstantKeyedItems(KeyedItems):
    """A batch fetched at once whose pixels are constants of their row, made one by one or per slot."""

    def pixel(self, i, slot):
        return torch.full((3, 2, 2), float(self.rows[i, slot]))

    def pixels(self, index, slot):
        return torch.from_numpy(self.rows[index, slot].astype(np.float32))[:, None, None, None].expand(-1, 3, 2, 2)


def keyed(keys: list, size: int = 20) -> ConstantKeyedItems:
    rows, ratio = parse_item_keys(keys, size)
    return ConstantKeyedItems(rows, ratio, np.where(rows >= 0, rows % 3, -1))


def test_a_batch_fetched_as_arrays_collates_as_its_items_do():
    items = keyed([7, (3, 9, 0.25), (10, 11, 0.75, 12, 13), (4, -1, 1.0), (1, 2, 0.5), (14, 15, 0.5, 16, 17)])

    fast, slow = InterTrainCollator()(items), InterTrainCollator()(list(items))

    assert list(fast) == list(slow)
    for key in fast:
        assert fast[key].dtype == slow[key].dtype and torch.equal(fast[key], slow[key]), key
    assert fast["sample_index"].tolist() == [10, 14, 3, 1, 7, 4] and fast["sample_index_d"].tolist() == [13, 17]
    assert fast["interp_ratio"].tolist() == [0.75, 0.5, 0.25, 0.5]
    assert set(InterTrainCollator()(keyed([2, 5]))) == {"pixel_values", "labels", "sample_index"}


def test_an_item_of_a_batch_fetched_as_arrays_is_the_item_dict():
    items = keyed([(3, 9, 0.25), 7])

    assert set(items[0]) == {
        "pixel_values", "labels", "sample_index", "pixel_values_b", "labels_b", "sample_index_b", "interp_ratio"
    }
    assert (items[0]["sample_index_b"], items[0]["labels_b"], items[0]["interp_ratio"]) == (9, 0, 0.25)
    assert set(items[1]) == {"pixel_values", "labels", "sample_index"} and len(items) == 2
    with pytest.raises(TypeError, match="indexed by an item's position"):
        items[0:1]


def test_parse_item_keys_gives_the_rows_and_ratios_of_every_key():
    rows, ratio = parse_item_keys([3, (3, 4, 0.5), [0, 1, 0.25, 2, 3]], 5)

    assert rows.tolist() == [[3, -1, -1, -1], [3, 4, -1, -1], [0, 1, 2, 3]] and rows.dtype == np.int64
    assert ratio.tolist() == [1.0, 0.5, 0.25]
    assert parse_item_keys([], 5)[0].shape == (0, 4)
    with pytest.raises(IndexError, match="out of range"):
        parse_item_keys([1, (2, 5, 0.5)], 5)


# ----------------------------------------------------------------------------------------------
# The item-key protocol and per-batch seeds
# ----------------------------------------------------------------------------------------------


class CountingRows(InterTrainItemDataset):
    """Rows of constant pixels; records each `fetch_row` call, in order."""

    def __init__(self, size: int):
        self.size, self.calls = size, []

    def __len__(self) -> int:
        return self.size

    def prefetch_rows(self, rows):
        return {row: float(row) for row in rows}

    def fetch_row(self, row, prefetched):
        self.calls.append(row)
        return torch.full((3, 2, 2), prefetched[row]), row % 2


def test_a_subclass_fetching_rows_serves_every_key_shape_in_constituent_order():
    dataset = CountingRows(6)

    single_item, pair_item, quad_item = dataset.__getitems__([5, (1, 2, 0.4), (3, 4, 0.25, 0, 2)])

    assert dataset.calls == [5, 1, 2, 3, 4, 0, 2]
    assert set(single_item) == {"pixel_values", "labels", "sample_index"}
    assert (pair_item["sample_index_b"], pair_item["labels_b"], pair_item["interp_ratio"]) == (2, 0, 0.4)
    assert [quad_item[f"sample_index_{s}"] for s in EXTRA_CONSTITUENTS] == [4, 0, 2]
    assert torch.equal(quad_item["pixel_values_d"], torch.full((3, 2, 2), 2.0))
    assert as_item_dataset(dataset) is dataset


def test_parse_item_key_gives_five_fields_for_every_key_shape():
    assert parse_item_key(3, 5) == (3, -1, 1.0, -1, -1)
    assert parse_item_key((3, 4, 0.5), 5) == (3, 4, 0.5, -1, -1)
    assert parse_item_key([0, 1, 0.25, 2, 3], 5) == (0, 1, 0.25, 2, 3)
    with pytest.raises(TypeError, match="dataset keys must be"):
        parse_item_key(True, 5)


def test_batch_seeds_come_from_seed_epoch_and_each_keys_rows_not_its_ratio():
    keys = [5, (1, 7, 0.3), (2, -1, 1.0), (9, 11, 0.25, 13, 17)]
    expected = np.random.SeedSequence([0, 1, 5, 1, 8, 2, 0, 9, 12, 14, 18]).generate_state(3).tolist()

    assert batch_seeds(0, 1, keys) == expected
    assert batch_seeds(0, 1, [5, (1, 7, 0.9), (2, -1, 0.5), (9, 11, 0.75, 13, 17)]) == expected
    assert batch_seeds(0, 2, keys) != expected and batch_seeds(1, 1, keys) != expected
    large = np.random.SeedSequence([2**40, 1, 5, 1, 8, 2, 0, 9, 12, 14, 18]).generate_state(3).tolist()
    assert batch_seeds(2**40, 1, keys) == large  # a seed beyond 32 bits still seeds as the list does
