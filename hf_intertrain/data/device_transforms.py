"""The train and eval transforms of `transforms.py`, applied to whole batches of uint8 images on the training device.

The device pipeline (docs/method.md, "Choices where the paper is silent") decodes images elsewhere
(`pixel_cache.py`, `decode.py`) and augments them here, a batch at a time, with the operations of the workers path:

- images of at most `SMALL_IMAGE_MAX_SIZE` px: shorter side resized to the training size when it differs, a crop
  from the image zero-padded by size // 8 at a uniform offset, a flip with probability 1/2 (`SmallImageTransform`);
  eval: the resize and a centre crop;
- larger images: timm's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, ten attempts, then the centre-crop
  fallback) and a flip; eval: shorter side resized to size / crop_pct, centre crop (timm's eval transform).

Randomness is injected: every image arrives with `DeviceTransform.draws_per_image` uniform draws in [0, 1), which
the loader makes under the batch's seeds (`items.BatchSeededDataset`); they become offsets, boxes and flips by the
formulas `random.randrange`, `random.uniform` and `random.randint` apply to Python's draws, so each image's
parameters are drawn from the distributions of the workers path, per sample. Resizes use torch's antialiased
filters and round to whole intensities as PIL's uint8 output does; normalisation is bit-for-bit that of the
workers path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import SMALL_IMAGE_MAX_SIZE

RRC_SCALE: tuple[float, float] = (0.08, 1.0)
RRC_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
"""timm's RandomResizedCropAndInterpolation defaults, as `build_transforms` uses them."""

INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic")
"""The filters whose antialiased `F.interpolate` matches PIL's to about one intensity level ('random' picks one of
them per image, as timm does); other filters stay on the workers path."""

Images = torch.Tensor | list[torch.Tensor]
"""uint8 images on one device: a batch [B, 3, H, W] of one size, or a list of [3, H_i, W_i]."""


@dataclass(frozen=True)
class DeviceTransform:
    """`build_transforms(data_config, image_size, is_training)` for batches of uint8 images on the device.

    Args:
        image_size: The training resolution (square).
        is_training: Random augmentation if True, the eval transform otherwise.
        mean, std: The model's normalisation.
        interpolation: 'bilinear', 'bicubic' or (large images, training) 'random'.
        crop_pct: Large images' eval: the shorter side is resized to floor(size / crop_pct) (timm's default 0.875).
        crop_mode: Large images' eval: 'center' (None) or 'squash' (both sides resized).
    """

    image_size: int
    is_training: bool
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float | None = None
    crop_mode: str | None = None

    def __post_init__(self):
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}; pass the training resolution")
        allowed = set(INTERPOLATIONS) | ({"random"} if self.is_training and not self.small else set())
        if self.interpolation not in allowed:
            raise ValueError(
                f"the device pipeline resizes with {', '.join(sorted(allowed))}, not {self.interpolation!r}; use "
                "--data_pipeline workers"
            )
        if self.crop_mode not in (None, "center", "squash"):
            raise ValueError(
                f"the device pipeline's eval crop is 'center' or 'squash', not {self.crop_mode!r}; use --data_pipeline "
                "workers"
            )

    @classmethod
    def from_data_config(cls, data_config: dict[str, Any], image_size: int, is_training: bool) -> DeviceTransform:
        """The transform `build_transforms(data_config, image_size, is_training)` describes."""
        from .transforms import normalization_of

        mean, std, interpolation = normalization_of(data_config)
        return cls(
            image_size, is_training, mean, std, interpolation, data_config.get("crop_pct"), data_config.get("crop_mode")
        )

    @property
    def small(self) -> bool:
        return self.image_size <= SMALL_IMAGE_MAX_SIZE

    @property
    def padding(self) -> int:
        """Zero padding of the small-image training crop (size // 8); 0 otherwise."""
        return self.image_size // 8 if self.is_training and self.small else 0

    @property
    def draws_per_image(self) -> int:
        """Uniform draws one image needs: 3 (crop offsets, flip) small, 42 (RandomResizedCrop's ten attempts of four
        draws, flip, filter) large, 0 in evaluation."""
        if not self.is_training:
            return 0
        return 3 if self.small else 4 * RRC_ATTEMPTS + 2

    def draw(self, images: int, generator: np.random.RandomState | None = None) -> np.ndarray | None:
        """`images` images' draws [images, draws_per_image] from `generator` (default: numpy's global one), as
        `BatchSeededDataset` seeds it per batch: row i holds what the i-th of that many one-image draws would give;
        None in evaluation."""
        count = self.draws_per_image
        if not count:
            return None
        return (np.random if generator is None else generator).random_sample((images, count))

    def __call__(
        self, images: Images, draws: torch.Tensor | None = None, channels_last: bool = False
    ) -> torch.Tensor:
        """Normalised float32 pixels [B, 3, size, size] on the images' device.

        Args:
            images: uint8 [B, 3, H, W] or a list of [3, H_i, W_i], RGB.
            draws: float64 [B, draws_per_image] on the CPU (training only).
            channels_last: Return the channels-last memory format (for a model stored that way).
        """
        if self.is_training and (draws is None or draws.shape[1] != self.draws_per_image):
            raise ValueError(
                f"a training batch needs {self.draws_per_image} draws per image; fetch it through the device "
                "pipeline's dataset"
            )
        if not self.is_training:
            pixels = self._eval(images)
        elif self.small:
            pixels = self._small_train(images, draws)
        else:
            pixels = self._large_train(images, draws)
        return normalize(pixels, self.mean, self.std, small=self.small, channels_last=channels_last)

    def _small_train(self, images: Images, draws: torch.Tensor) -> torch.Tensor:
        size, padding = self.image_size, self.padding
        if isinstance(images, torch.Tensor):
            images = resize_shorter_side(images, size, self.interpolation, exact_short_side=False)
            tops, lefts, flips = crop_offsets(draws, images.shape[-2], images.shape[-1], size, padding)
            return pad_crop_flip(images, size, tops, lefts, flips, pad=padding)
        out = []
        for i, image in enumerate(images):
            image = resize_shorter_side(image[None], size, self.interpolation, exact_short_side=False)
            tops, lefts, flips = crop_offsets(draws[i : i + 1], image.shape[-2], image.shape[-1], size, padding)
            out.append(pad_crop_flip(image, size, tops, lefts, flips, pad=padding))
        return torch.cat(out)

    def _large_train(self, images: Images, draws: torch.Tensor) -> torch.Tensor:
        heights = torch.tensor([image.shape[-2] for image in images], dtype=torch.float64)
        widths = torch.tensor([image.shape[-1] for image in images], dtype=torch.float64)
        boxes = resized_crop_boxes(draws, heights, widths).tolist()
        flips = (draws[:, 4 * RRC_ATTEMPTS] < 0.5).tolist()
        bicubic = (draws[:, 4 * RRC_ATTEMPTS + 1] >= 0.5).tolist()
        size = (self.image_size, self.image_size)
        out = []
        for image, (top, left, height, width), flip, cubic in zip(images, boxes, flips, bicubic):
            interpolation = self.interpolation
            if interpolation == "random":
                interpolation = "bicubic" if cubic else "bilinear"
            crop = resize(image[None, :, top : top + height, left : left + width], size, interpolation)
            out.append(crop.flip(-1) if flip else crop)
        return torch.cat(out)

    def _eval(self, images: Images) -> torch.Tensor:
        size = self.image_size
        if self.small:
            scale_size, exact = size, False
        else:
            scale_size, exact = math.floor(size / (self.crop_pct or 0.875)), True
        if isinstance(images, torch.Tensor):
            return center_crop(self._eval_resize(images, scale_size, exact), size)
        return torch.cat([center_crop(self._eval_resize(image[None], scale_size, exact), size) for image in images])

    def _eval_resize(self, images: torch.Tensor, scale_size: int, exact: bool) -> torch.Tensor:
        if self.crop_mode == "squash" and not self.small:
            if tuple(images.shape[-2:]) == (scale_size, scale_size):
                return images
            return resize(images, (scale_size, scale_size), self.interpolation)
        return resize_shorter_side(images, scale_size, self.interpolation, exact_short_side=exact)


# ----------------------------------------------------------------------------------------------------------------
# Parameters from uniform draws (CPU, float64)


def crop_offsets(
    draws: torch.Tensor, height: int, width: int, size: int, padding: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tops, lefts, flips) of `SmallImageTransform`'s crop for images of height x width, from draws [B, >= 3].

    top = randrange(height + 2 padding - size + 1) - padding, i.e. the window's corner relative to the unpadded
    image, in [-padding, height + padding - size]; likewise left; flip when the third draw is below 1/2.
    """
    tops = torch.floor(draws[:, 0] * (height + 2 * padding - size + 1)).long() - padding
    lefts = torch.floor(draws[:, 1] * (width + 2 * padding - size + 1)).long() - padding
    return tops, lefts, draws[:, 2] < 0.5


def resized_crop_boxes(draws: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """timm's `RandomResizedCropAndInterpolation.get_params` for every image at once: (top, left, height, width).

    Attempt k of image i reads draws[i, 4k : 4k + 4] as the area scale, the log aspect ratio and the two offsets;
    the first attempt that fits wins, else the centre crop of the clamped aspect ratio.

    Args:
        draws: float64 [B, >= 4 * RRC_ATTEMPTS].
        heights, widths: float64 [B], the images' sizes.

    Returns:
        int64 [B, 4].
    """
    count = draws.shape[0]
    attempts = draws[:, : 4 * RRC_ATTEMPTS].reshape(count, RRC_ATTEMPTS, 4).double()
    heights, widths = heights.double()[:, None], widths.double()[:, None]
    area = widths * heights
    target_area = (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * attempts[..., 0]) * area
    low, high = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    aspect = torch.exp(low + (high - low) * attempts[..., 1])
    crop_w = torch.round(torch.sqrt(target_area * aspect))
    crop_h = torch.round(torch.sqrt(target_area / aspect))
    fits = (crop_w <= widths) & (crop_h <= heights)
    tops = torch.floor(attempts[..., 2] * (heights - crop_h + 1))
    lefts = torch.floor(attempts[..., 3] * (widths - crop_w + 1))
    first = torch.where(fits.any(1), fits.double().argmax(1), torch.full((count,), -1)).long()
    boxes = torch.stack([tops, lefts, crop_h, crop_w], dim=-1).long()
    chosen = boxes[torch.arange(count), first.clamp(min=0)]
    for i in torch.nonzero(first < 0).flatten().tolist():
        chosen[i] = torch.tensor(_fallback_box(int(heights[i]), int(widths[i])))
    return chosen


def _fallback_box(height: int, width: int) -> tuple[int, int, int, int]:
    """timm's centre crop after ten misses: the whole image with its aspect ratio clamped to RRC_RATIO."""
    in_ratio = width / height
    if in_ratio < min(RRC_RATIO):
        crop_w, crop_h = width, int(round(width / min(RRC_RATIO)))
    elif in_ratio > max(RRC_RATIO):
        crop_h, crop_w = height, int(round(height * max(RRC_RATIO)))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


# ----------------------------------------------------------------------------------------------------------------
# Pixel operations (any device)


def resize(images: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """[B, C, H, W] resized to `size` with PIL's filter of that name (antialiased): the width first, then the
    height, each pass rounded to whole intensities as PIL's uint8 passes are; the images themselves when they
    already have that size."""
    height = images.shape[-2]
    out = images
    for target in ((height, size[1]), tuple(size)):
        if tuple(out.shape[-2:]) != target:
            out = F.interpolate(out.float(), size=target, mode=interpolation, antialias=True).clamp_(0, 255).round_()
    return out


def resize_shorter_side(images: torch.Tensor, size: int, interpolation: str, exact_short_side: bool) -> torch.Tensor:
    """[B, C, H, W] with the shorter side resized to `size` and the longer one to int(longer * size / shorter); the
    images themselves when the shorter side already is `size`.

    `exact_short_side` follows torchvision's `Resize(size)` (timm's eval transform); without it both sides follow
    `SmallImageTransform`'s int(side * size / shorter).
    """
    height, width = images.shape[-2:]
    short = min(height, width)
    if short == size:
        return images
    if exact_short_side:
        new_h = size if height == short else int(size * height / short)
        new_w = size if width == short else int(size * width / short)
    else:
        new_h, new_w = int(height * size / short), int(width * size / short)
    return resize(images, (new_h, new_w), interpolation)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's `CenterCrop(size)`: the centred window (offsets rounded), zero-padded first where smaller."""
    height, width = images.shape[-2:]
    if height < size or width < size:
        pad_w, pad_h = max(size - width, 0), max(size - height, 0)
        images = F.pad(images, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        height, width = images.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def pad_crop_flip(
    images: torch.Tensor,
    size: int,
    tops: torch.Tensor,
    lefts: torch.Tensor,
    flips: torch.Tensor,
    pad: int | None = None,
) -> torch.Tensor:
    """Per-image size x size windows of zero-padded images, mirrored where flipped, by one gather.

    The window of image i starts at (tops[i], lefts[i]) of the unpadded image (negative or past the edge means
    padding, which is zero) and is mirrored left-right when flips[i], as `SmallImageTransform` crops and flips.

    Args:
        images: [B, C, H, W], any dtype and device.
        size: The window's side.
        tops, lefts: int64 [B]; flips: bool [B].
        pad: Zero padding on each side, enough for every window (as `crop_offsets`'s padding is); None works it out
            from the windows.

    Returns:
        [B, C, size, size] of the images' dtype, on their device.
    """
    batch, channels, height, width = images.shape
    tops, lefts, flips = tops.cpu(), lefts.cpu(), flips.cpu()
    if pad is None:
        pad = max(
            0, -int(tops.min()), -int(lefts.min()), int(tops.max()) + size - height, int(lefts.max()) + size - width
        )
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    padded_width = width + 2 * pad
    steps = torch.arange(size)
    rows = tops[:, None] + pad + steps  # [B, size], rows of the padded image
    cols = lefts[:, None] + pad + torch.where(flips[:, None], size - 1 - steps, steps)
    index = (rows[:, :, None] * padded_width + cols[:, None, :]).view(batch, 1, size * size).to(images.device)
    flat = padded.reshape(batch, channels, -1)
    return flat.gather(2, index.expand(batch, channels, size * size)).view(batch, channels, size, size)


def normalize(
    pixels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    small: bool = True,
    channels_last: bool = False,
) -> torch.Tensor:
    """[B, 3, H, W] intensities in [0, 255] -> float32 normalised, with the workers path's arithmetic.

    `small`: `SmallImageTransform`'s x * (1 / (255 std)) - mean / std; else torchvision's ToTensor and Normalize,
    (x / 255 - mean) / std. `channels_last` returns that memory format, else contiguous NCHW.
    """
    std_array, mean_array = np.asarray(std, dtype=np.float32), np.asarray(mean, dtype=np.float32)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty_like(pixels, dtype=torch.float32, memory_format=layout).copy_(pixels)
    if small:
        scale = torch.from_numpy(1.0 / (255.0 * std_array)).view(1, -1, 1, 1).to(out.device)
        shift = torch.from_numpy(mean_array / std_array).view(1, -1, 1, 1).to(out.device)
        return out.mul_(scale).sub_(shift)
    mean_tensor = torch.from_numpy(mean_array).view(1, -1, 1, 1).to(out.device)
    std_tensor = torch.from_numpy(std_array).view(1, -1, 1, 1).to(out.device)
    return out.div_(255).sub_(mean_tensor).div_(std_tensor)
