"""hf_intertrain: InterTrain (training on interpolated inputs) for timm models on the Hugging Face Trainer.

Public API:
    InterTrainTrainer, InterTrainArguments    the Trainer subclass and its TrainingArguments
    AmenabilityTracker, TrackerRules           selective interpolation and its settings
    InterTrainBatchSampler, PlanRules          the epoch plan and its settings
    linavg, randpatch, cell_rectangle_masks    interpolation operators
    feature_grid, forward_split                split propagation for timm models
"""

import importlib.metadata

from .config import DataArguments, InterTrainArguments, ModelArguments
from .method.operators import cell_rectangle_masks, linavg, randpatch, upsample_cell_mask
from .method.sampler import InterTrainBatchSampler, PlanRules
from .method.split import check_splittable, feature_grid, forward_split
from .method.tracker import AmenabilityTracker, TrackerRules
from .trainer import InterTrainTrainer

__version__ = importlib.metadata.version("hf_intertrain")

__all__ = [
    "AmenabilityTracker",
    "DataArguments",
    "InterTrainArguments",
    "InterTrainBatchSampler",
    "InterTrainTrainer",
    "ModelArguments",
    "PlanRules",
    "TrackerRules",
    "cell_rectangle_masks",
    "check_splittable",
    "feature_grid",
    "forward_split",
    "linavg",
    "randpatch",
    "upsample_cell_mask",
]
