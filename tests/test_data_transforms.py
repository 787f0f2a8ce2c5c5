"""Tests of hf_intertrain/data/transforms.py: the small-image and timm transforms."""

import random

import numpy as np
import pytest
import timm
import torch
from conftest import FLAT_CONFIG, noise_image
from PIL import Image as PILImage

from hf_intertrain.data import build_transforms


def test_train_transform_is_random_and_eval_transform_is_deterministic():
    image = noise_image(3)
    train, evaluate = build_transforms(FLAT_CONFIG, 32, True), build_transforms(FLAT_CONFIG, 32, False)
    random.seed(0)

    train_outputs = [train(image) for _ in range(6)]
    eval_outputs = [evaluate(image) for _ in range(3)]

    assert any(not torch.equal(train_outputs[0], other) for other in train_outputs[1:])
    assert all(torch.equal(eval_outputs[0], other) for other in eval_outputs[1:])


def test_small_train_output_is_a_zero_padded_crop_possibly_flipped():
    image = noise_image(4)
    pixels = np.asarray(image).astype(np.float32) / 127.5 - 1.0
    padded = np.pad(pixels, ((4, 4), (4, 4), (0, 0)), constant_values=-1.0)  # zero pixel after normalising
    train = build_transforms(FLAT_CONFIG, 32, True)
    random.seed(1)

    for _ in range(5):
        output = train(image).permute(1, 2, 0).numpy()
        candidates = [padded[i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        candidates += [c[:, ::-1] for c in candidates]
        assert min(np.abs(output - c).max() for c in candidates) < 1e-5


@pytest.mark.parametrize("is_training", [True, False])
@pytest.mark.parametrize(
    "image_size, source_size", [(32, (32, 32)), (32, (50, 40)), (24, (32, 32)), (96, (160, 120)), (96, (60, 60))]
)
def test_output_size_is_image_size_for_small_and_large_images(is_training, image_size, source_size):
    transform = build_transforms(dict(FLAT_CONFIG, crop_pct=0.875), image_size, is_training)

    assert transform(noise_image(5, source_size)).shape == (3, image_size, image_size)


@pytest.mark.parametrize("image_size", [32, 96])
def test_normalisation_uses_the_models_data_config(image_size):
    config = timm.data.resolve_data_config({}, model=timm.create_model("test_resnet", pretrained=False))
    grey = PILImage.new("RGB", (128, 128), (51, 102, 204))

    pixels = build_transforms(config, image_size, is_training=False)(grey)
    expected = (torch.tensor([51, 102, 204]) / 255.0 - torch.tensor(config["mean"])) / torch.tensor(config["std"])

    assert config["mean"] == (0.5, 0.5, 0.5)  # test_resnet's own normalisation, not ImageNet's
    assert torch.allclose(pixels[:, image_size // 2, image_size // 2], expected.float(), atol=1e-5)


def test_large_eval_transform_resizes_by_crop_pct_then_center_crops():
    config = dict(FLAT_CONFIG, crop_pct=0.5)
    image = PILImage.new("RGB", (200, 200), (0, 0, 0))
    image.paste((255, 255, 255), (50, 50, 150, 150))  # white centre half: exactly the 0.5 crop

    pixels = build_transforms(config, 80, is_training=False)(image)

    assert pixels.shape == (3, 80, 80)
    assert pixels[:, 2:-2, 2:-2].min() > 0.95  # all white inside, no black border kept


def test_unknown_padding_mode_is_rejected_and_is_passed_by_name():
    with pytest.raises(ValueError, match=r"padding_mode must be 'constant', 'reflect', 'edge' or 'symmetric'"):
        build_transforms(FLAT_CONFIG, 32, True, padding_mode="wrap")
    with pytest.raises(TypeError):
        build_transforms(FLAT_CONFIG, 32, True, "reflect")  # type: ignore[misc]
