"""Image-classification data for InterTrain, one job per module.

- `loading`: load a `datasets` split and check everything training relies on (splits, columns, labels, images),
  so that a bad dataset fails at load time and not hours into a run.
- `errors`: `DataError`, raised for every problem with the user's data, one line naming the cause and the fix.
- `images`: decode a stored image with PIL and bring any image mode to 8-bit RGB.
- `transforms`: the train and eval transforms (timm's for large images, `SmallImageTransform` for CIFAR-sized ones).
- `items`: the item keys of the InterTrain batch sampler (docs/method.md, "Batch plan of an epoch"), the datasets
  that serve them, `InterTrainCollator`, and `BatchSeededDataset`, which seeds each batch's augmentation.
- `rng`: `preserved_host_rngs`, seeding and restoring Python's, numpy's and torch's CPU generators around a block.
- `pixel_cache`: decode a split once into a memory-mapped uint8 array (N, H, W, 3) beside its `datasets` cache.
- `decode`: decode a batch of encoded images on the training device (nvjpeg on CUDA, torchvision on the CPU).
- `device_transforms`: the train and eval transforms on whole batches of uint8 images, randomness injected.
- `device`: the device pipeline (`--data_pipeline device`): `DeviceImageDataset` serves `PixelRequest`s (row keys
  and augmentation draws) for the same item keys, `InterTrainCollator` makes a batch's requests one `PixelRequests`,
  `materialize_pixels` turns them into pixels on the device, `choose_data_pipeline` resolves `auto`.
"""

from ..constants import EMBEDDED_DATASET
from .device import (
    DeviceImageDataset,
    PixelItems,
    PixelRequest,
    PixelRequests,
    build_device_dataset,
    build_device_datasets,
    choose_data_pipeline,
    materialize_pixels,
)
from .device_transforms import DeviceTransform
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
    KeyedItems,
    as_item_dataset,
    batch_seeds,
    parse_item_key,
    parse_item_keys,
)
from .loading import (
    EVAL_SPLIT_CANDIDATES,
    LABEL_COLUMN_CANDIDATES,
    VERIFY_IMAGES_AUTO_MAX_ROWS,
    ImageClassificationData,
    load_image_classification_data,
    local_cache_dir,
    read_labels,
    verify_images_as_asked,
)
from .pixel_cache import load_pixel_cache
from .rng import preserved_host_rngs
from .transforms import SmallImageTransform, build_transforms, normalization_of

__all__ = [
    "ALPHA_BACKGROUND",
    "EMBEDDED_DATASET",
    "EVAL_SPLIT_CANDIDATES",
    "EXTRA_CONSTITUENTS",
    "LABEL_COLUMN_CANDIDATES",
    "VERIFY_IMAGES_AUTO_MAX_ROWS",
    "BatchSeededDataset",
    "DataError",
    "DeviceImageDataset",
    "DeviceTransform",
    "ImageClassificationData",
    "ImageClassificationDataset",
    "InterTrainCollator",
    "InterTrainItemDataset",
    "ItemDataset",
    "ItemKey",
    "KeyedItems",
    "PixelItems",
    "PixelRequest",
    "PixelRequests",
    "SmallImageTransform",
    "as_item_dataset",
    "batch_seeds",
    "build_device_dataset",
    "build_device_datasets",
    "build_transforms",
    "choose_data_pipeline",
    "decode_image",
    "load_image_classification_data",
    "load_pixel_cache",
    "local_cache_dir",
    "materialize_pixels",
    "normalization_of",
    "parse_item_key",
    "parse_item_keys",
    "preserved_host_rngs",
    "read_labels",
    "to_rgb",
    "verify_images_as_asked",
    "verify_split_images",
]
