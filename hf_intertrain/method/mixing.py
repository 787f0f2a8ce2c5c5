"""Mixup and CutMix on a batch's singles, through timm's `Mixup`: the regularizers a long-schedule baseline has on.

docs/method.md, "Mixup and CutMix": InterTrain's pairs are its own mixing, so timm's `Mixup` is applied only to
the rows trained as singles (all rows of a run without interpolation), and its soft targets carry the label
smoothing of `TrainingArguments.label_smoothing_factor` (one path for smoothing, mixed or not). Choices where timm
is silent or unsuited:

- timm's `Mixup` needs an even batch (it mixes row i with row n-1-i). With an odd number of singles (the last
  batch of an epoch, a shard, an odd count of singles beside the pairs) the even prefix is mixed and the last
  single trains unmixed, with its smoothed one-hot target: every sample still trains, nothing crashes.
- timm draws from numpy's global generator. Here it draws under a seed made from (run seed, process, global step,
  micro-batch) and the global state is restored afterwards, so a resumed run mixes exactly as the uninterrupted one
  and nothing else that reads numpy's generator is disturbed.

Knows no Trainer; `BatchMixing` is built once from the run's settings and called once per micro-batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from torch import Tensor

from ..constants import MIXUP_MODES

@contextmanager
def numpy_seeded(seed: int) -> Iterator[None]:
    """Run the block with numpy's global generator seeded by `seed`, then put its previous state back."""
    state = np.random.get_state()
    np.random.seed(np.random.SeedSequence(int(seed)).generate_state(4))
    try:
        yield
    finally:
        np.random.set_state(state)


class BatchMixing:
    """timm's Mixup / CutMix for the singles of a batch, with soft targets for `SoftTargetCrossEntropy`.

    Args:
        num_classes: Classes of the model's head (the soft targets' width).
        mixup_alpha: Beta(alpha, alpha) of Mixup; 0 turns Mixup off (timm's `--mixup`).
        cutmix_alpha: Beta(alpha, alpha) of CutMix; 0 turns CutMix off (timm's `--cutmix`).
        prob: Probability of mixing a batch (or a pair / row, by `mode`) at all (timm's `--mixup-prob`).
        switch_prob: With both on, probability of CutMix instead of Mixup (timm's `--mixup-switch-prob`).
        mode: One of `MIXUP_MODES` (timm's `--mixup-mode`).
        label_smoothing: Label smoothing of every soft target, mixed or not.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        label_smoothing: float = 0.0,
    ):
        check_mixing(mixup_alpha, cutmix_alpha, prob, switch_prob, mode, label_smoothing)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.enabled = mixup_alpha > 0 or cutmix_alpha > 0
        self._mixup = (
            Mixup(
                mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob, mode=mode,
                label_smoothing=label_smoothing, num_classes=self.num_classes,
            )
            if self.enabled
            else None
        )

    def __call__(self, pixel_values: Tensor, labels: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """Mix the rows (an even prefix; an odd last row stays unmixed) and return (inputs, float32 soft targets).

        The inputs are a new tensor; `pixel_values` is left as it was. Without Mixup or CutMix the inputs are
        returned as given, with smoothed one-hot targets.
        """
        targets = mixup_target(labels, self.num_classes, 1.0, self.label_smoothing).float()
        even = pixel_values.shape[0] - pixel_values.shape[0] % 2
        if self._mixup is None or even == 0:
            return pixel_values, targets
        mixed = pixel_values.clone()
        with numpy_seeded(seed):
            mixed[:even], targets[:even] = self._mixup(mixed[:even], labels[:even])
        return mixed, targets.float()


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-row `-sum(targets * log_softmax(logits))` in float32: timm's `SoftTargetCrossEntropy` before its mean."""
    return -(targets.float() * torch.log_softmax(logits.float(), dim=-1)).sum(-1)


def check_mixing(
    mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float, mode: str, label_smoothing: float
) -> None:
    """One-line errors for settings timm's Mixup cannot use (raised before training)."""
    for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name}={value} must be 0 (off) or a positive Beta parameter, e.g. 1.0")
    for name, value in (("mixup_prob", prob), ("mixup_switch_prob", switch_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value} must be a probability in [0, 1] (timm's default: 1.0 and 0.5)")
    if mode not in MIXUP_MODES:
        raise ValueError(f"mixup_mode={mode!r} is not supported: use one of {', '.join(MIXUP_MODES)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing_factor={label_smoothing} must lie in [0, 1), e.g. 0.1")
