"""Tests of hf_intertrain/data/device_transforms.py: the workers path's transforms on batches of uint8 tensors."""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from timm.data.transforms import RandomResizedCropAndInterpolation

from conftest import FLAT_CONFIG, noise_image
from hf_intertrain.data import DeviceTransform, SmallImageTransform, build_transforms
from hf_intertrain.data.device_transforms import (
    RRC_ATTEMPTS,
    RRC_RATIO,
    RRC_SCALE,
    crop_offsets,
    normalize,
    pad_crop_flip,
    resized_crop_boxes,
)

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CONFIG = {"mean": MEAN, "std": STD, "interpolation": "bilinear", "crop_pct": 0.875}


def as_tensor(image: PILImage.Image) -> torch.Tensor:
    """uint8 [1, 3, H, W] of an RGB image."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None]


def draws(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("size, image_size", [(32, (32, 32)), (24, (24, 24)), (32, (40, 32))])
def test_pad_crop_flip_equals_the_small_image_transform_crop_for_every_offset(size, image_size):
    transform = SmallImageTransform(size, MEAN, STD, is_training=True)
    pad = transform.padding
    array = np.array(noise_image(7, image_size))
    height, width = array.shape[:2]
    offsets = [
        (top, left, flip)
        for top in range(-pad, height + pad - size + 1)
        for left in range(-pad, width + pad - size + 1)
        for flip in (False, True)
    ]
    tops, lefts, flips = (torch.tensor(column) for column in zip(*offsets))
    images = torch.from_numpy(array).permute(2, 0, 1)[None].repeat(len(offsets), 1, 1, 1)

    out = pad_crop_flip(images, size, tops, lefts, flips)

    assert out.dtype == torch.uint8 and out.shape == (len(offsets), 3, size, size)
    for i, (top, left, flip) in enumerate(offsets):
        expected = transform._padded_crop(array, top, left)
        np.testing.assert_array_equal(out[i].permute(1, 2, 0).numpy(), expected[:, ::-1] if flip else expected)


def test_crop_offsets_cover_randranges_range_and_flip_about_half_the_images():
    uniform = torch.from_numpy(np.random.default_rng(0).random((4000, 3)))
    tops, lefts, flips = crop_offsets(uniform, 32, 40, 32, 4)

    assert sorted(set(tops.tolist())) == list(range(-4, 5))  # randrange(32 + 8 - 32 + 1) - 4
    assert sorted(set(lefts.tolist())) == list(range(-4, 13))
    assert abs(flips.double().mean().item() - 0.5) < 0.03
    counts = np.bincount(tops.numpy() + 4)
    assert counts.min() > 0.8 * 4000 / 9  # uniform over the offsets
    edge = crop_offsets(draws([[0.0, 1 - 1e-12, 0.5]]), 32, 32, 32, 4)
    assert [t.item() for t in edge] == [-4, 4, False]


class PositionalRandom:
    """Python's `random` as timm's get_params calls it, reading attempt k's draws at 4k (uniforms) and 4k + 2
    (randints) as `resized_crop_boxes` does."""

    def __init__(self, values: list[float]):
        self.values, self.uniforms, self.randints = values, 0, 0

    def uniform(self, low: float, high: float) -> float:
        attempt, which = divmod(self.uniforms, 2)
        self.uniforms += 1
        self.randints = 0
        return low + (high - low) * self.values[4 * attempt + which]

    def randint(self, low: int, high: int) -> int:
        attempt = (self.uniforms - 1) // 2
        value = self.values[4 * attempt + 2 + self.randints]
        self.randints += 1
        return low + int(value * (high - low + 1))


def test_resized_crop_boxes_are_timms_get_params_for_the_same_draws(monkeypatch):
    import timm.data.transforms as timm_transforms

    rng = np.random.default_rng(1)
    sizes = [(224, 224), (300, 200), (120, 500), (64, 90), (500, 120)]
    rows = rng.random((200, 4 * RRC_ATTEMPTS + 2))
    rows[:20, 0 : 4 * RRC_ATTEMPTS : 4] = 0.999  # large areas that rarely fit: later attempts and the fallback
    rows[:20, 1 : 4 * RRC_ATTEMPTS : 4] = 0.0
    fallbacks = 0
    for i, row in enumerate(rows):
        height, width = sizes[i % len(sizes)]
        positional = PositionalRandom(row.tolist())
        monkeypatch.setattr(timm_transforms, "random", positional)
        expected = timm_transforms.RandomResizedCropAndInterpolation.get_params(
            PILImage.new("RGB", (width, height)), RRC_SCALE, RRC_RATIO
        )
        fallbacks += positional.uniforms == 2 * RRC_ATTEMPTS and positional.randints == 0
        box = resized_crop_boxes(torch.from_numpy(row[None]), torch.tensor([float(height)]), torch.tensor([float(width)]))
        assert tuple(box[0].tolist()) == expected, (height, width, i)
    assert fallbacks > 0


def test_resized_crops_lie_inside_the_image_with_timms_area_and_ratio():
    uniform = torch.from_numpy(np.random.default_rng(2).random((3000, 4 * RRC_ATTEMPTS + 2)))
    heights, widths = torch.full((3000,), 300.0), torch.full((3000,), 400.0)
    top, left, height, width = resized_crop_boxes(uniform, heights, widths).T

    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 300).all() and (left + width <= 400).all()
    area = (height * width).double() / (300 * 400)
    assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
    ratio = (width / height).double()
    assert ratio.min() >= 3 / 4 - 0.05 and ratio.max() <= 4 / 3 + 0.05
    random.seed(0)
    image = PILImage.new("RGB", (400, 300))
    timm_boxes = [RandomResizedCropAndInterpolation.get_params(image, RRC_SCALE, RRC_RATIO) for _ in range(3000)]
    timm_area = np.array([h * w for _, _, h, w in timm_boxes]) / (300 * 400)
    timm_ratio = np.array([w / h for _, _, h, w in timm_boxes])
    assert abs(area.mean().item() - timm_area.mean()) < 0.03  # standard error about 0.007
    assert abs(ratio.mean().item() - timm_ratio.mean()) < 0.02


def test_an_unaugmented_small_training_image_is_normalised_exactly_as_the_workers_path_does():
    image = noise_image(3)
    transform = DeviceTransform.from_data_config(CONFIG, 32, is_training=True)
    centred = draws([[0.5, 0.5, 0.9]])  # offset randrange(9) = 4 - 4 = 0, no flip

    out = transform(as_tensor(image), centred)

    expected = SmallImageTransform(32, MEAN, STD, is_training=False)(image)
    assert torch.equal(out[0], expected)


def test_an_unaugmented_large_training_image_is_normalised_exactly_as_timm_does():
    image = noise_image(4, (96, 96))
    transform = DeviceTransform.from_data_config(CONFIG, 96, is_training=True)
    whole = [1 - 1e-12, 0.5, 0.0, 0.0] * RRC_ATTEMPTS + [0.9, 0.0]  # scale 1, aspect 1, no flip

    out = transform(as_tensor(image), draws([whole]))

    expected = build_transforms(CONFIG, 96, is_training=False)  # resize 109, centre crop 96: not unaugmented
    timm_normalize = expected.transforms[-1]
    assert torch.equal(out[0], timm_normalize(torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)))


@pytest.mark.parametrize(
    "size, image_size, interpolation",
    [
        (32, (32, 32), "bilinear"),
        (32, (40, 48), "bilinear"),
        (32, (20, 24), "bicubic"),
        (96, (96, 96), "bicubic"),
        (96, (120, 100), "bilinear"),
        (96, (300, 200), "bicubic"),
    ],
)
def test_eval_transform_equals_the_workers_eval_transform(size, image_size, interpolation):
    config = {**CONFIG, "interpolation": interpolation}
    image = noise_image(5, image_size)

    out = DeviceTransform.from_data_config(config, size, is_training=False)(as_tensor(image))

    expected = build_transforms(config, size, is_training=False)(image)
    assert out.shape == (1, 3, size, size)
    if image_size == (size, size) and size <= 64:
        assert torch.equal(out[0], expected)  # nothing resized: bit for bit
    else:
        level = 1 / (255 * min(STD))  # one intensity level, normalised
        difference = (out[0] - expected).abs()
        assert difference.max() <= 2 * level + 1e-5 and difference.mean() <= 0.1 * level


def test_a_batch_and_a_list_of_the_same_images_give_the_same_pixels():
    images = torch.cat([as_tensor(noise_image(i, (40, 36))) for i in range(4)])
    listed = list(images)
    for size, training in ((32, True), (32, False), (80, True), (80, False)):
        transform = DeviceTransform.from_data_config(CONFIG, size, training)
        uniform = torch.from_numpy(np.random.default_rng(size).random((4, transform.draws_per_image)))
        given = uniform if training else None
        assert torch.equal(transform(images, given), transform(listed, given))


def test_each_image_of_a_batch_gets_its_own_crop_and_flip():
    images = as_tensor(noise_image(6)).repeat(400, 1, 1, 1)
    transform = DeviceTransform.from_data_config(CONFIG, 32, is_training=True)
    uniform = torch.from_numpy(np.random.default_rng(3).random((400, 3)))

    out = transform(images, uniform)

    tops, lefts, flips = crop_offsets(uniform, 32, 32, 32, 4)
    assert torch.equal(out, normalize(pad_crop_flip(images, 32, tops, lefts, flips), MEAN, STD))
    assert len(set(zip(tops.tolist(), lefts.tolist(), flips.tolist()))) > 120  # of 162 possible
    assert 160 < int(flips.sum()) < 240


def test_normalize_keeps_the_memory_format_asked_for():
    pixels = as_tensor(noise_image(8))
    for channels_last in (False, True):
        out = normalize(pixels, MEAN, STD, small=True, channels_last=channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert out.is_contiguous(memory_format=layout) and out.dtype == torch.float32
        assert torch.equal(out, SmallImageTransform(32, MEAN, STD, is_training=False)(noise_image(8))[None])


def test_filters_and_crops_the_device_cannot_match_are_refused():
    with pytest.raises(ValueError, match="resizes with bicubic, bilinear, not 'lanczos'; use --data_pipeline workers"):
        DeviceTransform(96, False, interpolation="lanczos")
    with pytest.raises(ValueError, match="eval crop is 'center' or 'squash', not 'border'"):
        DeviceTransform(96, False, crop_mode="border")
    DeviceTransform(96, True, interpolation="random")  # timm's random filter: large training images only
    with pytest.raises(ValueError, match="not 'random'"):
        DeviceTransform(32, True, interpolation="random")
    with pytest.raises(ValueError, match="a training batch needs 3 draws per image"):
        DeviceTransform(32, True)(as_tensor(noise_image(0)))
    assert math.isclose(DeviceTransform(32, True).padding, 4) and DeviceTransform(32, False).draws_per_image == 0
