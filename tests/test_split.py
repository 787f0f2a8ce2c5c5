import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import timm
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from hf_intertrain.method.operators import cell_rectangle_masks, quadrant_owner, quadrant_splits, randpatch, randpatch4
from hf_intertrain.method.split import (
    FeatureLayout,
    check_splittable,
    feature_grid,
    forward_split,
    forward_split_by_owner,
    infer_feature_layout,
    split_logits,
    split_logits_by_owner,
    unwrap_timm_model,
)

# name -> (create_model kwargs, input size); every input gives a 4x4 feature grid.
MODELS = {
    "test_resnet": ({}, 128),
    "test_efficientnet": ({}, 128),
    "test_convnext": ({}, 128),
    "mobilenetv3_small_050": ({}, 128),
    "test_vit": ({"global_pool": "avg", "img_size": 64}, 64),
    "test_mambaout": ({}, 128),
}


def _create(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, **kwargs).eval()


@pytest.fixture(scope="module", params=list(MODELS))
def model_and_size(request):
    kwargs, size = MODELS[request.param]
    return _create(request.param, **kwargs), size


def _inputs(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _masks(batch: int, seed: int = 0) -> torch.Tensor:
    return cell_rectangle_masks(batch, (4, 4), 0.5, generator=torch.Generator().manual_seed(seed))


def _owner(batch: int, seed: int = 0) -> torch.Tensor:
    return quadrant_owner(quadrant_splits(batch, (4, 4), generator=torch.Generator().manual_seed(seed)), (4, 4))


def _cells(features: torch.Tensor, layout: FeatureLayout) -> torch.Tensor:
    """Grid cells as [B, h, w, C], written out per layout independently of split.py."""
    h, w = layout.grid
    if layout.fmt == "NCHW":
        return features.permute(0, 2, 3, 1)
    if layout.fmt == "NHWC":
        return features
    return features[:, layout.num_prefix_tokens :].reshape(features.shape[0], h, w, -1)


def _head_of_pooled(model: nn.Module, features: torch.Tensor, pooled: torch.Tensor, layout: FeatureLayout):
    """forward_head on one pooled vector presented as a 1x1 map or a single patch token."""
    if layout.fmt == "NCHW":
        return model.forward_head(pooled[None, :, None, None])
    if layout.fmt == "NHWC":
        return model.forward_head(pooled[None, None, None, :])
    prefix = features[:1, : layout.num_prefix_tokens]
    return model.forward_head(torch.cat([prefix, pooled[None, None, :]], dim=1))


def test_feature_layout_and_grid_of_supported_families(model_and_size):
    model, size = model_and_size
    layout = check_splittable(model, size)
    assert layout.grid == (4, 4) and feature_grid(model, size) == (4, 4)
    name = model.pretrained_cfg["architecture"]
    expected = {"test_vit": ("NLC", 1), "test_mambaout": ("NHWC", 0)}.get(name, ("NCHW", 0))
    assert (layout.fmt, layout.num_prefix_tokens) == expected


def test_all_true_mask_gives_ordinary_logits(model_and_size):
    model, size = model_and_size
    x = _inputs(2, size)
    with torch.no_grad():
        logits_a, logits_b = forward_split(model, x, torch.ones(2, 4, 4, dtype=torch.bool))
        expected = model(x)
    torch.testing.assert_close(logits_a, expected, atol=1e-5, rtol=1e-5)
    assert logits_b.shape == expected.shape and bool(torch.isfinite(logits_b).all())


def test_split_logits_equal_head_of_each_constituents_masked_mean(model_and_size):
    model, size = model_and_size
    x, mask = _inputs(3, size, seed=1), _masks(3, seed=1)
    with torch.no_grad():
        features = model.forward_features(x)
        layout = infer_feature_layout(model, features, (size, size))
        logits_a, logits_b = split_logits(model, features, mask, layout)
        cells = _cells(features, layout)
        for i in range(3):
            ref_a = _head_of_pooled(model, features[i : i + 1], cells[i][mask[i]].mean(0), layout)
            ref_b = _head_of_pooled(model, features[i : i + 1], cells[i][~mask[i]].mean(0), layout)
            torch.testing.assert_close(logits_a[i : i + 1], ref_a, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(logits_b[i : i + 1], ref_b, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(logits_a, logits_b, atol=1e-4)
        via_forward = forward_split(model, x, mask)
    torch.testing.assert_close(via_forward[0], logits_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(via_forward[1], logits_b, atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_each_constituents_own_cells(model_and_size):
    model, size = model_and_size
    mask = _masks(2, seed=2)
    with torch.no_grad():
        features = model.forward_features(_inputs(2, size, seed=2))
    layout = infer_feature_layout(model, features, (size, size))
    for region, pick in ((mask, 0), (~mask, 1)):
        features = features.detach().requires_grad_(True)
        logits = split_logits(model, features, mask, layout)[pick]
        (grad,) = torch.autograd.grad(logits.sum(), features)
        grad_cells = _cells(grad, layout)
        assert bool((grad_cells[~region] == 0).all())
        assert bool((grad_cells[region].abs().sum(-1) > 0).all())


def test_rows_b_restricts_b_logits_and_empty_region_is_finite_without_gradient():
    model = _create("test_resnet")
    mask = _masks(3, seed=3)
    mask[0] = True  # item 0 is a single
    with torch.no_grad():
        features = model.forward_features(_inputs(3, 128, seed=3))
    layout = infer_feature_layout(model, features, (128, 128))
    features.requires_grad_(True)
    logits_a, logits_b = split_logits(model, features, mask, layout)
    _, logits_b_rows = split_logits(model, features, mask, layout, rows_b=torch.tensor([1, 2]))
    _, logits_b_bool = split_logits(model, features, mask, layout, rows_b=torch.tensor([False, True, True]))
    torch.testing.assert_close(logits_b_rows, logits_b[1:])
    torch.testing.assert_close(logits_b_bool, logits_b[1:])
    assert bool(torch.isfinite(logits_b[0]).all())
    (grad,) = torch.autograd.grad(logits_b[0].sum(), features)
    assert bool((grad == 0).all())


def test_explicit_head_replaces_forward_head():
    model = _create("test_convnext")
    mask = _masks(2, seed=8)
    with torch.no_grad():
        features = model.forward_features(_inputs(2, 128, seed=8))
        layout = infer_feature_layout(model, features)
        pre_a, pre_b = split_logits(model, features, mask, layout, head=lambda x: model.forward_head(x, pre_logits=True))
        logits_a, logits_b = split_logits(model, features, mask, layout)
    assert pre_a.shape == pre_b.shape == (2, model.num_features)
    torch.testing.assert_close(model.head.fc(pre_a), logits_a)
    torch.testing.assert_close(model.head.fc(pre_b), logits_b)


def test_pair_loss_on_randpatch_batch_backpropagates_to_the_stem_in_training_mode():
    model = _create("test_resnet").train()
    x_a, x_b = _inputs(4, 128, seed=4), _inputs(4, 128, seed=5)
    mask = _masks(4, seed=4)
    mixed, ratio = randpatch(x_a, x_b, mask)
    logits_a, logits_b = forward_split(model, mixed, mask)
    labels_a, labels_b = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7])
    ce = nn.functional.cross_entropy
    loss = (ratio * ce(logits_a, labels_a, reduction="none") + (1 - ratio) * ce(logits_b, labels_b, reduction="none")).mean()
    loss.backward()
    stem_weight = next(model.parameters())
    assert stem_weight.grad is not None and stem_weight.grad.abs().sum() > 0
    assert model.training


def test_timm_wrapper_for_image_classification_is_supported():
    torch.manual_seed(0)
    wrapper = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="test_resnet", num_labels=10)).eval()
    assert unwrap_timm_model(wrapper) is wrapper.timm_model
    assert feature_grid(wrapper, 128) == (4, 4)
    assert check_splittable(wrapper, 128).grid == (4, 4)
    x, mask = _inputs(2, 128), _masks(2, seed=6)
    with torch.no_grad():
        logits_a, _ = forward_split(wrapper, x, torch.ones(2, 4, 4, dtype=torch.bool))
        torch.testing.assert_close(logits_a, wrapper(x).logits, atol=1e-5, rtol=1e-5)
        split_a, split_b = forward_split(wrapper, x, mask)
        features = wrapper.timm_model.forward_features(x)
        direct_a, direct_b = split_logits(wrapper, features, mask, infer_feature_layout(wrapper, features))
    torch.testing.assert_close(split_a, direct_a)
    torch.testing.assert_close(split_b, direct_b)
    assert "forward_head" not in vars(wrapper.timm_model)


class _CountingWrapper(nn.Module):
    """A stand-in for an accelerate/DDP-style wrapper: holds the model in `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.module(x)


def test_forward_split_runs_through_the_wrappers_own_forward():
    inner = _create("test_convnext")
    wrapper = _CountingWrapper(inner)
    assert unwrap_timm_model(wrapper) is inner
    x = _inputs(2, 128)
    with torch.no_grad():
        logits_a, _ = forward_split(wrapper, x, torch.ones(2, 4, 4, dtype=torch.bool))
    assert wrapper.calls == 1
    torch.testing.assert_close(logits_a, inner(x), atol=1e-5, rtol=1e-5)


def test_forward_split_works_under_distributed_data_parallel(tmp_path):
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(_create("test_resnet").train())
        mask = _masks(2, seed=7)
        logits_a, logits_b = forward_split(model, _inputs(2, 128, seed=7), mask)
        (logits_a.sum() + logits_b.sum()).backward()
        assert model.module.fc.weight.grad is not None and model.module.fc.weight.grad.abs().sum() > 0
        assert logits_a.shape == logits_b.shape == (2, 10)
    finally:
        if started:
            dist.destroy_process_group()


def test_mask_not_matching_grid_is_rejected_with_both_shapes():
    model = _create("test_resnet")
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(4, 4\)"):
        forward_split(model, _inputs(2, 128), torch.ones(2, 2, 2, dtype=torch.bool))
    assert "forward_head" not in vars(model)


def test_token_pooling_vit_is_rejected_naming_global_pool():
    with pytest.raises(ValueError, match="global_pool"):
        check_splittable(_create("test_vit", img_size=64), 64)


@pytest.mark.parametrize("pool", ["max", "avgmax"])
def test_max_pooling_is_rejected(pool):
    with pytest.raises(ValueError, match="plain average"):
        check_splittable(_create("test_resnet", global_pool=pool), 128)


def test_attention_pooling_vit_is_rejected():
    with pytest.raises(ValueError, match="global_pool"):
        check_splittable(_create("test_vit", img_size=64, global_pool="map"), 64)


def test_one_cell_grid_is_rejected_naming_output_stride():
    with pytest.raises(ValueError, match="output stride") as error:
        check_splittable(_create("test_resnet"), 32)
    assert "1x1" in str(error.value) and "test_resnet" in str(error.value)


def test_check_splittable_restores_each_modules_training_mode_also_on_error():
    model = _create("test_resnet").train()
    model.bn1.eval()  # e.g. a frozen BatchNorm
    modes = {name: m.training for name, m in model.named_modules()}
    check_splittable(model, 128)
    assert {name: m.training for name, m in model.named_modules()} == modes
    with pytest.raises(ValueError):
        check_splittable(model, 32)
    assert {name: m.training for name, m in model.named_modules()} == modes
    model.eval()
    feature_grid(model, 128)
    assert not any(m.training for m in model.modules())


def test_layout_tie_between_nchw_and_nhwc_uses_output_fmt():
    resnet, mambaout = _create("test_resnet"), _create("test_mambaout")
    assert infer_feature_layout(resnet, torch.zeros(1, 96, 3, 96)) == FeatureLayout("NCHW", (3, 96))
    assert infer_feature_layout(mambaout, torch.zeros(1, 64, 3, 64)) == FeatureLayout("NHWC", (64, 3))
    with pytest.raises(ValueError, match="num_features"):
        infer_feature_layout(resnet, torch.zeros(1, 5, 3, 3))
    with pytest.raises(ValueError, match="NCHW"):
        infer_feature_layout(resnet, torch.zeros(1, 96))


def test_token_grid_follows_input_size_for_dynamic_image_size():
    vit = _create("test_vit", img_size=64, global_pool="avg", dynamic_img_size=True)
    assert feature_grid(vit, (96, 64)) == (6, 4)
    assert feature_grid(vit, (128, 32)) == (8, 2)  # as many tokens as the default 4x4 grid
    assert feature_grid(vit, 64) == (4, 4)
    x = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits_a, _ = forward_split(vit, x, torch.ones(1, 6, 4, dtype=torch.bool))
        torch.testing.assert_close(logits_a, vit(x), atol=1e-5, rtol=1e-5)


def test_split_logits_by_owner_equal_head_of_each_slots_masked_mean(model_and_size):
    model, size = model_and_size
    x, owner = _inputs(3, size, seed=9), _owner(3, seed=9)
    # Every (item, slot) once, in a shuffled order.
    order = torch.randperm(12, generator=torch.Generator().manual_seed(9))
    rows, slots = torch.arange(3).repeat_interleave(4)[order], torch.arange(4).repeat(3)[order]
    with torch.no_grad():
        features = model.forward_features(x)
        layout = infer_feature_layout(model, features, (size, size))
        logits = split_logits_by_owner(model, features, owner, layout, rows, slots)
        cells = _cells(features, layout)
        for r, (item, slot) in enumerate(zip(rows.tolist(), slots.tolist())):
            region = owner[item] == slot
            expected = _head_of_pooled(model, features[item : item + 1], cells[item][region].mean(0), layout)
            torch.testing.assert_close(logits[r : r + 1], expected, atol=1e-5, rtol=1e-4)
        via_forward = forward_split_by_owner(model, x, owner, rows, slots)
    assert logits.shape == (12, 10)
    torch.testing.assert_close(via_forward, logits, atol=1e-5, rtol=1e-5)


def test_gradients_of_a_slots_logits_reach_only_its_cells(model_and_size):
    model, size = model_and_size
    owner = _owner(2, seed=10)
    with torch.no_grad():
        features = model.forward_features(_inputs(2, size, seed=10))
    layout = infer_feature_layout(model, features, (size, size))
    for slot in range(4):
        features = features.detach().requires_grad_(True)
        logits = split_logits_by_owner(model, features, owner, layout, torch.arange(2), torch.full((2,), slot))
        (grad,) = torch.autograd.grad(logits.sum(), features)
        grad_cells = _cells(grad, layout)
        assert bool((grad_cells[owner != slot] == 0).all())
        assert bool((grad_cells[owner == slot].abs().sum(-1) > 0).all())


def test_slot_without_cells_gives_finite_logits_without_gradient_and_pairs_are_slots_0_and_1():
    model = _create("test_resnet")
    mask = _masks(3, seed=11)
    with torch.no_grad():
        features = model.forward_features(_inputs(3, 128, seed=11))
    layout = infer_feature_layout(model, features, (128, 128))
    features.requires_grad_(True)
    owner = (~mask).long()
    empty = split_logits_by_owner(model, features, owner, layout, torch.tensor([0]), torch.tensor([3]))
    assert bool(torch.isfinite(empty).all())
    (grad,) = torch.autograd.grad(empty.sum(), features)
    assert bool((grad == 0).all())
    logits_a, logits_b = split_logits(model, features, mask, layout, rows_b=torch.tensor([2, 0]))
    by_owner = split_logits_by_owner(model, features, owner, layout, torch.tensor([0, 1, 2, 2, 0]), torch.tensor([0, 0, 0, 1, 1]))
    torch.testing.assert_close(torch.cat([logits_a, logits_b]), by_owner)


def test_randpatch4_batch_trains_through_forward_split_by_owner():
    model = _create("test_resnet").train()
    splits = quadrant_splits(2, (4, 4), generator=torch.Generator().manual_seed(12))
    mixed, ratios = randpatch4([_inputs(2, 128, seed=12 + k) for k in range(4)], splits, (4, 4))
    rows, slots = torch.arange(2).repeat_interleave(4), torch.arange(4).repeat(2)
    logits = forward_split_by_owner(model, mixed, quadrant_owner(splits, (4, 4)), rows, slots)
    losses = nn.functional.cross_entropy(logits, torch.arange(8), reduction="none")
    (ratios.flatten() * losses).sum().backward()
    stem_weight = next(model.parameters())
    assert stem_weight.grad is not None and stem_weight.grad.abs().sum() > 0
    assert logits.shape == (8, 10) and "forward_head" not in vars(model)


def test_owner_not_matching_grid_or_rows_is_rejected_naming_the_fix():
    model = _create("test_resnet")
    with pytest.raises(ValueError, match=r"owner grid \(2, 2\).*\(4, 4\).*quadrant_owner"):
        forward_split_by_owner(model, _inputs(2, 128), torch.zeros(2, 2, 2, dtype=torch.long), torch.arange(2), torch.zeros(2))
    assert "forward_head" not in vars(model)
    with torch.no_grad():
        features = model.forward_features(_inputs(2, 128))
    layout = infer_feature_layout(model, features)
    with pytest.raises(ValueError, match=r"owner of shape \(3, 4, 4\).*quadrant_owner"):
        split_logits_by_owner(model, features, _owner(3), layout, torch.arange(2), torch.zeros(2))
    with pytest.raises(ValueError, match="one slot per requested row"):
        split_logits_by_owner(model, features, _owner(2), layout, torch.arange(2), torch.zeros(3))
