"""Decode every image of a split once into a memory-mapped uint8 array: the input of the device pipeline.

Each image goes through the workers path's decoder (`images.decode_image`, then `to_rgb`) and is stored at its own
size in an (N, H, W, 3) uint8 `.npy` file beside the split's `datasets` cache (docs/method.md, "Choices where the
paper is silent"). A split whose images are not all of one size cannot be stored that way: the build stops at the
first image of another size and records that, and the split is served from its encoded bytes instead
(`device.py`).

The file is named by a hash of the split's fingerprint, the image column and the first image's size, so a changed
dataset gets a file of its own; its JSON marker also holds a digest of sampled rows' stored bytes, so a dataset
that changed under the same fingerprint is caught too. Written once: the local main process of each node builds
it while the node's other processes wait (`PartialState.local_main_process_first`), into a temporary file that is
`os.replace`d into place, then writes the marker, last. A file without a valid marker, or whose size, shape or
digest differ from what the marker and the split say, is rebuilt, never read. An undecodable image fails the
build with the `DataError` of `decode_image`, naming its split and row, before training starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .images import decode_image, to_rgb
from .loading import undecoded_images

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2
"""Version of the file layout and of the decoding recipe; part of every key, so a new recipe never reads old files."""

CACHE_PREFIX = "hf_intertrain_pixels"
SAMPLED_ROWS = 16
"""Rows whose stored bytes (or file path and stat) the marker's content digest covers, evenly spaced."""


def first_image_size(split: datasets.Dataset, image_column: str, split_name: str = "train") -> tuple[int, int]:
    """(height, width) of the split's first image, decoded as the workers path decodes it."""
    value = split.select_columns([image_column])[0][image_column]
    width, height = decode_image(value, split_name, 0).size
    return height, width


def content_digest(split: datasets.Dataset, image_column: str) -> str:
    """Hash of the row count and of `SAMPLED_ROWS` evenly spaced rows' stored bytes (a path: its name and stat)."""
    rows = sorted({int(r) for r in np.linspace(0, len(split) - 1, min(SAMPLED_ROWS, len(split)))})
    digest = hashlib.sha256(str(len(split)).encode())
    for value in split.select_columns([image_column]).select(rows)[image_column]:
        if isinstance(value, dict) and value.get("bytes") is not None:
            digest.update(value["bytes"])
        elif isinstance(value, dict) and value.get("path"):
            stat = os.stat(value["path"]) if os.path.exists(value["path"]) else None
            digest.update(f"{value['path']}\0{stat and stat.st_size}\0{stat and stat.st_mtime_ns}".encode())
        else:
            digest.update(b"\0")
    return digest.hexdigest()[:32]


def cache_key(split: datasets.Dataset, image_column: str, size: tuple[int, int]) -> str:
    """Hash of what names the cache: the split's fingerprint and rows, the column and the first image's size."""
    facts = {
        "format": CACHE_FORMAT,
        "fingerprint": split._fingerprint,
        "rows": len(split),
        "image_column": image_column,
        "size": list(size),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def cache_folder(split: datasets.Dataset) -> Path:
    """The folder of the split's first Arrow cache file; for an in-memory split, one under the `datasets` cache."""
    files = [entry.get("filename") for entry in split.cache_files]
    if files and files[0]:
        return Path(files[0]).parent
    return Path(datasets.config.HF_DATASETS_CACHE) / CACHE_PREFIX


def cache_paths(split: datasets.Dataset, image_column: str, size: tuple[int, int]) -> tuple[Path, Path]:
    """(pixels `.npy`, JSON marker) of the split's decoded cache."""
    key = cache_key(split, image_column, size)
    folder = cache_folder(split)
    return folder / f"{CACHE_PREFIX}-{key}.npy", folder / f"{CACHE_PREFIX}-{key}.json"


def read_marker(marker_path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The marker if it names this key and content; None when missing, unreadable or another dataset's."""
    try:
        marker = json.loads(marker_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or any(marker.get(name) != value for name, value in expected.items()):
        return None
    return marker


def read_cache(data_path: Path, marker: dict[str, Any]) -> np.ndarray | None:
    """The cached pixels, memory-mapped read-only, or None when the file is not what its marker says."""
    shape = marker.get("shape")
    try:
        if not isinstance(shape, list) or data_path.stat().st_size != marker.get("bytes"):
            return None
        pixels = np.load(data_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if list(pixels.shape) != shape or pixels.dtype != np.uint8:
        return None
    return pixels


def build_cache(split: datasets.Dataset, image_column: str, split_name: str, size: tuple[int, int]) -> None:
    """Decode the split into a temporary file, move it into place, then write the marker (also when the images turn
    out to be of several sizes: the marker then says so and no pixels are kept)."""
    data_path, marker_path = cache_paths(split, image_column, size)
    marker: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "key": cache_key(split, image_column, size),
        "content": content_digest(split, image_column),
    }
    data_path.parent.mkdir(parents=True, exist_ok=True)
    marker_path.unlink(missing_ok=True)
    suffix = f".{socket.gethostname()}-{os.getpid()}.tmp"
    temporary = data_path.with_name(data_path.name + suffix)
    shape = (len(split), *size, 3)
    started = time.perf_counter()
    try:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        other = _decode_into(out, split, image_column, split_name)
        out.flush()
        del out
        if other is None:
            os.replace(temporary, data_path)
            marker.update(shape=list(shape), dtype="uint8", bytes=data_path.stat().st_size)
        else:
            marker["mixed_sizes"] = other
    finally:
        temporary.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    marker.update(split=split_name, image_column=image_column, seconds=round(seconds, 3))
    marker_temporary = marker_path.with_name(marker_path.name + suffix)
    marker_temporary.write_text(json.dumps(marker))
    os.replace(marker_temporary, marker_path)
    if "mixed_sizes" in marker:
        logger.info(
            "Split '%s' holds images of several sizes (row %d is %s, row 0 %s): not cached.",
            split_name, marker["mixed_sizes"]["row"], marker["mixed_sizes"]["size"], list(size),
        )
    else:
        logger.info("Decoded %d images of split '%s' into %s in %.1f s.", len(split), split_name, data_path, seconds)


def _decode_into(out: np.ndarray, split: datasets.Dataset, image_column: str, split_name: str) -> dict | None:
    """Decode every image of `split` into the rows of `out`, in row order; the first row of another size as
    {"row", "size"}, or None when all fit."""
    images = undecoded_images(split.select_columns([image_column]), image_column, split_name).with_format("arrow")
    row = 0
    for batch in images.iter(batch_size=1024):
        for value in batch.column(image_column).to_pylist():
            pixels = np.asarray(to_rgb(decode_image(value, split_name, row)))
            if pixels.shape != out.shape[1:]:
                return {"row": row, "size": list(pixels.shape[:2])}
            out[row] = pixels
            row += 1
    return None


def load_pixel_cache(split: datasets.Dataset, image_column: str, split_name: str = "train") -> np.ndarray | None:
    """The split's decoded images, uint8 [N, H, W, 3] memory-mapped read-only, built first when there is no valid
    cache (by the local main process of each node; the node's other processes wait, then read it); None when the
    images are not all of one size.

    Raises:
        DataError: When an image cannot be decoded (naming its split and row); nothing is left behind.
    """
    from accelerate import PartialState

    split = undecoded_images(split, image_column, split_name)
    size = first_image_size(split, image_column, split_name)
    data_path, marker_path = cache_paths(split, image_column, size)
    expected = {
        "format": CACHE_FORMAT,
        "key": cache_key(split, image_column, size),
        "content": content_digest(split, image_column),
    }
    with PartialState().local_main_process_first():
        for attempt in range(2):
            marker = read_marker(marker_path, expected)
            if marker is not None and "mixed_sizes" in marker:
                return None
            pixels = read_cache(data_path, marker) if marker is not None else None
            if pixels is not None:
                return pixels
            if attempt == 0:
                build_cache(split, image_column, split_name, size)
    raise OSError(f"the decoded cache {data_path} was written but cannot be read back; check the disk")
