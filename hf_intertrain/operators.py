"""Interpolation operators: LinAvg and RandPatch (ALGORITHM.md "Operators").

Pure, batched tensor functions. Randomness comes only from an injected
``torch.Generator`` so that tests can fix it and distributed processes can agree on it.

A *single* is the degenerate pair ``(a, a, r=1)``: ``linavg(x, x_any, ones)`` and
``randpatch(x, x_any, all_true_mask)`` both return ``x`` exactly, so the training loop needs
no special case for singles.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linavg", "cell_rectangle_masks", "upsample_cell_mask", "randpatch"]


def linavg(x_a: Tensor, x_b: Tensor, ratio: Tensor) -> Tensor:
    """LinAvg: ``X = r * x_a + (1 - r) * x_b`` element-wise (ALGORITHM.md "Operators").

    The explicit two-term form (not ``torch.lerp``) keeps ``r = 1`` exact: a single
    ``(a, a, 1)`` gives ``x_a`` back bit for bit.

    Args:
        x_a: Constituent a, shape ``[P, ...]`` (e.g. ``[P, C, H, W]``).
        x_b: Constituent b, same shape as ``x_a``.
        ratio: a's share ``r`` per item, shape ``[P]``; cast to ``x_a``'s dtype and device.

    Returns:
        Interpolated inputs with ``x_a``'s shape and dtype.
    """
    if x_a.shape != x_b.shape:
        raise ValueError(
            f"linavg needs x_a and x_b of the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}: pair samples of equal size."
        )
    ratio = torch.as_tensor(ratio, dtype=x_a.dtype, device=x_a.device).reshape(-1)
    if ratio.numel() != x_a.shape[0]:
        raise ValueError(
            f"linavg needs one ratio per item, got {ratio.numel()} ratios for {x_a.shape[0]} items: pass ratio of shape [{x_a.shape[0]}]."
        )
    r = ratio.view(-1, *([1] * (x_a.dim() - 1)))
    return r * x_a + (1 - r) * x_b.to(x_a.dtype)


def _closest_rectangle_sizes(grid: tuple[int, int], target_ratio: float) -> list[tuple[int, int]]:
    """All ``(rh, rw)`` (full grid excluded) whose cell-area fraction is closest to the target."""
    h, w = grid
    target_cells = target_ratio * h * w
    sizes = [(rh, rw) for rh in range(1, h + 1) for rw in range(1, w + 1) if (rh, rw) != (h, w)]
    distances = [abs(rh * rw - target_cells) for rh, rw in sizes]
    best = min(distances)
    # Cell counts are integers, so any real tie is exact up to float rounding of target_cells.
    return [size for size, d in zip(sizes, distances) if d <= best + 1e-9]


def cell_rectangle_masks(
    batch_size: int,
    grid: tuple[int, int],
    target_ratio: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw one random rectangle of whole feature-grid cells per item (RandPatch, ALGORITHM.md "Operators").

    Size: among all ``(rh, rw)`` with ``1 <= rh <= h``, ``1 <= rw <= w`` except the full grid,
    the sizes whose area fraction ``rh * rw / (h * w)`` is closest to ``target_ratio``; ties are
    all kept and one is drawn uniformly per item (so a 7x7 grid mixes 24- and 25-cell
    rectangles). Position: uniform over the valid top-left corners. The rectangle is never
    empty and never the full grid, so both constituents keep at least one cell.

    Random numbers are drawn on the generator's device (CPU when ``generator`` is None) and the
    result is moved to ``device``, so a CPU generator can drive masks for CUDA batches.

    Args:
        batch_size: Number of pairs ``P``.
        grid: Final feature-grid size ``(h, w)`` of the model (see ``split.feature_grid``).
        target_ratio: Desired area share of constituent a, in (0, 1).
        generator: Source of randomness; None uses torch's global CPU generator.
        device: Device of the returned mask; defaults to the generator's device.

    Returns:
        Bool tensor ``[P, h, w]``, True on the cells of constituent a.
    """
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1 or h * w < 2:
        raise ValueError(
            f"RandPatch needs a feature grid of at least 2 cells, got {h}x{w}: use a larger image size, "
            f'a smaller output stride (e.g. model_kwargs {{"output_stride": 16}}), or interpolation linavg.'
        )
    if not 0.0 < float(target_ratio) < 1.0:
        raise ValueError(f"target_ratio must lie strictly between 0 and 1, got {target_ratio}: pass e.g. 0.5.")
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}.")

    draw_device = generator.device if generator is not None else torch.device("cpu")
    out_device = torch.device(device) if device is not None else draw_device

    sizes = torch.tensor(_closest_rectangle_sizes((h, w), float(target_ratio)), device=draw_device)
    choice = torch.randint(len(sizes), (batch_size,), generator=generator, device=draw_device)
    rh, rw = sizes[choice, 0], sizes[choice, 1]
    # Uniform integer in [0, h - rh] per item, each with its own range.
    u = torch.rand((2, batch_size), generator=generator, device=draw_device, dtype=torch.float64)
    top = torch.minimum((u[0] * (h - rh + 1)).floor().long(), h - rh)
    left = torch.minimum((u[1] * (w - rw + 1)).floor().long(), w - rw)

    rows = torch.arange(h, device=draw_device).view(1, h, 1)
    cols = torch.arange(w, device=draw_device).view(1, 1, w)
    top, left, rh, rw = (t.view(-1, 1, 1) for t in (top, left, rh, rw))
    mask = (rows >= top) & (rows < top + rh) & (cols >= left) & (cols < left + rw)
    return mask.to(out_device)


def upsample_cell_mask(mask: Tensor, image_size: tuple[int, int] | int) -> Tensor:
    """Map a cell mask ``[B, h, w]`` to pixels ``[B, 1, H, W]`` (nearest-cell rule).

    Pixel ``(y, x)`` belongs to cell ``(floor(y * h / H), floor(x * w / W))``. When ``H % h == 0``
    and ``W % w == 0`` every cell is an exact ``H/h x W/w`` block, which matches a strided CNN or a
    patch embedding exactly. Otherwise cells get ``floor`` or ``ceil`` of ``H/h`` pixels,
    spread evenly; the achieved ratio returned by ``randpatch`` stays exact in pixels, while the
    split at the feature level is then only as sharp as the model's receptive fields allow.

    Args:
        mask: Bool ``[B, h, w]``.
        image_size: ``(H, W)`` or a single int for square images.

    Returns:
        Bool ``[B, 1, H, W]`` on ``mask``'s device.
    """
    if mask.dim() != 3:
        raise ValueError(f"cell mask must have shape [B, h, w], got {tuple(mask.shape)}: pass one grid mask per item.")
    height, width = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    h, w = mask.shape[1], mask.shape[2]
    rows = torch.div(torch.arange(height, device=mask.device) * h, height, rounding_mode="floor")
    cols = torch.div(torch.arange(width, device=mask.device) * w, width, rounding_mode="floor")
    return mask.bool()[:, rows][:, :, cols].unsqueeze(1)


def randpatch(x_a: Tensor, x_b: Tensor, cell_mask: Tensor) -> tuple[Tensor, Tensor]:
    """RandPatch: ``x_a`` inside the mask's rectangle, ``x_b`` elsewhere (ALGORITHM.md "Operators").

    Args:
        x_a: Constituent a, ``[P, C, H, W]``.
        x_b: Constituent b, same shape.
        cell_mask: Bool ``[P, h, w]`` on the model's feature grid, True on a's cells
            (from ``cell_rectangle_masks``; all True for a single).

    Returns:
        ``(X, r)``: the interpolated inputs ``[P, C, H, W]`` and a's achieved pixel-area
        fraction per item (float32 ``[P]``), the ratio used by the loss (paper eq. 2).
    """
    if x_a.shape != x_b.shape or x_a.dim() != 4:
        raise ValueError(
            f"randpatch needs x_a and x_b of the same [P, C, H, W] shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}: pair samples of equal size."
        )
    if cell_mask.shape[0] != x_a.shape[0]:
        raise ValueError(
            f"randpatch needs one cell mask per item, got {cell_mask.shape[0]} masks for {x_a.shape[0]} items: draw masks with batch_size={x_a.shape[0]}."
        )
    pixel_mask = upsample_cell_mask(cell_mask.to(x_a.device), (x_a.shape[-2], x_a.shape[-1]))
    mixed = torch.where(pixel_mask, x_a, x_b.to(x_a.dtype))
    ratio = pixel_mask.flatten(1).float().mean(dim=1)
    return mixed, ratio
