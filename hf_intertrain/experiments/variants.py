"""The runs `hf-intertrain compare` knows: one table, each entry with its settings, its role and its help line.

The CLI's `--variants` help, `compare`'s ordering and matching, the verdict's peers and the method doc's variants
table all read `VARIANTS`; a new variant is one entry here. Roles (docs/method.md, "Peer methods and
budget-matched baselines"):

- `reference`: a full-length run without interpolation (`baseline`, `baseline_cutmix`, `baseline_mixup`): what
  speed-ups are read against.
- `peer`: a run given exactly the optimizer steps of the *matched run* (the invocation's first interpolating
  variant), seed by seed, with its schedule fitted to them (`budget`, `budget_cutmix`, `budget_mixup`): what a
  user gets by simply training less. Every challenger is judged against every peer.
- `challenger`: everything else (InterTrain, its ablations, the peer methods RS2 and InfoBatch).

A variant's `matches` says what it takes from the matched run: `steps` (`max_steps`) or `items` (the items of each
epoch, `random_subset_sizes`). This module imports nothing heavy, so `--help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REFERENCE = "baseline"
"""The full-length baseline: run first when asked for, and what speed-ups are read against."""


@dataclass(frozen=True)
class Variant:
    """One run of `compare`: the `InterTrainArguments` fields it sets on top of the run's own configuration.

    Attributes:
        help: One line for `--help` and the method doc.
        settings: The fields it sets.
        role: 'reference', 'peer' or 'challenger' (see the module docstring).
        matches: What it takes from the matched run: 'steps', 'items' or None.
        as_peer: For a peer, what it is in the plain verdict ("training as many steps without it").
    """

    help: str
    settings: dict[str, Any] = field(default_factory=dict)
    role: str = "challenger"
    matches: str | None = None
    as_peer: str | None = None

    @property
    def interpolates(self) -> bool:
        """Whether the run interpolates (a variant that leaves `interpolation` as configured counts as one)."""
        return self.settings.get("interpolation") != "none"


_PAIRS = {"four_way": "none", "data_selection": "none"}
_FOUR_WAY = {
    "interpolation": "randpatch", "split_propagation": True, "selective_interpolation": True, "data_selection": "none",
    "amenable_action": "interpolate",
}
_PLAIN = {"interpolation": "none", "four_way": "none", "data_selection": "none"}
CUTMIX = {"mixup_alpha": 0.0, "cutmix_alpha": 1.0, "mixup_prob": 0.5}
"""The CutMix paper's CIFAR setting (Yun et al., ICCV 2019): Beta(1, 1), applied to a batch with probability 0.5."""
MIXUP = {"mixup_alpha": 1.0, "cutmix_alpha": 0.0, "mixup_prob": 1.0}
"""The Mixup paper's CIFAR-10 setting (Zhang et al., ICLR 2018): Beta(1, 1), every batch."""

VARIANTS: dict[str, Variant] = {
    "baseline": Variant("the plain Trainer, no interpolation, every sample every epoch", _PLAIN, "reference"),
    "intertrain": Variant("InterTrain with the configuration as given (by default RandPatch, every technique)"),
    "randpatch": Variant("InterTrain with RandPatch pairs", {"interpolation": "randpatch", **_PAIRS}),
    "linavg": Variant("InterTrain with LinAvg pairs", {"interpolation": "linavg", **_PAIRS}),
    "naive": Variant(
        "random pairs of all samples every epoch, no selective/split/adaptive (the paper's naive interpolation)",
        {"selective_interpolation": False, "split_propagation": False, "adaptive_interpolation": False, **_PAIRS},
    ),
    "no_split": Variant(
        "RandPatch without split propagation", {"interpolation": "randpatch", "split_propagation": False, **_PAIRS}
    ),
    "region1": Variant("selective interpolation from Region 1 only", {"amenability_regions": "1", **_PAIRS}),
    "skip": Variant("the picked samples skipped instead of interpolated", {"amenable_action": "skip", **_PAIRS}),
    "randpatch4": Variant("RandPatch pairs plus RandPatch-4 composites", {**_FOUR_WAY, "four_way": "randpatch4"}),
    "mosaic4": Variant("RandPatch pairs plus Mosaic-4 composites", {**_FOUR_WAY, "four_way": "mosaic4"}),
    "randpatch4_region1": Variant(
        "RandPatch-4 for every Region-1 member on its second interpolated epoch (ablation)",
        {**_FOUR_WAY, "four_way": "randpatch4", "four_way_selection": "region1"},
    ),
    "budget": Variant(
        "the baseline trained for exactly the matched run's optimizer steps, its schedule fitted to them",
        _PLAIN, "peer", "steps", "training as many steps without it",
    ),
    "random_subset": Variant(
        "RS2: no interpolation, each epoch a random subset as large as the matched run's items",
        {**_PLAIN, "data_selection": "random_subset"}, matches="items",
    ),
    "infobatch": Variant(
        "InfoBatch: loss-based random pruning, the kept easy samples' loss rescaled",
        {**_PLAIN, "data_selection": "infobatch"},
    ),
    "threshold_epoch_mean": Variant("thresholds as the mean of per-epoch means", {"threshold_average": "epoch_mean", **_PAIRS}),
    "threshold_ema": Variant("thresholds as an EMA of per-epoch means", {"threshold_average": "ema", **_PAIRS}),
    "threshold_last_epoch": Variant("thresholds from the last epoch alone", {"threshold_average": "last_epoch", **_PAIRS}),
    "threshold_accuracy": Variant("Region 1 = classified correctly (Table 3)", {"region1_rule": "accuracy", **_PAIRS}),
    "threshold_avg_loss": Variant(
        "Region 1 = loss below the average loss, Region 1 only (Table 3)",
        {"region1_rule": "avg_loss", "amenability_regions": "1", **_PAIRS},
    ),
    "region3_lincorr": Variant("Region 3 = loss above L_incorr, no increase test (Table 3)", {"region3_rule": "l_incorr", **_PAIRS}),
    "region3_only": Variant("selective interpolation from Region 3 only (Fig. 13b)", {"amenability_regions": "3", **_PAIRS}),
    "region3_k2": Variant("Region 3 after two increases, for two epochs (Fig. 8b)", {"region3_increases": 2, "region3_epochs": 2, **_PAIRS}),
    "skip_region3": Variant("Region 3 skipped, Region 1 interpolated (Table 4)", {"amenable_action": "skip_region3", **_PAIRS}),
    "composite_weight2": Variant("each pair weighs twice a single in the loss", {"composite_loss_weight": 2.0, **_PAIRS}),
    "clean_final": Variant("no interpolation in the final eighth of the epochs", {"interpolation_off_fraction": 0.125, **_PAIRS}),
    "baseline_cutmix": Variant("the baseline with CutMix (alpha 1, probability 0.5)", {**_PLAIN, **CUTMIX}, "reference"),
    "budget_cutmix": Variant(
        "budget with CutMix: the matched run's steps, CutMix on", {**_PLAIN, **CUTMIX}, "peer", "steps",
        "training as many steps with CutMix instead",
    ),
    "randpatch_cutmix": Variant(
        "InterTrain RandPatch with CutMix on its singles", {"interpolation": "randpatch", **_PAIRS, **CUTMIX}
    ),
    "baseline_mixup": Variant("the baseline with Mixup (alpha 1)", {**_PLAIN, **MIXUP}, "reference"),
    "budget_mixup": Variant(
        "budget with Mixup: the matched run's steps, Mixup on", {**_PLAIN, **MIXUP}, "peer", "steps",
        "training as many steps with Mixup instead",
    ),
    "randpatch_mixup": Variant("InterTrain RandPatch with Mixup on its singles", {"interpolation": "randpatch", **_PAIRS, **MIXUP}),
}

MATCHED_VARIANTS: tuple[str, ...] = tuple(name for name, variant in VARIANTS.items() if variant.matches)
"""Variants sized from the matched run, seed by seed."""
PEERS: tuple[str, ...] = tuple(name for name, variant in VARIANTS.items() if variant.role == "peer")
"""The budget-matched runs every challenger is judged against."""


def variants_help() -> str:
    """`--variants`' help: every variant with its line."""
    lines = "; ".join(f"{name} ({variant.help})" for name, variant in VARIANTS.items())
    return (
        "Comma-separated runs, all with the same seeds and hyper-parameters (the baseline, when listed, runs first; "
        f"budget-matched runs after the first interpolating run, which they match): {lines}. See docs/compare.md."
    )
