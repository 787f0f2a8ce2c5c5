"""Decode stored images and bring every image mode to 8-bit RGB.

A `datasets.Image(decode=False)` value (`{"bytes", "path"}`) is decoded here with PIL, fully, so a corrupt or
truncated file is reported as a `DataError` naming its split and row, at load time (`verify_split_images`) or, when
verification was skipped, when the row is first fetched.
"""

import io
import logging
import time
from typing import Any

import datasets
import numpy as np
from PIL import Image as PILImage

from .errors import DataError, first_line

logger = logging.getLogger(__name__)

ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
"""Colour that transparent pixels are composited onto: white, as images with transparency are
shown on a page. Dropping alpha instead would expose whatever colour the invisible pixels hold."""


def decode_image(value: dict[str, Any] | None, split_name: str, row: int) -> PILImage.Image:
    """Fully decode one undecoded `datasets.Image` value (`{"bytes", "path"}`) with PIL.

    `load()` forces the whole decode, so truncated files fail here and not later in a transform.
    """
    try:
        if value is None:
            raise ValueError("the row holds no image")
        if value.get("bytes") is not None:
            image = PILImage.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = PILImage.open(value["path"])
        else:
            raise ValueError("the row holds neither image bytes nor a path")
        image.load()
    except Exception as error:  # any decoder failure is a bad row
        raise DataError(
            f"cannot decode the image of split '{split_name}' row {row} ({type(error).__name__}: "
            f"{first_line(error)}); fix or remove that row"
        ) from error
    return image


def verify_split_images(split: datasets.Dataset, image_column: str, split_name: str, batch_size: int = 1024) -> None:
    """Decode every image of a split, raising `DataError` at the first bad row."""
    start = time.perf_counter()
    images = split.select_columns([image_column]).with_format("arrow")
    row = 0
    for batch in images.iter(batch_size=batch_size):
        for value in batch.column(image_column).to_pylist():
            decode_image(value, split_name, row)
            row += 1
    logger.info("Verified %d images of split '%s' in %.1f s.", row, split_name, time.perf_counter() - start)


def _integer_image(image: PILImage.Image) -> PILImage.Image:
    """16/32-bit integer or float greyscale ("I;16*", "I", "F") to 8-bit "L".

    16-bit data is scaled by 255/65535. "I" images holding values <= 255 are taken as 8-bit,
    larger ones as 16-bit; "F" images with values in [0, 1] are scaled by 255, others clipped.
    """
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        scaled = array.astype(np.float32) * (255.0 / 65535.0)
    elif image.mode == "F":
        scaled = array * 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else array
    else:
        scaled = array.astype(np.float32) * (255.0 / 65535.0) if array.size and int(array.max()) > 255 else array
    return PILImage.fromarray(np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8), mode="L")


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Any PIL image as 3-channel 8-bit RGB.

    Transparency (RGBA, LA, PA, palette images with a transparent colour) is composited onto
    `ALPHA_BACKGROUND` (white); high bit-depth greyscale is rescaled to 8 bits rather than
    clipped (a plain `convert("RGB")` would turn most 16-bit pixels white); CMYK, greyscale,
    palette and the rest use PIL's conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode.startswith("I") or image.mode == "F":
        image = _integer_image(image)
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return PILImage.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
