"""Decode a batch of stored (encoded) images on the training device: the device pipeline's input for a split that
is not cached (docs/method.md, "Choices where the paper is silent").

JPEG files on a CUDA device are decoded together by nvjpeg (`torchvision.io.decode_jpeg(list, device="cuda")`).
Other formats, and every format without a GPU, are decoded on the CPU by `torchvision.io.decode_image` and moved.
Every image is brought to 8-bit RGB as `images.to_rgb` does (transparency composited onto white, 16-bit values
rescaled); a file torchvision cannot read (BMP, TIFF, ...) is decoded by PIL as the workers path decodes it, and
one nothing can read raises the workers path's `DataError`, naming its split and row.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image as tv_decode_image, decode_jpeg

from .images import ALPHA_BACKGROUND, decode_image, to_rgb

JPEG_MAGIC = b"\xff\xd8\xff"


@contextmanager
def _torchvision_decoders() -> Iterator[None]:
    """Silence the deprecation warning torchvision 0.29 gives on every decode (its decoders move to TorchCodec)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning
        )
        yield


def stored_bytes(value: dict[str, Any] | None) -> bytes:
    """The encoded file of an undecoded `datasets.Image` value: its bytes, else its file's; b"" when unreadable."""
    if value is None:
        return b""
    if value.get("bytes") is not None:
        return value["bytes"]
    try:
        with open(value.get("path") or "", "rb") as file:
            return file.read()
    except OSError:
        return b""


def decode_batch(
    encoded: Sequence[bytes], values: Sequence[dict | None], rows: Sequence[int], split_name: str, device: Any
) -> list[torch.Tensor]:
    """uint8 RGB images [3, H_i, W_i] on `device`, one per encoded file.

    Args:
        encoded: The files' bytes (`stored_bytes`).
        values: The rows' stored values, for PIL's fallback and the error message.
        rows: The rows, for the error message.
        split_name: The split, for the error message.
        device: Where the images are wanted.

    Raises:
        DataError: For an image nothing can decode.
    """
    with _torchvision_decoders():
        return _decode_batch(encoded, values, rows, split_name, torch.device(device))


def _decode_batch(
    encoded: Sequence[bytes], values: Sequence[dict | None], rows: Sequence[int], split_name: str, device: torch.device
) -> list[torch.Tensor]:
    data = [torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            for raw in encoded]
    out: list[torch.Tensor | None] = [None] * len(data)
    jpegs = [i for i, raw in enumerate(encoded) if raw[:3] == JPEG_MAGIC]
    if jpegs and device.type == "cuda":
        try:
            for i, image in zip(jpegs, decode_jpeg([data[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)):
                out[i] = image
        except RuntimeError:  # a bad file in the batch: each is decoded alone below, which names it
            pass
    for i, image in enumerate(out):
        if image is None:
            out[i] = decode_on_cpu(data[i], values[i], rows[i], split_name).to(device, non_blocking=True)
    return out


def decode_on_cpu(data: torch.Tensor, value: dict | None, row: int, split_name: str) -> torch.Tensor:
    """One encoded image as uint8 RGB [3, H, W] on the CPU (torchvision, else PIL)."""
    try:
        if bytes(data[:3].tolist()) == JPEG_MAGIC:
            return decode_jpeg(data, mode=ImageReadMode.RGB)
        return flatten_alpha(tv_decode_image(data, mode=ImageReadMode.RGB_ALPHA))
    except RuntimeError:
        image = to_rgb(decode_image(value, split_name, row))
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def flatten_alpha(image: torch.Tensor) -> torch.Tensor:
    """[4, H, W] RGB + alpha (uint8, or uint16 from 16-bit PNGs) -> uint8 RGB composited onto `ALPHA_BACKGROUND`."""
    pixels = image.float()
    if image.dtype != torch.uint8:
        pixels = (pixels * (255.0 / 65535.0)).round_()
    rgb, alpha = pixels[:3], pixels[3:]
    if bool((alpha == 255).all()):
        return rgb.to(torch.uint8)
    background = torch.tensor(ALPHA_BACKGROUND, dtype=torch.float32).view(3, 1, 1)
    share = alpha / 255.0
    return (rgb * share + background * (1.0 - share)).round_().clamp_(0, 255).to(torch.uint8)
