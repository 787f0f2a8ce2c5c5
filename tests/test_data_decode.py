"""Tests of hf_intertrain/data/decode.py: encoded images decoded in batches as the workers path decodes them."""

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from conftest import encode, image_value, noise_image
from hf_intertrain.data import DataError, decode_image, to_rgb
from hf_intertrain.data.decode import decode_batch, stored_bytes


def odd_images() -> dict[str, tuple[PILImage.Image, str, dict]]:
    """An image of every mode `to_rgb` handles, with the format it is stored in."""
    rng = np.random.default_rng(0)
    rgb = noise_image(1, (30, 20))
    palette = rgb.convert("P")
    return {
        "png": (rgb, "PNG", {}),
        "jpeg": (rgb, "JPEG", {}),
        "grey_jpeg": (rgb.convert("L"), "JPEG", {}),
        "rgba": (PILImage.fromarray(rng.integers(0, 256, (12, 9, 4), dtype=np.uint8), "RGBA"), "PNG", {}),
        "grey_alpha": (PILImage.fromarray(rng.integers(0, 256, (12, 9, 2), dtype=np.uint8), "LA"), "PNG", {}),
        "sixteen_bit": (PILImage.fromarray(rng.integers(0, 65536, (7, 5), dtype=np.uint16)), "PNG", {}),
        "palette_transparency": (palette, "PNG", {"transparency": int(np.asarray(palette)[0, 0])}),
        "webp": (rgb, "WEBP", {"lossless": True}),
        "bmp": (rgb, "BMP", {}),  # torchvision cannot read it: PIL's fallback
    }


def stored(image: PILImage.Image, fmt: str, options: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_every_format_and_mode_decodes_as_the_workers_path_decodes_it():
    cases = odd_images()
    files = [stored(*case) for case in cases.values()]
    values = [image_value(raw) for raw in files]

    decoded = decode_batch(files, values, list(range(len(files))), "train", "cpu")

    for (name, raw), image in zip(zip(cases, files), decoded):
        expected = np.asarray(to_rgb(decode_image(image_value(raw), "train", 0)))
        assert image.dtype == torch.uint8 and image.shape == (3, *expected.shape[:2]), name
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected, err_msg=name)


def test_an_undecodable_file_raises_the_workers_error_naming_its_row():
    files = [encode(noise_image(0)), b"\xff\xd8\xff not a jpeg", b"neither"]
    values = [image_value(raw) for raw in files]

    with pytest.raises(DataError, match=r"^cannot decode the image of split 'test' row 7 \(.*\); fix or remove that row$"):
        decode_batch(files[:2], values[:2], [3, 7], "test", "cpu")
    with pytest.raises(DataError, match="split 'test' row 9"):
        decode_batch(files[2:], values[2:], [9], "test", "cpu")


def test_stored_bytes_reads_an_image_given_by_path(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(encode(noise_image(2)))

    assert stored_bytes({"bytes": None, "path": str(path)}) == path.read_bytes()
    assert stored_bytes({"bytes": b"abc", "path": str(path)}) == b"abc"
    assert stored_bytes({"bytes": None, "path": str(tmp_path / "missing.png")}) == b""
    assert stored_bytes(None) == b""
    with pytest.raises(DataError, match="row 4"):  # the missing file is reported as the workers path reports it
        decode_batch([b""], [{"bytes": None, "path": str(tmp_path / "missing.png")}], [4], "train", "cpu")
