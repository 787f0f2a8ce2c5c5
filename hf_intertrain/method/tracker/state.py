"""The tracker's checkpoint state, and the states older versions saved.

docs/method.md, "Distributed training and resume": a checkpoint carries the tracker state as numpy arrays only
(savable with `safetensors.numpy`), the current epoch's records included. The rules are saved once, as the JSON
of `TrackerRules.to_dict` in a uint8 array, so that a checkpoint of another dataset size or other rules is refused
with the first setting that differs. Every older format still loads as it did: states with the settings as
separate arrays and the choices as int codes, states from before the threshold settings (the defaults, and
Region-3 members that leave S_int after this epoch), and states from before 4-way composites (pairs only;
"in_quads" is the older name of "in_four_way").
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import numpy as np

from ..thresholds import ThresholdAverages
from .decision import NOT_INTERPOLATED, REGION_3, Membership
from .rules import TrackerRules

if TYPE_CHECKING:
    from . import AmenabilityTracker

RULES_KEY = "rules"
"""The state entry that holds the rules: the UTF-8 JSON of `TrackerRules.to_dict`, as uint8."""

EPOCH_BUFFER_KEYS = ("epoch_loss_sum", "epoch_correct_count", "epoch_count")
"""The `state_dict` entries that hold the current epoch's records (a distributed run sums them over processes)."""

PER_SAMPLE = {
    "reason": np.int8, "in_four_way": np.bool_, "last_loss": np.float32, "prev_noint_loss": np.float32,
    "epoch_loss_sum": np.float32, "epoch_correct_count": np.int32, "epoch_count": np.int32,
    "increases": np.uint8, "region3_left": np.uint8,
}
"""The entries with one value per sample, and their dtypes."""

_INT_CODES = {
    "threshold_average": ("pooled", "epoch_mean", "ema", "last_epoch"),
    "region1_rule": ("l_mid", "accuracy", "avg_loss"),
    "region3_rule": ("increase", "l_incorr"),
}
"""What the int codes of states saved before `RULES_KEY` mean (fixed: new rules do not shift them)."""

_SEPARATE_SETTINGS = ("selective", "regions", "max_group_size", *_INT_CODES, "region3_increases", "region3_epochs")
"""The settings of states saved before `RULES_KEY`, one entry each (`four_way_selection` was not saved)."""


def state_dict(tracker: AmenabilityTracker) -> dict[str, np.ndarray]:
    """Everything needed to resume `tracker`, as numpy arrays only."""
    membership = tracker._membership
    return {
        "num_samples": np.array([tracker.num_samples], dtype=np.int64),
        RULES_KEY: np.frombuffer(json.dumps(tracker.rules.to_dict()).encode(), dtype=np.uint8).copy(),
        "epoch": np.array([tracker.epoch], dtype=np.int64),
        "reason": membership.reason.copy(),
        "in_four_way": membership.four_way.copy(),
        "last_loss": tracker._last_loss.copy(),
        "prev_noint_loss": tracker._prev_noint_loss.copy(),
        **tracker._averages.state_dict(),
        "increases": membership.increases.copy(),
        "region3_left": membership.region3_left.copy(),
        "epoch_loss_sum": tracker._loss_sum.copy(),
        "epoch_correct_count": tracker._correct_count.copy(),
        "epoch_count": tracker._count.copy(),
    }


def load_state_dict(tracker: AmenabilityTracker, state: dict[str, np.ndarray]) -> None:
    """Restore `tracker` from a `state_dict` of any version, refusing one of another dataset size or other rules.

    Raises:
        ValueError: When an entry is missing or has the wrong shape, or num_samples or a rule differ.
    """
    n = tracker.num_samples
    state = dict(state) if RULES_KEY in state else _with_old_defaults(dict(state), n)
    expected = set(state_dict(tracker))
    if RULES_KEY not in state:
        expected = expected - {RULES_KEY} | set(_SEPARATE_SETTINGS)
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"tracker state is missing {missing}; load a state saved by AmenabilityTracker.state_dict().")
    num_samples = int(_first(state["num_samples"]))
    if num_samples != n:
        raise ValueError(f"tracker state has num_samples={num_samples} but this tracker has {n}; resume with the same training set or start a new run.")
    saved = _rules(state[RULES_KEY]) if RULES_KEY in state else _rules_of_separate_settings(state, tracker.rules)
    for name in (field.name for field in dataclasses.fields(TrackerRules)):
        if getattr(saved, name) != getattr(tracker.rules, name):
            raise ValueError(f"tracker state has {name}={getattr(saved, name)!r} but this tracker has {getattr(tracker.rules, name)!r}; resume with the same {name}.")
    for key in PER_SAMPLE:
        if np.asarray(state[key]).shape != (n,):
            raise ValueError(f"tracker state {key!r} has shape {np.asarray(state[key]).shape}, expected ({n},); the checkpoint is corrupt, start a new run.")
    averages = ThresholdAverages()
    averages.load_state_dict(state)
    arrays = {key: np.array(state[key], dtype=dtype) for key, dtype in PER_SAMPLE.items()}
    reason = arrays["reason"]
    tracker.epoch = int(_first(state["epoch"]))
    tracker._membership = Membership(
        reason,
        arrays["in_four_way"] & (reason != NOT_INTERPOLATED),
        arrays["region3_left"] * (reason == REGION_3),
        arrays["increases"],
    )
    tracker._last_loss = arrays["last_loss"]
    tracker._prev_noint_loss = arrays["prev_noint_loss"]
    tracker._averages = averages
    tracker._loss_sum = arrays["epoch_loss_sum"]
    tracker._correct_count = arrays["epoch_correct_count"]
    tracker._count = arrays["epoch_count"]
    tracker._revision += 1


def _with_old_defaults(state: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """A state saved before `RULES_KEY`, with the entries of the versions before it at the values they ran with."""
    if "in_quads" in state:
        state.setdefault("in_four_way", state.pop("in_quads"))
    state = {"max_group_size": np.array([2]), "in_four_way": np.zeros(n, dtype=np.bool_), **state}
    if "reason" in state:  # States saved before the threshold settings existed: the defaults.
        region3_left = (np.asarray(state["reason"]) == REGION_3).astype(np.uint8)
        defaults = {
            "threshold_average": np.array([0]), "region1_rule": np.array([0]), "region3_rule": np.array([0]),
            "region3_increases": np.array([1]), "region3_epochs": np.array([1]),
            "epoch_mean_sum": np.zeros(3), "epoch_mean_count": np.zeros(3, dtype=np.int64),
            "ema_mean": np.full(3, np.nan), "last_epoch_mean": np.full(3, np.nan),
            "increases": np.zeros(n, dtype=np.uint8), "region3_left": region3_left,
        }
        state = {**defaults, **state}
    return state


def _rules(array: np.ndarray) -> TrackerRules:
    try:
        return TrackerRules.from_dict(json.loads(np.asarray(array, dtype=np.uint8).tobytes()))
    except (TypeError, ValueError) as error:  # json's and UnicodeDecodeError are ValueErrors.
        raise ValueError(f"tracker state {RULES_KEY!r} holds no valid TrackerRules ({error}); the checkpoint is corrupt, start a new run.") from None


def _rules_of_separate_settings(state: dict[str, np.ndarray], own: TrackerRules) -> TrackerRules:
    """The rules of a state saved before `RULES_KEY`; `four_way_selection`, not saved then, is taken as `own`'s."""
    choices = {}
    for key, names in _INT_CODES.items():
        code = int(_first(state[key]))
        if not 0 <= code < len(names):
            raise ValueError(f"tracker state has {key} code {code}, not an index into {names}; the checkpoint is corrupt, start a new run.")
        choices[key] = names[code]
    return TrackerRules(
        selective=bool(_first(state["selective"])),
        regions=tuple(int(r) for r in np.asarray(state["regions"]).reshape(-1)),
        max_group_size=int(_first(state["max_group_size"])),
        four_way_selection=own.four_way_selection,
        region3_increases=int(_first(state["region3_increases"])),
        region3_epochs=int(_first(state["region3_epochs"])),
        **choices,
    )


def _first(array: np.ndarray):
    return np.asarray(array).reshape(-1)[0]
