"""Save directories that load in both timm and transformers, with the eval transform the model was trained with.

A `TimmWrapperForImageClassification.save_pretrained` folder loads in transformers only: its config.json has no
`pretrained_cfg` (timm's `local-dir:`/`hf-hub:` loader then reads the whole config as one, and fails) and its
weights carry the wrapper's `timm_model.` prefix. timm's own `save_for_hf` writes `num_classes` into `model_args`,
which transformers passes to `timm.create_model` a second time. `make_loadable` rewrites a saved folder into the
layout of the timm checkpoints on the Hub, which both libraries read:

    config.json   architecture, num_classes, label_names, model_args (never num_classes), pretrained_cfg,
                  plus transformers' model_type / architectures
    model.safetensors   native timm state-dict keys (transformers adds `timm_model.` back when loading)

What each library reads (timm 1.0 `_hub._parse_model_cfg` and `_builder.load_pretrained`; transformers 5
`TimmWrapperConfig.from_dict`, `TimmWrapperImageProcessor` and the `timm_wrapper` `PrefixChange` weight mapping):
timm takes `architecture`, `model_args` (extra `create_model` kwargs), `num_classes` and `label_names` from the root
and every other setting from `pretrained_cfg`, whose keys must be `timm.models.PretrainedCfg` fields;
transformers takes `num_classes`/`label_names` for its labels, `model_args` for `create_model`, and the image
processor (and so `pipeline("image-classification")`) builds its eval transform from `pretrained_cfg`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import safetensors
import safetensors.torch
import timm.data
import torch

from .constants import SMALL_IMAGE_MAX_SIZE
from .data.rng import preserved_host_rngs

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WRAPPER_PREFIX = "timm_model."

# pretrained_cfg keys describing where the source weights came from or how they were evaluated: the saved folder
# is its own source, and its eval transform is the one it was trained with.
_SOURCE_KEYS = (
    "url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "tag", "architecture",
    "test_input_size", "test_crop_pct", "test_pool_size", "pool_size",
    "label_names", "label_descriptions", "label_offset", "num_classes",
)


def eval_data_config(timm_model: torch.nn.Module, image_size: int | tuple[int, int]) -> dict[str, Any]:
    """The eval transform of `data.build_transforms` at `image_size`, in timm's data-config terms.

    Mean, std, interpolation and crop mode are `timm.data.resolve_data_config({}, model=timm_model)`, as for
    training. Small images (at most `SMALL_IMAGE_MAX_SIZE` px) are resized to `image_size` and center-cropped,
    which is timm's eval transform with `crop_pct=1.0`; larger ones use the model's own `crop_pct`.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    resolved = timm.data.resolve_data_config({}, model=timm_model)
    crop_pct = 1.0 if max(height, width) <= SMALL_IMAGE_MAX_SIZE else float(resolved.get("crop_pct", 0.875))
    return {
        "input_size": [int(resolved["input_size"][0]), int(height), int(width)],
        "interpolation": resolved.get("interpolation") or "bilinear",
        "mean": [float(v) for v in resolved["mean"]],
        "std": [float(v) for v in resolved["std"]],
        "crop_pct": crop_pct,
        "crop_mode": resolved.get("crop_mode") or "center",
    }


def build_pretrained_cfg(timm_model: torch.nn.Module, image_size: int | tuple[int, int]) -> dict[str, Any]:
    """`pretrained_cfg` for a trained `timm_model`: its architecture facts plus the eval transform it was trained for.

    Architecture facts (`first_conv`, `classifier`, `fixed_input_size`, `min_input_size`, `license`, ...) come from
    the model's own `pretrained_cfg`; fields about the source weights (url, hub id, tag, test-time sizes, labels of
    another head) are dropped. `num_classes` is the trained head's.
    """
    own = getattr(timm_model, "pretrained_cfg", None) or {}
    cfg = {key: _jsonable(value) for key, value in own.items() if key not in _SOURCE_KEYS and value is not None}
    cfg.update(eval_data_config(timm_model, image_size))
    cfg["custom_load"] = False
    cfg["num_classes"] = int(timm_model.num_classes)
    return cfg


def make_loadable(
    save_dir: str | os.PathLike,
    timm_model: torch.nn.Module,
    image_size: int | tuple[int, int],
    label_names: list[str] | None = None,
) -> None:
    """Rewrite `save_dir` (a `save_pretrained` folder, or one holding only model.safetensors) for timm and transformers.

    Args:
        save_dir: folder with model.safetensors and, for a transformers model, config.json.
        timm_model: the trained timm model (unwrapped): source of the architecture, model args and data config.
        image_size: the training resolution; the saved eval transform produces this size.
        label_names: class names by id; default: those in config.json.
    """
    config_path = os.path.join(save_dir, CONFIG_NAME)
    config: dict[str, Any] = {}
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    config.update(build_root_config(timm_model, image_size, config, label_names))
    if not config.get("model_args"):
        # timm reads a `"model_args": null` (transformers' default) as a dict and fails: no args, no key.
        config.pop("model_args", None)
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    weights_path = os.path.join(save_dir, WEIGHTS_NAME)
    if os.path.isfile(weights_path):
        strip_wrapper_prefix(weights_path)
    else:
        logger.warning(
            "%s has no %s (a sharded save?): transformers loads it, timm's local-dir loader needs one file", save_dir, WEIGHTS_NAME
        )


def build_root_config(
    timm_model: torch.nn.Module,
    image_size: int | tuple[int, int],
    config: dict[str, Any] | None = None,
    label_names: list[str] | None = None,
) -> dict[str, Any]:
    """The config.json fields that timm and transformers both read (see the module docstring)."""
    config = config or {}
    if "model_args" in config:
        model_args = dict(config["model_args"] or {})
    else:
        model_args = {
            key: value
            for key, value in getattr(timm_model, "_model_args", {}).items()
            if key not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
        }
    # transformers passes num_classes to create_model itself: a second one in model_args is a TypeError.
    model_args.pop("num_classes", None)
    architecture = config.get("architecture") or timm_model.pretrained_cfg.get("architecture")
    if not architecture:
        raise ValueError(
            f"cannot tell the timm architecture of {type(timm_model).__name__}: create it with timm.create_model or "
            "use TimmWrapperForImageClassification"
        )
    root: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": int(timm_model.num_classes),
        "pretrained_cfg": build_pretrained_cfg(timm_model, image_size),
        "model_type": config.get("model_type", "timm_wrapper"),
        "architectures": config.get("architectures", ["TimmWrapperForImageClassification"]),
    }
    if model_args:
        root["model_args"] = _jsonable(model_args)
    names = label_names if label_names is not None else config.get("label_names")
    if names is not None:
        if len(names) != root["num_classes"]:
            raise ValueError(
                f"{len(names)} label names for a {root['num_classes']}-class head: pass one name per class"
            )
        root["label_names"] = [str(name) for name in names]
    return root


def strip_wrapper_prefix(weights_path: str | os.PathLike) -> None:
    """Rewrite a safetensors file with native timm keys (`timm_model.conv1.weight` -> `conv1.weight`).

    transformers' `timm_wrapper` weight mapping adds the prefix back when loading, and the Trainer's resume path
    goes through `TimmWrapperPreTrainedModel.load_state_dict`, which does the same. No-op if already native.
    """
    if not os.path.isfile(weights_path):
        raise ValueError(
            f"{weights_path} does not exist: pass the model.safetensors of an unsharded save_pretrained or Trainer save"
        )
    with safetensors.safe_open(weights_path, framework="pt") as f:
        keys = list(f.keys())
        metadata = f.metadata() or {}
    if not any(key.startswith(WRAPPER_PREFIX) for key in keys):
        return
    tensors = safetensors.torch.load_file(weights_path)
    native = {key.removeprefix(WRAPPER_PREFIX): value.contiguous() for key, value in tensors.items()}
    metadata.setdefault("format", "pt")
    tmp_path = f"{weights_path}.tmp"
    safetensors.torch.save_file(native, tmp_path, metadata=metadata)
    os.replace(tmp_path, weights_path)


def _jsonable(value: Any) -> Any:
    """Tuples to lists, recursively, so config.json round-trips (timm accepts lists where it stores tuples)."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def resolve_repo_id(hub_model_id: str | None, output_dir: str | os.PathLike, created_repo_id: str | None = None) -> str:
    """The Hub repo `Trainer.push_to_hub` uploads to, as the card's loading snippets should name it.

    `created_repo_id` is the id the Hub returned when the Trainer created the repo (`Trainer.hub_model_id`);
    before that the Trainer would create `args.hub_model_id`, or the name of `output_dir`, under the logged-in
    user, whose name is unknown offline: it is written as `your-username`.
    """
    if created_repo_id:
        return created_repo_id
    name = hub_model_id or os.path.basename(os.path.abspath(os.fspath(output_dir)))
    if not name or name.count("/") > 1:
        raise ValueError(f"hub_model_id={hub_model_id!r} is not a Hub repo id: use 'name' or 'user-or-org/name'")
    return name if "/" in name else f"your-username/{name}"


def image_size_of(dataset) -> tuple[int, int]:
    """(height, width) of the first item's `pixel_values`, leaving the random generators as they were.

    A training item goes through random augmentation: drawing it here must not shift the augmentations of the
    run (Python's `random`, numpy's and torch's CPU generators are saved and restored around it:
    `data.rng.preserved_host_rngs`).
    """
    with preserved_host_rngs():
        height, width = dataset[0]["pixel_values"].shape[-2:]
    return int(height), int(width)
