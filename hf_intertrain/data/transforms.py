"""Train and eval transforms: PIL image -> normalised float32 tensor [3, image_size, image_size].

Large images use timm's transforms; images of at most `SMALL_IMAGE_MAX_SIZE` pixels (CIFAR-sized) use
`SmallImageTransform`, the standard CIFAR augmentation written as numpy slices.
"""

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from torchvision import transforms

from ..constants import SMALL_IMAGE_MAX_SIZE
from .images import to_rgb


def build_transforms(
    data_config: dict[str, Any],
    image_size: int,
    is_training: bool,
    *,
    padding_mode: str = "constant",
) -> Callable[[PILImage.Image], torch.Tensor]:
    """PIL image -> normalised float32 tensor [3, image_size, image_size].

    `data_config` is `timm.data.resolve_data_config({}, model=model)`: its mean, std,
    interpolation and crop_pct are used, its input size is not (`image_size` is). Every image
    goes through `to_rgb` first.

    Small images (image_size <= `SMALL_IMAGE_MAX_SIZE` = 64, the paper's CIFAR recipe):
    train = resize, RandomCrop(image_size, padding=image_size // 8), horizontal flip,
    normalise; eval = resize, center crop (a no-op on square images), normalise (see
    `SmallImageTransform`). A small image is resized exactly when its shorter side differs
    from image_size, checked per image (so CIFAR at 32 is never resized, and datasets of
    mixed sizes stay correct). The padding is zeros (`padding_mode="constant"`) as in the standard
    CIFAR ResNet recipe (He et al., 2016) that the paper's CIFAR setup follows; pass "reflect"
    to avoid black borders.

    Larger images: `timm.data.create_transform`, i.e. train = RandomResizedCrop(image_size,
    scale (0.08, 1)) + flip + normalise (colour jitter off: the paper's ImageNet recipe has
    none); eval = resize to image_size / crop_pct + CenterCrop(image_size) + normalise.

    Args:
        data_config: timm's data config of the model (mean, std, interpolation, crop_pct).
        image_size: the training resolution (square).
        is_training: random augmentation if True, a deterministic transform otherwise.
        padding_mode: numpy pad mode of the small-image random crop ("constant" = zeros,
            "reflect", "edge" or "symmetric").
    """
    mean, std, interpolation = normalization_of(data_config)
    if image_size < 1:
        raise ValueError(
            f"image_size must be positive, got {image_size}; pass the training resolution, e.g. 32 for CIFAR"
        )

    if image_size > SMALL_IMAGE_MAX_SIZE:
        import timm.data

        timm_transform = timm.data.create_transform(
            input_size=image_size,
            is_training=is_training,
            color_jitter=None,
            interpolation=interpolation,
            mean=mean,
            std=std,
            crop_pct=data_config.get("crop_pct"),
            crop_mode=data_config.get("crop_mode"),
        )
        return transforms.Compose([to_rgb, *timm_transform.transforms])

    return SmallImageTransform(image_size, mean, std, is_training, interpolation, padding_mode)


def normalization_of(data_config: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, interpolation) of a timm data config: ImageNet's mean and std and bilinear where it has none."""
    mean = tuple(float(v) for v in data_config.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in data_config.get("std", (0.229, 0.224, 0.225)))
    return mean, std, data_config.get("interpolation") or "bilinear"


class SmallImageTransform:
    """The CIFAR-style transform of `build_transforms` for images of at most `SMALL_IMAGE_MAX_SIZE` (64) pixels.

    Same operations as torchvision's `Resize`, `RandomCrop(padding=...)`,
    `RandomHorizontalFlip`, `ToDtype(scale=True)` and `Normalize`, written as a few numpy slices
    on the decoded array: torchvision's per-transform dispatch costs several times the work
    itself on 32x32 images. Randomness comes from Python's `random`, as in timm's transforms:
    `transformers.set_seed` seeds it and DataLoader workers re-seed it per worker.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        is_training: bool,
        interpolation: str = "bilinear",
        padding_mode: str = "constant",
    ):
        if padding_mode not in ("constant", "reflect", "edge", "symmetric"):
            raise ValueError(
                f"padding_mode must be 'constant', 'reflect', 'edge' or 'symmetric', got {padding_mode!r}; pick one of "
                "those"
            )
        from timm.data.transforms import str_to_pil_interp

        self.image_size = image_size
        self.padding = image_size // 8 if is_training else 0
        self.is_training = is_training
        self.resample = str_to_pil_interp(interpolation)
        self.padding_mode = padding_mode
        std_array = np.asarray(std, dtype=np.float32)
        self.scale = torch.from_numpy(1.0 / (255.0 * std_array)).view(3, 1, 1)
        self.shift = torch.from_numpy(np.asarray(mean, dtype=np.float32) / std_array).view(3, 1, 1)

    def __call__(self, image: PILImage.Image) -> torch.Tensor:
        image = to_rgb(image)
        size = self.image_size
        if min(image.size) != size:
            width, height = image.size
            short = min(width, height)
            image = image.resize((int(width * size / short), int(height * size / short)), self.resample)
        array = np.asarray(image)
        height, width = array.shape[:2]
        if self.is_training:
            pad = self.padding
            top = random.randrange(height + 2 * pad - size + 1) - pad
            left = random.randrange(width + 2 * pad - size + 1) - pad
            array = self._padded_crop(array, top, left)
            if random.random() < 0.5:
                array = array[:, ::-1]
        else:
            top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
            array = array[top : top + size, left : left + size]
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:
            array = array.copy()
        pixels = torch.from_numpy(array).permute(2, 0, 1).float()
        return pixels.mul_(self.scale).sub_(self.shift)

    def _padded_crop(self, array: np.ndarray, top: int, left: int) -> np.ndarray:
        """The size x size window at (top, left) of `array` padded by `self.padding` on every side."""
        size, (height, width) = self.image_size, array.shape[:2]
        if 0 <= top and 0 <= left and top + size <= height and left + size <= width:
            return array[top : top + size, left : left + size]
        if self.padding_mode != "constant":
            pad = self.padding
            padded = np.pad(array, ((pad, pad), (pad, pad), (0, 0)), mode=self.padding_mode)
            return padded[top + pad : top + pad + size, left + pad : left + pad + size]
        window = np.zeros((size, size, array.shape[2]), dtype=array.dtype)
        rows, cols = slice(max(top, 0), min(top + size, height)), slice(max(left, 0), min(left + size, width))
        window[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = array[rows, cols]
        return window
