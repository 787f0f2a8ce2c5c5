"""Side-by-side runs: the baseline, InterTrain, its ablations, budget-matched peers and peer methods, with the same
hyper-parameters and several seeds (docs/compare.md).

`run_comparison` trains each variant for each seed (a fresh model per run), then writes `comparison.json`,
`comparison.png`, prints a summary table and the verdict in one plain line, and puts that line in each challenger's
model card. What the paper measures (docs/method.md, "What the paper measures"): top-1, wall-clock speed-up, the
fraction of samples interpolated per epoch, the counts per loss region per epoch, and accuracy against training time.

- `speedup` = the reference's training seconds / the run's, evaluation excluded (the paper's speed-up). The
  reference is the full `baseline` when it ran; it is optional (the most expensive run), and without it speed-ups
  are read against the slowest run given, which comparison.json and the table say.
- `ideal_speedup` = reference items / run items, from the items actually trained: what the run would reach if an
  item cost the same in both runs and nothing else took time. `speedup_efficiency` = speedup / ideal.

Variants: the table of `variants.py` (each sets `InterTrainArguments` fields on top of the run's configuration, and
has a role: reference, peer or challenger). The full-length references run first (only with `reference_seeds`, when
given); the variants sized from the *matched run* (the invocation's first interpolating variant: `budget`,
`budget_cutmix`, `budget_mixup` take its optimizer steps, `random_subset` its items per epoch) run after it, seed by
seed. The verdict judges every challenger against every budget-matched peer, with a paired bootstrap over the
evaluation images (`compare_report.verdicts`, `significance.py`); a reused run made before per-image results were
recorded is evaluated once more from its saved model.

Seeds: every variant runs with each seed of `seeds` (default: the run's own `seed`), into `output_dir/NAME` for one
seed and `output_dir/NAME/seed-S` for several.

Input path: `data_pipeline` applies to every variant alike; `auto` is resolved once, before anything trains
(`with_resolved_pipeline`, through `run.resolve_data_pipeline`), and the fingerprint records the resolved value
(runs made before it was recorded count as `workers`, the only path there was).

Resume: a run whose folder already holds a finished `intertrain_run.json` with the same `fingerprint` (settings
that decide the result: the `RESUME` and `FINGERPRINT` roles of `config.py`, the model and the data) is loaded instead
of trained again; one with another fingerprint is refused, never overwritten. `run_sweep` builds on this: it runs the
comparison at several schedule lengths (`epochs-E/`) and writes `sweep.json` / `sweep.png`; an interrupted sweep is
completed by running the same command again. The summaries, table and plots are `compare_report.py`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import numpy as np

from ..checkpoint import SETTINGS_BEFORE_RECORDED
from ..config import FINGERPRINT, RESUME, DataArguments, InterTrainArguments, ModelArguments, settings_with
from ..model_card import FACTS_NAME, comparison_facts, load_facts, write_model_card
from .compare_report import (
    SETTINGS,
    format_sweep,
    format_table,
    plot_comparison,
    plot_sweep,
    role_of,
    summarize,
    summarize_sweep,
)
from .run import RUN_REPORT_NAME, RunReport, evaluate_saved_model, resolve_data_pipeline, run_training
from .significance import pack_correct
from .variants import MATCHED_VARIANTS, VARIANTS

COMPARISON_JSON = "comparison.json"
COMPARISON_PNG = "comparison.png"
SWEEP_JSON = "sweep.json"
SWEEP_PNG = "sweep.png"

FINGERPRINT_ARGUMENTS = settings_with(RESUME) + settings_with(FINGERPRINT)
"""The InterTrainArguments fields of a run's fingerprint (with the model and the data): a finished run is reused
only when all of them are the same."""


def interpolates(name: str) -> bool:
    """Whether the variant interpolates (its training differs from the baseline's by interpolation)."""
    return VARIANTS[name].interpolates


def matched_variant(variants: list[str]) -> str | None:
    """The run that `budget` and `random_subset` match: the first interpolating variant."""
    return next((name for name in variants if interpolates(name)), None)


def parse_variants(spec: str) -> list[str]:
    """`'baseline,intertrain,budget'` -> validated variant names: the full-length references first, the variants
    sized from the matched run right after it, the rest in the order given."""
    names = list(dict.fromkeys(name.strip() for name in spec.split(",") if name.strip()))
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    if not names:
        raise ValueError("--variants is empty: give comma-separated variants, e.g. baseline,intertrain,budget")
    names = [n for n in names if VARIANTS[n].role == "reference"] + [n for n in names if VARIANTS[n].role != "reference"]
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


def seeds_of(name: str, seeds: list[int], reference_seeds: list[int] | None) -> list[int]:
    """The seeds a variant runs with: a full-length reference only with `reference_seeds` when they are given."""
    if reference_seeds is None or VARIANTS[name].role != "reference":
        return seeds
    return [seed for seed in seeds if seed in reference_seeds]


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
        sizes = [int(row["items"]) for row in matched.epochs] if matched is not None else [1] * int(
            training_args.num_train_epochs
        )
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
    reference_seeds: list[int] | None = None,
) -> None:
    """Refuse, before anything trains, a finished run in the way whose settings differ (the steps and items that
    the matched variants take from their matched run are checked when that run is known)."""
    for name in variants:
        for seed in seeds_of(name, seeds, reference_seeds):
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
    reference_seeds: list[int] | None = None,
    evaluate: Callable[[ModelArguments, DataArguments, InterTrainArguments], np.ndarray] = evaluate_saved_model,
) -> dict[str, Any]:
    """Train every variant with every seed (seed by seed, in the order of `variants`; the full-length references only
    with `reference_seeds` when given), reusing finished runs with the same settings, then write and return the
    comparison. `data_pipeline="auto"` is resolved once first (`resolve_pipeline`), so every variant takes the same
    input path and records it. When the verdict needs them, reused runs without per-image results get them from
    `evaluate` (their saved model on the evaluation split)."""
    variants = parse_variants(",".join(variants))
    seeds = list(seeds or [training_args.seed])
    if reference_seeds is not None and not set(reference_seeds) <= set(seeds):
        raise ValueError(f"--reference_seeds {reference_seeds} must be among --seeds {seeds}")
    main_process = training_args.process_index == 0
    training_args = with_resolved_pipeline(data_args, training_args, resolve_pipeline)
    check_reusable(model_args, data_args, training_args, variants, seeds, reference_seeds)
    matched_name = matched_variant(variants)
    judged = any(VARIANTS[name].role == "peer" for name in variants)
    reports: dict[str, dict[int, RunReport]] = {name: {} for name in variants}
    settings: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        for name in variants:
            if seed not in seeds_of(name, seeds, reference_seeds):
                continue
            matched = reports[matched_name][seed] if name in MATCHED_VARIANTS else None
            folder = run_dir(training_args.output_dir, name, seed, len(seeds) > 1)
            args = variant_arguments(training_args, name, seed, folder, matched)
            settings.setdefault(name, {key: getattr(args, key) for key in SETTINGS})
            fingerprint = run_fingerprint(model_args, data_args, args)
            report = load_finished(folder, fingerprint)
            if report is not None:
                if main_process:
                    print(f"compare: {name} seed {seed}: reusing the finished run in {folder} (same settings)")
                if judged and report.correct() is None:
                    report = with_correctness(report, evaluate(model_args, data_args, args), main_process)
            else:
                report = dataclasses.replace(train(model_args, data_args, args), fingerprint=fingerprint)
                if main_process:
                    write_report(folder, report)
            reports[name][seed] = report
    comparison = summarize(reports, model_args, data_args, training_args, settings)
    if main_process:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, COMPARISON_JSON), "w") as f:
            json.dump(comparison, f, indent=2)
        plot_comparison(comparison, os.path.join(training_args.output_dir, COMPARISON_PNG))
        write_challenger_cards(comparison)
        print(format_table(comparison))
    return comparison


def write_report(folder: str, report: RunReport) -> None:
    """The run's `intertrain_run.json`."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, RUN_REPORT_NAME), "w") as f:
        json.dump(report.to_dict(), f, indent=2)


def with_correctness(report: RunReport, correct: np.ndarray, main_process: bool = True) -> RunReport:
    """A finished run's report with the per-image results of its saved model, written back into its folder. Its
    top-1 must be the one the run recorded: another one means the folder's model is not the run's."""
    accuracy = float(np.mean(correct))
    if report.eval_accuracy is not None and abs(accuracy - report.eval_accuracy) > 1e-3:
        raise ValueError(
            f"the saved model in {report.output_dir} scores top-1 {accuracy:.4f} but its run recorded "
            f"{report.eval_accuracy:.4f}: the folder was changed after the run; train it again in another --output_dir"
        )
    report = dataclasses.replace(report, num_eval_samples=int(correct.size), eval_correct=pack_correct(correct))
    if main_process and report.output_dir:
        write_report(report.output_dir, report)
    return report


def write_challenger_cards(comparison: dict[str, Any]) -> None:
    """Each challenger's model card again, now with what the comparison measured: its speed-up against the reference
    and its verdict against the budget-matched peers (`model_card.comparison_facts`)."""
    for name, run in comparison["runs"].items():
        if role_of(name) != "challenger":
            continue
        for seed_run in run["seeds"].values():
            folder = seed_run.get("output_dir")
            if folder and os.path.isfile(os.path.join(folder, FACTS_NAME)):
                facts = load_facts(folder)
                facts["comparison"] = comparison_facts(comparison, name)
                write_model_card(facts, folder)


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
    reference_seeds: list[int] | None = None,
    evaluate: Callable[[ModelArguments, DataArguments, InterTrainArguments], np.ndarray] = evaluate_saved_model,
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
        check_reusable(model_args, data_args, args, variants, seeds, reference_seeds)
    comparisons = {
        length: run_comparison(
            model_args, data_args, args, variants, train, seeds, resolve_pipeline, reference_seeds, evaluate
        )
        for length, args in per_length.items()
    }
    sweep = summarize_sweep(comparisons, variants, seeds, matched_variant(variants))
    if training_args.process_index == 0:
        with open(os.path.join(training_args.output_dir, SWEEP_JSON), "w") as f:
            json.dump(sweep, f, indent=2)
        plot_sweep(sweep, os.path.join(training_args.output_dir, SWEEP_PNG))
        print(format_sweep(sweep))
    return sweep
