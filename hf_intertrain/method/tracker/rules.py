"""`TrackerRules`: every setting the amenability tracker decides with, checked once.

The defaults are the method (docs/method.md, "Selective interpolation"); every other value is an ablation of the
paper (docs/method.md, "Ablations"; Sec. 7.6 to 7.8) or a reading of its "running average" ("Thresholds"), or picks
4-way composites ("Four-way composites"). A `TrackerRules` is checked when it is made, so the tracker never checks
a setting again, and it is plain data (`to_dict` / `from_dict`): a checkpoint holds it once, and a resume under
other rules is refused by naming the first setting that differs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ...constants import FOUR_WAY_SELECTIONS, THRESHOLD_AVERAGES
from .decision import MAX_STREAK, REGION1_RULES, REGION3_RULES

_JUDGING = ("threshold_average", "region1_rule", "region3_rule", "region3_increases", "region3_epochs")
"""The settings that judge samples: they cannot take effect in naive mode."""


@dataclasses.dataclass(frozen=True)
class TrackerRules:
    """How the tracker judges samples; the defaults are the method.

    Attributes:
        selective: False for naive interpolation (Sec. 3, Fig. 13a): every sample is in S_int in every epoch,
            epoch 0 included, with reason code `NAIVE`; no S_noInt observation exists, so the averages stay
            undefined.
        regions: The regions that may admit S_noInt samples into S_int: (1, 3) the method, (1,) "Region 1 only"
            (Table 3, Fig. 13b), (3,) "Region 3 only" (Sec. 7.6, Fig. 13b; Table 4 applies no Region-1
            interpolation). Regions that admit nobody are still counted.
        max_group_size: 2 for pairs only (the paper); 4 to also mark S_int members for 4-way composites (the
            rule is `decision.decide`'s; which marked samples are grouped by four is the sampler's business).
        four_way_selection: "robust" (a 4-way member's interpolated loss must stay below L_corr) or "region1"
            (the ablation without that bar: every Region-1 member that stays in Region 1).
        threshold_average: How L_corr, L_incorr and L_avg average the completed epochs: one of
            `THRESHOLD_AVERAGES` ("pooled" the method; see `thresholds.ThresholdAverages`).
        region1_rule: A key of `decision.REGION1_RULES`: "l_mid" the method, "accuracy" or "avg_loss" (Table 3).
            The paper's "avg_loss" row has no Region 3 (it compares with "Region 1 only": `regions=(1,)`); with
            `regions=(1, 3)` Region 3 keeps its own rule, l > L_incorr outside Region 1.
        region3_rule: A key of `decision.REGION3_RULES`: "increase" the method, "l_incorr" (Table 3). A member
            admitted either way leaves S_int after its period.
        region3_increases: k, the consecutive increases of the non-interpolated loss Region 3 needs (1 the method,
            to 255; Sec. 3.2, Fig. 8b; Sec. 7.8, Table 4).
        region3_epochs: m, the epochs a Region-3 member stays in S_int, whatever its records, recorded or not (1
            the method, to 255; Sec. 7.8: samples "are skipped for the next k epochs", m = k in the paper's
            variants).
    """

    selective: bool = True
    regions: tuple[int, ...] = (1, 3)
    max_group_size: int = 2
    four_way_selection: str = "robust"
    threshold_average: str = "pooled"
    region1_rule: str = "l_mid"
    region3_rule: str = "increase"
    region3_increases: int = 1
    region3_epochs: int = 1

    def __post_init__(self):
        """Refuse invalid values, and settings that cannot take effect: the judging settings in naive mode, the
        Region-1 rule without Region 1, the Region-3 settings without Region 3, `region3_increases` with
        `region3_rule="l_incorr"`, and 4-way composites without the L_mid Region 1 or in naive mode."""
        if not isinstance(self.selective, (bool, np.bool_)):
            raise ValueError(f"selective must be a bool, got {self.selective!r}; pass True (InterTrain) or False (naive).")
        try:
            regions = tuple(sorted(int(r) for r in self.regions))
        except (TypeError, ValueError):
            raise ValueError(f"regions must be a tuple of ints, got {self.regions!r}; pass (1, 3) or (1,).") from None
        if not regions or len(set(regions)) != len(regions) or not set(regions) <= {1, 3}:
            raise ValueError(f"regions must be a non-empty subset of (1, 3) without repeats, got {self.regions!r}; pass (1, 3), (1,) or (3,).")
        if isinstance(self.max_group_size, bool) or self.max_group_size not in (2, 4):
            raise ValueError(f"max_group_size must be 2 or 4, got {self.max_group_size!r}; pass 2 (pairs, the paper) or 4 (4-way composites).")
        if self.max_group_size == 4 and not self.selective:
            raise ValueError("max_group_size=4 needs selective=True: 4-way composites are chosen from the amenability records; use selective interpolation or pairs.")
        if self.four_way_selection not in FOUR_WAY_SELECTIONS:
            raise ValueError(f"four_way_selection must be one of {FOUR_WAY_SELECTIONS}, got {self.four_way_selection!r}; pass 'robust' (default) or 'region1' (ablation).")
        for name, choices in (("threshold_average", THRESHOLD_AVERAGES), ("region1_rule", tuple(REGION1_RULES)), ("region3_rule", tuple(REGION3_RULES))):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}; pass {choices[0]!r} (the method) or an ablation from the list.")
        for name in ("region3_increases", "region3_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_STREAK:
                raise ValueError(f"{name} must be an int in [1, {MAX_STREAK}], got {value!r}; pass 1 (the method) or the paper's k = 2 or 3.")
        plain = {"selective": bool(self.selective), "regions": regions, "max_group_size": int(self.max_group_size)}
        plain |= {name: int(getattr(self, name)) for name in ("region3_increases", "region3_epochs")}
        for name, value in plain.items():
            object.__setattr__(self, name, value)
        changed = [f.name for f in dataclasses.fields(self) if f.name in _JUDGING and getattr(self, f.name) != f.default]
        if not self.selective and changed:
            raise ValueError(f"{', '.join(changed)} {_need(changed)} selective=True: naive interpolation judges no sample; leave them at their defaults or use selective interpolation.")
        if 1 not in regions and self.region1_rule != "l_mid":
            raise ValueError(f"region1_rule={self.region1_rule!r} needs Region 1 in regions, got {regions}; pass regions=(1,) or (1, 3), or leave region1_rule='l_mid'.")
        region3_settings = [name for name in changed if name.startswith("region3")]
        if 3 not in regions and region3_settings:
            raise ValueError(f"{', '.join(region3_settings)} {_need(region3_settings)} Region 3 in regions, got {regions}; pass regions=(1, 3) or (3,), or leave them at their defaults.")
        if self.region3_rule == "l_incorr" and self.region3_increases != 1:
            raise ValueError(f"region3_increases={self.region3_increases} has no effect with region3_rule='l_incorr', which drops the increase test; pass region3_rule='increase' or region3_increases=1.")
        if self.max_group_size == 4 and (1 not in regions or self.region1_rule != "l_mid"):
            raise ValueError(f"max_group_size=4 needs Region 1 with region1_rule='l_mid' (4-way members are chosen among Region-1 members by their loss), got regions={regions}, region1_rule={self.region1_rule!r}; use pairs or the L_mid Region 1.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values (`regions` as a list in JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackerRules:
        """Rules from `to_dict`'s output, checked; an absent setting takes its default (rules saved before that
        setting existed ran with it)."""
        return cls(**data)


def _need(names: list[str]) -> str:
    return "needs" if len(names) == 1 else "need"
