"""Split propagation for RandPatch pairs and 4-way composites (docs/method.md, "Split propagation").

A RandPatch input holds constituent a inside a rectangle of whole feature-grid cells and b
elsewhere. Split propagation runs the backbone once, then pools each constituent only over
its own cells and runs the rest of the head on each pooled vector, so that ``L_a`` and
``L_b`` (paper eq. 2 and 3) come from the constituents' own features and, in the backward
pass, each error reaches only its own cells.

Only timm's public model contract is used: ``forward_features``, ``forward_head(x,
pre_logits=False)``, ``num_features``, ``num_prefix_tokens`` and ``patch_embed`` for token
models. Pooling over a region is done by *weighting* the grid cells before the model's own
``forward_head``: cells of the region get weight ``h * w / area``, the others 0, so the head's
global average pool yields the exact masked mean and everything after the pool (MobileNetV3's
conv head, ConvNeXt's norm, ViT's ``fc_norm``) runs per constituent unchanged. This is exact
only when the head starts with a plain spatial average over the grid cells;
``check_splittable`` verifies that numerically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "FeatureLayout",
    "unwrap_timm_model",
    "infer_feature_layout",
    "feature_grid",
    "check_splittable",
    "split_logits",
    "forward_split",
    "split_logits_by_owner",
    "forward_split_by_owner",
]

_FORMATS = ("NCHW", "NHWC", "NLC")


@dataclass(frozen=True)
class FeatureLayout:
    """How ``forward_features`` lays out its output.

    Attributes:
        fmt: ``"NCHW"``, ``"NHWC"`` or ``"NLC"`` (a token sequence, ViT-like).
        grid: Final feature-grid size ``(h, w)``; a RandPatch cell is one grid position.
        num_prefix_tokens: Leading non-spatial tokens (CLS, registers) of an ``"NLC"`` layout.
    """

    fmt: str
    grid: tuple[int, int]
    num_prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if self.fmt not in _FORMATS:
            raise ValueError(f"FeatureLayout.fmt must be one of {_FORMATS}, got {self.fmt!r}.")

    @property
    def num_cells(self) -> int:
        return self.grid[0] * self.grid[1]


def unwrap_timm_model(model: nn.Module) -> nn.Module:
    """Return the timm model inside ``model``.

    Peels DDP / accelerate wrappers (``.module``), ``torch.compile`` (``._orig_mod``) and
    ``transformers.TimmWrapperForImageClassification`` (``.timm_model``) until a module with
    timm's ``forward_features`` / ``forward_head`` contract is found.
    """
    current = model
    for _ in range(16):
        if hasattr(current, "forward_features") and hasattr(current, "forward_head"):
            return current
        for attr in ("timm_model", "module", "_orig_mod"):
            inner = getattr(current, attr, None)
            if isinstance(inner, nn.Module):
                current = inner
                break
        else:
            break
    raise ValueError(
        f"{type(model).__name__} is not a timm model (no forward_features/forward_head): "
        "use a timm model (timm.create_model) or a transformers TimmWrapperForImageClassification."
    )


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    name = cfg.get("architecture") if isinstance(cfg, dict) else getattr(cfg, "architecture", None)
    return name or type(model).__name__


def _pair(size: int | tuple[int, int] | torch.Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _token_grid(model: nn.Module, num_tokens: int, image_size: tuple[int, int] | None) -> tuple[int, int]:
    """Grid of the patch tokens: from the input size when known, else ``patch_embed.grid_size``, else a square.

    The input size comes first because with ``dynamic_img_size`` a non-square input can have
    as many tokens as the default grid (128x32 and 64x64 both give 16 tokens of 16 pixels).
    """
    patch_embed = getattr(model, "patch_embed", None)
    patch_size = getattr(patch_embed, "patch_size", None)
    if patch_size is not None and image_size is not None:
        ph, pw = _pair(patch_size)
        for gh, gw in (
            (image_size[0] // ph, image_size[1] // pw),
            (-(-image_size[0] // ph), -(-image_size[1] // pw)),  # padded patch embedding
        ):
            if gh * gw == num_tokens:
                return gh, gw
    grid_size = getattr(patch_embed, "grid_size", None)
    if grid_size is not None:
        gh, gw = _pair(grid_size)
        if gh * gw == num_tokens:
            return gh, gw
    side = math.isqrt(num_tokens)
    if side * side == num_tokens:
        return side, side
    raise ValueError(
        f"cannot place {num_tokens} patch tokens of {_model_name(model)} on a grid: "
        "use a square image_size that is a multiple of the patch size, or split_propagation false."
    )


def infer_feature_layout(
    model: nn.Module, features: Tensor, image_size: tuple[int, int] | None = None
) -> FeatureLayout:
    """Infer the layout of ``forward_features``' output from its shape.

    4-D: channels on dim 1 (``NCHW``) or last (``NHWC``) by comparing with ``num_features``;
    when both match (e.g. ``C == W``) ``model.output_fmt`` decides, ``NCHW`` by default.
    3-D: tokens (``NLC``) whose first ``num_prefix_tokens`` are not spatial; the grid is
    ``image_size // patch_size`` when that matches the token count, else
    ``patch_embed.grid_size`` when that matches, else a square.

    Args:
        model: A timm model or a wrapper of one.
        features: Output of ``forward_features``.
        image_size: Input ``(H, W)``; needed only for token models with a dynamic image size.
    """
    timm_model = unwrap_timm_model(model)
    num_features = getattr(timm_model, "num_features", None)
    if features.dim() == 4:
        output_fmt = getattr(timm_model, "output_fmt", None)
        output_fmt = getattr(output_fmt, "value", output_fmt)
        channels_first = num_features is None or features.shape[1] == num_features
        channels_last = num_features is None or features.shape[3] == num_features
        if channels_first and channels_last:
            fmt = "NHWC" if output_fmt == "NHWC" else "NCHW"
        elif channels_first:
            fmt = "NCHW"
        elif channels_last:
            fmt = "NHWC"
        else:
            raise ValueError(
                f"features of shape {tuple(features.shape)} from {_model_name(timm_model)} have neither dim 1 nor dim 3 "
                f"equal to num_features={num_features}: split propagation needs a timm model, or set split_propagation false."
            )
        grid = (features.shape[2], features.shape[3]) if fmt == "NCHW" else (features.shape[1], features.shape[2])
        return FeatureLayout(fmt, (int(grid[0]), int(grid[1])))
    if features.dim() == 3:
        prefix = int(getattr(timm_model, "num_prefix_tokens", 0) or 0)
        num_tokens = features.shape[1] - prefix
        if num_tokens < 1:
            raise ValueError(
                f"{_model_name(timm_model)} returns {features.shape[1]} tokens with {prefix} prefix tokens, "
                "so no patch tokens: use a larger image_size, or set split_propagation false."
            )
        return FeatureLayout("NLC", _token_grid(timm_model, num_tokens, image_size), prefix)
    raise ValueError(
        f"cannot split features of shape {tuple(features.shape)} from {_model_name(timm_model)} (expected NCHW, NHWC "
        "or NLC): set split_propagation false or use interpolation linavg."
    )


@contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for a probe; restores each submodule's own mode (also on errors)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _probe_features(timm_model: nn.Module, image_size: tuple[int, int]) -> Tensor:
    """``forward_features`` on one zero image of 3 channels, in eval mode (BatchNorm rejects batch 1 in training)."""
    param = next(timm_model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    with _eval_no_grad(timm_model):
        return timm_model.forward_features(torch.zeros(1, 3, *image_size, dtype=dtype, device=device))


def feature_grid(model: nn.Module, image_size: int | tuple[int, int]) -> tuple[int, int]:
    """Size ``(h, w)`` of the model's final feature grid for inputs of ``image_size``.

    Found by probing ``forward_features`` once (eval mode, no_grad; the previous mode is
    restored), so it holds for any stride, padding or patch size. RandPatch cells are these
    grid positions (docs/method.md, "Operators").
    """
    size = _pair(image_size)
    timm_model = unwrap_timm_model(model)
    return infer_feature_layout(timm_model, _probe_features(timm_model, size), size).grid


def _grid_cells(features: Tensor, layout: FeatureLayout) -> Tensor:
    """Grid cells as ``[B, h * w, C]`` (prefix tokens dropped)."""
    if layout.fmt == "NCHW":
        return features.flatten(2).transpose(1, 2)
    if layout.fmt == "NHWC":
        return features.flatten(1, 2)
    return features[:, layout.num_prefix_tokens :]


def _with_grid_cells(features: Tensor, cells: Tensor, layout: FeatureLayout) -> Tensor:
    """``features`` with its grid cells replaced by ``cells`` ``[B, h * w, C]`` (prefix tokens kept)."""
    h, w = layout.grid
    if layout.fmt == "NCHW":
        return cells.transpose(1, 2).reshape(features.shape)
    if layout.fmt == "NHWC":
        return cells.reshape(features.shape)
    return torch.cat([features[:, : layout.num_prefix_tokens], cells], dim=1)


def _weight_grid(features: Tensor, weights: Tensor, layout: FeatureLayout) -> Tensor:
    """Multiply each grid cell by ``weights`` ``[B, h, w]``; prefix tokens untouched.

    The product is formed in at least float32 so that ``h * w / area`` does not lose precision
    under bf16/fp16 autocast, then cast back to the features' dtype.
    """
    compute_dtype = torch.promote_types(features.dtype, torch.float32)
    weights = weights.to(device=features.device, dtype=compute_dtype)
    if layout.fmt == "NCHW":
        return (features * weights[:, None]).to(features.dtype)
    if layout.fmt == "NHWC":
        return (features * weights[..., None]).to(features.dtype)
    prefix = layout.num_prefix_tokens
    cells = (features[:, prefix:] * weights.flatten(1)[..., None]).to(features.dtype)
    return torch.cat([features[:, :prefix], cells], dim=1)


def _region_weights(region: Tensor) -> Tensor:
    """Weights ``region * h * w / area`` (float32); rows with an empty region get all zeros, not NaN."""
    num_cells = region.shape[1] * region.shape[2]
    area = region.sum(dim=(1, 2), keepdim=True).clamp(min=1)
    return region.float() * (num_cells / area.float())


def _unsplittable_pooling_message(name: str, grid: tuple[int, int], what: str) -> str:
    return (
        f"{name} {what} on its {grid[0]}x{grid[1]} feature grid, so split RandPatch cannot separate the constituents: "
        'use average pooling (model_kwargs {"global_pool": "avg"}), interpolation linavg, or split_propagation false.'
    )


def check_splittable(model: nn.Module, image_size: int | tuple[int, int]) -> FeatureLayout:
    """Fail early, with the fix, when split propagation cannot be exact for this model and input size.

    Probes ``forward_features`` (eval mode, no_grad, modes restored) and requires a grid of at
    least 2 cells. Then checks on random features (batch 2) in the detected layout that
    ``forward_head`` depends on the grid cells through their plain average only:
    (1) replacing every cell by the cells' mean must not change the output, which rules out
    max, avg+max and attention pooling, and pre-pool non-linearities; (2) changing the cells
    while keeping the prefix tokens must change the output, which rules out CLS-token pooling.
    Both are compared on ``pre_logits`` so that a zero-initialised classifier cannot hide them,
    with a relative tolerance of ``max(1e-3, 4 * eps)`` of the model's dtype. The check is a
    numerical probe, not a proof: a head that is average-like on random features only is not caught.

    Returns:
        The model's ``FeatureLayout`` at ``image_size``.
    """
    size = _pair(image_size)
    timm_model = unwrap_timm_model(model)
    name = _model_name(timm_model)
    probe = _probe_features(timm_model, size)
    layout = infer_feature_layout(timm_model, probe, size)
    if layout.num_cells < 2:
        raise ValueError(
            f"{name} at image_size {size[0]}x{size[1]} has a {layout.grid[0]}x{layout.grid[1]} feature grid, "
            "too small for split RandPatch: use a larger image_size, a smaller output stride "
            '(e.g. model_kwargs {"output_stride": 16}), interpolation linavg, or split_propagation false.'
        )

    # Spread-out features (std 16) make attention pooling clearly non-uniform, so it cannot pass as an average.
    generator = torch.Generator().manual_seed(0)
    shape = (2, *probe.shape[1:])
    features = 16 * torch.randn(shape, generator=generator)
    cells = _grid_cells(features, layout)
    averaged = _with_grid_cells(features, cells.mean(dim=1, keepdim=True).expand_as(cells), layout)
    changed = _with_grid_cells(features, _grid_cells(16 * torch.randn(shape, generator=generator), layout), layout)
    batch = torch.cat([features, averaged, changed]).to(probe.device, probe.dtype)
    with _eval_no_grad(timm_model):
        out, out_averaged, out_changed = timm_model.forward_head(batch, pre_logits=True).float().chunk(3)

    # Relative tolerance: loose enough for TF32 / half-precision rounding, far below what max,
    # attention or CLS pooling change.
    relative = max(1e-3, 4 * torch.finfo(probe.dtype).eps)
    tolerance = relative * max(out.abs().max().item(), out_averaged.abs().max().item(), 1e-6)
    if (out - out_averaged).abs().max().item() > tolerance:
        raise ValueError(_unsplittable_pooling_message(name, layout.grid, "does not pool by a plain average"))
    if (out - out_changed).abs().max().item() <= tolerance:
        raise ValueError(_unsplittable_pooling_message(name, layout.grid, "ignores its grid cells when pooling (CLS-token pooling)"))
    return layout


def _rows_and_slots(rows: Tensor, slots: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """``rows`` and ``slots`` as long ``[R]`` tensors on ``device``, checked to pair up."""
    rows = torch.as_tensor(rows, device=device).long()
    slots = torch.as_tensor(slots, device=device).long()
    if rows.dim() != 1 or rows.shape != slots.shape:
        raise ValueError(
            f"rows and slots must be 1-D and of equal length, got shapes {tuple(rows.shape)} and {tuple(slots.shape)}: "
            "pass one slot per requested row."
        )
    return rows, slots


def split_logits_by_owner(
    model: nn.Module,
    features: Tensor,
    owner: Tensor,
    layout: FeatureLayout,
    rows: Tensor,
    slots: Tensor,
    head: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Logits of any constituent of any item from its own cells (docs/method.md, "Split propagation").

    The N-way form of split propagation (pairs, and the 4-way composites of docs/method.md, "Four-way composites"): output
    row ``r`` pools item ``rows[r]``'s features over the cells whose owner is ``slots[r]``.
    One ``forward_head`` call runs on all requested rows; cell weights ``region * h * w / area``
    make the model's own average pool return the mean over the region, and cells outside it get
    weight 0, so their gradient from that row is exactly 0. A row whose slot owns no cell gets
    all-zero weights: finite logits that carry no gradient to the features.

    Args:
        model: A timm model (or wrapper) whose head average-pools (see ``check_splittable``).
        features: Output of ``forward_features`` for the batch, in ``layout``.
        owner: Int ``[B, h, w]``, the slot owning each cell (``operators.quadrant_owner``).
        layout: From ``infer_feature_layout``.
        rows: Long ``[R]``, the item of each output row.
        slots: Long ``[R]``, the slot (constituent) of each output row.
        head: Callable used instead of the model's ``forward_head`` (see ``split_logits``).

    Returns:
        Logits ``[R, K]``.
    """
    if head is None:
        head = unwrap_timm_model(model).forward_head
    batch = features.shape[0]
    if tuple(owner.shape) != (batch, *layout.grid):
        raise ValueError(
            f"owner of shape {tuple(owner.shape)} does not match the features' batch and {layout.grid[0]}x{layout.grid[1]} grid "
            f"(expected {(batch, *layout.grid)}): build it with quadrant_owner(splits, feature_grid(model, image_size))."
        )
    rows, slots = _rows_and_slots(rows, slots, features.device)
    region = owner.to(features.device)[rows] == slots.view(-1, 1, 1)
    return head(_weight_grid(features[rows], _region_weights(region), layout))


def split_logits(
    model: nn.Module,
    features: Tensor,
    mask: Tensor,
    layout: FeatureLayout,
    rows_b: Tensor | None = None,
    head: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Logits of each constituent of a RandPatch pair from its own cells (docs/method.md, "Split propagation").

    ``split_logits_by_owner`` with a as slot 0 (the mask's cells) and b as slot 1: one
    ``forward_head`` call runs on ``[a-weighted rows; b-weighted rows]``, and each constituent's
    logits carry gradient only to its own cells. Rows with an empty region (e.g. b of a single,
    whose mask is all True) get finite logits without gradient; leave them out with ``rows_b``
    or give them zero loss weight.

    Args:
        model: A timm model (or wrapper) whose head average-pools (see ``check_splittable``).
        features: Output of ``forward_features`` for the batch, in ``layout``.
        mask: Bool ``[B, h, w]``, True on constituent a's cells.
        layout: From ``infer_feature_layout``.
        rows_b: Rows (long indices or a bool ``[B]`` mask) for which b's logits are needed;
            None means all rows. Singles need no b logits.
        head: Callable used instead of the model's ``forward_head``: pass the original bound
            method when ``forward_head`` itself is temporarily swapped for a split head.

    Returns:
        ``(logits_a [B, K], logits_b [len(rows_b), K])``.
    """
    batch = features.shape[0]
    if tuple(mask.shape) != (batch, *layout.grid):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match the features' batch and {layout.grid[0]}x{layout.grid[1]} grid "
            f"(expected {(batch, *layout.grid)}): draw masks with cell_rectangle_masks(batch, feature_grid(model, image_size))."
        )
    device = features.device
    if rows_b is None:
        rows_b = torch.arange(batch, device=device)
    elif rows_b.dtype == torch.bool:
        rows_b = rows_b.to(device).nonzero().squeeze(1)
    else:
        rows_b = rows_b.to(device=device, dtype=torch.long)
    owner = (~mask.to(device=device, dtype=torch.bool)).long()
    rows = torch.cat([torch.arange(batch, device=device), rows_b])
    slots = torch.cat([torch.zeros(batch, dtype=torch.long, device=device), torch.ones_like(rows_b)])
    logits = split_logits_by_owner(model, features, owner, layout, rows, slots, head=head)
    return logits[:batch], logits[batch:]


def _logits_of(output: object) -> Tensor:
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, dict) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ValueError(f"cannot find logits in a model output of type {type(output).__name__}: return a tensor or an object with .logits.")


def _forward_with_split_head(
    model: nn.Module,
    pixel_values: Tensor,
    grid_of: Tensor,
    what: str,
    fix: str,
    split: Callable[[nn.Module, Tensor, FeatureLayout, Callable[[Tensor], Tensor]], Tensor],
) -> Tensor:
    """Run ``model(pixel_values)`` once with the timm model's ``forward_head`` replaced by ``split``.

    The call goes through ``model``'s own ``__call__`` (so DDP's gradient synchronisation,
    accelerate's autocast and output casting, and TimmWrapperForImageClassification all stay in
    effect); the swap holds for this call only and is undone also on errors. Inside, the layout
    is inferred from the features and ``grid_of``'s ``[B, h, w]`` grid is checked against it
    (the error names ``what`` and ends with ``fix``) before ``split`` computes the rows' logits.
    """
    timm_model = unwrap_timm_model(model)
    image_size = (pixel_values.shape[-2], pixel_values.shape[-1])
    own_head = timm_model.__dict__.get("forward_head")
    original_head = timm_model.forward_head
    num_rows: list[int] = []

    def split_head(features: Tensor, pre_logits: bool = False) -> Tensor:
        layout = infer_feature_layout(timm_model, features, image_size)
        if tuple(grid_of.shape[1:]) != layout.grid:
            raise ValueError(
                f"{what} grid {tuple(grid_of.shape[1:])} does not match the feature grid {layout.grid} of "
                f"{_model_name(timm_model)} at {image_size[0]}x{image_size[1]}: {fix}"
            )
        logits = split(timm_model, features, layout, lambda x: original_head(x, pre_logits=pre_logits))
        num_rows.append(logits.shape[0])
        return logits

    timm_model.forward_head = split_head
    try:
        logits = _logits_of(model(pixel_values))
    finally:
        if own_head is None:
            del timm_model.forward_head
        else:
            timm_model.forward_head = own_head
    if len(num_rows) != 1:
        raise ValueError(
            f"{_model_name(timm_model)}'s forward called forward_head {len(num_rows)} times (expected once): "
            "split propagation needs forward(x) = forward_head(forward_features(x)); set split_propagation false."
        )
    return logits[: num_rows[0]]


def forward_split_by_owner(model: nn.Module, pixel_values: Tensor, owner: Tensor, rows: Tensor, slots: Tensor) -> Tensor:
    """Forward a batch of N-way composites once and return the requested constituents' logits.

    ``forward_features`` runs once through ``model``'s own ``__call__`` with ``forward_head``
    swapped, for this call only, for ``split_logits_by_owner`` (see ``forward_split``; the
    model's forward must call ``self.forward_head``, as every timm model's does).

    Args:
        model: timm model, TimmWrapperForImageClassification, or a DDP/accelerate wrapper of either.
        pixel_values: ``[B, 3, H, W]`` composites (``operators.randpatch4`` / ``operators.mosaic4``).
        owner: Int ``[B, h, w]`` on the feature grid, the slot owning each cell (``operators.quadrant_owner``).
        rows: Long ``[R]``, the item of each output row.
        slots: Long ``[R]``, the slot of each output row.

    Returns:
        Logits ``[R, K]``.
    """
    return _forward_with_split_head(
        model,
        pixel_values,
        owner,
        "owner",
        "build it with quadrant_owner(splits, feature_grid(model, image_size)).",
        lambda timm_model, features, layout, head: split_logits_by_owner(
            timm_model, features, owner, layout, rows, slots, head=head
        ),
    )


def forward_split(
    model: nn.Module,
    pixel_values: Tensor,
    mask: Tensor,
    rows_b: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Forward a RandPatch batch once and return each constituent's logits.

    The pair form of ``forward_split_by_owner``, sharing its single call: ``forward_features``
    runs once through ``model``'s own ``__call__`` (so DDP's gradient synchronisation,
    accelerate's autocast and output casting, and TimmWrapperForImageClassification all stay in
    effect) while the timm model's ``forward_head`` is replaced, for this call only, by the split
    head, which infers the layout, checks the mask against the grid and runs ``split_logits``.
    The model's forward must call ``self.forward_head``, as every timm model's does.

    With an all-True mask, ``logits_a`` equals the model's ordinary logits.

    Args:
        model: timm model, TimmWrapperForImageClassification, or a DDP/accelerate wrapper of either.
        pixel_values: ``[B, 3, H, W]`` RandPatch inputs (``operators.randpatch``).
        mask: Bool ``[B, h, w]`` on the feature grid, True on a's cells.
        rows_b: Rows for which b's logits are needed (see ``split_logits``); None means all.

    Returns:
        ``(logits_a [B, K], logits_b [len(rows_b), K])``.
    """
    logits = _forward_with_split_head(
        model,
        pixel_values,
        mask,
        "mask",
        "draw masks with feature_grid(model, image_size).",
        lambda timm_model, features, layout, head: torch.cat(split_logits(timm_model, features, mask, layout, rows_b, head=head)),
    )
    return logits[: mask.shape[0]], logits[mask.shape[0] :]
