"""Side-by-side runs: the baseline and InterTrain with the same seed and hyper-parameters.

`run_comparison` trains each variant in turn (fresh model from the same seed), then writes `comparison.json`,
`comparison.png` (top-1 against training wall-clock time, and the interpolated fraction per epoch) and prints a
summary table. The speed-up is measured on training time only (evaluation excluded), the way the paper reports
it; the ideal speed-up is what the items actually trained allow: baseline items / variant items.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

from .config import DataArguments, InterTrainArguments, ModelArguments
from .run import RunReport, run_training

COMPARISON_JSON = "comparison.json"
COMPARISON_PNG = "comparison.png"

# Each variant: the InterTrainArguments fields it sets on top of the run's own configuration.
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"interpolation": "none"},
    "intertrain": {},
    "randpatch": {"interpolation": "randpatch"},
    "linavg": {"interpolation": "linavg"},
    "naive": {"selective_interpolation": False, "split_propagation": False, "adaptive_interpolation": False},
    "no_split": {"interpolation": "randpatch", "split_propagation": False},
    "region1": {"amenability_regions": "1"},
}


def parse_variants(spec: str) -> list[str]:
    """`'baseline,intertrain'` -> validated variant names; the baseline always runs first."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    if "baseline" not in names:
        names.insert(0, "baseline")
    names.remove("baseline")
    return ["baseline", *dict.fromkeys(names)]


def variant_arguments(training_args: InterTrainArguments, name: str) -> InterTrainArguments:
    """The run's arguments with the variant's fields, writing into `output_dir/name`."""
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
    for name in variants:
        reports[name] = train(model_args, data_args, variant_arguments(training_args, name))
    comparison = summarize(reports, model_args, data_args, training_args)
    if training_args.process_index == 0:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, COMPARISON_JSON), "w") as f:
            json.dump(comparison, f, indent=2)
        plot_comparison(comparison, os.path.join(training_args.output_dir, COMPARISON_PNG))
        print(format_table(comparison))
    return comparison


def summarize(
    reports: dict[str, RunReport], model_args: ModelArguments, data_args: DataArguments, training_args: InterTrainArguments
) -> dict[str, Any]:
    """comparison.json: every run, with speed-up and ideal speed-up against the baseline."""
    baseline = reports["baseline"]
    runs = {}
    for name, report in reports.items():
        run = report.to_dict()
        run["speedup"] = baseline.train_seconds / report.train_seconds if report.train_seconds else None
        run["ideal_speedup"] = baseline.items_trained / report.items_trained if report.items_trained else None
        if baseline.eval_accuracy is not None and report.eval_accuracy is not None:
            run["accuracy_delta"] = report.eval_accuracy - baseline.eval_accuracy
        runs[name] = run
    comparison: dict[str, Any] = {
        "model_name": model_args.model_name,
        "model_kwargs": model_args.create_kwargs(),
        "dataset_name": data_args.dataset_name,
        "num_train_epochs": training_args.num_train_epochs,
        "seed": training_args.seed,
        "runs": runs,
    }
    challengers = [name for name in runs if name != "baseline"]
    if len(challengers) == 1:
        comparison["speedup"] = runs[challengers[0]]["speedup"]
        comparison["ideal_speedup"] = runs[challengers[0]]["ideal_speedup"]
        comparison["baseline"] = runs["baseline"]
        comparison["intertrain"] = runs[challengers[0]]
    return comparison


def format_table(comparison: dict[str, Any]) -> str:
    """A plain-text summary: one row per run."""
    header = f"{'run':<12} {'train s':>9} {'top-1':>7} {'Δtop-1':>7} {'speed-up':>9} {'ideal':>7} {'interp. frac. per epoch'}"
    lines = [header, "-" * len(header)]
    for name, run in comparison["runs"].items():
        top1 = run["eval_accuracy"]
        delta = run.get("accuracy_delta")
        fractions = " ".join(f"{e['interpolated_fraction']:.2f}" for e in run["epochs"])
        lines.append(
            f"{name:<12} {run['train_seconds']:>9.1f} "
            f"{(f'{top1:.4f}' if top1 is not None else '-'):>7} "
            f"{(f'{delta:+.4f}' if delta is not None else '-'):>7} "
            f"{run['speedup']:>8.2f}x {run['ideal_speedup']:>6.2f}x {fractions}"
        )
    return "\n".join(lines)


def plot_comparison(comparison: dict[str, Any], path: str) -> None:
    """Top-1 against cumulative training seconds, and the interpolated fraction per epoch, for every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_frac) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in comparison["runs"].items():
        points = [(e["cumulative_train_seconds"], e["eval_top1"]) for e in run["epochs"] if e.get("eval_top1") is not None]
        if points:
            ax_acc.plot(*zip(*points), marker="o", label=name)
        ax_frac.plot([e["epoch"] for e in run["epochs"]], [e["interpolated_fraction"] for e in run["epochs"]], marker="o", label=name)
    ax_acc.set(xlabel="training wall-clock time (s)", ylabel="eval top-1", title="Accuracy against training time")
    ax_frac.set(xlabel="epoch", ylabel="fraction of samples interpolated", title="Interpolated fraction", ylim=(0, 1))
    for ax in (ax_acc, ax_frac):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{comparison['model_name']} on {os.path.basename(str(comparison['dataset_name']).rstrip('/'))}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
