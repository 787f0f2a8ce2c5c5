"""Side-by-side runs: the baseline, InterTrain and the paper's ablations with the same seed and hyper-parameters.

`run_comparison` trains each variant in turn (fresh model from the same seed), then writes `comparison.json`,
`comparison.png` and prints a summary table. What the paper measures (ALGORITHM.md, "What the paper measures"):
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
- `randpatch4`, `mosaic4` (issue 6): InterTrain with RandPatch pairs, plus 4-way composites (RandPatch-4 or
  Mosaic-4) for the samples the tracker's four-way selection marks; `randpatch4_region1` groups every Region-1
  member by four on its second interpolated epoch (the selection's ablation; the only one whose ideal speed-up
  can approach 2x).

Every variant but `intertrain` sets `four_way` itself (none, unless it is a 4-way variant).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable

from .config import DataArguments, InterTrainArguments, ModelArguments
from .run import RunReport, run_training

COMPARISON_JSON = "comparison.json"
COMPARISON_PNG = "comparison.png"

# Each variant: the InterTrainArguments fields it sets on top of the run's own configuration.
_PAIRS = {"four_way": "none"}
_FOUR_WAY = {"interpolation": "randpatch", "split_propagation": True, "selective_interpolation": True}
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"interpolation": "none", **_PAIRS},
    "intertrain": {},
    "randpatch": {"interpolation": "randpatch", **_PAIRS},
    "linavg": {"interpolation": "linavg", **_PAIRS},
    "naive": {"selective_interpolation": False, "split_propagation": False, "adaptive_interpolation": False, **_PAIRS},
    "no_split": {"interpolation": "randpatch", "split_propagation": False, **_PAIRS},
    "region1": {"amenability_regions": "1", **_PAIRS},
    "skip": {"amenable_action": "skip", **_PAIRS},
    "randpatch4": {**_FOUR_WAY, "amenable_action": "interpolate", "four_way": "randpatch4"},
    "mosaic4": {**_FOUR_WAY, "amenable_action": "interpolate", "four_way": "mosaic4"},
    "randpatch4_region1": {
        **_FOUR_WAY, "amenable_action": "interpolate", "four_way": "randpatch4", "four_way_selection": "region1"
    },
}
SETTINGS = (
    "interpolation",
    "split_propagation",
    "adaptive_interpolation",
    "selective_interpolation",
    "amenability_regions",
    "amenable_action",
    "four_way",
    "four_way_selection",
)
"""The InterTrainArguments fields a variant may change, recorded per run in comparison.json."""


def parse_variants(spec: str) -> list[str]:
    """`'baseline,intertrain'` -> validated variant names; the baseline always runs first."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    names = [name for name in names if name != "baseline"]
    return ["baseline", *dict.fromkeys(names)]


def variant_arguments(training_args: InterTrainArguments, name: str) -> InterTrainArguments:
    """The run's arguments with the variant's fields, writing into `output_dir/name`.

    A variant other than the baseline interpolates: with `interpolation="none"` configured, it uses RandPatch.
    """
    changes = dict(VARIANTS[name], output_dir=os.path.join(training_args.output_dir, name))
    if changes.get("interpolation", training_args.interpolation) == "none" and name != "baseline":
        changes["interpolation"] = "randpatch"
    return dataclasses.replace(training_args, **changes)


def run_comparison(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: InterTrainArguments,
    variants: list[str],
    train: Callable[[ModelArguments, DataArguments, InterTrainArguments], RunReport] = run_training,
) -> dict[str, Any]:
    """Train every variant, then write and return the comparison."""
    reports: dict[str, RunReport] = {}
    settings: dict[str, dict[str, Any]] = {}
    for name in variants:
        args = variant_arguments(training_args, name)
        settings[name] = {key: getattr(args, key) for key in SETTINGS}
        reports[name] = train(model_args, data_args, args)
    comparison = summarize(reports, model_args, data_args, training_args, settings)
    if training_args.process_index == 0:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, COMPARISON_JSON), "w") as f:
            json.dump(comparison, f, indent=2)
        plot_comparison(comparison, os.path.join(training_args.output_dir, COMPARISON_PNG))
        print(format_table(comparison))
    return comparison


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def epoch_rows(report: RunReport) -> list[dict[str, Any]]:
    """The report's per-epoch rows with `skipped` (N - items - pairs - 3 * composites_4) and the fractions of N
    that are interpolated, skipped, and approximated (either)."""
    num_samples = report.num_train_samples
    rows = []
    for row in report.epochs:
        row = dict(row)
        grouped = int(row.get("pairs", 0)) + 3 * int(row.get("composites_4", 0))
        row["skipped"] = float(num_samples - int(row["items"]) - grouped)
        row["skipped_fraction"] = row["skipped"] / num_samples if num_samples else 0.0
        row["approximated_fraction"] = row["interpolated_fraction"] + row["skipped_fraction"]
        rows.append(row)
    return rows


def summarize(
    reports: dict[str, RunReport],
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: InterTrainArguments,
    settings: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """comparison.json: every run with its per-epoch statistics, speed-up and ideal speed-up against the baseline."""
    baseline = reports["baseline"]
    runs = {}
    for name, report in reports.items():
        run = report.to_dict()
        run["epochs"] = epoch_rows(report)
        run["settings"] = (settings or {}).get(name, {})
        run["speedup"] = _ratio(baseline.train_seconds, report.train_seconds)
        run["ideal_speedup"] = _ratio(baseline.items_trained, report.items_trained)
        run["speedup_efficiency"] = _ratio(run["speedup"], run["ideal_speedup"])
        run["accuracy_delta"] = (
            report.eval_accuracy - baseline.eval_accuracy
            if baseline.eval_accuracy is not None and report.eval_accuracy is not None
            else None
        )
        fractions = [row["approximated_fraction"] for row in run["epochs"]]
        run["mean_approximated_fraction"] = sum(fractions) / len(fractions) if fractions else 0.0
        runs[name] = run
    comparison: dict[str, Any] = {
        "model_name": model_args.model_name,
        "model_kwargs": model_args.create_kwargs(),
        "dataset_name": data_args.dataset_name,
        "num_train_samples": baseline.num_train_samples,
        "num_train_epochs": training_args.num_train_epochs,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "learning_rate": training_args.learning_rate,
        "seed": training_args.seed,
        "variants": list(runs),
        "runs": runs,
    }
    challengers = [name for name in runs if name != "baseline"]
    if len(challengers) == 1:
        comparison["speedup"] = runs[challengers[0]]["speedup"]
        comparison["ideal_speedup"] = runs[challengers[0]]["ideal_speedup"]
        comparison["baseline"] = runs["baseline"]
        comparison["intertrain"] = runs[challengers[0]]
    return comparison


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}{suffix}"


def format_table(comparison: dict[str, Any]) -> str:
    """A plain-text summary: one row per run (per-epoch details are in comparison.json)."""
    header = (
        f"{'run':<11} {'train s':>9} {'top-1':>7} {'Δtop-1':>8} {'speed-up':>9} {'ideal':>7} {'eff.':>5} "
        f"{'approx. frac. mean/last':>23}"
    )
    lines = [header, "-" * len(header)]
    for name, run in comparison["runs"].items():
        epochs = run["epochs"]
        last = epochs[-1]["approximated_fraction"] if epochs else None
        kind = " (skipped)" if run["settings"].get("amenable_action") == "skip" else ""
        lines.append(
            f"{name:<11} {run['train_seconds']:>9.1f} {_fmt(run['eval_accuracy'], '.4f'):>7} "
            f"{_fmt(run['accuracy_delta'], '+.4f'):>8} {_fmt(run['speedup'], '.2f', 'x'):>9} "
            f"{_fmt(run['ideal_speedup'], '.2f', 'x'):>7} {_fmt(run['speedup_efficiency'], '.0%'):>5} "
            f"{_fmt(run['mean_approximated_fraction'], '.2f'):>11}/{_fmt(last, '.2f')}{kind}"
        )
    return "\n".join(lines)


def plot_comparison(comparison: dict[str, Any], path: str) -> None:
    """comparison.png. Top row: top-1 against training time, the fraction of samples interpolated (solid) or
    skipped (dashed) per epoch, and measured against ideal speed-up. Below: one panel per run with its counts
    per loss region per epoch (as fractions of N), so that eight runs stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = comparison["runs"]
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(runs)}
    columns = 4
    region_rows = math.ceil(len(runs) / columns)
    fig = plt.figure(figsize=(16, 4.6 + 2.6 * region_rows))
    grid = fig.add_gridspec(1 + region_rows, columns, height_ratios=[1.6] + [1.0] * region_rows)
    ax_acc = fig.add_subplot(grid[0, 0:2])
    ax_frac = fig.add_subplot(grid[0, 2])
    ax_speed = fig.add_subplot(grid[0, 3])

    for name, run in runs.items():
        color, epochs = colors[name], run["epochs"]
        points = [(0.0, None)] + [(e["cumulative_train_seconds"], e.get("eval_top1")) for e in epochs]
        points = [(t, acc) for t, acc in points if acc is not None]
        if points:
            ax_acc.plot(*zip(*points), marker="o", markersize=3, color=color, label=name)
        skips = run["settings"].get("amenable_action") == "skip"
        ax_frac.plot(
            [e["epoch"] for e in epochs],
            [e["approximated_fraction"] for e in epochs],
            color=color,
            linestyle="--" if skips else "-",
            marker=".",
            label=f"{name} (skipped)" if skips else name,
        )
    ax_acc.set(xlabel="training wall-clock time (s, evaluation excluded)", ylabel="eval top-1", title="Accuracy against training time")
    ax_acc.legend(fontsize=8, ncol=2)
    ax_frac.set(xlabel="epoch", ylabel="fraction of N", title="Interpolated (solid) / skipped (dashed)", ylim=(0, 1.02))

    names = list(runs)
    xs = range(len(names))
    measured = [runs[n]["speedup"] or 0.0 for n in names]
    ideal = [runs[n]["ideal_speedup"] or 0.0 for n in names]
    ax_speed.bar([x - 0.2 for x in xs], measured, width=0.4, color=[colors[n] for n in names], label="measured")
    ax_speed.bar([x + 0.2 for x in xs], ideal, width=0.4, color="lightgrey", edgecolor="grey", label="ideal")
    for x, name in zip(xs, names):
        top1 = runs[name]["eval_accuracy"]
        if top1 is not None:
            ax_speed.annotate(f"{top1:.3f}", (x, max(measured[x], ideal[x])), ha="center", va="bottom", fontsize=7)
    ax_speed.axhline(1.0, color="black", linewidth=0.8)
    ax_speed.set_xticks(list(xs), names, rotation=35, ha="right", fontsize=8)
    ax_speed.set(ylabel="speed-up vs baseline", title="Speed-up (label: top-1)", ylim=(0, 1.18 * max(measured + ideal + [1.0])))
    ax_speed.legend(fontsize=8, loc="lower right")
    for ax in (ax_acc, ax_frac, ax_speed):
        ax.grid(alpha=0.3)

    region_colors = ("tab:green", "tab:orange", "tab:red")
    for i, (name, run) in enumerate(runs.items()):
        ax = fig.add_subplot(grid[1 + i // columns, i % columns])
        epochs = run["epochs"]
        n = max(run.get("num_train_samples") or 1, 1)
        x = [e["epoch"] for e in epochs]
        stacks = [[e.get(f"region_{r}", 0) / n for e in epochs] for r in (1, 2, 3)]
        if x:
            ax.stackplot(x, *stacks, colors=region_colors, alpha=0.6, labels=["Region 1", "Region 2", "Region 3"])
            ax.plot(x, [e["approximated_fraction"] for e in epochs], color="black", marker=".", label="approximated")
        ax.set_title(name, fontsize=9, color=colors[name])
        ax.set(ylim=(0, 1.02), xlabel="epoch")
        ax.tick_params(labelsize=7)
        if i % columns == 0:
            ax.set_ylabel("fraction of N", fontsize=8)
        if i == 0:
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(
        f"{comparison['model_name']} on {os.path.basename(str(comparison['dataset_name']).rstrip('/'))}: "
        f"{comparison.get('num_train_samples', '?')} samples, {comparison['num_train_epochs']:g} epochs, seed {comparison['seed']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
