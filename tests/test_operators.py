import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from hf_intertrain.operators import cell_rectangle_masks, linavg, randpatch, upsample_cell_mask


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
