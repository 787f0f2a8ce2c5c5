"""The InterTrain item-key protocol, the datasets that serve it, the collator, and per-batch seeding.

The InterTrain batch sampler (docs/method.md, "Batch plan of an epoch") yields, per batch, item keys: `a` (an int
row, a single; evaluation asks for these only), `(a, b, r)` (a pair of train rows, `r` being a's share; `b == -1`
marks a single) or `(a, b, r, c, d)` (a 4-way composite, docs/method.md, "Four-way composites"). `parse_item_key`
is the one reader of these keys and `InterTrainItemDataset.__getitems__` the one place that turns them into item
dicts; a subclass only says how to fetch one row's pixels and label. Items carry every constituent separately,
each with its own augmentation: the interpolation itself (LinAvg, RandPatch, ...) happens later, on the device,
in the trainer.
"""

from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image as PILImage

from ..constants import EXTRA_CONSTITUENTS
from .images import decode_image
from .loading import read_labels, undecoded_images
from .rng import preserved_host_rngs

ItemKey = int | tuple[int, int, float] | tuple[int, int, float, int, int]
"""A sampler key: a row `a`, a pair `(a, b, r)`, or a 4-way composite `(a, b, r, c, d)`."""

_CONSTITUENT_KEYS = tuple(
    (f"pixel_values_{suffix}", f"labels_{suffix}", f"sample_index_{suffix}") for suffix in EXTRA_CONSTITUENTS
)
_SLOT_KEYS = (("pixel_values", "labels", "sample_index"), *_CONSTITUENT_KEYS)


def _is_row(value: Any) -> bool:
    return type(value) is int or (isinstance(value, Integral) and not isinstance(value, bool))


def parse_item_key(key: Any, size: int, split_name: str = "train") -> tuple[int, int, float, int, int]:
    """An int row, an `(a, b, r)` or an `(a, b, r, c, d)` sampler key as `(a, b, r, c, d)`.

    A single has `b = c = d = -1` and `r = 1.0`; a pair has `c = d = -1`; a 4-way composite has all four rows.
    """
    if type(key) is tuple and len(key) == 3 and type(key[0]) is int and type(key[1]) is int and type(key[2]) is float:
        (a, b, ratio), c, d = key, -1, -1  # the sampler's pairs, without the ABC checks
    elif _is_row(key):
        a, b, ratio, c, d = int(key), -1, 1.0, -1, -1
    elif (
        isinstance(key, (tuple, list))
        and len(key) in (3, 5)
        and all(_is_row(x) for i, x in enumerate(key) if i != 2)
        and (type(key[2]) is float or isinstance(key[2], Real))
    ):
        a, b, ratio = int(key[0]), int(key[1]), float(key[2])
        c, d = (int(key[3]), int(key[4])) if len(key) == 5 else (-1, -1)
    else:
        raise TypeError(
            f"dataset keys must be an int row, an (a, b, r) or an (a, b, r, c, d) tuple, got {key!r}; use the "
            "InterTrain batch sampler or a plain sampler"
        )
    if not (0 <= a < size and -1 <= b < size and -1 <= c < size and -1 <= d < size):
        raise IndexError(
            f"item key {key!r} is out of range for split '{split_name}' with {size} rows; rows must lie in [0, {size}) "
            "and b may be -1 for a single"
        )
    if (c >= 0) != (d >= 0) or (c >= 0 and b < 0):
        raise ValueError(
            f"item key {key!r} is neither a pair nor a 4-way composite; give all of b, c, d, or c = d = -1"
        )
    if b >= 0 and not 0.0 <= ratio <= 1.0:
        raise ValueError(f"item key {key!r} has ratio {ratio} outside [0, 1]; r is a's share of the pair")
    return a, b, ratio, c, d


def parse_item_keys(keys: Sequence[Any], size: int, split_name: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """`parse_item_key` of every key, as arrays: rows int64 [n, 4] (constituents a, b, c, d; -1 where absent) and
    ratio float64 [n]."""
    parsed = [parse_item_key(key, size, split_name) for key in keys]
    rows = np.array([(a, b, c, d) for a, b, _, c, d in parsed], dtype=np.int64).reshape(len(parsed), 4)
    ratio = np.fromiter((item[2] for item in parsed), dtype=np.float64, count=len(parsed))
    return rows, ratio


class InterTrainItemDataset(torch.utils.data.Dataset):
    """A map-style dataset served with InterTrain item keys; subclasses give `__len__` and `fetch_row`.

    Key `a` (int) -> {"pixel_values", "labels", "sample_index"} of row a.
    Key `(a, b, r)` -> the same for row a, plus, when `b >= 0`, "pixel_values_b", "labels_b",
    "sample_index_b" and "interp_ratio" = r (a's share, docs/method.md, "Operators"). Key
    `(a, b, r, c, d)` adds the same three keys with suffixes `_c` and `_d`. `fetch_row` is called
    once per constituent, in the order a, b, c, d of each key in turn, so each constituent is
    augmented on its own and a seeded batch (`BatchSeededDataset`) draws in a fixed order.
    """

    split_name: str = "train"

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, key: ItemKey) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[ItemKey]) -> list[dict[str, Any]]:
        parsed = [parse_item_key(key, len(self), self.split_name) for key in keys]
        prefetched = self.prefetch_rows(sorted({row for a, b, _, c, d in parsed for row in (a, b, c, d) if row >= 0}))
        items = []
        fetch_row = self.fetch_row
        for a, b, ratio, c, d in parsed:
            pixels, label = fetch_row(a, prefetched)
            item = {"pixel_values": pixels, "labels": label, "sample_index": a}
            if b >= 0:
                for names, row in zip(_CONSTITUENT_KEYS, (b, c, d)):
                    if row >= 0:
                        pixels, label = fetch_row(row, prefetched)
                        item[names[0]], item[names[1]], item[names[2]] = pixels, label, row
                item["interp_ratio"] = ratio
            items.append(item)
        return items

    def getitems_seeded(self, keys: Sequence[ItemKey], seeds: Sequence[int]) -> list[dict[str, Any]]:
        """`__getitems__` with Python's, numpy's and torch's CPU generators seeded by `seeds` (`batch_seeds`) and
        restored afterwards; a subclass that draws from its own generator may seed only that one."""
        with preserved_host_rngs(seeds):
            return self.__getitems__(keys)

    def prefetch_rows(self, rows: list[int]) -> Any:
        """Whatever `fetch_row` needs of a batch's distinct rows (sorted), read in one go; by default nothing."""
        return None

    def fetch_row(self, row: int, prefetched: Any) -> tuple[torch.Tensor, int]:
        """The pixels and integer label of one row; `prefetched` is what `prefetch_rows` returned for its batch."""
        raise NotImplementedError


class ImageClassificationDataset(InterTrainItemDataset):
    """One split of a `datasets.Dataset` served with InterTrain item keys: images decoded with PIL, then `transform`.

    `prefetch_rows` reads the undecoded images of all rows of a batch from Arrow in one call;
    labels are held in memory as one array.
    """

    def __init__(
        self,
        split: datasets.Dataset,
        transform: Callable[[PILImage.Image], torch.Tensor],
        image_column: str,
        label_column: str,
        split_name: str = "train",
    ):
        self.images = undecoded_images(split.select_columns([image_column]), image_column, split_name)
        self.labels = read_labels(split, label_column, split_name)
        self.transform = transform
        self.image_column = image_column
        self.split_name = split_name

    def __len__(self) -> int:
        return len(self.labels)

    def prefetch_rows(self, rows: list[int]) -> dict[int, dict[str, Any]]:
        return dict(zip(rows, self.images[rows][self.image_column]))

    def fetch_row(self, row: int, prefetched: dict[int, dict[str, Any]]) -> tuple[torch.Tensor, int]:
        return self.transform(decode_image(prefetched[row], self.split_name, row)), int(self.labels[row])


class ItemDataset(InterTrainItemDataset):
    """Any map-style dataset of {"pixel_values", "labels"} dicts, served with InterTrain item keys.

    For users who bring their own dataset to the trainer. Randomness of augmentation is the wrapped
    dataset's own (each constituent's row is fetched separately, so constituents are augmented independently).
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def fetch_row(self, row: int, prefetched: Any) -> tuple[torch.Tensor, int]:
        example = self.dataset[row]
        if not isinstance(example, dict) or "pixel_values" not in example or "labels" not in example:
            found = sorted(example) if isinstance(example, dict) else type(example).__name__
            raise ValueError(
                f"train_dataset row {row} must be a dict with 'pixel_values' and 'labels', got {found}; use "
                "ImageClassificationDataset or a dataset that returns those keys"
            )
        return torch.as_tensor(example["pixel_values"]).as_subclass(torch.Tensor), int(example["labels"])


def as_item_dataset(dataset: Any) -> InterTrainItemDataset:
    """The dataset itself if it already serves InterTrain item keys, else wrapped in `ItemDataset`."""
    if isinstance(dataset, InterTrainItemDataset):
        return dataset
    return ItemDataset(dataset)


class KeyedItems(Sequence):
    """A batch's items as arrays, for a dataset that fetches a whole batch at once (the device pipeline's): rows
    int64 [n, 4] (constituents a, b, c, d of each key, -1 where absent, as `parse_item_keys` gives them), ratio
    float64 [n] (a's share) and labels int64 [n, 4].

    Indexing gives the item dicts of `InterTrainItemDataset.__getitems__`, so any collator can take it;
    `InterTrainCollator` collates the arrays without making them. A subclass says what a constituent's pixels are:
    `pixel(i, slot)` for one, `pixels(index, slot)` for the items `index` at once.
    """

    def __init__(self, rows: np.ndarray, ratio: np.ndarray, labels: np.ndarray):
        self.rows, self.ratio, self.labels = rows, ratio, labels

    def pixel(self, i: int, slot: int) -> Any:
        raise NotImplementedError

    def pixels(self, index: np.ndarray, slot: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not isinstance(i, Integral):
            raise TypeError(f"{type(self).__name__} is indexed by an item's position, got {i!r}")
        rows, labels = self.rows[i].tolist(), self.labels[i].tolist()
        item = {"pixel_values": self.pixel(i, 0), "labels": labels[0], "sample_index": rows[0]}
        if rows[1] >= 0:
            for slot, names in enumerate(_CONSTITUENT_KEYS, start=1):
                if rows[slot] >= 0:
                    item[names[0]], item[names[1]], item[names[2]] = self.pixel(i, slot), labels[slot], rows[slot]
            item["interp_ratio"] = float(self.ratio[i])
        return item


def collate_order(pairs: np.ndarray, composites: np.ndarray) -> np.ndarray:
    """`InterTrainCollator`'s order of a batch's items (bool masks of its pairs, 4-way composites included, and of
    its 4-way composites): the composites, then the other pairs, then the singles, each in the given order."""
    return np.argsort(np.where(composites, 0, np.where(pairs, 1, 2)), kind="stable")


class InterTrainCollator:
    """Stack InterTrain items into a batch: 4-way composites first, then pairs (each in given order), then singles.

    Always: "pixel_values" [B, C, H, W], "labels" int64 [B], "sample_index" int64 [B]. When the batch holds P > 0
    pairs (4-way composites included), its rows 0..P-1 are their a-constituents and it also has "pixel_values_b"
    [P, C, H, W], "labels_b" int64 [P], "sample_index_b" int64 [P] and "interp_ratio" float32 [P]. With Q > 0 4-way
    composites (rows 0..Q-1), the `_c` and `_d` keys hold their third and fourth constituents ([Q, ...]); their
    "interp_ratio" is nominal (the shares come with the partition). A batch without pairs has only the a-keys, so the
    same collator serves evaluation; "sample_index" is left out when the items lack it, as after the Trainer's
    `remove_unused_columns` drops keys the model's `forward` does not take. Pixel tensors are stacked as they come,
    whatever their dtype; pixels whose class has a `collate` classmethod (the device pipeline's `device.PixelRequest`)
    are collated by it, in the same order; other pixels that are not tensors are kept as a list. A batch a dataset
    fetched at once (`KeyedItems`) is collated from its arrays, into the same batch its items would make.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError(
                "InterTrainCollator got an empty batch; the sampler must yield at least one item per batch"
            )
        if isinstance(features, KeyedItems):
            return _collate_keyed(features)
        has_pair = np.fromiter(("pixel_values_b" in item for item in features), dtype=bool, count=len(features))
        has_quad = np.fromiter(("pixel_values_c" in item for item in features), dtype=bool, count=len(features))
        ordered = [features[i] for i in collate_order(has_pair, has_quad).tolist()]
        pairs, quads = ordered[: int((has_pair | has_quad).sum())], ordered[: int(has_quad.sum())]
        batch = {
            "pixel_values": _stack_pixels([item["pixel_values"] for item in ordered]),
            "labels": torch.tensor([item["labels"] for item in ordered], dtype=torch.int64),
        }
        if all("sample_index" in item for item in ordered):
            batch["sample_index"] = torch.tensor([item["sample_index"] for item in ordered], dtype=torch.int64)
        if pairs:
            batch.update(_stack_constituent(pairs, "b"))
            batch["interp_ratio"] = torch.tensor([item["interp_ratio"] for item in pairs], dtype=torch.float32)
        for suffix in EXTRA_CONSTITUENTS[1:] if quads else ():
            batch.update(_stack_constituent(quads, suffix))
        return batch


def _collate_keyed(items: KeyedItems) -> dict[str, Any]:
    """`InterTrainCollator`'s batch made from `KeyedItems`' arrays."""
    order = collate_order(items.rows[:, 1] >= 0, items.rows[:, 2] >= 0)
    rows, labels = items.rows[order], items.labels[order]
    counts = (len(order), int((rows[:, 1] >= 0).sum()), int((rows[:, 2] >= 0).sum()))
    batch: dict[str, Any] = {}
    for slot, (pixel_key, label_key, index_key) in enumerate(_SLOT_KEYS):
        count = counts[min(slot, 2)]
        if count:
            batch[pixel_key] = items.pixels(order[:count], slot)
            batch[label_key] = torch.from_numpy(np.ascontiguousarray(labels[:count, slot], dtype=np.int64))
            batch[index_key] = torch.from_numpy(np.ascontiguousarray(rows[:count, slot], dtype=np.int64))
        if slot == 1 and count:
            batch["interp_ratio"] = torch.from_numpy(items.ratio[order[:count]].astype(np.float32))
    return batch


def _stack_pixels(values: list[Any]) -> Any:
    """Pixel tensors stacked along a new first dimension; values whose class has a `collate` classmethod (the device
    pipeline's `device.PixelRequest`) as it makes them; anything else as a list."""
    if isinstance(values[0], torch.Tensor):
        return torch.stack(values)
    collate = getattr(type(values[0]), "collate", None)
    return collate(values) if collate is not None else list(values)


def _stack_constituent(items: list[dict[str, Any]], suffix: str) -> dict[str, torch.Tensor]:
    """The `_<suffix>` constituent's pixels, labels and sample indices of `items`, stacked."""
    return {
        f"pixel_values_{suffix}": _stack_pixels([item[f"pixel_values_{suffix}"] for item in items]),
        f"labels_{suffix}": torch.tensor([item[f"labels_{suffix}"] for item in items], dtype=torch.int64),
        f"sample_index_{suffix}": torch.tensor([item[f"sample_index_{suffix}"] for item in items], dtype=torch.int64),
    }


def batch_seeds(seed: int, epoch: int, keys: Sequence[ItemKey]) -> list[int]:
    """The three host-RNG seeds (Python, numpy, torch) of one batch, from the seed, the epoch and the batch's keys.

    Each key contributes its rows (`b`, `c`, `d` shifted by one so that -1 counts), not its ratio; an int key
    contributes its row alone.
    """
    entropy = [seed, epoch]
    for key in keys:
        if isinstance(key, (tuple, list)):
            entropy += [int(key[0]), int(key[1]) + 1] + [int(x) + 1 for x in key[3:]]
        else:
            entropy.append(int(key))
    if 0 <= min(entropy) and max(entropy) < 2**32:
        entropy = np.asarray(entropy, dtype=np.uint32)  # the same words SeedSequence makes of the list, made at once
    return [int(value) for value in np.random.SeedSequence(entropy).generate_state(3)]


class BatchSeededDataset(torch.utils.data.Dataset):
    """Fetches each batch with Python's, numpy's and torch's CPU RNGs seeded by (seed, epoch, the batch's items).

    Augmentation then depends on the epoch plan only, not on how many batches were fetched before or in which
    process: a run resumed mid-epoch (whose skipped batches are never fetched) augments the remaining batches as
    the uninterrupted run did, whatever `dataloader_num_workers`. The global RNG states are restored after each
    fetch (`preserved_host_rngs`; an `InterTrainItemDataset` that draws from a generator of its own, as the device
    pipeline's does, seeds only that one in `getitems_seeded`), so the training step's own randomness (dropout) is
    what transformers saves in its checkpoints. `epoch` is set by the trainer before each epoch's iterator is made
    (persistent workers keep the value of the epoch they started in; the batch's items still differ from epoch to
    epoch).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: ItemKey) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[ItemKey]) -> list[dict[str, Any]]:
        seeds = batch_seeds(self.seed, self.epoch, keys)
        if isinstance(self.dataset, InterTrainItemDataset):
            return self.dataset.getitems_seeded(keys, seeds)
        with preserved_host_rngs(seeds):
            return self.dataset.__getitems__(keys)
