import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from conftest import make_model
from hf_intertrain.method.composition import (
    MIXING_STREAM,
    MaskSeeder,
    check_composable,
    compose_batch,
    composite_weights,
    constituent_losses,
    draws_masks,
    mix_singles,
    slot_logits,
)
from hf_intertrain.method.mixing import BatchMixing
from hf_intertrain.method.operators import cell_rectangle_masks, quadrant_owner, quadrant_splits
from hf_intertrain.method.split import unwrap_timm_model

GRID, RATIO, SEED = (5, 3), 0.3, 1234
# What the trainer drew before composition moved out of it (same inputs, grid, ratio and generator seed): the
# composites' and pairs' shares, the owner of every cell of each row, and the sum of the composed pixels.
REFERENCE = {
    "none": (
        1910.155499279499,
        [[60 / 256] * 3 + [1.0, 1.0], [196 / 256] * 3],
        [
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1],
            [0] * 15,
            [0] * 15,
        ],
    ),
    "randpatch4": (
        2279.076714336872,
        [
            [0.3046875, 0.1640625, 0.30078125, 0.2578125, 1.0, 1.0],
            [0.5078125, 0.2734375, 0.69921875, 0.7421875],
            [0.0703125, 0.2109375],
            [0.1171875, 0.3515625],
        ],
        [
            [0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 2, 3, 3],
            [0, 1, 1, 0, 1, 1, 2, 3, 3, 2, 3, 3, 2, 3, 3],
            [0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1],
            [0] * 15,
            [0] * 15,
        ],
    ),
}
REFERENCE["mosaic4"] = (2293.3126224428415, *REFERENCE["randpatch4"][1:])


def _inputs(batch: int, groups: int = 0, quads: int = 0, size: int = 16, seed: int = 0, classes: int = 4):
    """A collated batch: `quads` 4-way composites, `groups - quads` pairs, then singles."""
    g = torch.Generator().manual_seed(seed)
    inputs = {"pixel_values": torch.rand(batch, 3, size, size, generator=g)}
    if groups:
        inputs["pixel_values_b"] = torch.rand(groups, 3, size, size, generator=g)
    if quads:
        inputs["pixel_values_c"] = torch.rand(quads, 3, size, size, generator=g)
        inputs["pixel_values_d"] = torch.rand(quads, 3, size, size, generator=g)
    rows = {"": batch, "_b": groups, "_c": quads, "_d": quads}
    start = 0
    for suffix, n in rows.items():
        if n:
            inputs[f"labels{suffix}"] = torch.randint(0, classes, (n,), generator=g)
            inputs[f"sample_index{suffix}"] = torch.arange(start, start + n)
            start += n
    return inputs


def _compose(inputs, four_way="none", interpolation="randpatch", seed=SEED, grid=GRID, ratio=RATIO):
    return compose_batch(
        inputs,
        interpolation=interpolation,
        four_way=four_way,
        feature_grid=grid,
        patch_ratio=ratio,
        split=True,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("four_way, rows", [("none", (5, 3, 0)), ("randpatch4", (6, 4, 2)), ("mosaic4", (6, 4, 2))])
def test_same_generator_draws_what_the_trainer_drew_before(four_way, rows):
    composed = _compose(_inputs(*rows), four_way)
    pixel_sum, shares, owner = REFERENCE[four_way]
    assert composed.pixel_values.double().sum().item() == pytest.approx(pixel_sum, rel=1e-12)
    assert [s.tolist() for s in composed.shares] == [pytest.approx(s, abs=1e-7) for s in shares]
    assert composed.owner.flatten(1).tolist() == owner
    assert (composed.num_quads, composed.num_pairs) == (rows[2], rows[1] - rows[2])


def test_pair_rectangles_are_drawn_before_the_composites_split_points():
    generator = torch.Generator().manual_seed(SEED)
    pair_mask = cell_rectangle_masks(2, GRID, RATIO, generator=generator)
    splits = quadrant_splits(2, GRID, generator=generator)
    with_quads = _compose(_inputs(6, 4, 2), "randpatch4")
    pairs_only = _compose(_inputs(5, 2))
    assert torch.equal(with_quads.owner[2:4], (~pair_mask).long())
    assert torch.equal(pairs_only.owner[:2], (~pair_mask).long())  # a batch without composites draws the same
    assert torch.equal(with_quads.owner[:2], quadrant_owner(splits, GRID))


@pytest.mark.parametrize(
    "rows, four_way, interpolation",
    [((5, 3, 0), "none", "randpatch"), ((6, 4, 2), "randpatch4", "randpatch"), ((6, 4, 2), "mosaic4", "randpatch"),
     ((5, 3, 0), "none", "linavg")],
)
def test_shares_of_every_item_sum_to_one(rows, four_way, interpolation):
    inputs = _inputs(*rows)
    inputs["interp_ratio"] = torch.tensor([0.2, 0.5, 0.9])[: rows[1]]
    composed = _compose(inputs, four_way, interpolation)
    total = torch.zeros(rows[0])
    for share in composed.shares:
        total[: share.shape[0]] += share
    torch.testing.assert_close(total, torch.ones(rows[0]), rtol=0, atol=1e-6)
    assert all(s.dtype == torch.float32 for s in composed.shares)


def test_linavg_pairs_average_with_the_collated_ratio_and_keep_singles():
    inputs = _inputs(4, 2)
    inputs["interp_ratio"] = torch.tensor([0.25, 0.75])
    composed = _compose(inputs, interpolation="linavg", seed=0)
    x_a, x_b = inputs["pixel_values"], inputs["pixel_values_b"]
    torch.testing.assert_close(composed.pixel_values[0], 0.25 * x_a[0] + 0.75 * x_b[0])
    assert torch.equal(composed.pixel_values[2:], x_a[2:])
    assert composed.shares[0].tolist() == [0.25, 0.75, 1.0, 1.0] and composed.shares[1].tolist() == [0.75, 0.25]
    assert composed.owner is None


def test_a_batch_of_singles_is_passed_through_and_draws_nothing():
    inputs = _inputs(3)
    assert not draws_masks(inputs, "randpatch")
    composed = compose_batch(
        inputs,
        interpolation="randpatch",
        four_way="none",
        feature_grid=GRID,
        patch_ratio=RATIO,
        split=True,
        generator=None,
    )
    assert composed.pixel_values is inputs["pixel_values"]
    assert [s.tolist() for s in composed.shares] == [[1.0, 1.0, 1.0]] and composed.owner is None
    assert draws_masks(_inputs(3, 1), "randpatch") and not draws_masks(_inputs(3, 1), "linavg")


def test_composites_without_split_propagation_are_refused():
    with pytest.raises(ValueError, match="split propagation for composites"):
        compose_batch(
            _inputs(6, 4, 2), interpolation="randpatch", four_way="randpatch4", feature_grid=GRID, patch_ratio=RATIO,
            split=False, generator=None,
        )


def test_item_loss_is_the_share_weighted_sum_of_float32_constituent_losses():
    inputs = _inputs(6, 4, 2)
    composed = _compose(inputs, "randpatch4")
    logits = [torch.randn(n, 4, generator=torch.Generator().manual_seed(n)).to(torch.bfloat16) for n in (6, 4, 2, 2)]
    loss, records = constituent_losses(logits, inputs, composed.shares)

    suffixes = ("", "_b", "_c", "_d")
    per_slot = [F.cross_entropy(x.float(), inputs[f"labels{s}"], reduction="none") for x, s in zip(logits, suffixes)]
    expected = torch.zeros(6)
    for share, slot_loss in zip(composed.shares, per_slot):
        expected[: share.shape[0]] += share * slot_loss
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected.mean())
    assert [r[0].tolist() for r in records] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9], [10, 11], [12, 13]]
    for (_, slot_loss, correct), reference, logits_of_slot, suffix in zip(records, per_slot, logits, suffixes):
        assert slot_loss.dtype == torch.float32 and torch.equal(slot_loss, reference)
        assert torch.equal(correct, logits_of_slot.argmax(-1) == inputs[f"labels{suffix}"])


def test_loss_weight_scales_each_item_loss_exactly_and_leaves_records_alone():
    inputs = _inputs(5, 3)
    composed = _compose(inputs)
    logits = [torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), None]
    logits[1] = logits[0][:3]
    plain, records = constituent_losses(logits, inputs, composed.shares)
    ones, _ = constituent_losses(logits, inputs, composed.shares, torch.ones(5))
    weight = torch.tensor([0.0, 2.0, 1.0, 0.5, 3.0])
    weighted, weighted_records = constituent_losses(logits, inputs, composed.shares, weight)

    item_loss = torch.zeros(5)
    for share, (_, slot_loss, _) in zip(composed.shares, records):
        item_loss[: share.shape[0]] += share * slot_loss
    assert torch.equal(ones, plain)
    assert torch.equal(weighted, (item_loss * weight).mean())
    for a, b in zip(records, weighted_records):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="one weight per item"):
        constituent_losses(logits, inputs, composed.shares, torch.ones(3))


@pytest.mark.parametrize("four_way, rows", [("none", (5, 3)), ("randpatch4", (6, 4, 2))])
def test_composite_weights_weigh_every_composite_item_and_no_single(four_way, rows):
    composed = _compose(_inputs(*rows), four_way)
    assert composite_weights(composed, 1.0) is None
    weights = composite_weights(composed, 2.0)
    groups = composed.num_groups
    assert groups == rows[1] and weights.dtype == torch.float32
    assert weights[:groups].tolist() == [2.0] * groups and weights[groups:].tolist() == [1.0] * (rows[0] - groups)
    assert composite_weights(_compose(_inputs(3)), 2.0) is None


def test_slot_logits_without_split_reuse_the_whole_inputs_logits_for_slot_b():
    composed = _compose(_inputs(5, 3))
    composed.owner = None
    calls = []
    full = torch.randn(5, 4)
    logits = slot_logits(composed, torch.nn.Identity(), lambda x: calls.append(x) or full)
    assert len(calls) == 1 and calls[0] is composed.pixel_values
    assert torch.equal(logits[0], full) and torch.equal(logits[1], full[:3])


def test_split_slot_logits_of_a_single_are_the_models_own_logits():
    model = make_model(output_stride=16).eval()
    timm_model = unwrap_timm_model(model)
    _, grid = check_composable(timm_model, (32, 32), "randpatch", True, 0.5, "none")
    composed = _compose(_inputs(3, 1, size=32), grid=grid, ratio=0.5)
    with torch.no_grad():
        logits = slot_logits(composed, model, lambda x: model(x).logits)
        plain = model(composed.pixel_values).logits
    assert [tuple(l.shape) for l in logits] == [(3, 4), (1, 4)]
    torch.testing.assert_close(logits[0][1:], plain[1:], rtol=1e-5, atol=1e-5)  # singles pool over every cell


def test_check_composable_finds_the_grid_or_refuses_with_the_fix():
    timm_model = unwrap_timm_model(make_model(output_stride=16))
    layout, grid = check_composable(timm_model, (32, 32), "randpatch", True, 0.5, "randpatch4")
    assert layout is not None and grid == layout.grid == (2, 2)
    assert check_composable(timm_model, (32, 32), "randpatch", False, 0.5, "none")[0] is None
    assert check_composable(timm_model, (32, 32), "linavg", True, 0.5, "none") == (None, None)
    with pytest.raises(ValueError, match="output.stride"):
        check_composable(unwrap_timm_model(make_model()), (32, 32), "randpatch", True, 0.5, "none")


def test_mask_seeder_counts_micro_batches_per_step_and_differs_per_process():
    def draws(seeder, steps):
        return [torch.randint(0, 1 << 30, (1,), generator=seeder(step)).item() for step in steps]

    first = draws(MaskSeeder(0, 0), [0, 0, 1, 1, 1, 2])
    assert first == draws(MaskSeeder(0, 0), [0, 0, 1, 1, 1, 2])
    assert len(set(first)) == 6  # (step, micro) pairs all differ
    assert draws(MaskSeeder(0, 0), [1]) == [first[2]]  # a resumed run at step 1 starts at micro-batch 0
    assert draws(MaskSeeder(0, 1), [0]) != [first[0]] and draws(MaskSeeder(1, 0), [0]) != [first[0]]


def test_mixing_touches_only_the_singles_and_pairs_keep_their_composed_pixels():
    inputs = _inputs(7, 3)
    composed = _compose(inputs)
    mixing = BatchMixing(4, cutmix_alpha=1.0, mixup_alpha=1.0)
    mixed, targets = mix_singles(composed, inputs["labels"], mixing, seed=9)
    assert torch.equal(mixed.pixel_values[:3], composed.pixel_values[:3])
    assert not torch.equal(mixed.pixel_values[3:], composed.pixel_values[3:])
    assert targets.shape == (4, 4) and mixed.shares is composed.shares and mixed.owner is composed.owner
    expected, expected_targets = mixing(composed.pixel_values[3:], inputs["labels"][3:], seed=9)
    assert torch.equal(mixed.pixel_values[3:], expected) and torch.equal(targets, expected_targets)


def test_mixed_singles_train_on_soft_targets_and_record_their_own_label_loss():
    inputs = _inputs(6, 2)
    composed = _compose(inputs)
    logits = [torch.randn(6, 4, generator=torch.Generator().manual_seed(4)), None]
    logits[1] = logits[0][:2]
    targets = torch.softmax(torch.randn(4, 4, generator=torch.Generator().manual_seed(5)), -1)
    plain, records = constituent_losses(logits, inputs, composed.shares)
    loss, mixed_records = constituent_losses(logits, inputs, composed.shares, single_targets=targets)

    own_label = F.cross_entropy(logits[0], inputs["labels"], reduction="none")
    soft = -(targets * torch.log_softmax(logits[0][2:], -1)).sum(-1)
    item_loss = composed.shares[0] * torch.cat([own_label[:2], soft])
    item_loss[:2] += composed.shares[1] * F.cross_entropy(logits[1], inputs["labels_b"], reduction="none")
    torch.testing.assert_close(loss, item_loss.mean())
    assert not torch.allclose(loss, plain)
    for a, b in zip(records, mixed_records):  # the amenability metric reads the own-label loss either way
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    torch.testing.assert_close(mixed_records[0][1], own_label)


def test_label_smoothing_reaches_every_constituent_loss_but_not_the_records():
    inputs = _inputs(5, 3)
    composed = _compose(inputs)
    logits = [torch.randn(5, 4, generator=torch.Generator().manual_seed(6)), None]
    logits[1] = logits[0][:3]
    _, records = constituent_losses(logits, inputs, composed.shares)
    smoothed, smoothed_records = constituent_losses(logits, inputs, composed.shares, label_smoothing=0.1)
    item_loss = torch.zeros(5)
    for share, slot, suffix in zip(composed.shares, logits, ("", "_b")):
        smooth = F.cross_entropy(slot, inputs[f"labels{suffix}"], reduction="none", label_smoothing=0.1)
        item_loss[: share.shape[0]] += share * smooth
    torch.testing.assert_close(smoothed, item_loss.mean())
    for a, b in zip(records, smoothed_records):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_mixing_seeds_are_a_stream_of_their_own():
    masks, mixing = MaskSeeder(0, 0), MaskSeeder(0, 0, stream=MIXING_STREAM)
    assert masks.step_seed(3) != mixing.step_seed(3)
    assert MaskSeeder(0, 0, stream=MIXING_STREAM).step_seed(3) == MaskSeeder(0, 0, stream=MIXING_STREAM).step_seed(3)
