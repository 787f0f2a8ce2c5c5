import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from hf_intertrain.method.operators import (
    cell_rectangle_masks,
    linavg,
    mosaic4,
    quadrant_owner,
    quadrant_splits,
    randpatch,
    randpatch4,
    upsample_cell_mask,
)


def _images(batch: int, seed: int, size: int = 8) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _is_single_rectangle(cell_mask: torch.Tensor) -> bool:
    rows, cols = cell_mask.nonzero(as_tuple=True)
    box = torch.zeros_like(cell_mask)
    box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    return bool(torch.equal(box, cell_mask))


def test_linavg_matches_formula_element_by_element():
    x_a, x_b = _images(3, 0), _images(3, 1)
    ratio = torch.tensor([0.25, 0.5, 0.9])
    mixed = linavg(x_a, x_b, ratio)
    for i, r in enumerate(ratio.tolist()):
        expected = r * x_a[i].double() + (1 - r) * x_b[i].double()
        torch.testing.assert_close(mixed[i].double(), expected, rtol=0, atol=1e-6)
    assert mixed.dtype == x_a.dtype


def test_linavg_keeps_dtype_of_x_a_and_casts_ratio():
    x_a, x_b = _images(2, 0).half(), _images(2, 1).half()
    mixed = linavg(x_a, x_b, torch.tensor([0.3, 0.7], dtype=torch.float64))
    assert mixed.dtype == torch.float16


def test_linavg_rejects_ratio_count_mismatch():
    with pytest.raises(ValueError, match="one ratio per item"):
        linavg(_images(3, 0), _images(3, 1), torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("grid,allowed_cells", [((4, 4), {8}), ((7, 7), {24, 25}), ((2, 2), {2}), ((1, 2), {1})])
def test_masks_are_single_rectangles_of_area_closest_to_target(grid, allowed_cells):
    masks = cell_rectangle_masks(64, grid, 0.5, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (64, *grid) and masks.dtype == torch.bool
    for mask in masks:
        assert int(mask.sum()) in allowed_cells
        assert _is_single_rectangle(mask)


def test_masks_on_7x7_grid_use_both_tied_areas():
    masks = cell_rectangle_masks(200, (7, 7), 0.5, generator=torch.Generator().manual_seed(1))
    assert set(masks.sum(dim=(1, 2)).tolist()) == {24, 25}


def test_masks_are_never_empty_nor_full_even_for_extreme_targets():
    for target in (0.01, 0.99):
        masks = cell_rectangle_masks(50, (3, 3), target, generator=torch.Generator().manual_seed(2))
        areas = masks.sum(dim=(1, 2))
        assert bool((areas >= 1).all()) and bool((areas <= 8).all())
    assert set(cell_rectangle_masks(50, (3, 3), 0.99, generator=torch.Generator().manual_seed(3)).sum((1, 2)).tolist()) == {6}


def test_masks_are_deterministic_for_a_seed_and_vary_across_items():
    first = cell_rectangle_masks(32, (4, 4), generator=torch.Generator().manual_seed(7))
    second = cell_rectangle_masks(32, (4, 4), generator=torch.Generator().manual_seed(7))
    other = cell_rectangle_masks(32, (4, 4), generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert len({tuple(m.flatten().tolist()) for m in first}) > 5


def test_masks_cover_every_position_of_the_grid():
    masks = cell_rectangle_masks(400, (4, 4), generator=torch.Generator().manual_seed(4))
    # Uniform positions: every cell is sometimes in a's rectangle and sometimes outside it.
    assert bool(masks.any(dim=0).all())
    assert bool((~masks).any(dim=0).all())


def test_masks_reject_grid_with_one_cell_naming_the_fix():
    with pytest.raises(ValueError, match="output_stride") as error:
        cell_rectangle_masks(4, (1, 1))
    assert "linavg" in str(error.value) and "image size" in str(error.value)


@pytest.mark.parametrize("target", [0.0, 1.0, -0.5, 1.5])
def test_masks_reject_target_ratio_outside_open_interval(target):
    with pytest.raises(ValueError, match="target_ratio"):
        cell_rectangle_masks(4, (4, 4), target)


def test_masks_move_to_requested_device_from_cpu_generator():
    masks = cell_rectangle_masks(3, (4, 4), generator=torch.Generator().manual_seed(0), device="meta")
    assert masks.device.type == "meta" and masks.shape == (3, 4, 4)


def test_upsample_is_exact_block_repeat_when_divisible():
    masks = cell_rectangle_masks(5, (4, 4), generator=torch.Generator().manual_seed(0))
    pixels = upsample_cell_mask(masks, (32, 16))
    assert pixels.shape == (5, 1, 32, 16) and pixels.dtype == torch.bool
    expected = masks.repeat_interleave(8, dim=1).repeat_interleave(4, dim=2).unsqueeze(1)
    assert torch.equal(pixels, expected)


def test_upsample_follows_floor_rule_when_not_divisible():
    mask = torch.tensor([[[True, False, False]]])  # 1x3 grid on a 2x7 image
    pixels = upsample_cell_mask(mask, (2, 7))
    # x * 3 // 7 == 0 for x in {0, 1, 2}
    assert pixels[0, 0, 0].tolist() == [True, True, True, False, False, False, False]


def test_randpatch_takes_pixels_from_the_right_source_and_reports_achieved_ratio():
    x_a, x_b = _images(4, 0, size=16), _images(4, 1, size=16)
    masks = cell_rectangle_masks(4, (4, 4), generator=torch.Generator().manual_seed(5))
    mixed, ratio = randpatch(x_a, x_b, masks)
    pixels = upsample_cell_mask(masks, (16, 16)).expand_as(x_a)
    assert torch.equal(mixed[pixels], x_a[pixels])
    assert torch.equal(mixed[~pixels], x_b[~pixels])
    assert ratio.dtype == torch.float32 and ratio.shape == (4,)
    torch.testing.assert_close(ratio, masks.sum(dim=(1, 2)).float() / 16)
    torch.testing.assert_close(ratio, torch.full((4,), 0.5))


def test_randpatch_ratio_is_pixel_fraction_on_non_divisible_image():
    x = _images(1, 0, size=7)
    mask = torch.tensor([[[True, False], [False, False]]])
    _, ratio = randpatch(x, x, mask)
    # rows/cols 0..3 belong to cell 0 (y * 2 // 7 == 0 for y <= 3): 4 * 4 of 49 pixels.
    assert ratio.item() == pytest.approx(16 / 49)


def test_single_is_degenerate_pair_returning_x_a_exactly():
    x_a, x_b = _images(3, 0), _images(3, 1)
    assert torch.equal(linavg(x_a, x_b, torch.ones(3)), x_a)
    mixed, ratio = randpatch(x_a, x_b, torch.ones(3, 4, 4, dtype=torch.bool))
    assert torch.equal(mixed, x_a)
    assert torch.equal(ratio, torch.ones(3))


def test_mask_sizes_and_positions_are_drawn_uniformly():
    masks = cell_rectangle_masks(3000, (4, 4), generator=torch.Generator().manual_seed(6))
    rows_used = masks.any(dim=2).sum(dim=1)  # rectangle height: 2 (2x4) or 4 (4x2)
    wide = masks[rows_used == 2]
    assert abs(len(wide) / 3000 - 0.5) < 0.05
    tops = wide.any(dim=2).float().argmax(dim=1)
    counts = torch.bincount(tops, minlength=3).float() / len(wide)
    assert counts.shape == (3,) and bool(((counts - 1 / 3).abs() < 0.05).all())


def _quadrants(batch: int, seed: int, image_size: tuple[int, int] = (8, 8)) -> list[torch.Tensor]:
    return [torch.randn(batch, 3, *image_size, generator=torch.Generator().manual_seed(seed + k)) for k in range(4)]


def _slot_pixels(splits: torch.Tensor, grid: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """Bool [P, 4, H, W]: each slot's pixels, through upsample_cell_mask's rule."""
    owner = quadrant_owner(splits, grid)
    return torch.cat([upsample_cell_mask(owner == slot, image_size) for slot in range(4)], dim=1)


def test_quadrant_splits_partition_grid_into_four_nonempty_rectangles():
    grid = (3, 5)
    splits = quadrant_splits(200, grid, generator=torch.Generator().manual_seed(0))
    assert splits.shape == (200, 2) and splits.dtype == torch.int64
    owner = quadrant_owner(splits, grid)
    assert owner.shape == (200, *grid) and owner.dtype == torch.int64
    one_hot = torch.stack([owner == slot for slot in range(4)], dim=1)
    assert bool((one_hot.sum(dim=1) == 1).all())
    for (i, j), regions in zip(splits.tolist(), one_hot):
        for slot, region in enumerate(regions):
            assert _is_single_rectangle(region)
            rows, cols = region.nonzero(as_tuple=True)
            assert (rows.min() == 0) == (slot < 2) and (cols.min() == 0) == (slot % 2 == 0)
        assert int(regions[0].sum()) == i * j and int(regions[3].sum()) == (3 - i) * (5 - j)


def test_quadrant_splits_cover_every_split_point_and_are_seeded():
    splits = quadrant_splits(400, (4, 6), generator=torch.Generator().manual_seed(1))
    assert set(splits[:, 0].tolist()) == {1, 2, 3}
    assert set(splits[:, 1].tolist()) == {1, 2, 3, 4, 5}
    again = quadrant_splits(400, (4, 6), generator=torch.Generator().manual_seed(1))
    other = quadrant_splits(400, (4, 6), generator=torch.Generator().manual_seed(2))
    assert torch.equal(splits, again)
    assert not torch.equal(splits, other)


@pytest.mark.parametrize("grid", [(1, 4), (4, 1), (1, 1)])
def test_quadrant_splits_reject_grid_without_two_rows_and_columns_naming_the_fix(grid):
    with pytest.raises(ValueError, match="output_stride") as error:
        quadrant_splits(2, grid)
    message = str(error.value)
    assert "\n" not in message and "image_size" in message and "four_way none" in message


def test_quadrant_splits_move_to_requested_device_from_cpu_generator():
    splits = quadrant_splits(3, (4, 4), generator=torch.Generator().manual_seed(0), device="meta")
    assert splits.device.type == "meta" and splits.shape == (3, 2)


@pytest.mark.parametrize("image_size,grid", [((16, 16), (4, 4)), ((7, 10), (3, 4))])
def test_randpatch4_shows_each_constituent_in_its_own_rectangle(image_size, grid):
    xs = _quadrants(6, 0, image_size)
    splits = quadrant_splits(6, grid, generator=torch.Generator().manual_seed(3))
    mixed, ratios = randpatch4(xs, splits, grid)
    assert mixed.shape == xs[0].shape and mixed.dtype == xs[0].dtype
    pixels = _slot_pixels(splits, grid, image_size)
    for slot in range(4):
        region = pixels[:, slot : slot + 1].expand_as(mixed)
        assert torch.equal(mixed[region], xs[slot][region])
    assert ratios.dtype == torch.float32 and ratios.shape == (6, 4)
    torch.testing.assert_close(ratios, pixels.flatten(2).float().mean(dim=2))
    torch.testing.assert_close(ratios.sum(dim=1), torch.ones(6))


def test_randpatch4_pixel_bounds_start_at_ceil_of_the_split_cell():
    xs = _quadrants(1, 0, (7, 7))
    _, ratios = randpatch4(xs, torch.tensor([[1, 1]]), (2, 2))
    # ceil(1 * 7 / 2) = 4: rows and columns 0..3 are slot 0, as upsample_cell_mask's floor(y * 2 / 7) == 0.
    torch.testing.assert_close(ratios, torch.tensor([[16, 12, 12, 9]]) / 49)


def test_randpatch4_and_mosaic4_reject_wrong_constituents_and_splits():
    xs = _quadrants(2, 0)
    with pytest.raises(ValueError, match="4 constituents"):
        randpatch4(xs[:3], torch.ones(2, 2, dtype=torch.long), (2, 2))
    with pytest.raises(ValueError, match="quadrant_splits"):
        mosaic4(xs, torch.ones(3, 2, dtype=torch.long), (2, 2))
    with pytest.raises(ValueError, match="0..2"):
        randpatch4(xs, torch.tensor([[1, 3], [1, 1]]), (2, 2))


def test_single_as_degenerate_split_gives_the_first_constituent():
    xs = _quadrants(2, 0)
    splits = torch.tensor([[4, 4], [4, 4]])
    for operator in (randpatch4, mosaic4):
        mixed, ratios = operator(xs, splits, (4, 4))
        assert torch.equal(mixed, xs[0])
        assert torch.equal(ratios, torch.tensor([[1.0, 0, 0, 0]] * 2))


def test_mosaic4_resizes_each_constituent_whole_into_its_rectangle():
    image_size, grid = (14, 12), (4, 3)
    xs = _quadrants(9, 1, image_size)
    # Few distinct splits, so several items share one resize group.
    splits = torch.tensor([[1, 1], [2, 1], [1, 1], [3, 2], [2, 1], [1, 1], [2, 2], [3, 2], [1, 2]])
    mixed, ratios = mosaic4(xs, splits, grid)
    assert mixed.shape == xs[0].shape and mixed.dtype == xs[0].dtype
    pixels = _slot_pixels(splits, grid, image_size)
    for item in range(9):
        for slot in range(4):
            rows, cols = pixels[item, slot].nonzero(as_tuple=True)
            top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            assert int(pixels[item, slot].sum()) == (bottom - top) * (right - left)
            expected = F.interpolate(
                xs[slot][item : item + 1], size=(int(bottom - top), int(right - left)), mode="bilinear", antialias=True, align_corners=False
            )
            torch.testing.assert_close(mixed[item : item + 1, :, top:bottom, left:right], expected)
    assert torch.equal(ratios, randpatch4(xs, splits, grid)[1])


def test_mosaic4_fills_a_constant_constituent_with_its_colour():
    xs = _quadrants(5, 2, (16, 16))
    colour = torch.tensor([0.25, -1.0, 3.0])
    xs[2] = colour.view(1, 3, 1, 1).expand(5, 3, 16, 16).clone()
    splits = quadrant_splits(5, (4, 4), generator=torch.Generator().manual_seed(4))
    mixed, _ = mosaic4(xs, splits, (4, 4))
    region = _slot_pixels(splits, (4, 4), (16, 16))[:, 2:3].expand_as(mixed)
    torch.testing.assert_close(mixed[region], xs[2][region], rtol=0, atol=1e-6)


def test_mosaic4_under_bf16_matches_float32_and_keeps_dtype():
    xs = _quadrants(4, 3, (16, 16))
    splits = quadrant_splits(4, (4, 4), generator=torch.Generator().manual_seed(5))
    reference, ratios = mosaic4(xs, splits, (4, 4))
    mixed, ratios_bf16 = mosaic4([x.bfloat16() for x in xs], splits, (4, 4))
    assert mixed.dtype == torch.bfloat16 and ratios_bf16.dtype == torch.float32
    torch.testing.assert_close(mixed.float(), reference, rtol=2e-2, atol=2e-2)
    assert torch.equal(ratios_bf16, ratios)
