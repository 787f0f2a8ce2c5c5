"""Batch composition and the InterTrain loss: a collated batch in; network inputs, logits per slot and loss out.

A collated batch (`data.InterTrainCollator`) holds rows in this order: 4-way composites, pairs, singles. Slot a is
every row's first constituent (`pixel_values`, `labels`, `sample_index`); slot b (`..._b`) the second constituent
of composites and pairs; slots c and d (`..._c`, `..._d`) the last two of the composites. Here they are combined
into one input per row (docs/method.md, "Operators" and "Four-way composites"), classified per slot (with split
propagation each slot from its own feature cells, docs/method.md, "Split propagation") and turned into the loss
`sum_i r_i L_i` per item (docs/method.md, "Loss"). Nothing here knows the Trainer or accelerate: the trainer calls
`compose_batch`, `slot_logits` and `constituent_losses` once per micro-batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..constants import EXTRA_CONSTITUENTS
from .mixing import BatchMixing, soft_target_cross_entropy
from .operators import cell_rectangle_masks, linavg, mosaic4, quadrant_owner, quadrant_splits, randpatch, randpatch4
from .split import FeatureLayout, check_splittable, feature_grid, forward_split_by_owner

SLOT_SUFFIXES: tuple[str, ...] = ("",) + tuple(f"_{s}" for s in EXTRA_CONSTITUENTS)
"""Key suffix of each slot a, b, c, d in a collated batch: `labels`, `labels_b`, `labels_c`, `labels_d`."""

Record = tuple[Tensor, Tensor, Tensor]
"""One slot's constituents: (sample_index [R], float32 loss [R], correct [R])."""


@dataclass
class ComposedBatch:
    """The network inputs of a batch and what the loss needs to credit each constituent.

    Attributes:
        pixel_values: `[B, 3, H, W]`: rows `0..num_quads-1` 4-way composites, then `num_pairs` pairs, then singles.
        shares: Float32 share r_i of each slot's constituent in its item: a `[B]` (1 for singles), b
            `[num_quads + num_pairs]`, and with composites c and d `[num_quads]`. Each item's shares sum to 1.
        owner: Long `[B, h, w]`, the slot owning each feature-grid cell (split propagation), or None when every
            slot is classified from the logits of the whole input.
        num_quads: 4-way composites in the batch.
        num_pairs: Pairs in the batch.
    """

    pixel_values: Tensor
    shares: list[Tensor]
    owner: Tensor | None
    num_quads: int
    num_pairs: int

    @property
    def num_groups(self) -> int:
        """Rows with more than one constituent (composites and pairs)."""
        return self.num_quads + self.num_pairs

    @property
    def batch_size(self) -> int:
        return self.pixel_values.shape[0]


def check_composable(
    timm_model: nn.Module,
    image_size: tuple[int, int],
    interpolation: str,
    split: bool,
    patch_ratio: float,
    four_way: str,
) -> tuple[FeatureLayout | None, tuple[int, int] | None]:
    """The feature layout (with split propagation) and the feature grid RandPatch draws on; (None, None) otherwise.

    Called when the trainer is built, so that a model RandPatch cannot use fails at once with the message of
    `split.check_splittable` or `operators.cell_rectangle_masks` that names the fix, not at the first interpolating
    epoch.
    """
    if interpolation != "randpatch":
        return None, None
    layout = check_splittable(timm_model, image_size) if split else None
    grid = layout.grid if layout is not None else feature_grid(timm_model, image_size)
    cell_rectangle_masks(1, grid, patch_ratio)
    if four_way != "none":
        quadrant_splits(1, grid)
    return layout, grid


def row_counts(inputs: dict[str, Tensor]) -> tuple[int, int]:
    """(4-way composites, pairs) of a collated batch."""
    x_b, x_c = inputs.get("pixel_values_b"), inputs.get("pixel_values_c")
    num_groups = 0 if x_b is None else x_b.shape[0]
    num_quads = 0 if x_c is None else x_c.shape[0]
    return num_quads, num_groups - num_quads


def draws_masks(inputs: dict[str, Tensor], interpolation: str) -> bool:
    """Whether `compose_batch` draws from its generator for this batch: RandPatch with a pair or a composite.

    The trainer seeds a generator only for such batches (see `MaskSeeder`), so the micro-batch index of the seed
    counts the batches that draw.
    """
    return interpolation == "randpatch" and sum(row_counts(inputs)) > 0


def compose_batch(
    inputs: dict[str, Tensor],
    *,
    interpolation: str,
    four_way: str,
    feature_grid: tuple[int, int] | None,
    patch_ratio: float,
    split: bool,
    generator: torch.Generator | None,
) -> ComposedBatch:
    """Combine each row's constituents into one input (docs/method.md, "Operators" and "Four-way composites").

    LinAvg pairs use the collated `interp_ratio`. RandPatch draws the pairs' cell rectangles first, then the
    composites' split points, both from `generator`: a batch without composites draws exactly what a pairs-only
    batch does, and the same generator state gives bit-identical inputs, shares and owners.

    Args:
        inputs: A collated batch (see the module docstring).
        interpolation: "randpatch" or "linavg" (ignored for a batch of singles).
        four_way: "randpatch4" or "mosaic4" for the composites' operator ("none" when there are none).
        feature_grid: The model's final feature grid (h, w); needed by RandPatch.
        patch_ratio: Target area fraction of constituent a's rectangle.
        split: Return the owner of every cell (split propagation); composites need it.
        generator: Source of the rectangles and split points (None: torch's global generator).

    Raises:
        ValueError: On pairs with another interpolation, RandPatch without a feature grid, or composites without
            split propagation.
    """
    x_a = inputs["pixel_values"]
    device, batch = x_a.device, x_a.shape[0]
    num_quads, num_pairs = row_counts(inputs)
    num_groups = num_quads + num_pairs
    ones = torch.ones(batch, device=device, dtype=torch.float32)
    if not num_groups:
        return ComposedBatch(x_a, [ones], None, 0, 0)
    x_b = inputs["pixel_values_b"]
    if interpolation == "linavg" and not num_quads:
        pair_ratio = inputs["interp_ratio"].float()
        pixel_values = torch.cat([linavg(x_a[:num_groups], x_b, pair_ratio), x_a[num_groups:]])
        shares = [torch.cat([pair_ratio, ones[num_groups:]]), 1 - pair_ratio]
        return ComposedBatch(pixel_values, shares, None, 0, num_pairs)
    if interpolation != "randpatch" or feature_grid is None or (num_quads and not split):
        raise ValueError(
            f"a batch of {num_pairs} pairs and {num_quads} 4-way composites needs interpolation randpatch with a "
            f"feature_grid (and split propagation for composites), got interpolation={interpolation!r}, "
            f"feature_grid={feature_grid}, split={split}: build the batch with the settings that planned it"
        )

    pair_mask = cell_rectangle_masks(num_pairs, feature_grid, patch_ratio, generator=generator).to(device)
    mixed, pair_ratio = randpatch(x_a[num_quads:num_groups], x_b[num_quads:], pair_mask)
    share_a = ones.clone()
    share_a[num_quads:num_groups] = pair_ratio
    shares = [share_a, 1 - share_a[:num_groups]]
    owner = None
    if split:
        owner = torch.zeros((batch, *feature_grid), dtype=torch.long, device=device)
        owner[num_quads:num_groups] = (~pair_mask).long()
    if num_quads:
        splits = quadrant_splits(num_quads, feature_grid, generator=generator)  # host-side: mosaic4 groups by split
        compose = randpatch4 if four_way == "randpatch4" else mosaic4
        constituents = [x_a[:num_quads], x_b[:num_quads], inputs["pixel_values_c"], inputs["pixel_values_d"]]
        mixed_quads, quad_ratio = compose(constituents, splits, feature_grid)
        mixed = torch.cat([mixed_quads, mixed])
        share_a[:num_quads] = quad_ratio[:, 0]
        shares = [share_a, torch.cat([quad_ratio[:, 1], 1 - pair_ratio]), quad_ratio[:, 2], quad_ratio[:, 3]]
        owner[:num_quads] = quadrant_owner(splits, feature_grid).to(device)
    return ComposedBatch(torch.cat([mixed, x_a[num_groups:]]), shares, owner, num_quads, num_pairs)


def slot_logits(composed: ComposedBatch, model: nn.Module, logits_fn: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """Logits of each slot's constituents: a `[B, K]`, b `[num_groups, K]`, c and d `[num_quads, K]`.

    With an owner, one forward pass pools each slot over its own cells (`split.forward_split_by_owner`,
    docs/method.md, "Split propagation"); without, `logits_fn(pixel_values)` classifies the whole inputs and
    slot b reuses the logits of its rows (docs/method.md, "Loss").

    Args:
        composed: The output of `compose_batch`.
        model: A timm model or a wrapper of one (DDP, TimmWrapperForImageClassification); used with an owner.
        logits_fn: The logits of a batch of inputs through the model's own forward; used without an owner.
    """
    if composed.owner is not None:
        device = composed.pixel_values.device
        sizes = (composed.batch_size, composed.num_groups, composed.num_quads, composed.num_quads)
        rows = torch.cat([torch.arange(n, device=device) for n in sizes])
        slots = torch.cat([torch.full((n,), k, device=device) for k, n in enumerate(sizes)])
        logits = forward_split_by_owner(model, composed.pixel_values, composed.owner, rows, slots)
        return list(logits.split(sizes)[: len(composed.shares)])
    full = logits_fn(composed.pixel_values)
    return [full, full[: composed.num_groups]][: len(composed.shares)]


def composite_weights(composed: ComposedBatch, factor: float) -> Tensor | None:
    """Per-item loss weights giving each composite item (pair or 4-way composite) `factor` times a single's weight
    (docs/method.md, "Loss"); None when `factor` is 1 or the batch has no composite."""
    if factor == 1.0 or composed.num_groups == 0:
        return None
    weights = torch.ones(composed.batch_size, device=composed.pixel_values.device, dtype=torch.float32)
    weights[: composed.num_groups] = factor
    return weights


def constituent_losses(
    slot_logits: list[Tensor],
    inputs: dict[str, Tensor],
    shares: list[Tensor],
    loss_weight: Tensor | None = None,
    single_targets: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, list[Record]]:
    """The batch loss and every constituent's record (docs/method.md, "Loss" and "Mixup and CutMix").

    Each constituent's loss is cross-entropy in float32 (also under bf16/fp16 autocast), with `label_smoothing`;
    the singles of a batch mixed by `mixing.BatchMixing` are trained on their soft targets instead. An item's loss is
    `sum_i r_i L_i` over its slots, and the batch loss the mean over items of `item_loss * loss_weight`. A record is
    always the constituent's plain cross-entropy against its own label, whatever it was trained on, so that the
    amenability metric reads the same quantity with and without smoothing or mixing.

    Args:
        slot_logits: The output of `slot_logits`.
        inputs: The collated batch (labels and sample indices of each slot).
        shares: `ComposedBatch.shares`.
        loss_weight: Float32 `[B]` factor of each item's loss (a peer method's rescaling, docs/method.md, "Peer
            methods and budget-matched baselines"); None: all ones. Records keep the unweighted losses.
        single_targets: Float32 `[S, K]` soft targets of the batch's last S rows (its singles, mixed by
            `mixing.BatchMixing`); None: every row trains on its hard label.
        label_smoothing: `TrainingArguments.label_smoothing_factor`, applied to the hard-label losses.

    Returns:
        The batch loss (a float32 scalar) and per slot the records (sample_index, loss, correct) of its
        constituents; the losses are still attached to the graph (`records.LossRecorder.add` detaches them).
    """
    batch, device = shares[0].shape[0], shares[0].device
    item_loss = torch.zeros(batch, device=device, dtype=torch.float32)
    records = []
    for suffix, share, logits in zip(SLOT_SUFFIXES, shares, slot_logits):
        labels = inputs[f"labels{suffix}"]
        own_label_loss = F.cross_entropy(logits.float(), labels, reduction="none")
        loss = own_label_loss
        if label_smoothing:
            loss = F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=label_smoothing)
        if suffix == "" and single_targets is not None:
            first_single = batch - single_targets.shape[0]
            loss = torch.cat([loss[:first_single], soft_target_cross_entropy(logits[first_single:], single_targets)])
        item_loss = item_loss + F.pad(share * loss, (0, batch - share.shape[0]))
        records.append((inputs[f"sample_index{suffix}"], own_label_loss, logits.argmax(-1) == labels))
    if loss_weight is not None:
        if tuple(loss_weight.shape) != (batch,):
            raise ValueError(
                f"loss_weight has shape {tuple(loss_weight.shape)}: pass one weight per item, shape ({batch},)"
            )
        item_loss = item_loss * loss_weight.to(device=device, dtype=torch.float32)
    return item_loss.mean(), records


def mix_singles(composed: ComposedBatch, labels: Tensor, mixing: BatchMixing, seed: int) -> tuple[ComposedBatch, Tensor]:
    """The batch with its singles (the rows after the composites and pairs) mixed by timm's Mixup / CutMix, and their
    soft targets (docs/method.md, "Mixup and CutMix"): pairs are InterTrain's own mixing and stay as composed."""
    first_single = composed.num_groups
    mixed, targets = mixing(composed.pixel_values[first_single:], labels[first_single:], seed)
    pixel_values = mixed if first_single == 0 else torch.cat([composed.pixel_values[:first_single], mixed])
    return dataclasses.replace(composed, pixel_values=pixel_values), targets


class MaskSeeder:
    """Generators for RandPatch, seeded by (seed, process, global step, micro-batch).

    A choice where the method is silent: the rectangles and split points are drawn on the training device's host
    from these seeds, so a resumed run redraws those of the uninterrupted one and every process of a distributed
    run draws its own (docs/method.md, "Distributed training and resume"). The micro-batch index counts the
    batches of one optimizer step that asked for a generator.
    """

    def __init__(self, seed: int, process_index: int = 0, stream: int = 0):
        self.seed, self.process_index, self.stream = int(seed), int(process_index), int(stream)
        self._last = (-1, 0)
        self._generator = torch.Generator()

    def __call__(self, global_step: int) -> torch.Generator:
        return self._generator.manual_seed(self.step_seed(global_step))

    def step_seed(self, global_step: int) -> int:
        """The seed of the next micro-batch of `global_step` (stream 0: the RandPatch draws; another stream, e.g.
        `MIXING_STREAM`, gets seeds of its own)."""
        step, micro = self._last
        micro = micro + 1 if step == global_step else 0
        self._last = (global_step, micro)
        key = [self.seed, self.process_index, global_step, micro] + ([self.stream] if self.stream else [])
        return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])


MIXING_STREAM = 0x4D4958
"""The `MaskSeeder` stream of timm's Mixup / CutMix draws, apart from the RandPatch draws."""
