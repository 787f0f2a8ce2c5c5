"""One training run from parsed arguments: data, model, `InterTrainTrainer`, save, report.

Shared by `hf-intertrain train`, `hf-intertrain compare` and `recipes/train.py`; the CLI only parses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np
import timm
import timm.data
import transformers
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification
from transformers.trainer_utils import IntervalStrategy

from ..checkpoint import TRAINER_STATE_NAME, last_complete_checkpoint, saved_setting
from ..config import DataArguments, InterTrainArguments, ModelArguments
from ..constants import SMALL_IMAGE_MAX_SIZE
from ..data import (
    DeviceImageDataset,
    ImageClassificationData,
    ImageClassificationDataset,
    build_device_datasets,
    build_transforms,
    choose_data_pipeline,
    load_image_classification_data,
    verify_images_as_asked,
)
from ..launch import check_processes_share_work
from ..method.split import feature_grid
from ..method.tracker.summary import joined_epochs
from ..metrics import build_compute_metrics
from ..trainer import InterTrainTrainer
from .significance import pack_correct, unpack_correct

logger = logging.getLogger(__name__)

RUN_REPORT_NAME = "intertrain_run.json"


@dataclass
class RunReport:
    """What one run measured: the numbers `compare` puts side by side.

    `optimizer_steps` is the run's `trainer.state.global_step`: the budget that `compare`'s budget-matched baseline
    is fitted to (docs/method.md, "Peer methods and budget-matched baselines"). `fingerprint` holds the settings
    that decide the result (model, data, variant, seed, schedule, batch size, learning rate); `compare` records it
    so that a finished run is reused only by a run with the very same settings. `eval_correct` is the final
    evaluation's per-image correctness (`significance.pack_correct`), which the verdict's paired bootstrap needs.
    """

    interpolation: str
    train_seconds: float
    eval_accuracy: float | None
    eval_top5: float | None
    num_train_samples: int
    items_trained: int
    epochs: list[dict[str, Any]] = field(default_factory=list)
    train_runtime: float | None = None
    output_dir: str | None = None
    optimizer_steps: int | None = None
    seed: int | None = None
    fingerprint: dict[str, Any] | None = None
    num_eval_samples: int | None = None
    eval_correct: str | None = None

    def correct(self) -> np.ndarray | None:
        """Per-image correctness on the evaluation split (None for a run that did not record it)."""
        if self.eval_correct is None or not self.num_eval_samples:
            return None
        return unpack_correct(self.eval_correct, self.num_eval_samples)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """A report from `to_dict`'s output (a finished run's `intertrain_run.json`); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"run report lacks {', '.join(missing)}: not an {RUN_REPORT_NAME}; train that run again")
        return cls(**{key: value for key, value in data.items() if key in names})


def build_model(model_args: ModelArguments, label_names: list[str]) -> TimmWrapperForImageClassification:
    """A `TimmWrapperForImageClassification` for the dataset's classes (timm weights via transformers' wrapper)."""
    if not timm.is_model(model_args.model_name) and not model_args.pretrained:
        raise ValueError(
            f"unknown timm model {model_args.model_name!r}: pick a name from timm.list_models(), e.g. resnet18"
        )
    kwargs = model_args.create_kwargs()
    labels = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    if model_args.pretrained:
        return TimmWrapperForImageClassification.from_pretrained(
            model_args.model_name, model_args=kwargs or None, ignore_mismatched_sizes=True, **labels
        )
    config = TimmWrapperConfig(architecture=model_args.model_name, model_args=kwargs or None, **labels)
    return TimmWrapperForImageClassification(config)


def resolve_image_size(data_args: DataArguments, data: ImageClassificationData, model) -> int:
    """`--image_size`, else the images' own size when small (CIFAR-like), else the model's pretrained input size."""
    if data_args.image_size is not None:
        if data_args.image_size < 8:
            raise ValueError(f"--image_size={data_args.image_size} is too small: use at least 8 pixels")
        return data_args.image_size
    width, height = data.first_image_size()
    if max(width, height) <= SMALL_IMAGE_MAX_SIZE:
        return max(width, height)
    return int(timm.data.resolve_data_config({}, model=model.timm_model)["input_size"][-1])


def build_datasets(
    data: ImageClassificationData, model, image_size: int, data_pipeline: str = "workers", device=None
):
    """Train and eval datasets with the model's normalisation and the standard augmentation, served by the input
    pipeline `data_pipeline` (`workers` or `device`, see `resolve_data_pipeline`)."""
    data_config = timm.data.resolve_data_config({}, model=model.timm_model)
    return build_split_datasets(data, data_config, image_size, data_pipeline, device)


def build_split_datasets(
    data: ImageClassificationData, data_config: dict, image_size: int, data_pipeline: str = "workers", device=None
):
    """`build_datasets` from a timm data config (mean, std, interpolation, crop_pct) instead of a model.

    `workers`: `ImageClassificationDataset`s, each image decoded and augmented in the loader workers. `device`:
    `DeviceImageDataset`s, augmented on the training device by the trainer, from each split's decoded cache when the
    splits fit the cache budget, else from their encoded files (docs/input_path.md).
    """
    if data_pipeline not in ("workers", "device"):
        raise ValueError(f"data_pipeline={data_pipeline!r}: resolve it first (resolve_data_pipeline) to workers or device")
    if data_pipeline == "device":
        return build_device_datasets(data, data_config, image_size, device)
    train = ImageClassificationDataset(
        data.train,
        build_transforms(data_config, image_size, is_training=True),
        data.image_column,
        data.label_column,
    )
    eval_dataset = None
    if data.eval is not None:
        eval_dataset = ImageClassificationDataset(
            data.eval,
            build_transforms(data_config, image_size, is_training=False),
            data.image_column,
            data.label_column,
        )
    return train, eval_dataset


def load_data(data_args: DataArguments, verify_images: str | None = None) -> ImageClassificationData:
    """The dataset `data_args` names, checked (`load_image_classification_data`)."""
    return load_image_classification_data(
        data_args.dataset_name,
        dataset_config=data_args.dataset_config,
        train_split=data_args.train_split,
        eval_split=data_args.eval_split,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
        verify_images=verify_images or data_args.verify_images,
    )


def verify_uncached_images(data: ImageClassificationData, served: tuple[Any, Any], verify_images: str) -> list[str]:
    """Decode the images of every split not served from a decoded cache, as `verify_images` asks; the splits it
    decoded.

    A cached split needs no second pass: building its cache decoded every image and names a bad one's row with the
    same `DataError` (docs/method.md, "Choices where the paper is silent"), and a cache is read only for the split it
    was built from. Either way a bad image stops the run before training starts.
    """
    verified = []
    for split, name, dataset in ((data.train, data.train_split, served[0]), (data.eval, data.eval_split or "eval", served[1])):
        if split is None or (isinstance(dataset, DeviceImageDataset) and dataset.cached):
            continue
        if verify_images_as_asked(split, data.image_column, name, verify_images):
            verified.append(name)
    return verified


def resolve_data_pipeline(
    data_args: DataArguments,
    training_args: InterTrainArguments,
    data: ImageClassificationData | None = None,
    resume: str | None = None,
) -> str:
    """`--data_pipeline` resolved to `workers` or `device`, once, before anything is built: `auto` takes the input
    path of the checkpoint a run resumes from, else `device` when the decoded splits fit the cache budget (its cache is
    built on the way), else `workers` (`data.choose_data_pipeline`). `compare` resolves it once for every variant;
    the trainer only reads the choice from its dataset."""
    requested = training_args.data_pipeline
    if requested != "auto":
        return requested
    if resume is not None and (saved := saved_setting(resume, "data_pipeline")) is not None:
        return saved
    return choose_data_pipeline("auto", data or load_data(data_args, verify_images="none"), training_args.device)


def resolve_last_checkpoint(output_dir: str, announce: bool = True) -> str:
    """The checkpoint `--resume_from_checkpoint last` resumes from: the newest complete one of `output_dir`
    (`checkpoint.last_complete_checkpoint`), so that a run killed while saving still restarts with the same command.

    Newer incomplete folders are named in one line (when `announce`, on the main process) and left in place.

    Raises:
        ValueError: When `output_dir` holds no complete checkpoint.
    """
    checkpoint, skipped = last_complete_checkpoint(output_dir)
    incomplete = f"incomplete, without {TRAINER_STATE_NAME}: {', '.join(skipped)}"
    if checkpoint is None:
        found = f"complete checkpoint in {output_dir} ({incomplete})" if skipped else f"checkpoint in {output_dir}"
        raise ValueError(f"--resume_from_checkpoint last: no {found}; start the run without --resume_from_checkpoint")
    if skipped and announce:
        print(
            f"hf-intertrain: --resume_from_checkpoint last: resuming from {os.path.basename(checkpoint)}, skipped "
            f"{incomplete} (a save was interrupted; left in place)",
            flush=True,
        )
    return checkpoint


def run_training(
    model_args: ModelArguments, data_args: DataArguments, training_args: InterTrainArguments
) -> RunReport:
    """Train one model as configured, save it, evaluate it, and write `intertrain_run.json` in `output_dir`."""
    check_processes_share_work(training_args.world_size)
    transformers.set_seed(training_args.seed)
    data = load_data(data_args, verify_images="none")  # verified below, once the input path is known
    model = build_model(model_args, data.label_names)
    image_size = resolve_image_size(data_args, data, model)
    if training_args.process_index == 0:
        print(model_settings_line(model_args, model, image_size), flush=True)
    resume = training_args.resume_from_checkpoint
    if resume == "last":
        resume = resolve_last_checkpoint(training_args.output_dir, announce=training_args.process_index == 0)
    pipeline = resolve_data_pipeline(data_args, training_args, data, resume)
    train_dataset, eval_dataset = build_datasets(data, model, image_size, pipeline, training_args.device)
    verify_uncached_images(data, (train_dataset, eval_dataset), data_args.verify_images)
    training_args = dataclasses.replace(training_args, data_pipeline=pipeline)
    if eval_dataset is None and training_args.eval_strategy != IntervalStrategy.NO:
        logger.warning("The dataset has no evaluation split: training without evaluation.")
        training_args = dataclasses.replace(training_args, eval_strategy=IntervalStrategy.NO, do_eval=False)

    trainer = InterTrainTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        compute_metrics=build_compute_metrics() if eval_dataset is not None else None,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    # Before save_model: with --push_to_hub it uploads, and its card reuses this dataset and base model.
    trainer.create_model_card(
        dataset_name=data_args.dataset_name, finetuned_from=model_args.model_name if model_args.pretrained else None
    )
    trainer.save_model()
    trainer.save_state()

    eval_metrics: dict[str, float] = {}
    correct = None
    if eval_dataset is not None:
        eval_metrics, correct = evaluate_per_image(trainer, eval_dataset)
    report = build_report(trainer, train_result.metrics, eval_metrics, correct)
    if trainer.is_world_process_zero():
        with open(os.path.join(training_args.output_dir, RUN_REPORT_NAME), "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return report


def evaluate_saved_model(
    model_args: ModelArguments, data_args: DataArguments, training_args: InterTrainArguments
) -> np.ndarray:
    """Per-image correctness of the model a finished run saved in `training_args.output_dir`, on the evaluation split
    of `data_args`, through the run's own input path: for runs made before their reports recorded it."""
    data = load_data(data_args, verify_images="none")
    model = TimmWrapperForImageClassification.from_pretrained(training_args.output_dir)
    image_size = resolve_image_size(data_args, data, model)
    pipeline = resolve_data_pipeline(data_args, training_args, data)
    train_dataset, eval_dataset = build_datasets(data, model, image_size, pipeline, training_args.device)
    if eval_dataset is None:
        raise ValueError(f"dataset {data_args.dataset_name!r} has no evaluation split: the verdict needs one")
    args = dataclasses.replace(
        training_args, output_dir=os.path.join(training_args.output_dir, "reevaluation"), report_to="none",
        data_pipeline=pipeline, disable_tqdm=True,
    )
    trainer = InterTrainTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        compute_metrics=build_compute_metrics(),
    )
    return evaluate_per_image(trainer, eval_dataset)[1]


def evaluate_per_image(trainer: InterTrainTrainer, eval_dataset) -> tuple[dict[str, float], np.ndarray]:
    """The final evaluation (logged like `Trainer.evaluate`'s) and whether each evaluation image was classified
    correctly."""
    output = trainer.predict(eval_dataset, metric_key_prefix="eval")
    trainer.log(output.metrics)
    logits = output.predictions[0] if isinstance(output.predictions, (tuple, list)) else output.predictions
    return output.metrics, np.asarray(logits).argmax(-1) == np.asarray(output.label_ids)


def build_report(
    trainer: InterTrainTrainer, train_metrics: dict, eval_metrics: dict, correct: np.ndarray | None = None
) -> RunReport:
    """Per-epoch statistics joined with the evaluation that followed each epoch."""
    epochs = []
    elapsed = 0.0
    for row, evaluation in joined_epochs(trainer.intertrain_history, trainer.state.log_history):
        elapsed += row["epoch_seconds"]
        row["cumulative_train_seconds"] = elapsed
        if evaluation is not None:
            row["eval_top1"] = evaluation["eval_top1"]
            row["eval_loss"] = evaluation.get("eval_loss")
        epochs.append(row)
    return RunReport(
        interpolation=trainer.args.interpolation,
        train_seconds=elapsed,
        eval_accuracy=eval_metrics.get("eval_top1"),
        eval_top5=eval_metrics.get("eval_top5"),
        num_train_samples=len(trainer.train_dataset),
        items_trained=int(sum(row["items"] for row in epochs)),
        epochs=epochs,
        train_runtime=train_metrics.get("train_runtime"),
        output_dir=trainer.args.output_dir,
        optimizer_steps=trainer.state.global_step,
        seed=trainer.args.seed,
        num_eval_samples=None if correct is None else int(correct.size),
        eval_correct=None if correct is None else pack_correct(correct),
    )


def model_settings_line(model_args: ModelArguments, model, image_size: int) -> str:
    """The network a run trains, in one line: what the recipe and the flags added up to."""
    kwargs = json.dumps(model_args.create_kwargs(), default=str)
    line = f"hf-intertrain: model {model_args.model_name}, model_kwargs {kwargs}, image size {image_size}"
    try:
        height, width = feature_grid(model, image_size)
    except (ValueError, RuntimeError):  # an unusual feature layout: training reports it where it matters
        return line
    return line + f", final feature grid {height}x{width}"
