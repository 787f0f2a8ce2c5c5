"""The device data pipeline (`--data_pipeline device`): the loader carries row keys, the training device makes pixels.

InterTrain removes forward and backward work, but a pair still costs two decoded, augmented images (docs/method.md,
"Operators"); on a GPU a CIFAR-sized run is then bound by per-image decoding and augmentation in the loader
workers. Here (docs/method.md, "Choices where the paper is silent"):

- `DeviceImageDataset` serves the InterTrain item keys like every `InterTrainItemDataset`, but each constituent's
  "pixel_values" is a `PixelRequest`: its row, its augmentation draws (`DeviceTransform.draw`, made under the
  batch's seeds by `BatchSeededDataset`, so resumed and multi-process runs draw what the uninterrupted run draws)
  and, for a split that is not cached, its encoded file. A cached split fetches a whole batch at once, as arrays
  (`PixelItems`); `InterTrainCollator` makes each constituent slot's requests one `PixelRequests`.
- `materialize_pixels`, called by the trainer on every batch (training and evaluation), gathers the batch's images
  by row (every constituent of every pair and 4-way composite at once) from the split's decoded cache
  (`pixel_cache.py`), held whole on a CUDA device, or decodes their files there (`decode.py`), then augments and
  normalises them in batches (`device_transforms.py`).
- `choose_data_pipeline` resolves `auto`: the device pipeline when the decoded splits fit `cache_budget`, else the
  workers path. `device` asked for explicitly serves a split that does not fit (or whose images differ in size)
  from its encoded files.
"""

from __future__ import annotations

import logging
import os
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from ..constants import DATA_PIPELINES
from .decode import decode_batch, stored_bytes
from .device_transforms import DeviceTransform
from .items import EXTRA_CONSTITUENTS, InterTrainItemDataset, KeyedItems, parse_item_keys
from .loading import ImageClassificationData, read_labels, undecoded_images
from .pixel_cache import first_image_size, load_pixel_cache

logger = logging.getLogger(__name__)

HOST_MEMORY_SHARE = 0.5
DEVICE_MEMORY_SHARE = 0.25
"""`cache_budget`: the decoded splits may take half of the available host memory and, on a CUDA device, where they
are held whole, a quarter of its free memory (the model and its activations need the rest)."""

UPLOAD_ROWS = 4096
"""Rows copied to a CUDA device at a time when the cache is moved there (bounds the host memory it takes)."""

PIXEL_KEYS: tuple[str, ...] = ("pixel_values", *(f"pixel_values_{suffix}" for suffix in EXTRA_CONSTITUENTS))

_DATASETS: weakref.WeakValueDictionary[str, DeviceImageDataset] = weakref.WeakValueDictionary()
"""The device datasets of this process by key: the batches' `PixelRequest`s name theirs."""


# ----------------------------------------------------------------------------------------------------------------
# Choosing the pipeline


def free_host_memory() -> int:
    """Bytes of host memory available (psutil's `available`; free pages without psutil)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def free_device_memory(device: torch.device | str | None) -> int | None:
    """Free bytes of a CUDA device; None for any other device."""
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def decoded_bytes(data: ImageClassificationData) -> int:
    """Bytes of the decoded train and eval splits at their first images' sizes: rows x height x width x 3."""
    total = 0
    for split, name in ((data.train, data.train_split), (data.eval, data.eval_split)):
        if split is not None:
            height, width = first_image_size(split, data.image_column, name or "eval")
            total += len(split) * height * width * 3
    return total


def cache_budget(device: torch.device | str | None = None) -> int:
    """Bytes the decoded caches may take: `HOST_MEMORY_SHARE` of the available host memory and, on a CUDA device,
    at most `DEVICE_MEMORY_SHARE` of its free memory."""
    budget = HOST_MEMORY_SHARE * free_host_memory()
    free = free_device_memory(device)
    if free is not None:
        budget = min(budget, DEVICE_MEMORY_SHARE * free)
    return int(budget)


def cache_fits(data: ImageClassificationData, device: torch.device | str | None = None) -> bool:
    """Whether the decoded splits fit `cache_budget` (an info log says why not)."""
    needed, budget = decoded_bytes(data), cache_budget(device)
    if needed > budget:
        logger.info(
            "The decoded splits (%.1f MiB) exceed the cache budget (%.1f MiB: half the available host memory, a "
            "quarter of the free device memory): not cached.", needed / 2**20, budget / 2**20,
        )
    return needed <= budget


def on_main_process(decide: Callable[[], Any]) -> Any:
    """`decide()` on the main process, broadcast to the others: every process takes the same path."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    value = [decide() if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(value, from_process=0)
    return value[0]


def choose_data_pipeline(
    requested: str, data: ImageClassificationData, device: torch.device | str | None = None
) -> str:
    """`workers` or `device` for `--data_pipeline` (`auto`, `workers` or `device`), the same on every process.

    `auto` picks `device` when the decoded splits fit `cache_budget` and the train split's images are all of one
    size (its cache is then built here, if it is not already); else `workers`.
    """
    if requested not in DATA_PIPELINES:
        raise ValueError(f"data_pipeline={requested!r} is not supported: use one of {', '.join(DATA_PIPELINES)}")
    if requested != "auto":
        return requested
    if on_main_process(lambda: cache_fits(data, device)):
        if load_pixel_cache(data.train, data.image_column, data.train_split) is not None:
            return "device"
    logger.info("data_pipeline auto: the decoded training split cannot be cached; using workers.")
    return "workers"


# ----------------------------------------------------------------------------------------------------------------
# The dataset


DRAW_ROWS = 256
"""Constituents whose augmentation draws `DeviceImageDataset` makes in one numpy call."""


class PixelRequest:
    """One constituent as the loader carries it: its dataset's key, its row, its augmentation draws (None in
    evaluation) and, when its split is not cached, its stored value and encoded file. `InterTrainCollator` makes a
    batch's requests one `PixelRequests` (`collate`)."""

    __slots__ = ("source", "row", "draws", "value", "encoded")

    def __init__(
        self, source: str, row: int, draws: np.ndarray | None, value: dict | None = None, encoded: bytes = b""
    ):
        self.source, self.row, self.draws, self.value, self.encoded = source, row, draws, value, encoded

    def __repr__(self) -> str:
        return f"PixelRequest(row={self.row}, draws={None if self.draws is None else len(self.draws)})"

    @classmethod
    def collate(cls, requests: Sequence[PixelRequest]) -> PixelRequests:
        return PixelRequests.of(requests)


class PixelRequests:
    """A batch's `PixelRequest`s in order, as arrays: one dataset key, the rows int64 [n], the draws float64
    [n, draws_per_image] (None in evaluation) and, uncached, the stored values and files.

    Arrays pickle in one piece, so loader workers hand a batch to the training process at little cost; iterating
    gives the `PixelRequest`s back.
    """

    __slots__ = ("source", "rows", "draws", "values", "encoded")

    def __init__(
        self,
        source: str,
        rows: np.ndarray,
        draws: np.ndarray | None,
        values: list[dict] | None = None,
        encoded: list[bytes] | None = None,
    ):
        self.source, self.rows, self.draws, self.values, self.encoded = source, rows, draws, values, encoded

    @classmethod
    def of(cls, requests: Sequence[PixelRequest | PixelRequests]) -> PixelRequests:
        """The requests (single ones or batches) in order, as one batch.

        Raises:
            ValueError: When they belong to different datasets, or only some carry draws.
        """
        if not requests:
            raise ValueError("a batch needs at least one pixel request")
        if all(type(request) is PixelRequest for request in requests):
            return cls._of_singles(requests)
        parts = [part if isinstance(part, PixelRequests) else cls._of_singles([part]) for part in requests]
        _check_one_source({part.source for part in parts})
        with_draws = _check_draws([part.draws is not None for part in parts])
        if len(parts) == 1:
            return parts[0]
        cached = all(part.values is None for part in parts)
        return cls(
            parts[0].source,
            np.concatenate([part.rows for part in parts]),
            np.concatenate([part.draws for part in parts]) if with_draws else None,
            None if cached else [value for part in parts for value in part.values],
            None if cached else [data for part in parts for data in part.encoded],
        )

    @classmethod
    def _of_singles(cls, requests: Sequence[PixelRequest]) -> PixelRequests:
        _check_one_source({request.source for request in requests})
        draws = [request.draws for request in requests]
        with_draws = _check_draws([value is not None for value in draws])
        cached = all(request.value is None for request in requests)
        return cls(
            requests[0].source,
            np.fromiter((request.row for request in requests), dtype=np.int64, count=len(requests)),
            np.stack(draws) if with_draws else None,
            None if cached else [request.value for request in requests],
            None if cached else [request.encoded for request in requests],
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        for i, row in enumerate(self.rows.tolist()):
            yield PixelRequest(
                self.source, row, None if self.draws is None else self.draws[i],
                None if self.values is None else self.values[i], b"" if self.encoded is None else self.encoded[i],
            )

    def __repr__(self) -> str:
        return f"PixelRequests({len(self)} rows, draws={self.draws is not None})"


class PixelItems(KeyedItems):
    """A cached split's batch as `DeviceImageDataset.__getitems__` returns it: the keys' rows, ratios and labels, and
    each constituent's draws float64 [n, 4, draws_per_image] (zero where a key has no such constituent; None in
    evaluation). `InterTrainCollator` makes one `PixelRequests` per constituent slot of it, without a
    `PixelRequest` per image."""

    def __init__(
        self, source: str, rows: np.ndarray, ratio: np.ndarray, labels: np.ndarray, draws: np.ndarray | None
    ):
        super().__init__(rows, ratio, labels)
        self.source, self.draws = source, draws

    def pixel(self, i: int, slot: int) -> PixelRequest:
        return PixelRequest(self.source, int(self.rows[i, slot]), None if self.draws is None else self.draws[i, slot])

    def pixels(self, index: np.ndarray, slot: int) -> PixelRequests:
        return PixelRequests(
            self.source, self.rows[index, slot], None if self.draws is None else self.draws[index, slot]
        )


def _check_one_source(sources: set[str]) -> None:
    if len(sources) != 1:
        raise ValueError(
            f"a batch's pixel requests come from {len(sources)} datasets; one loader must serve one DeviceImageDataset"
        )


def _check_draws(carried: list[bool]) -> bool:
    """Whether every request carries draws (training); raises when only some do."""
    count = sum(carried)
    if count not in (0, len(carried)):
        raise ValueError("a batch mixes training requests (with draws) and evaluation ones; fetch it from one split")
    return count > 0


class DeviceImageDataset(InterTrainItemDataset):
    """One split served with InterTrain item keys as `PixelRequest`s; `pixels` makes the batch on the device.

    Args:
        split: The `datasets` split.
        image_column, label_column: Its columns.
        transform: The train or eval transform (`DeviceTransform`).
        split_name: For messages.
        pixels: The split's decoded cache (`pixel_cache.load_pixel_cache`); None serves the encoded files.

    Pickled (spawned loader workers), it carries the cache's path, not its pixels.
    """

    def __init__(
        self,
        split: datasets.Dataset,
        image_column: str,
        label_column: str,
        transform: DeviceTransform,
        split_name: str = "train",
        pixels: np.ndarray | None = None,
    ):
        self.labels = read_labels(split, label_column, split_name)
        self.transform = transform
        self.image_column = image_column
        self.split_name = split_name
        self.cache_path = getattr(pixels, "filename", None) if pixels is not None else None
        if pixels is not None and (self.cache_path is None or len(pixels) != len(self.labels)):
            raise ValueError(
                f"pixels must be the memory-mapped cache of split '{split_name}' ({len(self.labels)} rows); use "
                "pixel_cache.load_pixel_cache"
            )
        self.images = None if pixels is not None else undecoded_images(
            split.select_columns([image_column]), image_column, split_name
        )
        self._pixels = None if pixels is None else pixels.view(np.ndarray)  # indexing skips memmap bookkeeping
        self._stores: dict[str, torch.Tensor] = {}
        self._draws: np.ndarray | None = None
        self._drawn = 0
        self._generator: np.random.RandomState | None = None
        self._batch_generator: np.random.RandomState | None = None
        self.key = uuid.uuid4().hex
        _DATASETS[self.key] = self

    @property
    def cached(self) -> bool:
        return self.cache_path is not None

    @property
    def image_size(self) -> int:
        return self.transform.image_size

    @property
    def cache(self) -> np.ndarray:
        """The decoded split, uint8 [N, H, W, 3], memory-mapped read-only (opened on first use in each process)."""
        if self._pixels is None:
            self._pixels = np.load(self.cache_path, mmap_mode="r", allow_pickle=False).view(np.ndarray)
        return self._pixels

    def __getstate__(self) -> dict[str, Any]:
        per_process = ("_generator", "_batch_generator", "_draws", "_pixels")
        return {**self.__dict__, **dict.fromkeys(per_process), "_stores": {}, "_drawn": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _DATASETS.setdefault(self.key, self)

    def __len__(self) -> int:
        return len(self.labels)

    def getitems_seeded(self, keys: Sequence[Any], seeds: Sequence[int]) -> PixelItems | list[dict[str, Any]]:
        """`__getitems__` with the draws from a `np.random.RandomState` seeded with `seeds[1]`: the values numpy's
        global generator gives after `np.random.seed(seeds[1])`, as `preserved_host_rngs` seeds it, without saving
        and restoring the host generators (this dataset draws from numpy only). One generator is re-seeded per
        batch: making a new one costs more than the rest of the fetch."""
        if self._batch_generator is None:
            self._batch_generator = np.random.RandomState()
        self._batch_generator.seed(int(seeds[1]))
        self._generator = self._batch_generator
        try:
            return self.__getitems__(keys)
        finally:
            self._generator = None

    def __getitems__(self, keys: Sequence[Any]) -> PixelItems | list[dict[str, Any]]:
        """A cached split's batch as one `PixelItems`: the keys parsed and every constituent's draws made in one
        call, in the order the per-row fetch draws them (a, b, c, d of each key in turn), so the values are those of
        `InterTrainItemDataset.__getitems__`. An uncached split is served row by row (its files are read anyway)."""
        if not self.cached:
            return super().__getitems__(keys)
        rows, ratio = parse_item_keys(keys, len(self), self.split_name)
        present = rows >= 0
        labels = np.where(present, self.labels[np.where(present, rows, 0)], -1)
        flat = self.transform.draw(int(present.sum()), self._generator)
        draws = None
        if flat is not None:
            draws = np.zeros(rows.shape + flat.shape[1:])
            draws[present] = flat
        return PixelItems(self.key, rows, ratio, labels, draws)

    def prefetch_rows(self, rows: list[int]) -> dict[int, dict]:
        self._draws, self._drawn = None, 0  # a batch starts: its draws start from the batch's seed
        return dict(zip(rows, self.images[rows][self.image_column]))

    def fetch_row(self, row: int, prefetched: dict[int, dict]) -> tuple[PixelRequest, int]:
        value = prefetched[row]
        return PixelRequest(self.key, row, self._next_draws(), value, stored_bytes(value)), int(self.labels[row])

    def _next_draws(self) -> np.ndarray | None:
        """The next constituent's draws, from blocks of `DRAW_ROWS` constituents' (`DeviceTransform.draw`)."""
        if self._draws is None or self._drawn == len(self._draws):
            self._draws, self._drawn = self.transform.draw(DRAW_ROWS, self._generator), 0
            if self._draws is None:
                return None
        self._drawn += 1
        return self._draws[self._drawn - 1]

    def pixels(
        self, requests: PixelRequests | Sequence[PixelRequest], device: torch.device | str, channels_last: bool = False
    ) -> torch.Tensor:
        """The requested constituents' normalised pixels, float32 [n, 3, size, size] on `device`, augmented with
        their draws."""
        device = torch.device(device)
        requests = _as_batch(requests)
        if self.cached:
            images = self._gather(requests.rows, device).permute(0, 3, 1, 2)
        else:
            images = decode_batch(requests.encoded, requests.values, requests.rows.tolist(), self.split_name, device)
        draws = None
        if self.transform.is_training:
            if requests.draws is None:
                raise ValueError(
                    f"training pixels of split '{self.split_name}' need their draws; fetch them through the "
                    "dataset's training items"
                )
            draws = torch.from_numpy(requests.draws)
        return self.transform(images, draws, channels_last)

    def _gather(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """uint8 [n, H, W, 3] of `rows` on `device`: from the copy held there (CUDA), else from the memory map."""
        if device.type != "cuda":
            return torch.from_numpy(self.cache[rows]).to(device)
        store = self._stores.get(str(device))
        if store is None:
            store = torch.empty(self.cache.shape, dtype=torch.uint8, device=device)
            for start in range(0, len(store), UPLOAD_ROWS):
                chunk = np.ascontiguousarray(self.cache[start : start + UPLOAD_ROWS])
                store[start : start + UPLOAD_ROWS].copy_(torch.from_numpy(chunk))
            self._stores[str(device)] = store
        return store[torch.from_numpy(rows).to(device)]


def build_device_dataset(
    split: datasets.Dataset,
    image_column: str,
    label_column: str,
    transform: DeviceTransform,
    split_name: str = "train",
    cache: bool = True,
) -> DeviceImageDataset:
    """A `DeviceImageDataset` of `split`: served from its decoded cache (built first when needed) when `cache` and
    its images are all of one size, else from its encoded files.

    Raises:
        DataError: For an undecodable image (building the cache) or a bad label, naming its split and row.
    """
    split = undecoded_images(split, image_column, split_name)
    pixels = load_pixel_cache(split, image_column, split_name) if cache else None
    return DeviceImageDataset(split, image_column, label_column, transform, split_name, pixels)


def build_device_datasets(
    data: ImageClassificationData,
    data_config: dict[str, Any],
    image_size: int,
    device: torch.device | str | None = None,
    cache: bool | None = None,
) -> tuple[DeviceImageDataset, DeviceImageDataset | None]:
    """The device pipeline's train and eval datasets, with the transforms `build_transforms(data_config, image_size)`
    describes; cached when `cache` (None: when they fit `cache_budget`, decided on the main process)."""
    if cache is None:
        cache = on_main_process(lambda: cache_fits(data, device))
    train = build_device_dataset(
        data.train, data.image_column, data.label_column,
        DeviceTransform.from_data_config(data_config, image_size, is_training=True), data.train_split, cache,
    )
    evaluation = None
    if data.eval is not None:
        evaluation = build_device_dataset(
            data.eval, data.image_column, data.label_column,
            DeviceTransform.from_data_config(data_config, image_size, is_training=False), data.eval_split or "eval",
            cache,
        )
    return train, evaluation


# ----------------------------------------------------------------------------------------------------------------
# The trainer's side


def dataset_pipeline(requested: str, train_dataset: Any) -> str:
    """The pipeline a trainer's train dataset uses: `device` for a `DeviceImageDataset`, else `workers`.

    Raises:
        ValueError: When `requested` (`InterTrainArguments.data_pipeline`) names the other one.
    """
    actual = "device" if isinstance(train_dataset, DeviceImageDataset) else "workers"
    if requested not in ("auto", actual):
        if requested == "device":
            raise ValueError(
                f"data_pipeline='device' but the train_dataset ({type(train_dataset).__name__}) is not a "
                "DeviceImageDataset; build it with hf_intertrain.data.build_device_dataset or pass "
                "data_pipeline='workers'"
            )
        raise ValueError(
            "data_pipeline='workers' but the train_dataset is a DeviceImageDataset; pass data_pipeline='device' or "
            "'auto', or build an ImageClassificationDataset"
        )
    return actual


def _requests(value: Any) -> bool:
    if isinstance(value, PixelRequests):
        return True
    return isinstance(value, list) and bool(value) and isinstance(value[0], PixelRequest)


def _as_batch(value: PixelRequests | list[PixelRequest]) -> PixelRequests:
    return value if isinstance(value, PixelRequests) else PixelRequests.of(value)


def materialize_pixels(
    inputs: dict[str, Any], device: torch.device | str, channels_last: bool = False
) -> dict[str, Any]:
    """A collated batch with its `PixelRequests` (or lists of `PixelRequest`) replaced by normalised pixels on
    `device`, every constituent made in one call; a batch without requests is returned as it is.

    Raises:
        KeyError: When the requests' dataset is gone (a batch outlived its dataset).
    """
    keys = [key for key in PIXEL_KEYS if _requests(inputs.get(key))]
    if not keys:
        return inputs
    requests = PixelRequests.of([_as_batch(inputs[key]) for key in keys])
    dataset = _DATASETS.get(requests.source)
    if dataset is None:
        raise KeyError(
            "the batch's pixels belong to a DeviceImageDataset this process no longer holds; keep the dataset alive "
            "while its batches are used"
        )
    pixels = dataset.pixels(requests, device, channels_last)
    out, start = dict(inputs), 0
    for key in keys:
        count = len(inputs[key])
        out[key] = pixels[start : start + count]
        start += count
    return out


def prefers_channels_last(model: torch.nn.Module) -> bool:
    """Whether the model's first 4-D weight is stored channels-last (its inputs are then made so too)."""
    for parameter in model.parameters():
        if parameter.dim() == 4:
            return parameter.is_contiguous(memory_format=torch.channels_last) and not parameter.is_contiguous()
    return False
