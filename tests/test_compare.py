import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import pytest

from hf_intertrain.compare import (
    VARIANTS,
    format_table,
    parse_variants,
    plot_comparison,
    run_comparison,
    summarize,
    variant_arguments,
)
from hf_intertrain.config import DataArguments, InterTrainArguments, ModelArguments
from hf_intertrain.run import RUN_REPORT_NAME, RunReport
from test_cli import write_image_dataset

N = 100


def training_args(tmp_path, **overrides) -> InterTrainArguments:
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


def report(rows: list[tuple[int, int, float]], top1: float) -> RunReport:
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
    )


FAKE_REPORTS = {
    "baseline": report([(100, 0, 10.0), (100, 0, 10.0)], 0.80),
    "intertrain": report([(100, 0, 10.0), (60, 40, 6.5)], 0.79),
    "skip": report([(100, 0, 10.0), (70, 0, 7.0)], 0.75),
}


# ----------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------


def test_parse_variants_runs_the_baseline_first_once():
    assert parse_variants("skip, intertrain,baseline,skip") == ["baseline", "skip", "intertrain"]
    assert parse_variants("naive") == ["baseline", "naive"]


def test_unknown_variant_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown variant.*mixup.*choose from baseline"):
        parse_variants("baseline,mixup")


def test_variant_settings_match_the_paper_ablations(tmp_path):
    base = training_args(tmp_path)
    settings = {name: variant_arguments(base, name) for name in VARIANTS}
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
    assert {os.path.basename(args.output_dir) for args in settings.values()} == set(VARIANTS)


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
    rows = {line.split()[0]: line for line in lines[2:]}
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
