"""Side-by-side runs: the baseline, InterTrain, its ablations, a budget-matched baseline and peer methods, with
the same hyper-parameters and several seeds.

`run_comparison` trains each variant for each seed (a fresh model per run), then writes `comparison.json`,
`comparison.png` and prints a summary table. What the paper measures (docs/method.md, "What the paper measures"):
top-1, wall-clock speed-up against the baseline, the fraction of samples interpolated per epoch, the counts per
loss region per epoch, and accuracy against training time.

- `speedup` = baseline training seconds / variant training seconds, evaluation excluded (the paper's speed-up).
- `ideal_speedup` = baseline items / variant items, from the items actually trained: what the variant would
  reach if an item cost the same in both runs and nothing else took time. `speedup_efficiency` = speedup / ideal
  shows the overheads left (data loading of two images per pair, split heads, bookkeeping).

Variants (`VARIANTS`; each sets `InterTrainArguments` fields on top of the run's configuration):

- `baseline`: `interpolation="none"`, the plain Trainer (always run, first).
- `intertrain`: the configuration as given (by default RandPatch with every technique).
- `randpatch`, `linavg`: InterTrain with that operator (Table 1/2 rows).
- `naive`: random pairs of all samples every epoch with the configured operator and none of the paper's
  techniques (no selective interpolation, no split propagation, no adaptive ratio): the paper's "naive
  interpolation" (Sec. 3, Fig. 1(a), the light-blue markings of Fig. 13(a)), plain RandPatch / LinAvg.
- `no_split`: RandPatch with selective interpolation but without split propagation, the ablation "interference
  not mitigated" (Fig. 13(a), green markings).
- `region1`: selective interpolation from Region 1 only (Table 3, row 1; Fig. 13(b)).
- `skip`: the samples selective interpolation picks are left out of the epoch instead of interpolated, and trained
  without interpolation the next epoch (Sec. 7.8, Table 4, k = 1). Table 4 applies this to Region 3 only; here
  it follows the run's `amenability_regions` (Regions 1 and 3 by default), so it compares skipping with
  interpolating the very samples InterTrain picks. Table 5's oracle instance skipping (a forward pass over every
  sample each epoch) is not reproduced.
- `randpatch4`, `mosaic4` (docs/method.md, "Four-way composites"): InterTrain with RandPatch pairs, plus 4-way
  composites (RandPatch-4 or Mosaic-4) for the samples the tracker's four-way selection marks;
  `randpatch4_region1` groups every Region-1 member by four on its second interpolated epoch (the selection's
  ablation; the only one whose ideal speed-up can approach 2x).
- Thresholds (docs/method.md, "Thresholds" and "Ablations"): `threshold_epoch_mean`, `threshold_ema`,
  `threshold_last_epoch` (other readings of the running average of eq. 4); `threshold_accuracy`,
  `threshold_avg_loss`, `region3_lincorr` (Table 3's rows), `region3_only` (Fig. 13(b)), `region3_k2` (k = 2,
  Fig. 8(b)) and `skip_region3` (Region 3 skipped while Region 1 is interpolated, Table 4).
- `composite_weight2`: InterTrain with each pair weighing twice a single in the batch loss
  (`composite_loss_weight=2`, docs/method.md, "Loss").
- `clean_final`: InterTrain that trains the final 12.5% of its epochs without interpolation
  (`interpolation_off_fraction=0.125`, docs/method.md, "Interpolation off at the end"; InfoBatch's annealing share).

Budget-matched baseline and peer methods (docs/method.md, "Peer methods and budget-matched baselines"). A user
who wants a shorter run can simply train fewer steps with the schedule fitted to them; InterTrain has to beat that.

- `budget`: the baseline with `max_steps` = the optimizer steps of the *matched run* (the first interpolating
  variant of the invocation), seed by seed: its learning-rate schedule is fitted to that many steps and fully
  decays. `verdict` compares every other run with it.
- `random_subset`: no interpolation; each epoch trains a fresh random subset as large as the matched run's items
  that epoch (`data_selection="random_subset"`, `random_subset_sizes`), same seed.
- `infobatch`: no interpolation; InfoBatch's loss-based random pruning with loss rescaling
  (`data_selection="infobatch"`, with the run's `infobatch_*` arguments).

`budget` and `random_subset` run after the matched run (`parse_variants` moves them there). Every variant but
`intertrain` sets `four_way` and `data_selection` itself.

Seeds: every variant runs with each seed of `seeds` (default: the run's own `seed`), into `output_dir/NAME` for
one seed and `output_dir/NAME/seed-S` for several. Single-seed top-1 moves by about a point between seeds, so a
difference smaller than the spread over seeds is not a result.

Input path: `data_pipeline` applies to every variant alike; `auto` is resolved once, before anything trains
(`with_resolved_pipeline`), and the fingerprint records the resolved value (runs made before it was recorded count
as `workers`, the only path there was).

Resume: a run whose folder already holds a finished `intertrain_run.json` with the same `fingerprint` (settings
that decide the result) is loaded instead of trained again; one with another fingerprint is refused, never
overwritten. `run_sweep` builds on this: it runs the comparison at several schedule lengths (`epochs-E/`) and
writes `sweep.json` / `sweep.png`; an interrupted sweep is completed by running the same command again.
The summaries, table and plots are `compare_report.py`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

from ..checkpoint import SETTINGS_BEFORE_RECORDED
from ..config import DataArguments, InterTrainArguments, ModelArguments
from .compare_report import (
    SETTINGS,
    format_sweep,
    format_table,
    plot_comparison,
    plot_sweep,
    summarize,
    summarize_sweep,
)
from .run import RUN_REPORT_NAME, RunReport, resolve_data_pipeline, run_training
from .variants import MATCHED_VARIANTS, VARIANTS

COMPARISON_JSON = "comparison.json"
COMPARISON_PNG = "comparison.png"
SWEEP_JSON = "sweep.json"
SWEEP_PNG = "sweep.png"

FINGERPRINT_ARGUMENTS = (
    *SETTINGS,
    "seed",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "optim",
    "weight_decay",
)
"""The InterTrainArguments fields of a run's fingerprint (with the model and the data): a finished run is reused
only when all of them are the same."""


def interpolates(name: str) -> bool:
    """Whether the variant interpolates (its training differs from the baseline's by interpolation)."""
    return VARIANTS[name].interpolates


def matched_variant(variants: list[str]) -> str | None:
    """The run that `budget` and `random_subset` match: the first interpolating variant."""
    return next((name for name in variants if interpolates(name)), None)


def parse_variants(spec: str) -> list[str]:
    """`'baseline,intertrain'` -> validated variant names; the baseline runs first, `budget` and `random_subset`
    after the run they match."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    names = ["baseline", *dict.fromkeys(name for name in names if name != "baseline")]
    dependent = [name for name in names if name in MATCHED_VARIANTS]
    matched = matched_variant(names)
    if dependent and matched is None:
        raise ValueError(
            f"variant(s) {', '.join(dependent)} match the steps of an interpolating run: add one to --variants "
            "(e.g. intertrain, randpatch or linavg)"
        )
    early = [name for name in names[: names.index(matched)] if name in MATCHED_VARIANTS] if matched else []
    names = [name for name in names if name not in early]
    at = names.index(matched) + 1 if matched else 0
    return names[:at] + early + names[at:]


def parse_seeds(spec: str | int) -> list[int]:
    """`'0,1,2'` -> [0, 1, 2] (duplicates dropped)."""
    try:
        seeds = [int(part) for part in str(spec).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--seeds={spec!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise ValueError("--seeds is empty: give comma-separated integers, e.g. 0,1,2")
    return list(dict.fromkeys(seeds))


def parse_lengths(spec: str | int) -> list[int]:
    """`'12,36,72'` -> [12, 36, 72]: the schedule lengths (epochs) of a sweep."""
    try:
        lengths = [int(part) for part in str(spec).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--epochs_sweep={spec!r} must be comma-separated whole epochs, e.g. 12,36,72") from None
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--epochs_sweep={spec!r} must list whole epochs of at least 1, e.g. 12,36,72")
    return list(dict.fromkeys(lengths))


def run_dir(output_dir: str, name: str, seed: int, several_seeds: bool) -> str:
    """`output_dir/NAME` for one seed, `output_dir/NAME/seed-S` for several."""
    return os.path.join(output_dir, name, f"seed-{seed}") if several_seeds else os.path.join(output_dir, name)


def variant_arguments(
    training_args: InterTrainArguments,
    name: str,
    seed: int | None = None,
    output_dir: str | None = None,
    matched: RunReport | None = None,
) -> InterTrainArguments:
    """The run's arguments with the variant's fields, writing into `output_dir` (default `training_args.output_dir
    /name`), with `seed` if given.

    A variant listed as interpolating uses RandPatch where `interpolation="none"` is configured. `budget` and
    `random_subset` take their size from `matched`, the matched run's report of the same seed (without it, those
    fields stay as configured).
    """
    variant = VARIANTS[name]
    changes = dict(variant.settings, output_dir=output_dir or os.path.join(training_args.output_dir, name))
    if seed is not None:
        changes["seed"] = seed
    if interpolates(name) and changes.get("interpolation", training_args.interpolation) == "none":
        changes["interpolation"] = "randpatch"
    if matched is not None and variant.matches == "steps":
        if not matched.optimizer_steps:
            raise ValueError(f"the run in {matched.output_dir} has no optimizer_steps recorded: train it again")
        changes["max_steps"] = int(matched.optimizer_steps)
    if variant.matches == "items":
        # Without the matched run (checking finished runs before it exists) a placeholder the check ignores.
        sizes = [int(row["items"]) for row in matched.epochs] if matched is not None else [1]
        changes["random_subset_sizes"] = ",".join(map(str, sizes))
    return dataclasses.replace(training_args, **changes)


def run_fingerprint(model_args: ModelArguments, data_args: DataArguments, args: InterTrainArguments) -> dict[str, Any]:
    """The settings that decide a run's result, as JSON values: what makes a finished run reusable."""
    fingerprint = {
        "model_name": model_args.model_name,
        "model_kwargs": model_args.create_kwargs(),
        "pretrained": model_args.pretrained,
        "dataset_name": data_args.dataset_name,
        "dataset_config": data_args.dataset_config,
        "max_train_samples": data_args.max_train_samples,
        "max_eval_samples": data_args.max_eval_samples,
        "image_size": data_args.image_size,
        **{key: getattr(args, key) for key in FINGERPRINT_ARGUMENTS},
    }
    return json.loads(json.dumps(fingerprint, default=str))


def load_finished(run_dir: str, fingerprint: dict[str, Any], ignore: tuple[str, ...] = ()) -> RunReport | None:
    """The finished run in `run_dir` if it has this fingerprint; None if there is none; a ValueError if it has
    another (keys in `ignore` are not compared; a setting added after the run was made counts as its default)."""
    path = os.path.join(run_dir, RUN_REPORT_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not valid JSON: remove that folder or pick another --output_dir") from None
    saved = data.get("fingerprint")
    if not isinstance(saved, dict):
        raise ValueError(
            f"{run_dir} holds a finished run without recorded settings (not written by compare): "
            "pick another --output_dir"
        )
    defaults = {f.name: f.default for f in dataclasses.fields(InterTrainArguments)} | SETTINGS_BEFORE_RECORDED
    differences = [
        key for key in fingerprint if key not in ignore and saved.get(key, defaults.get(key)) != fingerprint[key]
    ]
    if differences:
        key = differences[0]
        raise ValueError(
            f"{run_dir} holds a finished run with other settings ({key}={saved.get(key, defaults.get(key))!r}, "
            f"now {fingerprint[key]!r}): "
            "pick another --output_dir"
        )
    return RunReport.from_dict(data)


def check_reusable(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: InterTrainArguments,
    variants: list[str],
    seeds: list[int],
) -> None:
    """Refuse, before anything trains, a finished run in the way whose settings differ (the steps and items that
    `budget` and `random_subset` take from their matched run are checked when that run is known)."""
    for seed in seeds:
        for name in variants:
            folder = run_dir(training_args.output_dir, name, seed, len(seeds) > 1)
            args = variant_arguments(training_args, name, seed, folder)
            ignore = ("max_steps", "random_subset_sizes") if name in MATCHED_VARIANTS else ()
            load_finished(args.output_dir, run_fingerprint(model_args, data_args, args), ignore)


def with_resolved_pipeline(
    data_args: DataArguments,
    training_args: InterTrainArguments,
    resolve_pipeline: Callable[[DataArguments, InterTrainArguments], str],
) -> InterTrainArguments:
    """`training_args` with `data_pipeline="auto"` replaced by what it resolves to for this dataset and device."""
    if training_args.data_pipeline != "auto":
        return training_args
    pipeline = resolve_pipeline(data_args, training_args)
    if training_args.process_index == 0:
        print(f"compare: data_pipeline auto -> {pipeline}, for every run")
    return dataclasses.replace(training_args, data_pipeline=pipeline)


def run_comparison(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: InterTrainArguments,
    variants: list[str],
    train: Callable[[ModelArguments, DataArguments, InterTrainArguments], RunReport] = run_training,
    seeds: list[int] | None = None,
    resolve_pipeline: Callable[[DataArguments, InterTrainArguments], str] = resolve_data_pipeline,
) -> dict[str, Any]:
    """Train every variant with every seed (seed by seed, in the order of `variants`), reusing finished runs with
    the same settings, then write and return the comparison. `data_pipeline="auto"` is resolved once first
    (`resolve_pipeline`), so every variant, the baseline included, takes the same input path and records it."""
    variants = parse_variants(",".join(variants))
    seeds = list(seeds or [training_args.seed])
    main_process = training_args.process_index == 0
    training_args = with_resolved_pipeline(data_args, training_args, resolve_pipeline)
    check_reusable(model_args, data_args, training_args, variants, seeds)
    matched_name = matched_variant(variants)
    reports: dict[str, dict[int, RunReport]] = {name: {} for name in variants}
    settings: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        for name in variants:
            matched = reports[matched_name][seed] if name in MATCHED_VARIANTS else None
            folder = run_dir(training_args.output_dir, name, seed, len(seeds) > 1)
            args = variant_arguments(training_args, name, seed, folder, matched)
            settings.setdefault(name, {key: getattr(args, key) for key in SETTINGS})
            fingerprint = run_fingerprint(model_args, data_args, args)
            report = load_finished(folder, fingerprint)
            if report is not None:
                if main_process:
                    print(f"compare: {name} seed {seed}: reusing the finished run in {folder} (same settings)")
            else:
                report = dataclasses.replace(train(model_args, data_args, args), fingerprint=fingerprint)
                if main_process:
                    os.makedirs(folder, exist_ok=True)
                    with open(os.path.join(folder, RUN_REPORT_NAME), "w") as f:
                        json.dump(report.to_dict(), f, indent=2)
            reports[name][seed] = report
    comparison = summarize(reports, model_args, data_args, training_args, settings)
    if main_process:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, COMPARISON_JSON), "w") as f:
            json.dump(comparison, f, indent=2)
        plot_comparison(comparison, os.path.join(training_args.output_dir, COMPARISON_PNG))
        print(format_table(comparison))
    return comparison


# ----------------------------------------------------------------------------------------------------------------
# Epoch-length sweep


def run_sweep(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: InterTrainArguments,
    variants: list[str],
    lengths: list[int],
    train: Callable[[ModelArguments, DataArguments, InterTrainArguments], RunReport] = run_training,
    seeds: list[int] | None = None,
    resolve_pipeline: Callable[[DataArguments, InterTrainArguments], str] = resolve_data_pipeline,
) -> dict[str, Any]:
    """The comparison at each schedule length (`num_train_epochs` = E, into `output_dir/epochs-E/`), then
    `sweep.json` and `sweep.png`: whether InterTrain's advantage over the budget-matched baseline holds as
    schedules get shorter or longer. Finished runs with the same settings are reused, so running the same command
    again completes an interrupted sweep."""
    if training_args.max_steps > 0:
        raise ValueError("--epochs_sweep sets num_train_epochs per length: leave --max_steps unset")
    seeds = list(seeds or [training_args.seed])
    training_args = with_resolved_pipeline(data_args, training_args, resolve_pipeline)
    per_length = {
        length: dataclasses.replace(
            training_args,
            num_train_epochs=length,
            output_dir=os.path.join(training_args.output_dir, f"epochs-{length}"),
        )
        for length in lengths
    }
    for args in per_length.values():
        check_reusable(model_args, data_args, args, variants, seeds)
    comparisons = {
        length: run_comparison(model_args, data_args, args, variants, train, seeds, resolve_pipeline)
        for length, args in per_length.items()
    }
    sweep = summarize_sweep(comparisons, variants, seeds, matched_variant(variants))
    if training_args.process_index == 0:
        with open(os.path.join(training_args.output_dir, SWEEP_JSON), "w") as f:
            json.dump(sweep, f, indent=2)
        plot_sweep(sweep, os.path.join(training_args.output_dir, SWEEP_PNG))
        print(format_sweep(sweep))
    return sweep
