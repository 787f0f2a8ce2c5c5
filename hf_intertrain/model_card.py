"""Model cards of InterTrain runs: Hub metadata plus how the model was trained and what InterTrain saved.

A card is rendered in two steps so that the reference cards in `model_cards/` can be regenerated from the runs
that produced them: `card_facts` gathers what a finished `InterTrainTrainer` measured into a JSON-able dict
(written as `intertrain_card.json` beside the model), and `write_model_card` renders any such dict through the
packaged template (`hf_intertrain.model_cards/intertrain_template.md`) with `huggingface_hub.ModelCard`, and
plots the interpolated fraction per epoch beside the card.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .checkpoint import RESUME_SETTINGS
from .constants import EMBEDDED_DATASET
from .hub import eval_data_config
from .method.tracker.summary import REGION_COUNTS, joined_epochs

TEMPLATE_NAME = "intertrain_template.md"
CARD_NAME = "README.md"
FACTS_NAME = "intertrain_card.json"
PLOT_NAME = "intertrain_fraction.png"
BASE_TAGS = ("image-classification", "timm", "intertrain")
EMBEDDED_DATASET_HUB_ID = "uoft-cs/cifar10"
_LABELS_SHOWN = 20
_ROW_KEYS = ("interpolated_fraction", "items", "pairs", *REGION_COUNTS, "epoch_seconds")
_FIG5_KEYS = ("correct_below_l_mid", "incorrect_below_l_mid")
"""The card's per-epoch columns: `intertrain/*` statistics named as in `summary.EPOCH_STATISTICS`."""
_INTERPOLATION_TEXT = {
    "randpatch": "RandPatch: a rectangle of one image pasted into the other, each constituent classified from its own "
    "cells of the final feature map when split propagation is on",
    "linavg": "LinAvg: a weighted average of the two images",
    "none": "here none: this is the baseline run, every sample trained alone",
}


def template_text(name: str = TEMPLATE_NAME) -> str:
    """A card template installed with the package (the repository's top-level `model_cards/` folder)."""
    resource = importlib.resources.files("hf_intertrain.model_cards").joinpath(name)
    if not resource.is_file():
        raise ValueError(f"no model-card template {name!r} in hf_intertrain.model_cards: reinstall hf_intertrain")
    return resource.read_text(encoding="utf-8")


def describe_dataset(dataset_name: str | None) -> dict[str, Any]:
    """Display name and Hub ids of a dataset given as a Hub id or a local path.

    A local folder is not a Hub dataset, so it gets no `datasets` metadata, except the CIFAR-10 sample shipped
    with the package, which is linked to the Hub dataset it was cut from.
    """
    if not dataset_name:
        return {"name": None, "display": "an unnamed dataset", "hub_ids": []}
    if os.path.exists(dataset_name):
        # Only the folder name is kept: the card and its facts are uploaded, local paths are not theirs to show.
        path = os.path.realpath(dataset_name)
        if path == os.path.realpath(EMBEDDED_DATASET):
            display = "the CIFAR-10 sample shipped with hf_intertrain (the first 5,000 train and 1,000 test images of CIFAR-10)"
            return {"name": "hf_intertrain/sample_data/cifar10", "display": display, "short": "CIFAR-10 sample", "hub_ids": [EMBEDDED_DATASET_HUB_ID]}
        base = os.path.basename(path.rstrip(os.sep))
        return {"name": base, "display": f"the local dataset `{base}`", "short": base, "hub_ids": []}
    return {
        "name": dataset_name,
        "display": f"[`{dataset_name}`](https://huggingface.co/datasets/{dataset_name})",
        "short": dataset_name,
        "hub_ids": [dataset_name],
    }


def epoch_rows(intertrain_history: list[dict[str, float]], log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch statistics of `InterTrainTrainer.intertrain_history`, joined with the evaluation after each epoch."""
    rows = []
    for stats, evaluation in joined_epochs(intertrain_history, log_history):
        row: dict[str, Any] = {"epoch": int(stats["epoch"])}
        for key in _ROW_KEYS:
            row[key] = float(stats[key]) if key in ("interpolated_fraction", "epoch_seconds") else int(stats[key])
        for key in _FIG5_KEYS:  # absent from histories written before the diagnostics existed
            value = stats.get(key)
            row[key] = None if value is None or math.isnan(float(value)) else float(value)
        row["eval_top1"] = float(evaluation["eval_top1"]) if evaluation else None
        rows.append(row)
    return rows


def card_inputs(
    dataset: str | list[str] | None,
    dataset_tags: str | list[str] | None,
    finetuned_from: str | None,
    license: str | None,
    language: str | list[str] | None,
) -> dict[str, Any]:
    """The `card_facts` arguments given to `Trainer.create_model_card` (None ones left out, so that a later call
    keeps what an earlier one gave): a dataset list stands for its first entry, `dataset_tags` for the Hub ids."""
    given = {
        "dataset_name": dataset if isinstance(dataset, str) else (dataset[0] if dataset else None),
        "dataset_ids": [dataset_tags] if isinstance(dataset_tags, str) else dataset_tags,
        "base_model": finetuned_from,
        "license": license,
        "language": language,
    }
    return {key: value for key, value in given.items() if value is not None}


def card_facts(
    trainer,
    model_name: str,
    repo_id: str,
    dataset_name: str | None = None,
    dataset_ids: list[str] | None = None,
    base_model: str | None = None,
    tags: list[str] | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
) -> dict[str, Any]:
    """What a trained `InterTrainTrainer` measured and was configured with, as JSON-able data for the card."""
    import timm
    import torch
    import transformers

    from .method.split import unwrap_timm_model

    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    timm_model = unwrap_timm_model(model)
    config = getattr(model, "config", None)
    label_names = None
    if config is not None and getattr(config, "id2label", None):
        label_names = [str(config.id2label[i]) for i in range(len(config.id2label))]
    model_args = dict(getattr(config, "model_args", None) or {}) if config is not None else {}
    architecture = getattr(config, "architecture", None) or timm_model.pretrained_cfg.get("architecture")
    dataset = describe_dataset(dataset_name)
    if dataset_ids is not None:
        dataset["hub_ids"] = list(dataset_ids)
    epochs = epoch_rows(trainer.intertrain_history, trainer.state.log_history)
    evaluations = [entry for entry in trainer.state.log_history if "eval_top1" in entry]
    runtime = [entry["train_runtime"] for entry in trainer.state.log_history if "train_runtime" in entry]
    image_size = list(trainer.intertrain_image_size)
    device = args.device
    return {
        "model_name": model_name,
        "repo_id": repo_id,
        "architecture": architecture,
        "model_args": model_args,
        "num_classes": int(timm_model.num_classes),
        "label_names": label_names,
        "image_size": image_size,
        "data_config": eval_data_config(timm_model, tuple(image_size)),
        "dataset": dataset,
        "base_model": base_model,
        "tags": list(tags or []),
        "license": license,
        "language": language,
        "num_train_samples": len(trainer.train_dataset),
        "num_eval_samples": _length(trainer.eval_dataset),
        "num_train_epochs": float(args.num_train_epochs),
        "epochs": epochs,
        "final_top1": float(evaluations[-1]["eval_top1"]) if evaluations else None,
        "final_top5": float(evaluations[-1]["eval_top5"]) if evaluations and "eval_top5" in evaluations[-1] else None,
        "train_seconds": float(sum(row["epoch_seconds"] for row in epochs)),
        "train_runtime": float(runtime[-1]) if runtime else None,
        "num_processes": int(args.world_size),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        # As passed (e.g. "1,3"), with the input path the trainer took.
        "intertrain_settings": {
            **{name: getattr(args, name) for name in RESUME_SETTINGS}, "data_pipeline": trainer.data_pipeline
        },
        "hyperparameters": {
            "learning_rate": args.learning_rate,
            "optim": str(getattr(args.optim, "value", args.optim)),
            "optim_args": args.optim_args,
            "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "warmup_steps": args.warmup_steps,
            "weight_decay": args.weight_decay,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_train_epochs": float(args.num_train_epochs),
            "seed": args.seed,
            "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
        },
        "versions": {
            "hf_intertrain": importlib.metadata.version("hf_intertrain"),
            "timm": timm.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }


def card_data(facts: dict[str, Any]) -> ModelCardData:
    """Hub metadata: library, tags, datasets, metrics, base model and the model-index results."""
    dataset = facts["dataset"]
    dataset_type = dataset["hub_ids"][0] if dataset["hub_ids"] else _slug(dataset.get("short") or "dataset")
    dataset_pretty = dataset.get("short") or dataset_type
    results = []
    for metric_name, key in (("Top-1 accuracy", "final_top1"), ("Top-5 accuracy", "final_top5")):
        if facts.get(key) is not None:
            results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Image Classification",
                    dataset_type=dataset_type,
                    dataset_name=dataset_pretty,
                    metric_type="accuracy" if key == "final_top1" else "top_5_accuracy",
                    metric_name=metric_name,
                    metric_value=round(float(facts[key]), 4),
                )
            )
    tags = list(BASE_TAGS) + [tag for tag in facts.get("tags") or [] if tag not in BASE_TAGS]
    return ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        tags=tags,
        license=facts.get("license"),
        language=facts.get("language"),
        datasets=dataset["hub_ids"] or None,
        metrics=["accuracy"],
        base_model=facts.get("base_model"),
        model_name=facts["model_name"],
        eval_results=results or None,
    )


def render_model_card(
    facts: dict[str, Any], plot_file: str = PLOT_NAME, note: str | None = None, template: str | None = None
) -> ModelCard:
    """The card of `facts` (see `card_facts`) from the packaged template, or from `template` text if given."""
    epochs = facts["epochs"]
    num_samples = facts["num_train_samples"]
    items_trained = sum(row["items"] for row in epochs)
    baseline_items = num_samples * len(epochs)
    data_config = facts["data_config"]
    labels = facts.get("label_names") or [f"LABEL_{i}" for i in range(facts["num_classes"])]
    label_text = ", ".join(labels[:_LABELS_SHOWN])
    if len(labels) > _LABELS_SHOWN:
        label_text += f", … ({len(labels)} in total, all in config.json)"
    settings = facts["intertrain_settings"]
    hyperparameters = {key: value for key, value in facts["hyperparameters"].items() if value not in (None, "")}
    top1 = facts.get("final_top1")
    values = {
        **facts,
        "note": note,
        "plot_file": plot_file,
        "dataset_display": facts["dataset"]["display"],
        "dataset_display_short": facts["dataset"].get("short") or "dataset",
        "interpolation_text": _INTERPOLATION_TEXT.get(settings["interpolation"], settings["interpolation"]),
        "final_top1_text": f"{top1:.4f}" if top1 is not None else "not evaluated",
        "eval_text": f"{facts['num_eval_samples']} evaluation images" if facts.get("num_eval_samples") else "evaluation split",
        "num_epochs": len(epochs),
        "items_trained": items_trained,
        "baseline_items": baseline_items,
        "items_saved_fraction": 1 - items_trained / baseline_items if baseline_items else 0.0,
        "ideal_speedup": baseline_items / items_trained if items_trained else 1.0,
        "mean_interpolated_fraction": (
            sum(row["interpolated_fraction"] for row in epochs) / len(epochs) if epochs else 0.0
        ),
        "model_args_json": json.dumps(facts.get("model_args") or {}),
        "image_size_text": "×".join(str(v) for v in facts["image_size"]),
        "mean_text": _floats(data_config["mean"]),
        "std_text": _floats(data_config["std"]),
        "interpolation_resize": data_config["interpolation"],
        "crop_pct": data_config["crop_pct"],
        "label_names_text": label_text,
        "batch_size": hyperparameters.get("per_device_train_batch_size"),
        "gradient_accumulation_steps": hyperparameters.get("gradient_accumulation_steps", 1),
        "hyperparameters": hyperparameters,
    }
    return ModelCard.from_template(card_data(facts), template_str=template or template_text(), **values)


def plot_interpolated_fraction(facts: dict[str, Any], path: str | os.PathLike) -> None:
    """Bar chart of the interpolated fraction per epoch, with eval top-1 on a second axis when evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = facts["epochs"]
    numbers = [row["epoch"] for row in epochs]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    handles = [ax.bar(numbers, [row["interpolated_fraction"] for row in epochs], color="tab:blue", label="interpolated fraction")]
    ax.set(xlabel="epoch", ylabel="fraction of samples interpolated", ylim=(0, 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", alpha=0.3)
    evaluated = [(row["epoch"], row["eval_top1"]) for row in epochs if row.get("eval_top1") is not None]
    if evaluated:
        top1_axis = ax.twinx()
        handles += top1_axis.plot(*zip(*evaluated), color="tab:orange", marker="o", label="eval top-1")
        top1_axis.set(ylabel="eval top-1", ylim=(0, 1))
    ax.legend(handles=handles, loc="upper left", fontsize="small")
    ax.set_title(f"{facts['model_name']}: interpolated fraction per epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_model_card(
    facts: dict[str, Any],
    output_dir: str | os.PathLike,
    card_name: str = CARD_NAME,
    plot_name: str = PLOT_NAME,
    facts_name: str | None = FACTS_NAME,
    note: str | None = None,
) -> Path:
    """Write the card, its plot and (unless `facts_name` is None) the facts into `output_dir`; return the card path.

    The plot is referenced by its bare file name, so the card shows it on the Hub and beside it on disk.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_interpolated_fraction(facts, output_dir / plot_name)
    card = render_model_card(facts, plot_file=plot_name, note=note)
    card_path = output_dir / card_name
    card.save(card_path)
    if facts_name is not None:
        with open(output_dir / facts_name, "w", encoding="utf-8") as f:
            json.dump(facts, f, indent=2)
            f.write("\n")
    return card_path


def comparison_facts(comparison: dict[str, Any], variant: str) -> dict[str, Any] | None:
    """What a `compare` run measured of `variant` (means over its seeds): its speed-up and top-1 change against the
    comparison's reference (the full baseline, or the slowest run when there was none) and the comparison's plain
    verdict line when it is this variant's; None when the reference gave no speed-up."""
    run, reference = comparison["runs"][variant], comparison["runs"][comparison.get("reference", "baseline")]
    if run.get("speedup") is None or run.get("accuracy_delta") is None:
        return None
    verdict = comparison.get("plain_verdict")
    return {
        "speedup": run["speedup"],
        "accuracy_delta": run["accuracy_delta"],
        "baseline_top1": reference["eval_accuracy"],
        "baseline_train_seconds": reference["train_seconds"],
        "reference": comparison.get("reference", "baseline"),
        "seeds": list(run.get("seeds", {})),
        "verdict_line": verdict if verdict and verdict.startswith(f"{variant}:") else None,
    }


def load_facts(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The facts a finished run wrote beside its model (see `InterTrainTrainer.create_model_card`)."""
    path = Path(output_dir) / FACTS_NAME
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist: train with hf-intertrain train (it writes the card after training) or call "
            "InterTrainTrainer.create_model_card(dataset_name=...) after trainer.train()"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _length(dataset) -> int | None:
    """Size of one evaluation dataset; None for none, several (a dict) or an iterable one."""
    return None if dataset is None or isinstance(dataset, dict) or not hasattr(dataset, "__len__") else len(dataset)


def _floats(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "dataset"
