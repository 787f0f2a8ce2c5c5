"""What `compare` reports: comparison.json's summary (means, spread over seeds, speed-ups, the verdict against the
budget-matched baseline), its table and plot, and the same for an epoch-length sweep (sweep.json / sweep.png).

Pure functions of the runs' `RunReport`s; `compare.py` trains the runs and calls these. The quantities are those
of docs/method.md, "What the paper measures", and "Peer methods and budget-matched baselines".
"""

from __future__ import annotations

import math
import os
import statistics
from typing import Any

from ..checkpoint import RESUME_SETTINGS
from ..config import DataArguments, InterTrainArguments, ModelArguments
from ..method.tracker.summary import REGION_COUNTS
from .run import RunReport
from .significance import outcome, paired_bootstrap
from .variants import REFERENCE, VARIANTS

SETTINGS = (*RESUME_SETTINGS, "max_steps")
"""The InterTrainArguments fields a variant may change, recorded per run in comparison.json."""

_MEANED = (
    "train_seconds", "eval_accuracy", "eval_top5", "items_trained", "train_runtime", "optimizer_steps",
    "mean_approximated_fraction",
)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def epoch_rows(report: RunReport) -> list[dict[str, Any]]:
    """The report's per-epoch rows with `skipped` (N - items - pairs - 3 * four_way_composites) and the fractions of N
    that are interpolated, skipped, and approximated (either)."""
    num_samples = report.num_train_samples
    rows = []
    for row in report.epochs:
        row = dict(row)
        grouped = int(row.get("pairs", 0)) + 3 * int(row.get("four_way_composites", 0))
        row["skipped"] = float(num_samples - int(row["items"]) - grouped)
        row["skipped_fraction"] = row["skipped"] / num_samples if num_samples else 0.0
        row["approximated_fraction"] = row["interpolated_fraction"] + row["skipped_fraction"]
        rows.append(row)
    return rows


def _mean(values: list) -> float | None:
    """The mean; a single value as it is (one seed keeps the run's own numbers and types)."""
    if any(v is None for v in values):
        return None
    return values[0] if len(values) == 1 else statistics.fmean(values)


def _std(values: list) -> float | None:
    """Sample standard deviation (ddof=1); 0.0 for a single value."""
    if any(v is None for v in values):
        return None
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _run_dict(report: RunReport, reference: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """One run against the reference (`train_seconds`, `items_trained`, `eval_accuracy`) of the same seed, or the
    reference's means where it did not run that seed."""
    run = report.to_dict()
    del run["eval_correct"]  # kept in the run's own report; comparison.json keeps what people read
    run["epochs"] = epoch_rows(report)
    run["settings"] = settings
    run["speedup"] = _ratio(reference["train_seconds"], report.train_seconds)
    run["ideal_speedup"] = _ratio(reference["items_trained"], report.items_trained)
    run["speedup_efficiency"] = _ratio(run["speedup"], run["ideal_speedup"])
    run["accuracy_delta"] = _difference(report.eval_accuracy, reference["eval_accuracy"])
    fractions = [row["approximated_fraction"] for row in run["epochs"]]
    run["mean_approximated_fraction"] = sum(fractions) / len(fractions) if fractions else 0.0
    return run


def _difference(value: float | None, other: float | None) -> float | None:
    return None if value is None or other is None else value - other


def role_of(name: str) -> str:
    """A run's role in the comparison (`variants.Variant.role`); a name outside the table is a challenger."""
    return VARIANTS[name].role if name in VARIANTS else "challenger"


def reference_of(reports: dict[str, dict[int, RunReport]]) -> str:
    """The run speed-ups are read against: the full `baseline` when it ran, else the slowest run (mean seconds)."""
    if REFERENCE in reports:
        return REFERENCE
    return max(reports, key=lambda name: statistics.fmean(r.train_seconds for r in reports[name].values()))


def summarize(
    reports: dict[str, RunReport] | dict[str, dict[int, RunReport]],
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: InterTrainArguments,
    settings: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """comparison.json: every run with its per-epoch statistics, speed-up and ideal speed-up against the reference,
    and the verdict against the budget-matched peers.

    `reports` maps a variant to its report, or to `{seed: report}` (a reference may have fewer seeds than the other
    runs, `compare --reference_seeds`). The reference is the full `baseline` when it ran, else the slowest run,
    and `reference` / `reference_note` say which. `runs[name]["seeds"][str(seed)]` is that seed's run against the
    reference of the same seed (its means where it did not run that seed). `runs[name]` itself holds, over its
    seeds, the means of the measurements (`train_seconds`, `eval_accuracy`, `eval_top5`, `items_trained`,
    `train_runtime`, `optimizer_steps`, `mean_approximated_fraction`), speed-ups and `accuracy_delta` computed from
    those means, `eval_accuracy_mean/_std` and `train_seconds_mean/_std` (sample std, 0.0 for one seed), its
    `seeds`, and the first seed's `epochs`, `settings`, `seed`, `output_dir` and `fingerprint`. `verdict` (when a
    peer ran, `verdicts`) and `plain_verdict` (`plain_verdict`) follow.
    """
    reports = {
        name: by_seed if isinstance(by_seed, dict) else {training_args.seed: by_seed}
        for name, by_seed in reports.items()
    }
    seeds = list(dict.fromkeys(seed for by_seed in reports.values() for seed in by_seed))
    reference_name = reference_of(reports)
    reference_means = {
        key: _mean([getattr(report, key) for report in reports[reference_name].values()])
        for key in ("train_seconds", "items_trained", "eval_accuracy")
    }
    runs = {}
    for name, by_seed in reports.items():
        per_seed = {}
        for seed, report in by_seed.items():
            own = dict((settings or {}).get(name, {}))
            if report.fingerprint:
                own.update({key: report.fingerprint[key] for key in SETTINGS if key in report.fingerprint})
            reference = reports[reference_name].get(seed)
            reference = vars(reference) if reference is not None else reference_means
            per_seed[seed] = _run_dict(report, reference, own)
        own_seeds = list(per_seed)
        run = dict(per_seed[own_seeds[0]])
        run["settings"] = dict((settings or {}).get(name, run["settings"]))
        for key in _MEANED:
            run[key] = _mean([per_seed[seed][key] for seed in own_seeds])
        accuracies = [per_seed[seed]["eval_accuracy"] for seed in own_seeds]
        seconds = [per_seed[seed]["train_seconds"] for seed in own_seeds]
        run.update(
            eval_accuracy_mean=_mean(accuracies),
            eval_accuracy_std=_std(accuracies),
            train_seconds_mean=_mean(seconds),
            train_seconds_std=_std(seconds),
            seeds={str(seed): per_seed[seed] for seed in own_seeds},
        )
        runs[name] = run
    reference = runs[reference_name]
    for run in runs.values():
        run["speedup"] = _ratio(reference["train_seconds"], run["train_seconds"])
        run["ideal_speedup"] = _ratio(reference["items_trained"], run["items_trained"])
        run["speedup_efficiency"] = _ratio(run["speedup"], run["ideal_speedup"])
        run["accuracy_delta"] = _difference(run["eval_accuracy"], reference["eval_accuracy"])
    comparison: dict[str, Any] = {
        "model_name": model_args.model_name,
        "model_kwargs": model_args.create_kwargs(),
        "dataset_name": data_args.dataset_name,
        "num_train_samples": reference["num_train_samples"],
        "num_train_epochs": training_args.num_train_epochs,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "learning_rate": training_args.learning_rate,
        "seed": seeds[0],
        "seeds": seeds,
        "variants": list(runs),
        "reference": reference_name,
        "reference_note": None if reference_name == REFERENCE else (
            f"no full baseline in this comparison: speed-ups are against the slowest run, {reference_name}"
        ),
        "runs": runs,
    }
    challengers = [name for name in runs if name != reference_name]
    if len(challengers) == 1:
        comparison["speedup"] = runs[challengers[0]]["speedup"]
        comparison["ideal_speedup"] = runs[challengers[0]]["ideal_speedup"]
        comparison["baseline"] = reference
        comparison["intertrain"] = runs[challengers[0]]
    if any(role_of(name) == "peer" for name in runs):
        comparison["verdict"] = verdicts(runs, reports)
    comparison["plain_verdict"] = plain_verdict(comparison)
    return comparison


WIN_SECONDS_RATIO = 1.05
"""A challenger wins against a peer when it is more accurate beyond noise in at most this multiple of its time."""


def verdicts(
    runs: dict[str, dict[str, Any]], reports: dict[str, dict[int, RunReport]] | None = None
) -> dict[str, dict[str, Any]]:
    """Every challenger against every budget-matched peer, and against the strongest of them (docs/method.md, "Peer
    methods and budget-matched baselines").

    Per challenger: `peers` holds, for each peer, `accuracy_delta` (mean top-1 difference over the seeds both ran),
    `interval` (its 95% paired-bootstrap interval over the evaluation images, pooled over those seeds; None without
    per-image results), `seconds_ratio` (mean seconds over the peer's), `seeds` and `outcome` ('wins', 'loses',
    'within noise', 'slower', or 'not judged' without per-image results; `significance.outcome`). The challenger's
    own entry repeats the judgement against the strongest peer (highest mean top-1), named in `vs`, with `wins`.
    """
    peers = [name for name in runs if role_of(name) == "peer"]
    strongest = max(peers, key=lambda name: runs[name]["eval_accuracy"] if runs[name]["eval_accuracy"] is not None else -1)
    verdict = {}
    for name in runs:
        if role_of(name) != "challenger":
            continue
        against = {peer: _judge(runs[name], runs[peer], (reports or {}).get(name), (reports or {}).get(peer)) for peer in peers}
        best = against[strongest]
        verdict[name] = {"vs": strongest, **best, "wins": best["outcome"] == "wins", "peers": against}
    return verdict


def _judge(run: dict, peer: dict, reports: dict[int, RunReport] | None, peer_reports: dict[int, RunReport] | None) -> dict:
    """One challenger against one peer on the seeds both ran."""
    seeds = [seed for seed in run["seeds"] if seed in peer["seeds"]]
    accuracies = [(run["seeds"][s]["eval_accuracy"], peer["seeds"][s]["eval_accuracy"]) for s in seeds]
    delta = None if not seeds or any(a is None or b is None for a, b in accuracies) else statistics.fmean(
        a - b for a, b in accuracies
    )
    ratio = _ratio(
        statistics.fmean(run["seeds"][s]["train_seconds"] for s in seeds) if seeds else None,
        statistics.fmean(peer["seeds"][s]["train_seconds"] for s in seeds) if seeds else None,
    )
    interval, result = None, "not judged"
    correct = [
        (reports[int(s)].correct(), peer_reports[int(s)].correct()) for s in seeds
    ] if reports and peer_reports else []
    if correct and all(c is not None and p is not None and c.shape == p.shape for c, p in correct):
        difference, low, high = paired_bootstrap([c for c, _ in correct], [p for _, p in correct])
        interval = [low, high]
        delta = difference
        result = outcome(low, high, ratio, WIN_SECONDS_RATIO)
    return {"accuracy_delta": delta, "interval": interval, "seconds_ratio": ratio, "seeds": [int(s) for s in seeds], "outcome": result}


def plain_verdict(comparison: dict[str, Any]) -> str | None:
    """The first interpolating challenger's answer in one plain line: how much faster than the reference, how much
    more or less accurate than its strongest budget-matched peer, and whether that is beyond noise."""
    runs = comparison["runs"]
    name = next((n for n in runs if role_of(n) == "challenger" and (n not in VARIANTS or VARIANTS[n].interpolates)), None)
    if name is None:
        return None
    run = runs[name]
    reference = comparison["reference"]
    if reference == name:
        line = f"{name}: the slowest run here (no full baseline to time it against)"
    else:
        against = "the full baseline" if reference == REFERENCE else f"the slowest run here ({reference})"
        line = f"{name}: {_fmt(run['speedup'], '.2f', 'x')} faster than {against}"
    entry = (comparison.get("verdict") or {}).get(name)
    if entry is None or entry["accuracy_delta"] is None:
        return line + "; no budget-matched run to judge it against (add budget to --variants)"
    points = 100 * entry["accuracy_delta"]
    peer = entry["vs"]
    what = VARIANTS[peer].as_peer if peer in VARIANTS else peer
    noise = {
        "wins": "beyond noise: it wins",
        "loses": "beyond noise: it loses",
        "within noise": "within noise",
        "slower": "beyond noise, but it takes more than 1.05x the time",
        "not judged": "noise not judged: no per-image results",
    }[entry["outcome"]]
    interval = entry["interval"]
    bounds = "" if interval is None else f", 95% interval {100 * interval[0]:+.1f} to {100 * interval[1]:+.1f}"
    return (
        f"{line}, {abs(points):.1f} points {'more' if points > 0 else 'less'} accurate than {what} "
        f"({peer}{bounds}; {noise})"
    )


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}{suffix}"


def format_table(comparison: dict[str, Any]) -> str:
    """A plain-text summary: one row per run (top-1 as mean ± std over several seeds; per-epoch details are in
    comparison.json), then one verdict line per challenger when `budget` ran."""
    several = len(comparison.get("seeds", [None])) > 1
    top1 = {
        name: _fmt(run["eval_accuracy"], ".4f")
        + (f"±{_fmt(run.get('eval_accuracy_std'), '.4f')}" if several and run["eval_accuracy"] is not None else "")
        for name, run in comparison["runs"].items()
    }
    width = max(7, *(len(text) for text in top1.values()))
    names = max(11, *(len(name) for name in comparison["runs"]))
    header = (
        f"{'run':<{names}} {'train s':>9} {'top-1':>{width}} {'Δtop-1':>8} {'speed-up':>9} {'ideal':>7} {'eff.':>5} "
        f"{'steps':>7} {'approx. frac. mean/last':>23}"
    )
    lines = [header, "-" * len(header)]
    for name, run in comparison["runs"].items():
        epochs = run["epochs"]
        last = epochs[-1]["approximated_fraction"] if epochs else None
        kind = " (skipped)" if run["settings"].get("amenable_action") == "skip" else ""
        lines.append(
            f"{name:<{names}} {run['train_seconds']:>9.1f} {top1[name]:>{width}} "
            f"{_fmt(run['accuracy_delta'], '+.4f'):>8} {_fmt(run['speedup'], '.2f', 'x'):>9} "
            f"{_fmt(run['ideal_speedup'], '.2f', 'x'):>7} {_fmt(run['speedup_efficiency'], '.0%'):>5} "
            f"{_fmt(run.get('optimizer_steps'), '.0f'):>7} "
            f"{_fmt(run['mean_approximated_fraction'], '.2f'):>11}/{_fmt(last, '.2f')}{kind}"
        )
    verdict = comparison.get("verdict") or {}
    if verdict or comparison.get("reference_note"):
        lines.append("")
    if comparison.get("reference_note"):
        lines.append(comparison["reference_note"])
    for name, entry in verdict.items():
        for peer, judged in entry["peers"].items():
            delta = _fmt(None if judged["accuracy_delta"] is None else 100 * judged["accuracy_delta"], "+.1f")
            interval = judged["interval"]
            bounds = "" if interval is None else f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"
            strongest = " (strongest peer)" if peer == entry["vs"] and len(entry["peers"]) > 1 else ""
            lines.append(
                f"{name} vs {peer}{strongest}: {delta}{bounds} points at {_fmt(judged['seconds_ratio'], '.2f', 'x')} "
                f"the time -> {judged['outcome']}"
            )
    if comparison.get("plain_verdict"):
        lines += ["", comparison["plain_verdict"]]
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
        by_seed = list(run.get("seeds", {}).values()) or [run]
        labelled = False
        for seed_run in by_seed:
            points = [(e["cumulative_train_seconds"], e.get("eval_top1")) for e in seed_run["epochs"]]
            points = [(t, acc) for t, acc in points if acc is not None]
            if points:
                style = {"linewidth": 0.8, "alpha": 0.7, "markersize": 2} if len(by_seed) > 1 else {"markersize": 3}
                ax_acc.plot(*zip(*points), marker="o", color=color, label=None if labelled else name, **style)
                labelled = True
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
        stacks = [[e.get(key, 0) / n for e in epochs] for key in REGION_COUNTS]
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
        f"{comparison.get('num_train_samples', '?')} samples, {comparison['num_train_epochs']:g} epochs, "
        + _seeds_text(comparison.get("seeds") or [comparison["seed"]])
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _seeds_text(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(str(seed) for seed in seeds)} (mean ± std)"


def summarize_sweep(
    comparisons: dict[int, dict[str, Any]], variants: list[str], seeds: list[int], matched: str | None = None
) -> dict[str, Any]:
    """sweep.json: per schedule length, each variant's mean/std top-1, mean seconds and optimizer steps (and each
    seed's), plus `intertrain_minus_budget` (the matched run's mean top-1 minus the budget's) when budget ran."""
    first = next(iter(comparisons.values()))
    by_length = {}
    for length, comparison in comparisons.items():
        runs = {
            name: {
                "eval_accuracy_mean": run["eval_accuracy_mean"],
                "eval_accuracy_std": run["eval_accuracy_std"],
                "train_seconds_mean": run["train_seconds_mean"],
                "train_seconds_std": run["train_seconds_std"],
                "optimizer_steps": run["optimizer_steps"],
                "by_seed": {
                    seed: {key: seed_run[key] for key in ("eval_accuracy", "train_seconds", "optimizer_steps")}
                    for seed, seed_run in run["seeds"].items()
                },
            }
            for name, run in comparison["runs"].items()
        }
        entry: dict[str, Any] = {"runs": runs}
        if "budget" in runs:
            ours, budget = runs[matched]["eval_accuracy_mean"], runs["budget"]["eval_accuracy_mean"]
            entry["intertrain_minus_budget"] = None if ours is None or budget is None else ours - budget
            entry["verdict"] = comparison["verdict"]
        by_length[str(length)] = entry
    return {
        "model_name": first["model_name"],
        "dataset_name": first["dataset_name"],
        "num_train_samples": first["num_train_samples"],
        "variants": list(first["variants"]),
        "matched": matched,
        "seeds": seeds,
        "lengths": list(comparisons),
        "by_length": by_length,
    }


def format_sweep(sweep: dict[str, Any]) -> str:
    """One line per schedule length and variant."""
    header = f"{'epochs':>6} {'run':<14} {'top-1 mean±std':>16} {'train s':>9} {'steps':>8}"
    lines = [header, "-" * len(header)]
    for length, entry in sweep["by_length"].items():
        for name, run in entry["runs"].items():
            top1 = f"{_fmt(run['eval_accuracy_mean'], '.4f')}±{_fmt(run['eval_accuracy_std'], '.4f')}"
            lines.append(
                f"{length:>6} {name:<14} {top1:>16} {_fmt(run['train_seconds_mean'], '.1f'):>9} "
                f"{_fmt(run['optimizer_steps'], '.0f'):>8}"
            )
        if entry.get("intertrain_minus_budget") is not None:
            difference = 100 * entry["intertrain_minus_budget"]
            lines.append(f"{length:>6} {sweep['matched']} - budget: {difference:+.1f} points")
    return "\n".join(lines)


def plot_sweep(sweep: dict[str, Any], path: str) -> None:
    """sweep.png. Left: top-1 of each variant against schedule length (mean, ± std bars). Right: top-1 against
    training seconds, every length of every variant on one plot (each seed a faint dot), so that a crossover
    between InterTrain and the budget-matched baseline is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [int(length) for length in sweep["by_length"]]
    entries = list(sweep["by_length"].values())
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(sweep["variants"])}
    fig, (ax_len, ax_time) = plt.subplots(1, 2, figsize=(14, 5.2))
    for name, color in colors.items():
        rows = [(length, entry["runs"][name]) for length, entry in zip(lengths, entries) if name in entry["runs"]]
        rows = [(length, run) for length, run in rows if run["eval_accuracy_mean"] is not None]
        if not rows:
            continue
        means = [run["eval_accuracy_mean"] for _, run in rows]
        stds = [run["eval_accuracy_std"] or 0.0 for _, run in rows]
        seconds = [run["train_seconds_mean"] for _, run in rows]
        ax_len.errorbar([n for n, _ in rows], means, yerr=stds, color=color, marker="o", capsize=3, label=name)
        ax_time.errorbar(seconds, means, yerr=stds, color=color, marker="o", capsize=3, label=name)
        for (length, run), x, y in zip(rows, seconds, means):
            ax_time.annotate(f"{length}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
            seed_points = [(r["train_seconds"], r["eval_accuracy"]) for r in run["by_seed"].values()]
            seed_points = [(t, a) for t, a in seed_points if a is not None]
            if len(seed_points) > 1:
                ax_time.scatter(*zip(*seed_points), color=color, s=8, alpha=0.35)
    ax_len.set(
        xlabel="schedule length (epochs)", ylabel="eval top-1", title="Top-1 against schedule length (mean ± std)"
    )
    ax_time.set(
        xlabel="training wall-clock time (s, evaluation excluded)",
        ylabel="eval top-1",
        title="Top-1 against training time (label: epochs)",
    )
    for ax in (ax_len, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{sweep['model_name']} on {os.path.basename(str(sweep['dataset_name']).rstrip('/'))}: "
        f"{sweep.get('num_train_samples', '?')} samples, " + _seeds_text(sweep["seeds"])
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
