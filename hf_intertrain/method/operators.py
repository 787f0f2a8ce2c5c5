"""Interpolation operators: LinAvg, RandPatch, and the 4-way RandPatch-4 and Mosaic-4 (docs/method.md, "Operators").

Pure, batched tensor functions. Randomness comes only from an injected
``torch.Generator`` so that tests can fix it and distributed processes can agree on it.

A *single* is the degenerate pair ``(a, a, r=1)``: ``linavg(x, x_any, ones)`` and
``randpatch(x, x_any, all_true_mask)`` both return ``x`` exactly, so the training loop needs
no special case for singles.

The 4-way composites (docs/method.md, "Four-way composites") cut the feature grid at one row and one column
into four rectangles of whole cells, one per constituent, so that split propagation
(``split.split_logits_by_owner``) separates them exactly as it does RandPatch pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "linavg",
    "cell_rectangle_masks",
    "upsample_cell_mask",
    "randpatch",
    "quadrant_splits",
    "quadrant_owner",
    "randpatch4",
    "mosaic4",
]


def linavg(x_a: Tensor, x_b: Tensor, ratio: Tensor) -> Tensor:
    """LinAvg: ``X = r * x_a + (1 - r) * x_b`` element-wise (docs/method.md, "Operators").

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
    """Draw one random rectangle of whole feature-grid cells per item (RandPatch, docs/method.md, "Operators").

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
    """RandPatch: ``x_a`` inside the mask's rectangle, ``x_b`` elsewhere (docs/method.md, "Operators").

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


def quadrant_splits(
    batch_size: int,
    grid: tuple[int, int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw one split row and one split column of the feature grid per item (docs/method.md, "Four-way composites").

    The split ``(i, j)`` cuts the ``h x w`` grid into four rectangles of whole cells, one per
    slot: 0 = top-left (rows ``< i``, columns ``< j``), 1 = top-right, 2 = bottom-left,
    3 = bottom-right (see ``quadrant_owner``). ``i`` is uniform in ``1..h-1`` and ``j`` in
    ``1..w-1``, so no rectangle is empty and, as with RandPatch (docs/method.md, "Operators"),
    every constituent owns whole cells that split propagation can pool apart.

    Rows are drawn before columns on the generator's device (CPU when ``generator`` is None),
    then the result is moved to ``device``, as in ``cell_rectangle_masks``.

    Args:
        batch_size: Number of 4-way items ``P``.
        grid: Final feature-grid size ``(h, w)`` of the model (see ``split.feature_grid``).
        generator: Source of randomness; None uses torch's global CPU generator.
        device: Device of the result; defaults to the generator's device.

    Returns:
        Int64 ``[P, 2]``: ``(i, j)`` per item, in grid cells.
    """
    h, w = int(grid[0]), int(grid[1])
    if h < 2 or w < 2:
        raise ValueError(
            f"4-way composites need a feature grid of at least 2x2 cells, got {h}x{w}: use a larger image_size, "
            f'a smaller output stride (e.g. model_kwargs {{"output_stride": 16}}), or four_way none.'
        )
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}.")
    draw_device = generator.device if generator is not None else torch.device("cpu")
    out_device = torch.device(device) if device is not None else draw_device
    rows = torch.randint(1, h, (batch_size,), generator=generator, device=draw_device)
    cols = torch.randint(1, w, (batch_size,), generator=generator, device=draw_device)
    return torch.stack([rows, cols], dim=1).to(out_device)


def _check_splits(splits: Tensor, batch_size: int | None = None) -> None:
    """Require splits of shape ``[P, 2]`` (``[batch_size, 2]`` when given)."""
    if splits.dim() != 2 or splits.shape[1] != 2 or (batch_size is not None and splits.shape[0] != batch_size):
        expected = f"[{batch_size}, 2]" if batch_size is not None else "[P, 2]"
        raise ValueError(
            f"splits must have shape {expected} (one split row and column per item), got {tuple(splits.shape)}: "
            "draw them with quadrant_splits(batch_size, grid)."
        )


def quadrant_owner(splits: Tensor, grid: tuple[int, int]) -> Tensor:
    """The slot (0..3) owning each feature-grid cell under ``splits`` (see ``quadrant_splits``).

    Cell ``(r, c)`` belongs to slot ``2 * (r >= i) + (c >= j)``; this is the ``owner`` that
    ``split.split_logits_by_owner`` pools each constituent over.

    Args:
        splits: Int ``[P, 2]`` from ``quadrant_splits``.
        grid: Feature-grid size ``(h, w)`` the splits were drawn for.

    Returns:
        Int64 ``[P, h, w]`` on ``splits``' device.
    """
    _check_splits(splits)
    h, w = int(grid[0]), int(grid[1])
    rows = torch.arange(h, device=splits.device).view(1, h, 1)
    cols = torch.arange(w, device=splits.device).view(1, 1, w)
    split_rows, split_cols = splits[:, 0].view(-1, 1, 1), splits[:, 1].view(-1, 1, 1)
    return (2 * (rows >= split_rows) + (cols >= split_cols)).long()


def _quadrant_pixel_splits(splits: Tensor, grid: tuple[int, int], image_size: tuple[int, int]) -> Tensor:
    """First pixel row and column of the bottom and right rectangles, ``[P, 2]`` int64.

    With ``upsample_cell_mask``'s rule (pixel ``y`` is in cell ``floor(y * h / H)``), pixel
    ``y`` lies in a row ``>= i`` exactly when ``y >= ceil(i * H / h)``. ``randpatch4`` and
    ``mosaic4`` both place their rectangles from this one function, so they cannot disagree.
    """
    h, w = int(grid[0]), int(grid[1])
    splits = splits.long()
    if bool(((splits < 0) | (splits > torch.tensor([h, w], device=splits.device))).any()):
        raise ValueError(
            f"splits must lie in 0..{h} (rows) and 0..{w} (columns) of the {h}x{w} grid: "
            "draw them with quadrant_splits(batch_size, grid) for this grid."
        )
    height, width = image_size
    top = torch.div(splits[:, 0] * height + h - 1, h, rounding_mode="floor")
    left = torch.div(splits[:, 1] * width + w - 1, w, rounding_mode="floor")
    return torch.stack([top, left], dim=1)


def _quadrant_area_ratios(pixel_splits: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Pixel-area fraction of each slot's rectangle, float32 ``[P, 4]`` (sums to 1)."""
    height, width = image_size
    top, left = pixel_splits[:, 0].double(), pixel_splits[:, 1].double()
    heights = torch.stack([top, top, height - top, height - top], dim=1)
    widths = torch.stack([left, width - left, left, width - left], dim=1)
    return (heights * widths / (height * width)).float()


def _slot_slices(slot: int, top: int, left: int, image_size: tuple[int, int]) -> tuple[slice, slice]:
    """Pixel rows and columns of ``slot``'s rectangle for one item's pixel split."""
    height, width = image_size
    rows = slice(0, top) if slot < 2 else slice(top, height)
    cols = slice(0, left) if slot % 2 == 0 else slice(left, width)
    return rows, cols


def _check_constituents(xs: Sequence[Tensor], splits: Tensor, name: str) -> Tensor:
    """Validate 4 constituents of one ``[P, C, H, W]`` shape and their splits; return ``xs[0]``."""
    if len(xs) != 4:
        raise ValueError(f"{name} needs 4 constituents (slots 0..3), got {len(xs)}: pass [x_a, x_b, x_c, x_d].")
    shapes = [tuple(x.shape) for x in xs]
    if xs[0].dim() != 4 or len(set(shapes)) != 1:
        raise ValueError(f"{name} needs 4 constituents of the same [P, C, H, W] shape, got {shapes}: group samples of equal size.")
    _check_splits(splits, xs[0].shape[0])
    return xs[0]


def randpatch4(xs: Sequence[Tensor], splits: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """RandPatch-4: each constituent's own pixels inside its rectangle of the 4-way split (docs/method.md, "Four-way composites").

    The 4-constituent form of RandPatch (docs/method.md, "Operators"): slot ``k``'s rectangle of
    whole cells (``quadrant_owner``) shows ``xs[k]`` unchanged, at full resolution, and its
    achieved pixel-area fraction is that constituent's ratio. Pixels map to cells as in
    ``upsample_cell_mask``.

    Args:
        xs: Constituents a, b, c, d (slots 0..3), each ``[P, C, H, W]``.
        splits: Int ``[P, 2]`` from ``quadrant_splits`` for ``grid``. Values ``0`` or ``h`` / ``w``
            are accepted and leave rectangles empty: ``(h, w)`` gives ``xs[0]`` whole (a single).
        grid: The model's feature-grid size ``(h, w)``.

    Returns:
        ``(X, ratios)``: inputs ``[P, C, H, W]`` in ``xs[0]``'s dtype and each slot's pixel-area
        fraction, float32 ``[P, 4]`` summing to 1 per item.
    """
    x_a = _check_constituents(xs, splits, "randpatch4")
    image_size = (x_a.shape[-2], x_a.shape[-1])
    pixel_splits = _quadrant_pixel_splits(splits, grid, image_size).to(x_a.device)  # checked where the splits live
    rows = torch.arange(image_size[0], device=x_a.device).view(1, -1, 1)
    cols = torch.arange(image_size[1], device=x_a.device).view(1, 1, -1)
    top, left = pixel_splits[:, 0].view(-1, 1, 1), pixel_splits[:, 1].view(-1, 1, 1)
    pixel_owner = (2 * (rows >= top) + (cols >= left)).unsqueeze(1)
    mixed = xs[3].to(x_a.dtype)
    for slot in (2, 1, 0):
        mixed = torch.where(pixel_owner == slot, xs[slot].to(x_a.dtype), mixed)
    return mixed, _quadrant_area_ratios(pixel_splits, image_size)


def mosaic4(xs: Sequence[Tensor], splits: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Mosaic-4: each constituent resized whole into its rectangle of the 4-way split (docs/method.md, "Four-way composites").

    The same pixel rectangles as ``randpatch4``, but ``xs[k]`` is shrunk (bilinear,
    antialiased, ``align_corners=False``) to its rectangle's size, so every constituent is
    fully visible at a lower resolution instead of cropped. The rectangles are whole cells, so
    split propagation separates the constituents exactly as for RandPatch (docs/method.md,
    "Operators", "Split propagation").

    Items with equal splits are resized together (a ``h x w`` grid has at most
    ``(h - 1) * (w - 1)`` distinct splits), which needs the splits on the host. The resize runs
    in at least float32 (CPU has no bf16 antialiased kernel) and is cast to ``xs[0]``'s dtype.

    Args:
        xs: Constituents a, b, c, d (slots 0..3), each ``[P, C, H, W]``.
        splits: Int ``[P, 2]`` from ``quadrant_splits`` for ``grid`` (empty rectangles allowed,
            as in ``randpatch4``; an empty rectangle's constituent is left out).
        grid: The model's feature-grid size ``(h, w)``.

    Returns:
        ``(X, ratios)`` as in ``randpatch4``.
    """
    x_a = _check_constituents(xs, splits, "mosaic4")
    image_size = (x_a.shape[-2], x_a.shape[-1])
    pixel_splits = _quadrant_pixel_splits(splits.cpu(), grid, image_size)
    compute_dtype = torch.promote_types(x_a.dtype, torch.float32)
    mixed = torch.empty_like(x_a)
    groups, group_of_item = torch.unique(pixel_splits, dim=0, return_inverse=True)
    for group, (top, left) in enumerate(groups.tolist()):
        items = slice(None) if len(groups) == 1 else (group_of_item == group).nonzero().squeeze(1).to(x_a.device)
        for slot, x in enumerate(xs):
            rows, cols = _slot_slices(slot, top, left, image_size)
            size = (rows.stop - rows.start, cols.stop - cols.start)
            if size[0] > 0 and size[1] > 0:
                resized = F.interpolate(x[items].to(compute_dtype), size=size, mode="bilinear", antialias=True, align_corners=False)
                mixed[items, :, rows, cols] = resized.to(x_a.dtype)
    return mixed, _quadrant_area_ratios(pixel_splits, image_size).to(x_a.device)
