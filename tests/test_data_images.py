"""Tests of hf_intertrain/data/images.py: decoding and every image mode to 8-bit RGB."""

import io

import numpy as np
import pytest
import torch
from conftest import encode, flat_dataset, image_value, noise_image
from PIL import Image as PILImage

from hf_intertrain.data import DataError, decode_image, to_rgb


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


def test_decode_image_reads_bytes_or_a_path_and_names_the_row_of_a_bad_value(tmp_path):
    noise_image(6, (20, 24)).save(tmp_path / "six.png")

    assert decode_image(image_value(encode(noise_image(6, (20, 24)))), "train", 0).size == (20, 24)
    assert decode_image({"bytes": None, "path": str(tmp_path / "six.png")}, "train", 1).size == (20, 24)
    with pytest.raises(DataError, match=r"split 'test' row 7 .*holds no image.*fix or remove that row"):
        decode_image(None, "test", 7)
    with pytest.raises(DataError, match=r"split 'train' row 3 \(UnidentifiedImageError"):
        decode_image(image_value(b"not an image"), "train", 3)
