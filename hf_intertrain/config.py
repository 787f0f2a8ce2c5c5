"""`InterTrainArguments`: the InterTrain switches on top of `transformers.TrainingArguments`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, get_type_hints

from transformers import TrainingArguments

from .constants import (
    AMENABLE_ACTIONS,
    COMPILE_FALLBACKS,
    DATA_PIPELINES,
    DATA_SELECTIONS,
    EMBEDDED_DATASET,
    FOUR_WAY_COMPOSITES,
    FOUR_WAY_SELECTIONS,
    INTERPOLATIONS,
    MIXUP_MODES,
    THRESHOLD_AVERAGES,
)
from .compilation import check_compile_settings
from .launch import launched_on_cpu
from .method.mixing import check_mixing
from .method.sampler import PlanRules
from .method.tracker import TrackerRules
from .method.tracker.decision import REGION1_RULES, REGION3_RULES, describe


RESUME = "resume"
"""Role of a setting a resumed run must share with its checkpoint. Such a setting is also stored in checkpoints, shown
in the model card's settings table, recorded per run by `compare` and part of a run's fingerprint."""
MID_EPOCH = "mid_epoch"
"""Role of a setting a resume must share only from a mid-epoch checkpoint (the rest of that epoch's batches depend on
it); with `RESUME` it is stored with the settings, without it in the plan layout."""
FINGERPRINT = "fingerprint"
"""Role of a setting that decides a `compare` run's result besides the `RESUME` settings: a finished run is reused only
by a run with the same fingerprint."""

TRAINING_ARGUMENT_ROLES: dict[str, tuple[str, ...]] = {
    "label_smoothing_factor": (RESUME,),
    "seed": (FINGERPRINT, MID_EPOCH),
    "data_seed": (MID_EPOCH,),
    "num_train_epochs": (FINGERPRINT,),
    "max_steps": (FINGERPRINT,),
    "gradient_accumulation_steps": (FINGERPRINT, MID_EPOCH),
    "dataloader_drop_last": (MID_EPOCH,),
    "learning_rate": (FINGERPRINT,),
    "lr_scheduler_type": (FINGERPRINT,),
    "warmup_steps": (FINGERPRINT,),
    "optim": (FINGERPRINT,),
    "weight_decay": (FINGERPRINT,),
    "torch_compile": (FINGERPRINT,),
    "torch_compile_backend": (FINGERPRINT,),
    "torch_compile_mode": (FINGERPRINT,),
}
"""The roles of `TrainingArguments` fields that InterTrain does not redeclare; InterTrain's own fields carry their
roles in their type (`Annotated`). `settings_with` reads both. The `torch_compile` fields decide a `compare` run's
training seconds, so its speed-up (and its weights a little, through the backend's rounding): a compiled and an eager
run are never reused for each other."""


@dataclass
class InterTrainArguments(TrainingArguments):
    """Configuration of an InterTrain run.

    Every field is a documented command-line flag through `HfArgumentParser`, and is declared once: the roles in its
    type (`Annotated[str, RESUME]`: `RESUME`, `MID_EPOCH`, `FINGERPRINT`) say what else must know it, and
    `settings_with(role)` derives the lists the checkpoint, the model card and `compare` use (docs/architecture.md,
    "Adding a setting"). With `interpolation="none"` the
    trainer is the plain `transformers.Trainer` baseline (same batches, same loss), so a comparison changes one
    flag only. The three techniques of the paper are switches so that its ablations (docs/method.md, "What the
    paper measures") are flags: `split_propagation`, `adaptive_interpolation`, `selective_interpolation`.

    Defaults that differ from `TrainingArguments`:
        per_device_train_batch_size: 64 (the paper's batch, Appendix 7.1; `TrainingArguments` uses 8).
        per_device_eval_batch_size: 256.
        logging_strategy: "epoch" (InterTrain's statistics are per epoch).
        eval_strategy: "epoch" (accuracy against wall-clock time needs one evaluation per epoch; the CLI sets
            "no" when the dataset has no evaluation split).
        save_strategy: "epoch".
        report_to: "none".
        output_dir: "intertrain_output".
        ddp_find_unused_parameters: False (every parameter gets a gradient; saves DDP an extra graph traversal).
        use_cpu: True when accelerate launched CPU processes (`ACCELERATE_USE_CPU`, or several processes on a machine
            without an accelerator, as `recipes/accelerate/cpu_multi_process.yaml` starts them; see `launch.py`).
    """

    # Parameters that control interpolation
    interpolation: Annotated[str, RESUME] = field(
        default="randpatch",
        metadata={
            "help": "How pairs are combined into one input: 'randpatch' (a rectangle of one image pasted into the "
            "other), 'linavg' (weighted average) or 'none' (no interpolation: the plain Trainer baseline).",
            "choices": list(INTERPOLATIONS),
        },
    )
    split_propagation: Annotated[bool, RESUME] = field(
        default=True,
        metadata={
            "help": "RandPatch: pool and classify each constituent over its own cells of the final feature map "
            "(docs/method.md, 'Split propagation'). Off: both constituents use the logits of the whole input."
        },
    )
    adaptive_interpolation: Annotated[bool, RESUME] = field(
        default=True,
        metadata={
            "help": "LinAvg: weight each pair by the constituents' previous losses, r = L_a / (L_a + L_b) "
            "(docs/method.md, 'Adaptive interpolation'). Off: r = patch_ratio."
        },
    )
    selective_interpolation: Annotated[bool, RESUME] = field(
        default=True,
        metadata={
            "help": "Choose each epoch which samples to interpolate from the loss-based amenability metric "
            "(docs/method.md, 'Selective interpolation'). Off: naive interpolation, random pairs of all samples "
            "every epoch."
        },
    )
    amenability_regions: Annotated[str, RESUME] = field(
        default="1,3",
        metadata={
            "help": "Loss regions that admit a sample to interpolation: '1,3' (the paper's method), '1' (Region 1 "
            "only) or '3' (Region 3 only); the ablations of the paper's Fig. 13b."
        },
    )
    threshold_average: Annotated[str, RESUME] = field(
        default="pooled",
        metadata={
            "help": "How L_corr and L_incorr average the losses of completed epochs (docs/method.md, 'Thresholds'): "
            "'pooled' (every S_noInt observation since epoch 0), 'epoch_mean' (mean of per-epoch class means), "
            "'ema' (exponential moving average of per-epoch class means, decay 0.5) or 'last_epoch'.",
            "choices": list(THRESHOLD_AVERAGES),
        },
    )
    region1_rule: Annotated[str, RESUME] = field(
        default="l_mid",
        metadata={
            "help": f"What puts a sample in Region 1 (docs/method.md, 'Ablations'; paper Table 3): {describe(REGION1_RULES)}.",
            "choices": list(REGION1_RULES),
        },
    )
    region3_rule: Annotated[str, RESUME] = field(
        default="increase",
        metadata={
            "help": f"What admits a Region-3 sample: {describe(REGION3_RULES)}.",
            "choices": list(REGION3_RULES),
        },
    )
    region3_increases: Annotated[int, RESUME] = field(
        default=1,
        metadata={"help": "Region 3 needs this many consecutive increases of the non-interpolated loss (k; paper Fig. 8b)."},
    )
    region3_epochs: Annotated[int, RESUME] = field(
        default=1,
        metadata={"help": "Epochs a Region-3 sample stays interpolated (or skipped) once admitted (paper Sec. 7.8)."},
    )
    composite_loss_weight: Annotated[float, RESUME] = field(
        default=1.0,
        metadata={
            "help": "Factor on the loss of an item with several constituents (a pair or a 4-way composite) against a "
            "single's (docs/method.md, 'Loss'). 1 (the paper): a pair weighs as one item, each constituent by its "
            "share; 2: each constituent of a pair weighs as much as a single sample."
        },
    )
    interpolation_off_fraction: Annotated[float, RESUME] = field(
        default=0.0,
        metadata={
            "help": "The final fraction of the epochs trains without interpolation: every sample a single, on clean "
            "inputs, the tracker still recording (like timm's mixup_off_epoch). 0 (default) interpolates to the end, as "
            "the paper; 0.125 frees the last 2 of 18 epochs. Runs without interpolation ignore it."
        },
    )
    amenable_action: Annotated[str, RESUME] = field(
        default="interpolate",
        metadata={
            "help": "What happens to the samples selective interpolation picks: 'interpolate' (InterTrain), 'skip' "
            "(left out of that epoch and trained without interpolation the next one: the paper's 'skipping instead "
            "of interpolating' ablation, Sec. 7.8) or 'skip_region3' (Region-3 members skipped, Region-1 members "
            "interpolated: Table 4).",
            "choices": list(AMENABLE_ACTIONS),
        },
    )
    four_way: Annotated[str, RESUME] = field(
        default="none",
        metadata={
            "help": "4-way composites for the most robust interpolated samples (docs/method.md, 'Four-way composites'): 'randpatch4' (the feature "
            "grid cut into 4 rectangles at random split points, each showing its own constituent's pixels), "
            "'mosaic4' (each constituent resized whole into its rectangle) or 'none' (pairs only, the paper). "
            "Needs interpolation randpatch with split propagation and selective interpolation.",
            "choices": list(FOUR_WAY_COMPOSITES),
        },
    )
    four_way_selection: Annotated[str, RESUME] = field(
        default="robust",
        metadata={
            "help": "Which interpolated samples four_way groups by four: 'robust' (interpolated for Region 1 and "
            "still below L_corr, the average loss of correctly classified samples: no tuning needed) or 'region1' "
            "(every Region-1 member on its second interpolated epoch; an ablation, more 4-way, less accurate).",
            "choices": list(FOUR_WAY_SELECTIONS),
        },
    )
    patch_ratio: Annotated[float, RESUME] = field(
        default=0.5,
        metadata={
            "help": "Target share r of constituent a: the RandPatch rectangle's area fraction, and the LinAvg "
            "ratio when adaptive interpolation is off or a loss is unknown."
        },
    )

    # Mixup and CutMix through timm, on the samples trained as singles
    mixup_alpha: Annotated[float, RESUME] = field(
        default=0.0,
        metadata={
            "help": "Mixup: Beta(alpha, alpha) of timm's Mixup on the batch's singles (every sample of a run without "
            "interpolation; InterTrain's pairs are its own mixing). 0 (default) is off; the Mixup paper's CIFAR "
            "setting is 1.0. Label smoothing comes from --label_smoothing_factor (docs/method.md, 'Mixup and CutMix')."
        },
    )
    cutmix_alpha: Annotated[float, RESUME] = field(
        default=0.0,
        metadata={
            "help": "CutMix: Beta(alpha, alpha) of timm's CutMix on the batch's singles. 0 (default) is off; the CutMix "
            "paper's CIFAR setting is 1.0 with --mixup_prob 0.5."
        },
    )
    mixup_prob: Annotated[float, RESUME] = field(
        default=1.0,
        metadata={"help": "Probability of mixing a batch (or a pair or row, by --mixup_mode) when Mixup or CutMix is on."},
    )
    mixup_switch_prob: Annotated[float, RESUME] = field(
        default=0.5, metadata={"help": "With both Mixup and CutMix on: probability of CutMix instead of Mixup."}
    )
    mixup_mode: Annotated[str, RESUME] = field(
        default="batch",
        metadata={
            "help": "How timm draws the mixing: 'batch' (one draw per batch), 'pair' (per pair of rows) or 'elem' (per row).",
            "choices": list(MIXUP_MODES),
        },
    )

    # Peer methods: training on part of the data each epoch, without interpolation
    data_selection: Annotated[str, RESUME] = field(
        default="none",
        metadata={
            "help": "Without interpolation, which samples each epoch trains (docs/method.md, 'Peer methods and "
            "budget-matched baselines'): 'none' (all: the baseline), 'random_subset' (RS2 without replacement: a "
            "fresh random subset of random_subset_sizes[epoch] samples, cycling through the whole dataset before "
            "repeating) or 'infobatch' (InfoBatch soft pruning from the last losses). Needs interpolation none.",
            "choices": list(DATA_SELECTIONS),
        },
    )
    random_subset_sizes: Annotated[str | None, RESUME] = field(
        default=None,
        metadata={"help": "random_subset: samples per epoch, comma-separated, one per epoch (e.g. '5000,5000,3600')."},
    )
    infobatch_prune_probability: Annotated[float, RESUME] = field(
        default=0.5,
        metadata={
            "help": "infobatch: probability of leaving out a sample whose last loss is below the mean; the kept ones "
            "have their loss scaled by 1 / (1 - p)."
        },
    )
    infobatch_full_data_fraction: Annotated[float, RESUME] = field(
        default=0.125,
        metadata={"help": "infobatch: the final fraction of the epochs trains on every sample (InfoBatch's annealing)."},
    )

    # Input pipeline
    data_pipeline: Annotated[str, RESUME, MID_EPOCH] = field(
        default="auto",
        metadata={
            "help": "Where training and eval images are decoded and augmented: 'workers' (per image in the DataLoader "
            "workers, with PIL), 'device' (the loader carries row keys; images are decoded once into a uint8 cache "
            "beside the dataset's cache, or, when it does not fit, decoded per batch on the training device, then "
            "augmented and normalised in batches there) or 'auto' ('device' when the decoded splits fit the cache "
            "budget, else 'workers'). Checkpoints store the resolved value; a resumed 'auto' run follows its "
            "checkpoint. Same augmentation distributions either way, not the same draws (docs/method.md).",
            "choices": list(DATA_PIPELINES),
        },
    )

    # torch.compile (--torch_compile, --torch_compile_backend, --torch_compile_mode are TrainingArguments' own).
    # No role: where compile works it changes nothing that trains, and a resume may choose another fallback.
    compile_fallback: str = field(
        default="eager",
        metadata={
            "help": "With --torch_compile, where the backend cannot compile on this machine (no C++ compiler for "
            "inductor on CPU, no Triton on GPU, a backend's package missing): 'eager' trains without compile after "
            "one warning line, 'stop' stops the run with a one-line error naming the fix (docs/usage.md, 'Compiling').",
            "choices": list(COMPILE_FALLBACKS),
        },
    )

    # Defaults that differ from TrainingArguments
    output_dir: str | None = field(
        default="intertrain_output", metadata={"help": "Where checkpoints, the final model and reports are written."}
    )
    per_device_train_batch_size: Annotated[int, FINGERPRINT, MID_EPOCH] = field(
        default=64, metadata={"help": "Batch size per device: items (pairs or singles) per mini-batch."}
    )
    per_device_eval_batch_size: int = field(default=256, metadata={"help": "Batch size per device for evaluation."})
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log the training loss."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: 'no', 'steps' or 'epoch'."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "DDP: look for parameters without gradients each step (InterTrain uses every parameter)."},
    )
    report_to: str | None = field(
        default="none",
        metadata={"help": "Integrations to report to ('tensorboard', 'wandb', 'all', 'none')."},
    )

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation={self.interpolation!r} is not supported: use one of {', '.join(INTERPOLATIONS)}"
            )
        if self.four_way not in FOUR_WAY_COMPOSITES:
            raise ValueError(
                f"four_way={self.four_way!r} is not supported: use one of {', '.join(FOUR_WAY_COMPOSITES)}"
            )
        if self.four_way != "none" and not (
            self.interpolation == "randpatch"
            and self.split_propagation
            and self.selective_interpolation
            and self.amenable_action == "interpolate"
        ):
            raise ValueError(
                f"four_way={self.four_way!r} needs interpolation randpatch, split_propagation, selective_interpolation "
                "and amenable_action interpolate (its constituents are told apart by split propagation and chosen by "
                "the amenability records): change those or set four_way none"
            )
        if self.data_pipeline not in DATA_PIPELINES:
            raise ValueError(
                f"data_pipeline={self.data_pipeline!r} is not supported: use one of {', '.join(DATA_PIPELINES)}"
            )
        if self.compile_fallback not in COMPILE_FALLBACKS:
            raise ValueError(
                f"compile_fallback={self.compile_fallback!r} is not supported: use one of {', '.join(COMPILE_FALLBACKS)}"
            )
        check_compile_settings(self.torch_compile_backend, self.torch_compile_mode)
        if not (math.isfinite(self.composite_loss_weight) and self.composite_loss_weight > 0):
            raise ValueError(
                f"composite_loss_weight={self.composite_loss_weight} must be a positive number (default 1, the paper)"
            )
        check_mixing(
            self.mixup_alpha, self.cutmix_alpha, self.mixup_prob, self.mixup_switch_prob, self.mixup_mode,
            self.label_smoothing_factor,
        )
        # The tracker's and the plan's settings are checked where they are defined, once, as they are built.
        self.tracker_rules()
        self.plan_rules()
        if not self.use_cpu and launched_on_cpu():
            self.use_cpu = True
        super().__post_init__()

    @property
    def regions(self) -> tuple[int, ...]:
        """`amenability_regions` as a sorted tuple of region numbers."""
        try:
            return tuple(sorted({int(part) for part in str(self.amenability_regions).split(",") if part.strip()}))
        except ValueError:
            raise ValueError(
                f"amenability_regions={self.amenability_regions!r} must be a comma-separated list like '1,3'"
            ) from None

    def tracker_rules(self) -> TrackerRules:
        """The amenability tracker's settings: each `TrackerRules` field is the field or property of that name here,
        but `selective`, which is `selective_interpolation`."""
        names = [f.name for f in fields(TrackerRules) if f.name != "selective"]
        return TrackerRules(selective=self.selective_interpolation, **{name: getattr(self, name) for name in names})

    def plan_rules(self) -> PlanRules:
        """The epoch plan's settings: each `PlanRules` field named like a field here is that field; the others are
        derived from the flags (docs/architecture.md, "One home for each setting")."""
        derived = {
            "batch_size": self.per_device_train_batch_size,
            "seed": self.data_seed if self.data_seed is not None else self.seed,
            "interpolate": self.interpolates,
            "adaptive_ratio": self.interpolation == "linavg" and self.adaptive_interpolation,
            "drop_last": self.dataloader_drop_last,
            "subset_sizes": self.subset_sizes,
            "num_epochs": int(self.num_train_epochs) if self.max_steps <= 0 else None,
        }
        same = {f.name: getattr(self, f.name) for f in fields(PlanRules) if f.name not in derived}
        return PlanRules(**derived, **same)

    @property
    def subset_sizes(self) -> tuple[int, ...]:
        """`random_subset_sizes` as a tuple of ints (empty when unset)."""
        text = "" if self.random_subset_sizes is None else str(self.random_subset_sizes)
        try:
            return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
        except ValueError:
            raise ValueError(
                f"random_subset_sizes={self.random_subset_sizes!r} must be comma-separated whole numbers, e.g. '5000,3600'"
            ) from None

    @property
    def max_group_size(self) -> int:
        """Constituents per composite at most: 4 with `four_way`, else 2."""
        return 2 if self.four_way == "none" else 4

    @property
    def mixes(self) -> bool:
        """Whether timm's Mixup or CutMix mixes the singles of this run."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def interpolates(self) -> bool:
        """Whether this run interpolates at all (False for the baseline)."""
        return self.interpolation != "none"


def settings_with(role: str) -> tuple[str, ...]:
    """The `InterTrainArguments` fields with `role`, in declaration order: InterTrain's own fields, whose type says
    their roles (`Annotated[float, RESUME]`, which `HfArgumentParser` reads as plain `float`), then the
    `TrainingArguments` fields of `TRAINING_ARGUMENT_ROLES`."""
    hints = get_type_hints(InterTrainArguments, include_extras=True)
    own = tuple(f.name for f in fields(InterTrainArguments) if role in getattr(hints[f.name], "__metadata__", ()))
    return own + tuple(name for name, roles in TRAINING_ARGUMENT_ROLES.items() if role in roles and name not in own)


@dataclass
class ModelArguments:
    """Which timm model to train."""

    model_name: str = field(
        default="resnet10t",
        metadata={"help": "timm model name (see `timm.list_models()`), e.g. resnet18, mobilenetv2_100, vit_tiny_patch16_224."},
    )
    model_kwargs: str | dict | None = field(
        default=None,
        metadata={
            "help": "JSON object of extra `timm.create_model` arguments, e.g. '{\"output_stride\": 16}' for a finer "
            "final feature grid or '{\"global_pool\": \"avg\"}' for ViT average pooling. Saved with the model."
        },
    )
    pretrained: bool = field(
        default=False,
        metadata={"help": "Start from the model's pretrained weights (needs them in the local Hugging Face cache or the Hub)."},
    )

    def create_kwargs(self) -> dict[str, Any]:
        """`model_kwargs` as a dict, validated."""
        kwargs = self.model_kwargs
        if kwargs is None or kwargs == "":
            return {}
        if isinstance(kwargs, str):
            try:
                kwargs = json.loads(kwargs)
            except json.JSONDecodeError as e:
                raise ValueError(f"--model_kwargs is not valid JSON ({e.msg}): pass an object like '{{\"output_stride\": 16}}'") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"--model_kwargs must be a JSON object, got {type(kwargs).__name__}: e.g. '{{\"output_stride\": 16}}'")
        if "num_classes" in kwargs:
            raise ValueError("--model_kwargs must not set num_classes: the number of classes comes from the dataset's labels")
        return kwargs


@dataclass
class DataArguments:
    """Which image-classification dataset to train and evaluate on."""

    dataset_name: str = field(
        default=EMBEDDED_DATASET,
        metadata={"help": "Hub dataset id or local path (parquet or imagefolder). Default: the CIFAR-10 sample shipped with the package."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name, if it has several."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (default: validation, valid, val or test, the first that exists)."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: the column of type Image)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: the ClassLabel column, or 'label')."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N rows only."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N rows only."})
    image_size: int | None = field(
        default=None,
        metadata={"help": "Square input size in pixels (default: the images' own size up to 64 px, else the model's pretrained input size)."},
    )
    verify_images: str = field(
        default="auto",
        metadata={"help": "Decode every image before training: 'auto' (splits up to 100k rows), 'all' or 'none'. A split served from the device pipeline's decoded cache is not decoded again: building the cache decoded it.", "choices": ["auto", "all", "none"]},
    )
