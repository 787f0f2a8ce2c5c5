"""Is a difference in top-1 larger than its noise? Per-image correctness and the paired bootstrap over images.

docs/method.md, "Peer methods and budget-matched baselines": two runs evaluated on the same images differ by
`mean(correct_a - correct_b)`. Which images the test set happens to hold is one source of noise (a single run's
top-1 on 1,000 images has a standard error of about 1.4 points); resampling the images with replacement, the same
images for both runs and for every seed, gives that difference a confidence interval. Seeds are pooled: the
difference is the mean over seeds of the per-seed differences, computed on each resample. numpy only.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
"""Resamples of the paired bootstrap: the 2.5 % and 97.5 % percentiles move by well under 0.1 point between draws."""

BOOTSTRAP_SEED = 0
"""The bootstrap's own seed: the same runs always get the same interval."""


def pack_correct(correct: np.ndarray) -> str:
    """Per-image correctness (bool, one per evaluation image) as compact text for a JSON report."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def unpack_correct(text: str, num_images: int) -> np.ndarray:
    """The inverse of `pack_correct`: a bool array of `num_images`."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=num_images)
    return bits.astype(bool)


def paired_bootstrap(
    challenger: Sequence[np.ndarray],
    peer: Sequence[np.ndarray],
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float, float]:
    """(difference, low, high): the challenger's top-1 minus the peer's, pooled over seeds, with its bootstrap
    interval.

    Args:
        challenger: Per seed, the challenger's per-image correctness (bool arrays, all of one length).
        peer: Per seed (the same seeds, in the same order), the peer's correctness on the same images.
        resamples: Bootstrap resamples of the images.
        confidence: Coverage of the percentile interval.
        seed: The resampling generator's seed.
    """
    if len(challenger) != len(peer) or not challenger:
        raise ValueError("paired_bootstrap needs the same seeds (at least one) for both runs")
    differences = np.stack([np.asarray(c, np.int8) - np.asarray(p, np.int8) for c, p in zip(challenger, peer)])
    num_images = differences.shape[1]
    per_image = differences.mean(axis=0, dtype=np.float64)  # mean over seeds, image by image
    generator = np.random.default_rng(seed)
    totals = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, 250):
        stop = min(resamples, start + 250)
        picks = generator.integers(0, num_images, size=(stop - start, num_images))
        totals[start:stop] = per_image[picks].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(totals, [tail, 100 - tail])
    return float(per_image.mean()), float(low), float(high)


def outcome(low: float, high: float, seconds_ratio: float | None, max_seconds_ratio: float) -> str:
    """'wins' (more accurate beyond noise, in at most `max_seconds_ratio` of the peer's time), 'loses' (less accurate
    beyond noise), 'within noise', or 'slower' (more accurate beyond noise, but too slow to count as a win)."""
    if high < 0:
        return "loses"
    if low > 0:
        return "wins" if seconds_ratio is not None and seconds_ratio <= max_seconds_ratio else "slower"
    return "within noise"
