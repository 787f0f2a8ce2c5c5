import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import json
import math
import statistics

import numpy as np

import pytest

from hf_intertrain.cli import main
from hf_intertrain.experiments.compare import (
    MATCHED_VARIANTS,
    SWEEP_JSON,
    VARIANTS,
    format_table,
    parse_seeds,
    parse_variants,
    plot_comparison,
    run_comparison,
    run_sweep,
    summarize,
    variant_arguments,
)
from hf_intertrain.config import DataArguments, InterTrainArguments, ModelArguments
from hf_intertrain.experiments.run import RUN_REPORT_NAME, RunReport
from hf_intertrain.experiments.significance import pack_correct
from test_cli import assert_one_line_error, write_image_dataset

N = 100


def training_args(tmp_path, **overrides) -> InterTrainArguments:
    """The fake runs' arguments; the workers path unless told, so that no test resolves `auto` on real data."""
    overrides = {"data_pipeline": "workers", **overrides}
    return InterTrainArguments(output_dir=str(tmp_path), report_to="none", save_strategy="no", **overrides)


def epoch_row(epoch: int, items: int, pairs: int, seconds: float, top1: float, cumulative: float) -> dict:
    return {
        "epoch": epoch,
        "interpolated_fraction": 2 * pairs / N,
        "items": float(items),
        "pairs": float(pairs),
        "region_1": 60.0 if epoch else 0.0,
        "region_2": 30.0 if epoch else 0.0,
        "region_3": 10.0 if epoch else 0.0,
        "next_interpolated": 0.0,
        "epoch_seconds": seconds,
        "cumulative_train_seconds": cumulative,
        "eval_top1": top1,
    }


def report(rows: list[tuple[int, int, float]], top1: float, steps: int | None = None) -> RunReport:
    """A RunReport from (items, pairs, seconds) per epoch."""
    epochs, elapsed = [], 0.0
    for epoch, (items, pairs, seconds) in enumerate(rows):
        elapsed += seconds
        epochs.append(epoch_row(epoch, items, pairs, seconds, top1, elapsed))
    return RunReport(
        interpolation="randpatch",
        train_seconds=elapsed,
        eval_accuracy=top1,
        eval_top5=None,
        num_train_samples=N,
        items_trained=sum(items for items, _, _ in rows),
        epochs=epochs,
        optimizer_steps=steps,
    )


FAKE_REPORTS = {
    "baseline": report([(100, 0, 10.0), (100, 0, 10.0)], 0.80),
    "intertrain": report([(100, 0, 10.0), (60, 40, 6.5)], 0.79),
    "skip": report([(100, 0, 10.0), (70, 0, 7.0)], 0.75),
}


# ----------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------


def test_parse_variants_runs_the_references_first_once_and_needs_no_baseline():
    assert parse_variants("skip, intertrain,baseline,skip") == ["baseline", "skip", "intertrain"]
    assert parse_variants("naive,baseline_cutmix") == ["baseline_cutmix", "naive"]
    assert parse_variants("naive") == ["naive"]
    with pytest.raises(ValueError, match="--variants is empty"):
        parse_variants(" , ")


def test_unknown_variant_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown variant.*mixup.*choose from baseline"):
        parse_variants("baseline,mixup")


def test_variant_settings_match_the_paper_ablations(tmp_path):
    base = training_args(tmp_path)
    settings = {name: variant_arguments(base, name) for name in VARIANTS if name not in MATCHED_VARIANTS}
    assert settings["baseline"].interpolation == "none"
    intertrain = settings["intertrain"]
    assert (intertrain.interpolation, intertrain.split_propagation, intertrain.selective_interpolation) == ("randpatch", True, True)
    assert intertrain.regions == (1, 3) and intertrain.amenable_action == "interpolate"
    # Naive: random pairs of all samples every epoch, none of the paper's techniques (plain RandPatch / LinAvg).
    naive = settings["naive"]
    assert naive.interpolation == "randpatch"
    assert (naive.selective_interpolation, naive.split_propagation, naive.adaptive_interpolation) == (False, False, False)
    no_split = settings["no_split"]
    assert (no_split.interpolation, no_split.split_propagation, no_split.selective_interpolation) == ("randpatch", False, True)
    assert settings["region1"].regions == (1,) and settings["region1"].selective_interpolation
    skip = settings["skip"]
    assert skip.amenable_action == "skip" and skip.regions == (1, 3) and skip.selective_interpolation
    assert settings["linavg"].interpolation == "linavg" and settings["linavg"].adaptive_interpolation
    assert settings["clean_final"].interpolation_off_fraction == 0.125 and settings["intertrain"].interpolation_off_fraction == 0
    assert {os.path.basename(args.output_dir) for args in settings.values()} == set(VARIANTS) - set(MATCHED_VARIANTS)


def test_variants_interpolate_even_when_the_configuration_does_not(tmp_path):
    base = training_args(tmp_path, interpolation="none")
    assert variant_arguments(base, "intertrain").interpolation == "randpatch"
    assert variant_arguments(base, "skip").interpolation == "randpatch"
    assert variant_arguments(base, "linavg").interpolation == "linavg"
    assert variant_arguments(base, "baseline").interpolation == "none"


# ----------------------------------------------------------------------------------------------
# Summary, table, plot
# ----------------------------------------------------------------------------------------------


def test_summary_has_speedup_ideal_speedup_and_skipped_counts(tmp_path):
    comparison = summarize(FAKE_REPORTS, ModelArguments(), DataArguments(), training_args(tmp_path))
    runs = comparison["runs"]
    assert comparison["variants"] == ["baseline", "intertrain", "skip"]
    assert runs["baseline"]["speedup"] == 1.0 and runs["baseline"]["ideal_speedup"] == 1.0
    assert runs["intertrain"]["speedup"] == pytest.approx(20 / 16.5)
    assert runs["intertrain"]["ideal_speedup"] == pytest.approx(200 / 160)
    assert runs["intertrain"]["speedup_efficiency"] == pytest.approx((20 / 16.5) / (200 / 160))
    assert runs["intertrain"]["accuracy_delta"] == pytest.approx(-0.01)
    assert [row["skipped"] for row in runs["intertrain"]["epochs"]] == [0, 0]
    assert runs["intertrain"]["epochs"][1]["approximated_fraction"] == pytest.approx(0.8)
    # Skipping: items + skipped == N, nothing paired.
    skip_rows = runs["skip"]["epochs"]
    assert [row["skipped"] for row in skip_rows] == [0, 30]
    assert skip_rows[1]["skipped_fraction"] == pytest.approx(0.3) and skip_rows[1]["interpolated_fraction"] == 0
    assert runs["skip"]["ideal_speedup"] == pytest.approx(200 / 170)
    assert runs["skip"]["mean_approximated_fraction"] == pytest.approx(0.15)
    assert "speedup" not in comparison  # several challengers: no single headline number


def test_single_challenger_gets_headline_numbers(tmp_path):
    reports = {name: FAKE_REPORTS[name] for name in ("baseline", "intertrain")}
    comparison = summarize(reports, ModelArguments(), DataArguments(), training_args(tmp_path))
    assert comparison["speedup"] == comparison["runs"]["intertrain"]["speedup"]
    assert comparison["ideal_speedup"] == pytest.approx(1.25)
    assert comparison["intertrain"]["eval_accuracy"] == 0.79


def test_table_has_one_row_per_run_and_marks_skipping(tmp_path):
    comparison = summarize(FAKE_REPORTS, ModelArguments(), DataArguments(), training_args(tmp_path), {"skip": {"amenable_action": "skip"}})
    lines = format_table(comparison).splitlines()
    assert lines[0].split()[:2] == ["run", "train"]
    rows = {line.split()[0]: line for line in lines[2 : lines.index("")]}
    assert set(rows) == {"baseline", "intertrain", "skip"}
    assert "1.21x" in rows["intertrain"] and "1.25x" in rows["intertrain"]
    assert rows["skip"].endswith("(skipped)")


def test_plot_with_eight_variants_writes_a_png(tmp_path):
    reports = {name: FAKE_REPORTS["intertrain" if name != "baseline" else "baseline"] for name in VARIANTS}
    comparison = summarize(reports, ModelArguments(), DataArguments(), training_args(tmp_path))
    path = tmp_path / "comparison.png"
    plot_comparison(comparison, str(path))
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000


def test_run_comparison_trains_each_variant_with_its_settings(tmp_path, capsys):
    seen = {}

    def train(model_args, data_args, args):
        name = os.path.basename(args.output_dir)
        seen[name] = args
        return FAKE_REPORTS["intertrain" if name != "baseline" else "baseline"]

    comparison = run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path), ["baseline", "naive", "skip"], train=train
    )
    assert list(seen) == ["baseline", "naive", "skip"]
    assert seen["naive"].selective_interpolation is False and seen["skip"].amenable_action == "skip"
    assert all(args.seed == 42 for args in seen.values())  # same seed everywhere (TrainingArguments default)
    written = json.loads((tmp_path / "comparison.json").read_text())
    assert written["runs"]["skip"]["settings"]["amenable_action"] == "skip"
    assert written["runs"]["naive"]["settings"]["selective_interpolation"] is False
    assert written == json.loads(json.dumps(comparison))
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert "naive" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Budget-matched baseline, peer methods, seeds, verdict (a fake `train`)
# ----------------------------------------------------------------------------------------------

BATCH = 16


@pytest.fixture
def no_plots(monkeypatch):
    """Skip drawing comparison.png / sweep.png (the plot tests draw them) to keep these tests fast."""
    import hf_intertrain.experiments.compare

    monkeypatch.setattr(hf_intertrain.experiments.compare, "plot_comparison", lambda comparison, path: None)
    monkeypatch.setattr(hf_intertrain.experiments.compare, "plot_sweep", lambda sweep, path: None)


class FakeTrain:
    """A `train` callable: deterministic RunReports computed from the arguments; keeps every call's arguments.

    Interpolating runs pair 40 - 15 * (seed % 3) samples from epoch 2 on (fewer steps for smaller seeds); a run with
    `max_steps` stops there like the plain Trainer; top-1 and seconds depend on seed, steps and interpolation.
    """

    def __init__(self):
        self.calls: list[InterTrainArguments] = []

    def __call__(self, model_args, data_args, args):
        self.calls.append(args)
        interpolating = args.interpolation != "none"
        epochs = int(args.num_train_epochs)
        if args.data_selection == "random_subset":
            items = [int(n) for n in args.random_subset_sizes.split(",")]
        elif interpolating:
            items = [N if epoch < 2 else N - (40 - 15 * (args.seed % 3)) for epoch in range(epochs)]
        else:
            items = [N] * epochs
        steps = sum(math.ceil(n / BATCH) for n in items)
        if args.max_steps > 0:
            steps = args.max_steps
            items = [N] * math.ceil(steps / math.ceil(N / BATCH))
        seconds = 0.5 * steps + (0.25 if interpolating else 0.0)
        top1 = 0.6 + 0.01 * epochs + 0.003 * (args.seed % 3) ** 2 + (0.02 if interpolating else 0.0) + 0.001 * steps
        rows = [(n, N - n if interpolating else 0, seconds / len(items)) for n in items]
        correct = np.random.default_rng([args.seed, steps, int(interpolating)]).random(400) < top1
        result = with_correct(report(rows, float(correct.mean()), steps), correct)
        result.interpolation, result.seed, result.output_dir = args.interpolation, args.seed, args.output_dir
        return result

    def runs(self, root) -> list[str]:
        """The folders trained, relative to `root`, in call order."""
        return [os.path.relpath(args.output_dir, root) for args in self.calls]

    @staticmethod
    def name(args, root) -> str:
        return os.path.relpath(args.output_dir, root).split(os.sep)[0]


def test_budget_matches_the_steps_of_the_first_interpolating_run_seed_by_seed(tmp_path, no_plots):
    fake = FakeTrain()
    variants = parse_variants("baseline,budget,randpatch,linavg")
    assert variants == ["baseline", "randpatch", "budget", "linavg"]
    comparison = run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path, num_train_epochs=3), variants, fake, seeds=[0, 1]
    )
    order = fake.runs(tmp_path)
    for seed in (0, 1):
        assert order.index(f"budget/seed-{seed}") > order.index(f"randpatch/seed-{seed}")
    budget_args = {args.seed: args for args in fake.calls if fake.name(args, tmp_path) == "budget"}
    matched = comparison["runs"]["randpatch"]["seeds"]
    assert [matched[str(seed)]["optimizer_steps"] for seed in (0, 1)] == [18, 19]  # differ by seed
    for seed in (0, 1):
        args = budget_args[seed]
        assert args.max_steps == matched[str(seed)]["optimizer_steps"]
        assert (args.interpolation, args.four_way, args.data_selection) == ("none", "none", "none")
        assert comparison["runs"]["budget"]["seeds"][str(seed)]["settings"]["max_steps"] == args.max_steps
    assert comparison["runs"]["budget"]["settings"]["max_steps"] == 18  # the first seed's
    assert all(args.max_steps == -1 for args in fake.calls if fake.name(args, tmp_path) != "budget")


def test_regularized_peers_match_the_steps_and_carry_the_papers_cifar_mixing(tmp_path, no_plots):
    fake = FakeTrain()
    variants = parse_variants("budget_cutmix,randpatch,budget_mixup,randpatch_cutmix,baseline_cutmix")
    assert variants.index("budget_cutmix") > variants.index("randpatch")
    comparison = run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path, num_train_epochs=3), variants, fake, seeds=[0, 1]
    )
    calls = {(fake.name(args, tmp_path), args.seed): args for args in fake.calls}
    for seed in (0, 1):
        steps = comparison["runs"]["randpatch"]["seeds"][str(seed)]["optimizer_steps"]
        cutmix, mixup = calls["budget_cutmix", seed], calls["budget_mixup", seed]
        assert cutmix.max_steps == mixup.max_steps == steps
        assert (cutmix.interpolation, cutmix.cutmix_alpha, cutmix.mixup_alpha, cutmix.mixup_prob) == ("none", 1.0, 0.0, 0.5)
        assert (mixup.interpolation, mixup.mixup_alpha, mixup.cutmix_alpha, mixup.mixup_prob) == ("none", 1.0, 0.0, 1.0)
        both = calls["randpatch_cutmix", seed]
        assert (both.interpolation, both.cutmix_alpha, both.max_steps) == ("randpatch", 1.0, -1)
        assert calls["baseline_cutmix", seed].max_steps == -1 and not calls["randpatch", seed].mixes
    assert comparison["runs"]["budget_cutmix"]["settings"]["cutmix_alpha"] == 1.0


def test_budget_and_random_subset_move_after_the_run_they_match():
    assert parse_variants("baseline,budget,random_subset,infobatch,intertrain,skip") == [
        "baseline", "infobatch", "intertrain", "budget", "random_subset", "skip"
    ]
    assert parse_variants("intertrain,skip,budget") == ["intertrain", "skip", "budget"]


@pytest.mark.parametrize("spec", ["baseline,budget", "infobatch,random_subset"])
def test_matched_variants_without_an_interpolating_run_are_refused(spec):
    with pytest.raises(ValueError, match="match the steps of an interpolating run: add one to --variants"):
        parse_variants(spec)


def test_cli_refuses_budget_alone_before_training(capfd, tmp_path):
    code = main(["compare", "--variants", "budget", "--output_dir", str(tmp_path / "out")])
    _, err = capfd.readouterr()
    assert_one_line_error(code, err, "budget", "interpolating run")
    assert not (tmp_path / "out").exists()


def test_random_subset_trains_the_matched_runs_items_and_infobatch_its_defaults(tmp_path, no_plots):
    fake = FakeTrain()
    variants = parse_variants("baseline,random_subset,infobatch,intertrain")
    run_comparison(ModelArguments(), DataArguments(), training_args(tmp_path, num_train_epochs=4), variants, fake)
    calls = {os.path.basename(args.output_dir): args for args in fake.calls}
    assert list(calls) == ["baseline", "infobatch", "intertrain", "random_subset"]
    subset = calls["random_subset"]
    assert (subset.interpolation, subset.data_selection, subset.seed) == ("none", "random_subset", 42)
    assert subset.random_subset_sizes == "100,100,60,60"  # intertrain's items per epoch
    infobatch = calls["infobatch"]
    assert (infobatch.interpolation, infobatch.data_selection) == ("none", "infobatch")
    assert (infobatch.infobatch_prune_probability, infobatch.infobatch_full_data_fraction) == (0.5, 0.125)
    written = json.loads((tmp_path / "comparison.json").read_text())
    assert written["runs"]["random_subset"]["settings"]["random_subset_sizes"] == "100,100,60,60"
    assert written["runs"]["infobatch"]["settings"]["data_selection"] == "infobatch"


def test_several_seeds_write_seed_folders_with_sample_std(tmp_path, no_plots):
    fake = FakeTrain()
    seeds = [0, 1, 2]
    comparison = run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path, num_train_epochs=3), ["baseline", "intertrain"], fake, seeds=seeds
    )
    assert sorted(fake.runs(tmp_path)) == sorted(f"{name}/seed-{s}" for name in ("baseline", "intertrain") for s in seeds)
    for name in ("baseline", "intertrain"):
        for seed in seeds:
            assert (tmp_path / name / f"seed-{seed}" / RUN_REPORT_NAME).is_file()
    runs = comparison["runs"]
    intertrain = runs["intertrain"]
    assert list(intertrain["seeds"]) == ["0", "1", "2"]
    top1 = [intertrain["seeds"][str(seed)]["eval_accuracy"] for seed in seeds]
    seconds = [intertrain["seeds"][str(seed)]["train_seconds"] for seed in seeds]
    mean = sum(top1) / 3
    sample_std = math.sqrt(sum((x - mean) ** 2 for x in top1) / 2)
    assert intertrain["eval_accuracy_mean"] == pytest.approx(mean) == intertrain["eval_accuracy"]
    assert intertrain["eval_accuracy_std"] == pytest.approx(sample_std)
    assert intertrain["eval_accuracy_std"] != pytest.approx(statistics.pstdev(top1))  # ddof=1, not 0
    assert intertrain["train_seconds_mean"] == pytest.approx(sum(seconds) / 3)
    assert intertrain["train_seconds_std"] == pytest.approx(statistics.stdev(seconds))
    assert intertrain["optimizer_steps"] == pytest.approx((18 + 19 + 20) / 3)
    baseline_seconds = runs["baseline"]["train_seconds_mean"]
    assert intertrain["speedup"] == pytest.approx(baseline_seconds / intertrain["train_seconds_mean"])
    assert intertrain["ideal_speedup"] == pytest.approx(runs["baseline"]["items_trained"] / intertrain["items_trained"])
    assert intertrain["accuracy_delta"] == pytest.approx(mean - runs["baseline"]["eval_accuracy_mean"])
    # Each seed's run is against the baseline of the same seed; the epochs shown are the first seed's.
    seed1 = intertrain["seeds"]["1"]
    assert seed1["speedup"] == pytest.approx(runs["baseline"]["seeds"]["1"]["train_seconds"] / seed1["train_seconds"])
    assert intertrain["epochs"] == intertrain["seeds"]["0"]["epochs"]
    assert comparison["seeds"] == seeds
    assert "±" in format_table(comparison)


def test_one_seed_keeps_the_layout_and_the_keys_with_std_zero(tmp_path, no_plots):
    fake = FakeTrain()
    comparison = run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path, num_train_epochs=3), ["baseline", "intertrain"], fake, seeds=[7]
    )
    assert fake.runs(tmp_path) == ["baseline", "intertrain"]
    assert all(args.seed == 7 for args in fake.calls)
    run = comparison["runs"]["intertrain"]
    assert run["eval_accuracy_std"] == 0.0 and run["train_seconds_std"] == 0.0
    assert run["eval_accuracy_mean"] == run["eval_accuracy"] == run["seeds"]["7"]["eval_accuracy"]
    assert set(run) >= {
        "train_seconds", "eval_accuracy", "eval_top5", "items_trained", "num_train_samples", "epochs", "settings",
        "speedup", "ideal_speedup", "speedup_efficiency", "accuracy_delta", "mean_approximated_fraction",
        "eval_accuracy_mean", "eval_accuracy_std", "train_seconds_mean", "train_seconds_std", "optimizer_steps", "seeds",
    }
    assert set(comparison) >= {"baseline", "intertrain", "speedup", "ideal_speedup", "seeds", "runs", "variants"}
    assert comparison["seeds"] == [7] and comparison["seed"] == 7
    assert "verdict" not in comparison and "±" not in format_table(comparison)


def with_correct(result: RunReport, correct) -> RunReport:
    return dataclasses.replace(result, num_eval_samples=len(correct), eval_correct=pack_correct(np.asarray(correct)))


PEER_CORRECT = np.arange(2000) < 1400  # the budget run: 70.0% of 2,000 evaluation images


def right_on(correct, images):
    """`correct` with `images` (a slice) classified right."""
    correct = correct.copy()
    correct[images] = True
    return correct


def test_verdict_needs_the_whole_interval_above_zero_and_at_most_five_percent_more_time(tmp_path):
    better = right_on(PEER_CORRECT, slice(1400, 1420))  # 20 more images right: +1.0 point, beyond noise
    worse = PEER_CORRECT & (np.arange(2000) >= 16)  # 16 fewer: -0.8 points
    close = right_on(PEER_CORRECT, slice(1400, 1402)) & (np.arange(2000) >= 2)  # 2 flipped each way: within noise
    reports = {
        "baseline": report([(100, 0, 10.0), (100, 0, 10.0)], 0.80, 14),
        "exact": with_correct(report([(100, 0, 10.0), (60, 40, 11.0)], better.mean(), 11), better),  # 1.05x
        "slower": with_correct(report([(100, 0, 10.0), (60, 40, 11.02)], better.mean(), 11), better),  # 1.051x
        "worse": with_correct(report([(100, 0, 10.0), (60, 40, 5.0)], worse.mean(), 11), worse),
        "close": with_correct(report([(100, 0, 10.0), (60, 40, 5.0)], close.mean(), 11), close),
        "unjudged": report([(100, 0, 10.0), (60, 40, 5.0)], 0.75, 11),
        "budget": with_correct(report([(100, 0, 10.0), (100, 0, 10.0)], 0.70, 11), PEER_CORRECT),
    }
    comparison = summarize(reports, ModelArguments(), DataArguments(), training_args(tmp_path))
    verdict = comparison["verdict"]
    assert set(verdict) == {"exact", "slower", "worse", "close", "unjudged"}
    exact = verdict["exact"]
    assert (exact["vs"], exact["outcome"], exact["wins"], exact["seconds_ratio"]) == ("budget", "wins", True, 1.05)
    assert exact["accuracy_delta"] == pytest.approx(0.01) and 0 < exact["interval"][0] < 0.01 < exact["interval"][1]
    assert (verdict["slower"]["outcome"], verdict["slower"]["wins"]) == ("slower", False)
    assert verdict["slower"]["seconds_ratio"] == pytest.approx(1.051)
    assert verdict["worse"]["outcome"] == "loses" and verdict["worse"]["accuracy_delta"] == pytest.approx(-0.008)
    assert verdict["close"]["outcome"] == "within noise" and verdict["close"]["interval"][0] < 0 < verdict["close"]["interval"][1]
    assert verdict["unjudged"]["outcome"] == "not judged" and verdict["unjudged"]["interval"] is None
    assert verdict["unjudged"]["accuracy_delta"] == pytest.approx(0.05)  # from the top-1 numbers
    lines = format_table(comparison).splitlines()
    assert any(line.startswith("exact vs budget: +1.0 [+") and line.endswith("points at 1.05x the time -> wins") for line in lines)
    assert any(line.startswith("worse vs budget: -0.8 [") and line.endswith("at 0.75x the time -> loses") for line in lines)
    assert "steps" in lines[0] and any(line.startswith("budget ") and " 11 " in line for line in lines)


def test_every_challenger_is_judged_against_every_peer_and_named_against_the_strongest(tmp_path):
    stronger = right_on(PEER_CORRECT, slice(1400, 1440))  # the CutMix peer: +2 points over budget
    mine = right_on(PEER_CORRECT, slice(1400, 1420))  # +1 over budget, -1 under budget_cutmix
    reports = {
        "randpatch": with_correct(report([(100, 0, 10.0), (60, 40, 6.0)], mine.mean(), 11), mine),
        "budget": with_correct(report([(100, 0, 10.0), (100, 0, 6.0)], 0.70, 11), PEER_CORRECT),
        "budget_cutmix": with_correct(report([(100, 0, 10.0), (100, 0, 6.0)], stronger.mean(), 11), stronger),
    }
    comparison = summarize(reports, ModelArguments(), DataArguments(), training_args(tmp_path))
    entry = comparison["verdict"]["randpatch"]
    assert entry["vs"] == "budget_cutmix" and entry["outcome"] == "loses" and not entry["wins"]
    assert entry["peers"]["budget"]["outcome"] == "wins" and entry["peers"]["budget_cutmix"]["outcome"] == "loses"
    assert comparison["reference"] == "randpatch" and "no full baseline" in comparison["reference_note"]
    assert comparison["plain_verdict"].startswith(
        "randpatch: the slowest run here (no full baseline to time it against), 1.0 points less accurate than training as "
        "many steps with CutMix instead (budget_cutmix, 95% interval"
    )
    assert comparison["plain_verdict"].endswith("beyond noise: it loses)")


def test_comparison_plot_draws_each_seed(tmp_path):
    fake = FakeTrain()
    comparison = run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path, num_train_epochs=3),
        parse_variants("baseline,intertrain,budget"), fake, seeds=[0, 1],
    )
    assert set(comparison["runs"]) == {"baseline", "intertrain", "budget"}
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG")


def test_compare_help_explains_the_new_variants_and_flags(capfd):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = " ".join(capfd.readouterr()[0].split())
    for text in ("--seeds", "--epochs_sweep", "mean ± std", "output_dir/epochs-E"):
        assert text in out, text


def test_parse_seeds():
    assert parse_seeds("0, 1,2,1") == [0, 1, 2] and parse_seeds(5) == [5]
    with pytest.raises(ValueError, match="--seeds='0,x' must be comma-separated integers"):
        parse_seeds("0,x")


# ----------------------------------------------------------------------------------------------
# Resume and the epoch-length sweep
# ----------------------------------------------------------------------------------------------


def sweep(tmp_path, fake, lengths=(2, 3), **overrides):
    return run_sweep(
        ModelArguments(), DataArguments(), training_args(tmp_path, **overrides), parse_variants("baseline,intertrain,budget"),
        list(lengths), fake, seeds=[0, 1],
    )


def test_sweep_writes_a_comparison_per_length_and_sweep_json(tmp_path):
    fake = FakeTrain()
    result = sweep(tmp_path, fake)
    assert len(fake.calls) == 2 * 3 * 2
    assert {args.num_train_epochs for args in fake.calls} == {2, 3}
    for length in (2, 3):
        assert (tmp_path / f"epochs-{length}" / "comparison.json").is_file()
        assert (tmp_path / f"epochs-{length}" / "comparison.png").is_file()
        assert (tmp_path / f"epochs-{length}" / "budget" / "seed-1" / RUN_REPORT_NAME).is_file()
    written = json.loads((tmp_path / SWEEP_JSON).read_text())
    assert written == json.loads(json.dumps(result))
    assert written["lengths"] == [2, 3] and written["seeds"] == [0, 1] and written["matched"] == "intertrain"
    assert list(written["by_length"]) == ["2", "3"]
    entry = written["by_length"]["3"]
    assert set(entry["runs"]) == {"baseline", "intertrain", "budget"}
    comparison = json.loads((tmp_path / "epochs-3" / "comparison.json").read_text())
    for name, run in entry["runs"].items():
        assert run["eval_accuracy_mean"] == pytest.approx(comparison["runs"][name]["eval_accuracy_mean"])
        assert run["eval_accuracy_std"] == pytest.approx(comparison["runs"][name]["eval_accuracy_std"])
        assert run["train_seconds_mean"] == pytest.approx(comparison["runs"][name]["train_seconds_mean"])
        assert run["optimizer_steps"] == pytest.approx(comparison["runs"][name]["optimizer_steps"])
        assert set(run["by_seed"]) == {"0", "1"}
    assert entry["intertrain_minus_budget"] == pytest.approx(
        entry["runs"]["intertrain"]["eval_accuracy_mean"] - entry["runs"]["budget"]["eval_accuracy_mean"]
    )
    assert entry["verdict"] == comparison["verdict"]
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")


def test_interrupted_sweep_trains_only_the_missing_runs(tmp_path, no_plots, capsys):
    first = sweep(tmp_path, FakeTrain())
    (tmp_path / "epochs-2" / "intertrain" / "seed-0" / RUN_REPORT_NAME).unlink()
    (tmp_path / "epochs-3" / "budget" / "seed-1" / RUN_REPORT_NAME).unlink()
    capsys.readouterr()
    fake = FakeTrain()
    again = sweep(tmp_path, fake, lengths=(2, 3, 4))
    expected = ["epochs-2/intertrain/seed-0", "epochs-3/budget/seed-1"]
    expected += [f"epochs-4/{name}/seed-{seed}" for seed in (0, 1) for name in ("baseline", "intertrain", "budget")]
    assert fake.runs(tmp_path) == expected
    assert "reusing the finished run" in capsys.readouterr().out
    for length in ("2", "3"):
        assert again["by_length"][length] == first["by_length"][length]


def test_a_finished_run_with_other_settings_is_refused_before_anything_trains(tmp_path, no_plots):
    run_comparison(ModelArguments(), DataArguments(), training_args(tmp_path, learning_rate=1e-3), ["baseline", "intertrain"], FakeTrain())
    fake = FakeTrain()
    with pytest.raises(ValueError, match=r"baseline holds a finished run with other settings \(learning_rate=0.001, now 0.002\): pick another --output_dir"):
        run_comparison(
            ModelArguments(), DataArguments(), training_args(tmp_path, learning_rate=2e-3), ["baseline", "intertrain"], fake
        )
    assert fake.calls == []


def test_a_run_made_before_a_setting_existed_is_reused_at_its_default_and_refused_otherwise(tmp_path, no_plots):
    run_comparison(ModelArguments(), DataArguments(), training_args(tmp_path), ["baseline", "intertrain"], FakeTrain())
    report = tmp_path / "intertrain" / RUN_REPORT_NAME
    data = json.loads(report.read_text())
    del data["fingerprint"]["composite_loss_weight"]
    report.write_text(json.dumps(data))
    fake = FakeTrain()
    run_comparison(ModelArguments(), DataArguments(), training_args(tmp_path), ["baseline", "intertrain"], fake)
    assert fake.calls == []
    with pytest.raises(ValueError, match=r"composite_loss_weight=1.0, now 2.0"):
        run_comparison(
            ModelArguments(), DataArguments(), training_args(tmp_path, composite_loss_weight=2.0),
            ["baseline", "intertrain"], FakeTrain(),
        )


class FakeResolve:
    """A `resolve_pipeline` callable: answers `pipeline`, counts its calls."""

    def __init__(self, pipeline: str):
        self.pipeline, self.calls = pipeline, 0

    def __call__(self, data_args, args) -> str:
        assert args.data_pipeline == "auto"
        self.calls += 1
        return self.pipeline


def test_auto_is_resolved_once_and_every_variant_takes_that_input_path(tmp_path, no_plots):
    fake, resolve = FakeTrain(), FakeResolve("device")

    run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path, data_pipeline="auto"),
        ["baseline", "intertrain", "budget"], fake, resolve_pipeline=resolve,
    )

    assert resolve.calls == 1 and [args.data_pipeline for args in fake.calls] == ["device"] * 3
    for name in ("baseline", "intertrain", "budget"):
        assert json.loads((tmp_path / name / RUN_REPORT_NAME).read_text())["fingerprint"]["data_pipeline"] == "device"
    sweep_resolve = FakeResolve("workers")
    run_sweep(
        ModelArguments(), DataArguments(), training_args(tmp_path / "sweep", data_pipeline="auto"),
        ["baseline", "intertrain"], [2, 3], FakeTrain(), resolve_pipeline=sweep_resolve,
    )
    assert sweep_resolve.calls == 1


def test_a_run_made_before_data_pipeline_was_recorded_counts_as_the_workers_path(tmp_path, no_plots):
    run_comparison(ModelArguments(), DataArguments(), training_args(tmp_path), ["baseline", "intertrain"], FakeTrain())
    for name in ("baseline", "intertrain"):
        report = tmp_path / name / RUN_REPORT_NAME
        data = json.loads(report.read_text())
        del data["fingerprint"]["data_pipeline"]
        report.write_text(json.dumps(data))
    fake = FakeTrain()
    run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path, data_pipeline="auto"), ["baseline", "intertrain"],
        fake, resolve_pipeline=FakeResolve("workers"),
    )
    assert fake.calls == []
    with pytest.raises(ValueError, match=r"baseline holds a finished run with other settings \(data_pipeline='workers', now 'device'\)"):
        run_comparison(
            ModelArguments(), DataArguments(), training_args(tmp_path, data_pipeline="auto"), ["baseline", "intertrain"],
            FakeTrain(), resolve_pipeline=FakeResolve("device"),
        )


def test_sweep_refuses_a_stale_run_at_a_later_length_before_training(tmp_path, no_plots):
    run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path / "epochs-3", num_train_epochs=3, learning_rate=1e-3),
        ["baseline", "intertrain"], FakeTrain(),
    )
    fake = FakeTrain()
    with pytest.raises(ValueError, match=r"epochs-3.baseline holds a finished run with other settings \(learning_rate"):
        run_sweep(ModelArguments(), DataArguments(), training_args(tmp_path), ["baseline", "intertrain"], [2, 3], fake)
    assert fake.calls == []


def test_cli_refuses_an_output_dir_with_a_run_it_did_not_write(capfd, tmp_path):
    folder = tmp_path / "out" / "baseline"
    folder.mkdir(parents=True)
    (folder / RUN_REPORT_NAME).write_text(json.dumps(FAKE_REPORTS["baseline"].to_dict()))
    code = main(["compare", "--output_dir", str(tmp_path / "out")])
    _, err = capfd.readouterr()
    assert_one_line_error(code, err, "holds a finished run without recorded settings", "pick another --output_dir")


def test_run_report_round_trips_through_its_dict():
    original = report([(100, 0, 10.0), (60, 40, 6.5)], 0.79, steps=11)
    original.seed, original.fingerprint = 3, {"seed": 3}
    assert RunReport.from_dict(json.loads(json.dumps(original.to_dict()))) == original
    with pytest.raises(ValueError, match="lacks train_seconds"):
        RunReport.from_dict({"interpolation": "none"} | {k: 0 for k in ("eval_accuracy", "eval_top5", "num_train_samples", "items_trained")})


# ----------------------------------------------------------------------------------------------
# End to end: skipping instead of interpolating
# ----------------------------------------------------------------------------------------------


def test_skip_variant_leaves_picked_samples_out_and_logs_them(tmp_path):
    data = write_image_dataset(tmp_path / "data", {"train": 64, "test": 16}, noisy_labels=0.3)
    args = training_args(
        tmp_path / "out",
        num_train_epochs=4,
        per_device_train_batch_size=16,
        learning_rate=0.05,
        optim="sgd",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    model_args = ModelArguments(model_name="test_resnet", model_kwargs={"output_stride": 16})
    comparison = run_comparison(model_args, DataArguments(dataset_name=str(data), image_size=32), args, ["baseline", "skip"])
    skip = comparison["runs"]["skip"]
    assert all(row["pairs"] == 0 and row["interpolated_fraction"] == 0 for row in skip["epochs"])
    assert any(row["skipped"] > 0 for row in skip["epochs"])
    assert skip["items_trained"] < comparison["runs"]["baseline"]["items_trained"] == 4 * 64
    # The trainer's own per-epoch log (intertrain/skipped) satisfies items + skipped == N.
    raw = json.loads((tmp_path / "out" / "skip" / RUN_REPORT_NAME).read_text())
    for row in raw["epochs"]:
        assert row["items"] + row["skipped"] == 64


def test_budget_end_to_end_trains_the_matched_steps_with_its_schedule_fitted(tmp_path):
    data = write_image_dataset(tmp_path / "data", {"train": 48, "test": 8}, noisy_labels=0.3)
    args = training_args(
        tmp_path / "out",
        num_train_epochs=3,  # epochs 0 and 1 never interpolate: the third is shorter for randpatch
        per_device_train_batch_size=16,
        learning_rate=0.05,
        optim="sgd",
        logging_strategy="steps",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    model_args = ModelArguments(model_name="test_resnet", model_kwargs={"output_stride": 16})
    variants = parse_variants("baseline,randpatch,budget")
    comparison = run_comparison(model_args, DataArguments(dataset_name=str(data), image_size=32), args, variants)
    runs = comparison["runs"]
    steps = runs["randpatch"]["optimizer_steps"]
    assert runs["budget"]["optimizer_steps"] == steps < runs["baseline"]["optimizer_steps"] == 3 * 3
    state = json.loads((tmp_path / "out" / "budget" / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] == steps
    rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    # Linear decay fitted to `steps`: the rate of step k is lr * (1 - k / steps), zero right after the last step.
    assert rates == pytest.approx([0.05 * (1 - k / steps) for k in range(steps)])
    assert comparison["verdict"]["randpatch"]["vs"] == "budget"


def test_reference_seeds_run_the_full_baseline_once_and_the_others_read_against_its_means(tmp_path, no_plots):
    fake = FakeTrain()
    comparison = run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path, num_train_epochs=3),
        parse_variants("baseline,randpatch,budget"), fake, seeds=[0, 1], reference_seeds=[0],
    )
    assert fake.runs(tmp_path) == ["baseline/seed-0", "randpatch/seed-0", "budget/seed-0", "randpatch/seed-1", "budget/seed-1"]
    runs = comparison["runs"]
    assert list(runs["baseline"]["seeds"]) == ["0"] and list(runs["randpatch"]["seeds"]) == ["0", "1"]
    baseline_seconds = runs["baseline"]["train_seconds"]
    assert runs["randpatch"]["seeds"]["1"]["speedup"] == pytest.approx(
        baseline_seconds / runs["randpatch"]["seeds"]["1"]["train_seconds"]
    )
    assert comparison["verdict"]["randpatch"]["seeds"] == [0, 1]
    with pytest.raises(ValueError, match=r"--reference_seeds \[2\] must be among --seeds \[0, 1\]"):
        run_comparison(ModelArguments(), DataArguments(), training_args(tmp_path), ["baseline"], fake, seeds=[0, 1], reference_seeds=[2])


def test_a_reused_run_without_per_image_results_is_evaluated_once_from_its_saved_model(tmp_path, no_plots):
    variants = parse_variants("randpatch,budget")
    run_comparison(ModelArguments(), DataArguments(), training_args(tmp_path, num_train_epochs=3), variants, FakeTrain())
    path = tmp_path / "randpatch" / RUN_REPORT_NAME
    saved = json.loads(path.read_text())
    expected = RunReport.from_dict(saved).correct()
    saved["eval_correct"] = saved["num_eval_samples"] = None  # as runs made before they were recorded
    path.write_text(json.dumps(saved))
    evaluated = []

    def evaluate(model_args, data_args, args):
        evaluated.append(os.path.relpath(args.output_dir, tmp_path))
        return expected

    again = run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path, num_train_epochs=3), variants, FakeTrain(), evaluate=evaluate
    )
    assert evaluated == ["randpatch"] and again["verdict"]["randpatch"]["interval"] is not None
    np.testing.assert_array_equal(RunReport.from_dict(json.loads(path.read_text())).correct(), expected)
    run_comparison(ModelArguments(), DataArguments(), training_args(tmp_path, num_train_epochs=3), variants, FakeTrain(), evaluate=evaluate)
    assert evaluated == ["randpatch"]  # written back: not evaluated again

    saved = json.loads(path.read_text())
    saved["eval_correct"] = None
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="scores top-1 .* but its run recorded .*: the folder was changed after the run"):
        run_comparison(
            ModelArguments(), DataArguments(), training_args(tmp_path, num_train_epochs=3), variants, FakeTrain(),
            evaluate=lambda *a: ~expected,
        )


def test_the_docs_variant_tables_are_the_variant_table():
    from pathlib import Path

    from hf_intertrain.experiments.variants import VARIANTS

    docs = Path(__file__).resolve().parents[1] / "docs"
    rows = [line for line in (docs / "compare.md").read_text().splitlines() if line.startswith("| `")]
    assert rows == [f"| `{name}` | {variant.role} | {variant.help} |" for name, variant in VARIANTS.items()]
    method = (docs / "method.md").read_text()
    ablations = method[method.index("## Ablations") :]
    named = {name for line in ablations.splitlines() if line.startswith("| `") for name in line.split("|")[1].replace("`", "").replace(",", " ").split()}
    assert named and named <= set(VARIANTS)


def test_every_variant_trains_compiled_and_a_run_made_before_torch_compile_was_recorded_counts_as_eager(tmp_path, no_plots):
    compiled = {"torch_compile": True, "torch_compile_backend": "aot_eager"}
    fake = FakeTrain()
    run_comparison(
        ModelArguments(), DataArguments(), training_args(tmp_path / "compiled", **compiled),
        ["baseline", "intertrain", "budget"], fake,
    )
    assert [(args.torch_compile, args.torch_compile_backend) for args in fake.calls] == [(True, "aot_eager")] * 3
    fingerprint = json.loads((tmp_path / "compiled" / "budget" / RUN_REPORT_NAME).read_text())["fingerprint"]
    assert (fingerprint["torch_compile"], fingerprint["torch_compile_backend"]) == (True, "aot_eager")

    run_comparison(ModelArguments(), DataArguments(), training_args(tmp_path), ["baseline", "intertrain"], FakeTrain())
    for name in ("baseline", "intertrain"):
        report = tmp_path / name / RUN_REPORT_NAME
        data = json.loads(report.read_text())
        for key in ("torch_compile", "torch_compile_backend", "torch_compile_mode"):
            del data["fingerprint"][key]
        report.write_text(json.dumps(data))
    fake = FakeTrain()
    run_comparison(ModelArguments(), DataArguments(), training_args(tmp_path), ["baseline", "intertrain"], fake)
    assert fake.calls == []
    with pytest.raises(ValueError, match=r"baseline holds a finished run with other settings \(torch_compile=False, now True\)"):
        run_comparison(
            ModelArguments(), DataArguments(), training_args(tmp_path, **compiled), ["baseline", "intertrain"], FakeTrain()
        )
