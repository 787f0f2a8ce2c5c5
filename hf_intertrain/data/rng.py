"""Seed the host random generators for a block of code and restore them afterwards.

Augmentation draws from Python's `random` (timm's transforms and `SmallImageTransform`), numpy's global RNG and
torch's CPU generator. Fetching a batch under its own seeds (`items.BatchSeededDataset`) or peeking at one item
(`hub.image_size_of`) must leave all three as they were, so that the training step's own randomness is what
transformers saves in its checkpoints (docs/method.md, "Distributed training and resume").
"""

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def preserved_host_rngs(seeds: Sequence[int] | None = None) -> Iterator[None]:
    """Run a block with Python's, numpy's and torch's CPU random generators restored to their states on exit.

    Args:
        seeds: None leaves the generators as they are inside the block; three ints seed them first, in this order:
            `random.seed(seeds[0])`, `np.random.seed(seeds[1])`, `torch.default_generator.manual_seed(seeds[2])`.
            Accelerator generators are neither seeded nor restored.
    """
    if seeds is not None and len(seeds) != 3:
        raise ValueError(f"seeds must be three ints (Python, numpy, torch), got {len(seeds)}; pass three or None")
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            if seeds is not None:
                random.seed(int(seeds[0]))
                np.random.seed(int(seeds[1]))
                torch.default_generator.manual_seed(int(seeds[2]))
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
