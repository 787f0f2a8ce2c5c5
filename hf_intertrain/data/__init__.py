"""Image-classification data for InterTrain, one job per module.

- `loading`: load a `datasets` split and check everything training relies on (splits, columns, labels, images),
  so that a bad dataset fails at load time and not hours into a run.
- `errors`: `DataError`, raised for every problem with the user's data, one line naming the cause and the fix.
- `images`: decode a stored image with PIL and bring any image mode to 8-bit RGB.
- `transforms`: the train and eval transforms (timm's for large images, `SmallImageTransform` for CIFAR-sized ones).
- `items`: the item keys of the InterTrain batch sampler (docs/method.md, "Batch plan of an epoch"), the datasets
  that serve them, `InterTrainCollator`, and `BatchSeededDataset`, which seeds each batch's augmentation.
- `rng`: `preserved_host_rngs`, seeding and restoring Python's, numpy's and torch's CPU generators around a block.

A device-side data path (images decoded once into a uint8 cache, augmented in batches on the accelerator) belongs
beside these as its own module, `data/device.py`. It consumes the same item keys (`parse_item_key`, `batch_seeds`),
can serve them as an `InterTrainItemDataset` whose `fetch_row` returns uint8 pixels, and feeds the same
`InterTrainCollator`; only the PIL decode of `images` and the per-item `transforms` stay on the host path.
"""

from ..constants import EMBEDDED_DATASET
from .errors import DataError
from .images import ALPHA_BACKGROUND, decode_image, to_rgb, verify_split_images
from .items import (
    EXTRA_CONSTITUENTS,
    BatchSeededDataset,
    ImageClassificationDataset,
    InterTrainCollator,
    InterTrainItemDataset,
    ItemDataset,
    ItemKey,
    as_item_dataset,
    batch_seeds,
    parse_item_key,
)
from .loading import (
    EVAL_SPLIT_CANDIDATES,
    LABEL_COLUMN_CANDIDATES,
    VERIFY_IMAGES_AUTO_MAX_ROWS,
    ImageClassificationData,
    load_image_classification_data,
    local_cache_dir,
    read_labels,
)
from .rng import preserved_host_rngs
from .transforms import SmallImageTransform, build_transforms

__all__ = [
    "ALPHA_BACKGROUND",
    "EMBEDDED_DATASET",
    "EVAL_SPLIT_CANDIDATES",
    "EXTRA_CONSTITUENTS",
    "LABEL_COLUMN_CANDIDATES",
    "VERIFY_IMAGES_AUTO_MAX_ROWS",
    "BatchSeededDataset",
    "DataError",
    "ImageClassificationData",
    "ImageClassificationDataset",
    "InterTrainCollator",
    "InterTrainItemDataset",
    "ItemDataset",
    "ItemKey",
    "SmallImageTransform",
    "as_item_dataset",
    "batch_seeds",
    "build_transforms",
    "decode_image",
    "load_image_classification_data",
    "local_cache_dir",
    "parse_item_key",
    "preserved_host_rngs",
    "read_labels",
    "to_rgb",
    "verify_split_images",
]
