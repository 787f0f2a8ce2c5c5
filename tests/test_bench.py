import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import pytest

from conftest import write_dataset

from hf_intertrain.experiments.bench import BenchSamplerArguments, bench_sampler
from hf_intertrain.cli import main

KEYS = {"num_samples", "epochs", "epoch_seconds", "end_epoch_seconds", "plan_seconds", "record_seconds", "peak_mb", "rss_before_mb"}


def test_bench_reaches_interpolation_after_the_warmup_epochs():
    result = bench_sampler(BenchSamplerArguments(num_samples=5000, epochs=3))
    assert KEYS <= set(result)
    assert result["num_samples"] == 5000
    assert result["epoch_seconds"] == pytest.approx(result["end_epoch_seconds"] + result["plan_seconds"])
    assert result["epoch_seconds"] > 0
    assert len(result["interpolated_fraction"]) == 3
    # Epochs 0 and 1 never interpolate; after them the simulated losses put a steady share in S_int.
    assert all(0.2 < fraction < 1.0 for fraction in result["interpolated_fraction"])
    assert result["peak_mb"] >= result["rss_before_mb"] > 0


def test_without_warmup_the_first_measured_epoch_has_no_pairs():
    result = bench_sampler(BenchSamplerArguments(num_samples=1000, epochs=2, warmup_epochs=0))
    assert result["interpolated_fraction"] == [0.0, 0.0]


def test_linavg_plans_with_adaptive_ratios():
    result = bench_sampler(BenchSamplerArguments(num_samples=2000, epochs=1, interpolation="linavg"))
    assert result["interpolation"] == "linavg" and result["interpolated_fraction"][0] > 0


@pytest.mark.slow
def test_bookkeeping_of_200k_samples_takes_well_under_a_second():
    # A benchmark (wall clock, run it on a quiet machine): vectorised passes only, the 1.28M-sample goal (< 1 s)
    # scales from here.
    assert bench_sampler(BenchSamplerArguments(num_samples=200_000, epochs=1))["epoch_seconds"] < 1.0


def test_cli_prints_exactly_one_json_line(capfd):
    assert main(["bench-sampler", "--num_samples", "3000", "--epochs", "2", "--seed", "1"]) == 0
    out, _ = capfd.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["num_samples"] == 3000 and result["epochs"] == 2 and result["epoch_seconds"] > 0


def test_cli_refuses_a_non_positive_size_in_one_line(capfd):
    assert main(["bench-sampler", "--num_samples", "0"]) == 2
    _, err = capfd.readouterr()
    assert err.strip().splitlines() == ["hf-intertrain: error: --num_samples=0 must be at least 1; pass a positive number"]


@pytest.mark.parametrize(
    "pipeline, extra, cached",
    [("workers", [], False), ("device", ["--with_model", "test_resnet"], True), ("device", ["--uncached"], False)],
    ids=["workers", "device_with_model", "device_uncached"],
)
def test_bench_loader_prints_one_json_line_with_the_throughputs(capfd, tmp_path, datasets_cache_in_tmp, pipeline, extra,
                                                               cached):
    folder = write_dataset(tmp_path / "data", {"train": 24, "test": 4})
    argv = ["bench-loader", "--data_pipeline", pipeline, "--dataset_name", str(folder), "--batch_size", "4",
            "--batches", "3", "--dataloader_num_workers", "0", "--interpolated_fraction", "0.5", *extra]

    assert main(argv) == 0

    out, _ = capfd.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert {"pipeline", "images_per_second", "items_per_second", "batches"} <= set(result)
    assert (result["pipeline"], result["cached"], result["batches"]) == (pipeline, cached, 3)
    assert result["interpolated_fraction"] == 0.5 and result["items"] == 12  # 3 batches of 4 items
    assert result["images"] > result["items"]  # pairs: two images per item
    assert result["images_per_second"] / result["items_per_second"] == pytest.approx(result["images"] / result["items"])
    assert result["image_size"] == 32 and result["with_model"] == ("test_resnet" if "--with_model" in extra else None)


def test_bench_loader_refuses_a_non_positive_batch_count_in_one_line(capfd):
    assert main(["bench-loader", "--batches", "0"]) == 2
    _, err = capfd.readouterr()
    assert err.strip().splitlines() == ["hf-intertrain: error: --batches=0 must be at least 1; pass a positive number"]
    assert main(["bench-loader", "--data_pipeline", "workers", "--uncached"]) == 2
    _, err = capfd.readouterr()
    assert "--uncached applies to --data_pipeline device only" in err
