import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

from conftest import make_model
from hf_intertrain.cli import main, parse_args
from hf_intertrain.config import ModelArguments
from hf_intertrain.experiments.run import model_settings_line

datasets.disable_progress_bars()

NUM_CLASSES = 4
# A small model that RandPatch can split at 32x32: output stride 16 leaves a 2x2 feature grid.
TINY_MODEL = ["--model_name", "test_resnet", "--model_kwargs", '{"output_stride": 16}', "--image_size", "32"]
QUIET = ["--disable_tqdm", "true", "--save_strategy", "no", "--dataloader_num_workers", "0"]


# ----------------------------------------------------------------------------------------------
# Generated parquet datasets (written with pyarrow so that invalid rows can be stored)
# ----------------------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_dataset(
    folder: Path,
    splits: dict[str, int] | None = None,
    num_classes: int = NUM_CLASSES,
    noisy_labels: float = 0.0,
    seed: int = 0,
) -> Path:
    """A learnable parquet dataset: each class has a colour, images are that colour plus noise.

    `noisy_labels` of the train rows show the colour of a random class (hard samples), so that
    training has incorrect samples and selective interpolation has all three regions.
    """
    splits = splits or {"train": 64, "test": 32}
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (num_classes, 3))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"class_{i}" for i in range(num_classes)])}
    )
    for split, rows in splits.items():
        labels = rng.integers(0, num_classes, rows)
        shown = labels.copy()
        if split == "train" and noisy_labels:
            flip = rng.random(rows) < noisy_labels
            shown[flip] = rng.integers(0, num_classes, int(flip.sum()))
        images = [
            {"bytes": png_bytes(np.clip(palette[c] + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)), "path": None}
            for c in shown
        ]
        write_table(folder, split, {"image": images, "label": labels.tolist()}, features)
    return folder


def write_table(folder: Path, split: str, columns: dict, features: datasets.Features) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=features.arrow_schema), folder / f"{split}.parquet")


def run_cli(capfd, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, err
    assert lines[0].startswith("hf-intertrain: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_image_dataset(tmp_path_factory.mktemp("tiny") / "data")


# ----------------------------------------------------------------------------------------------
# Help and parsing
# ----------------------------------------------------------------------------------------------


def test_top_level_help_lists_the_commands(capfd):
    code, out, _ = run_cli(capfd, ["--help"])
    assert code == 0
    for command in ("train", "compare", "bench-sampler", "bench-loader"):
        assert command in out


def test_no_arguments_prints_usage_and_fails(capfd):
    code, out, _ = run_cli(capfd, [])
    assert code == 2 and "usage: hf-intertrain" in out


def test_unknown_command_is_refused(capfd):
    code, _, err = run_cli(capfd, ["fit"])
    assert code == 2 and "unknown command 'fit'" in err


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (
            "train",
            ["--model_name", "--model_kwargs", "--dataset_name", "--max_train_samples", "--max_eval_samples",
             "--image_size", "--interpolation", "--learning_rate", "--split_propagation", "--selective_interpolation",
             "--amenability_regions", "--amenable_action", "--data_pipeline", "--config"],
        ),
        ("compare", ["--variants", "--interpolation", "--config"]),
        ("bench-sampler", ["--num_samples", "--epochs", "--seed"]),
        ("bench-loader", ["--data_pipeline", "--dataset_name", "--image_size", "--batch_size", "--batches",
                          "--dataloader_num_workers", "--interpolated_fraction", "--with_model"]),
    ],
)
def test_command_help_lists_its_fields(capfd, command, flags):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    out, _ = capfd.readouterr()
    assert exit_info.value.code == 0
    for flag in flags:
        assert flag in out


def test_compare_help_gives_every_variant_its_line_from_the_table(capfd):
    from hf_intertrain.experiments.variants import VARIANTS

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = "".join(capfd.readouterr()[0].split())  # argparse wraps lines, also at hyphens
    missing = [name for name, variant in VARIANTS.items() if "".join(f"{name} ({variant.help})".split()) not in out]
    assert missing == []


def test_flags_override_the_recipe_and_the_recipe_overrides_defaults(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model_name: resnet18\nmodel_kwargs: {\"output_stride\": 8}\nlearning_rate: 0.05\nnum_train_epochs: 7\n"
        "interpolation: linavg\nmax_train_samples: 100\n"
    )
    model_args, data_args, training_args = parse_args(
        "train", ["--config", str(recipe), "--learning_rate", "0.2", "--model_kwargs", '{"output_stride": 16}']
    )
    assert training_args.learning_rate == 0.2  # flag beats recipe
    assert model_args.create_kwargs() == {"output_stride": 16}  # JSON flag beats the recipe's mapping
    assert training_args.num_train_epochs == 7 and training_args.interpolation == "linavg"  # recipe beats default
    assert model_args.model_name == "resnet18" and data_args.max_train_samples == 100
    assert training_args.per_device_train_batch_size == 64  # untouched default


def test_default_recipe_model_kwargs_stay_with_its_own_model():
    model_args, _, _ = parse_args("train", ["--model_name", "resnet18"])
    assert model_args.model_name == "resnet18" and model_args.create_kwargs() == {}
    model_args, _, _ = parse_args("train", ["--model-name=resnet18"])
    assert model_args.create_kwargs() == {}
    model_args = parse_args("compare", ["--model_name", "resnet18"])[0]
    assert model_args.create_kwargs() == {}
    for argv in ([], ["--model_name", "resnet10t"]):  # the default recipe's own model keeps them
        model_args, data_args, _ = parse_args("train", argv)
        assert model_args.model_name == "resnet10t" and model_args.create_kwargs() == {"output_stride": 16}
        assert data_args.image_size == 32
    model_args, data_args, _ = parse_args("train", ["--model_name", "resnet18", "--model_kwargs", '{"output_stride": 8}'])
    assert model_args.create_kwargs() == {"output_stride": 8}  # the user's own --model_kwargs apply
    assert data_args.image_size == 32  # only the model-specific settings are dropped


def test_a_config_recipe_is_taken_as_written(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name: resnet10t\nmodel_kwargs: {\"output_stride\": 16}\n")
    model_args, _, _ = parse_args("train", ["--config", str(recipe), "--model_name", "resnet18"])
    assert model_args.model_name == "resnet18" and model_args.create_kwargs() == {"output_stride": 16}


def test_model_settings_line_names_the_network_that_is_trained():
    model = make_model(output_stride=16)
    line = model_settings_line(ModelArguments("test_resnet", '{"output_stride": 16}'), model, 32)
    assert line == 'hf-intertrain: model test_resnet, model_kwargs {"output_stride": 16}, image size 32, final feature grid 2x2'
    line = model_settings_line(ModelArguments("test_resnet"), make_model(), 64)
    assert line.endswith("model_kwargs {}, image size 64, final feature grid 2x2")


def test_compare_parses_variants_after_the_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("variants: baseline,naive\nnum_train_epochs: 2\n")
    *_, compare_args = parse_args("compare", ["--config", str(recipe)])
    assert compare_args.variants == "baseline,naive"
    *_, compare_args = parse_args("compare", ["--config", str(recipe), "--variants", "skip"])
    assert compare_args.variants == "skip"


def test_unknown_recipe_key_is_a_one_line_error(capfd, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 0.1\nlearnig_rate: 0.2\n")
    code, _, err = run_cli(capfd, ["train", "--config", str(recipe)])
    assert_one_line_error(code, err, "learnig_rate")


def test_missing_or_malformed_recipe_is_a_one_line_error(capfd, tmp_path):
    code, _, err = run_cli(capfd, ["train", "--config", str(tmp_path / "none.yaml")])
    assert_one_line_error(code, err, "no such file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: [0.1\n")
    code, _, err = run_cli(capfd, ["train", "--config", str(broken)])
    assert_one_line_error(code, err, "not valid YAML")


# ----------------------------------------------------------------------------------------------
# Bad input through the CLI: exit code 2 and one line on stderr
# ----------------------------------------------------------------------------------------------


def test_missing_dataset_path(capfd, tmp_path):
    code, _, err = run_cli(capfd, ["train", "--dataset_name", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path)])
    assert_one_line_error(code, err, "dataset not found", "nowhere")


def test_dataset_without_label_column_names_the_columns_found(capfd, tmp_path):
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    image = {"bytes": png_bytes(np.zeros((8, 8, 3), np.uint8)), "path": None}
    write_table(tmp_path / "data", "train", {"image": [image] * 4, "caption": ["a cat"] * 4}, features)
    code, _, err = run_cli(capfd, ["train", "--dataset_name", str(tmp_path / "data"), "--output_dir", str(tmp_path)])
    assert_one_line_error(code, err, "caption", "--label_column")


def test_empty_eval_split(capfd, tmp_path):
    folder = write_image_dataset(tmp_path / "data", {"train": 8})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=NUM_CLASSES)})
    write_table(folder, "test", {"image": [], "label": []}, features)
    code, _, err = run_cli(capfd, ["train", "--dataset_name", str(folder), "--output_dir", str(tmp_path)])
    assert_one_line_error(code, err, str(folder))
    assert "without rows" in err or "empty" in err


def test_corrupt_image_bytes_name_the_row(capfd, tmp_path):
    folder = write_image_dataset(tmp_path / "data", {"train": 8, "test": 4})
    table = pq.read_table(folder / "train.parquet")
    images = table.column("image").to_pylist()
    images[3] = {"bytes": b"definitely not a PNG", "path": None}
    pq.write_table(table.set_column(0, "image", pa.array(images, type=table.schema.field("image").type)), folder / "train.parquet")
    code, _, err = run_cli(capfd, ["train", "--dataset_name", str(folder), "--output_dir", str(tmp_path)])
    assert_one_line_error(code, err, "row 3", "'train'")


def test_corrupt_image_bytes_name_the_row_when_the_device_cache_is_built(capfd, tmp_path, datasets_cache_in_tmp):
    folder = write_image_dataset(tmp_path / "data", {"train": 8, "test": 4})
    table = pq.read_table(folder / "train.parquet")
    images = table.column("image").to_pylist()
    images[5] = {"bytes": b"definitely not a PNG", "path": None}
    pq.write_table(table.set_column(0, "image", pa.array(images, type=table.schema.field("image").type)), folder / "train.parquet")
    argv = ["train", "--dataset_name", str(folder), "--output_dir", str(tmp_path), "--verify_images", "none"]
    code, _, err = run_cli(capfd, [*argv, "--data_pipeline", "device"])
    assert_one_line_error(code, err, "cannot decode the image of split 'train' row 5", "fix or remove that row")


def test_labels_out_of_range(capfd, tmp_path):
    folder = write_image_dataset(tmp_path / "data", {"train": 8, "test": 4})
    table = pq.read_table(folder / "train.parquet")
    labels = table.column("label").to_pylist()
    labels[5] = 7
    pq.write_table(table.set_column(1, "label", pa.array(labels, type=table.schema.field("label").type)), folder / "train.parquet")
    code, _, err = run_cli(capfd, ["train", "--dataset_name", str(folder), "--output_dir", str(tmp_path)])
    assert_one_line_error(code, err, "row 5", "label 7")


def test_max_train_samples_larger_than_the_data(capfd, tmp_path, tiny_dataset):
    code, _, err = run_cli(
        capfd, ["train", "--dataset_name", str(tiny_dataset), "--max_train_samples", "1000", "--output_dir", str(tmp_path)]
    )
    assert_one_line_error(code, err, "--max_train_samples 1000", "64 rows")


def test_randpatch_on_a_1x1_feature_grid_names_the_fixes(capfd, tmp_path, tiny_dataset):
    # `--model_kwargs {}` clears the default recipe's output stride: test_resnet then ends at 1x1 at 32x32.
    argv = ["train", "--dataset_name", str(tiny_dataset), "--model_name", "test_resnet", "--model_kwargs", "{}", "--image_size", "32"]
    code, _, err = run_cli(capfd, [*argv, "--output_dir", str(tmp_path), *QUIET])
    assert_one_line_error(code, err, "1x1")
    assert "output_stride" in err and "linavg" in err


def test_invalid_model_kwargs_json(capfd, tmp_path):
    code, _, err = run_cli(capfd, ["train", "--model_kwargs", '{"output_stride": }', "--output_dir", str(tmp_path)])
    assert_one_line_error(code, err, "--model_kwargs", "not valid JSON")


def test_unknown_model_name(capfd, tmp_path, tiny_dataset):
    code, _, err = run_cli(
        capfd, ["train", "--dataset_name", str(tiny_dataset), "--model_name", "resnet_does_not_exist", "--output_dir", str(tmp_path)]
    )
    assert_one_line_error(code, err, "resnet_does_not_exist")


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------


def test_compare_end_to_end_writes_json_png_and_prints_the_table_and_the_verdict(capfd, tmp_path, tiny_dataset):
    output_dir = tmp_path / "out"
    argv = ["compare", "--dataset_name", str(tiny_dataset), *TINY_MODEL, "--num_train_epochs", "3"]
    argv += ["--per_device_train_batch_size", "16", "--output_dir", str(output_dir), *QUIET]
    code, out, err = run_cli(capfd, argv)
    assert code == 0, err

    comparison = json.loads((output_dir / "comparison.json").read_text())
    assert comparison["variants"] == ["baseline", "intertrain", "budget"]  # the main job judges against budget
    assert comparison["model_kwargs"] == {"output_stride": 16}
    assert "compare: data_pipeline auto -> device, for every run" in out  # small images: the cache fits
    assert [run["settings"]["data_pipeline"] for run in comparison["runs"].values()] == ["device"] * 3
    for name, run in comparison["runs"].items():
        assert run["train_seconds"] > 0
        assert 0.0 <= run["eval_accuracy"] <= 1.0
        assert run["speedup"] > 0 and run["ideal_speedup"] > 0
        assert [row["epoch"] for row in run["epochs"]] == [0, 1, 2]
        for row in run["epochs"] if name != "budget" else ():
            assert row["items"] + row["pairs"] == 64  # every sample once, as a single or in a pair
            assert row["region_1"] + row["region_2"] + row["region_3"] in (0, 64)
            assert row["eval_top1"] is not None and row["cumulative_train_seconds"] > 0
    baseline, intertrain = comparison["runs"]["baseline"], comparison["runs"]["intertrain"]
    assert baseline["items_trained"] == 3 * 64 and baseline["ideal_speedup"] == 1.0
    assert intertrain["ideal_speedup"] == pytest.approx(3 * 64 / intertrain["items_trained"])
    assert comparison["runs"]["budget"]["optimizer_steps"] == intertrain["optimizer_steps"]
    # Epochs 0 and 1 never interpolate (docs/method.md), whatever the losses.
    assert [row["pairs"] for row in intertrain["epochs"][:2]] == [0, 0]

    png = (output_dir / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    started = 'hf-intertrain: model test_resnet, model_kwargs {"output_stride": 16}, image size 32, final feature grid 2x2'
    assert out.splitlines().count(started) == 3  # once per run, before its training
    table = [line for line in out.splitlines() if line.startswith(("baseline ", "intertrain ", "budget ")) and " vs " not in line]
    assert len(table) == 3 and "speed-up" in out
    verdict = comparison["plain_verdict"]
    assert verdict.startswith("intertrain: ") and "faster than the full baseline" in verdict
    assert "accurate than training as many steps without it (budget, 95% interval" in verdict
    assert verdict in out.splitlines()
    card = (output_dir / "intertrain" / "README.md").read_text()
    assert f"| Against training as many steps without InterTrain | {verdict} |" in card


def test_a_failure_inside_training_ends_with_one_line_and_the_traceback_on_request(capfd, monkeypatch):
    import hf_intertrain.experiments.run as run_module

    def failing(*args):
        raise RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA")

    monkeypatch.setattr(run_module, "run_training", failing)
    code, _, err = run_cli(capfd, ["train", "--output_dir", "unused"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and "Traceback" not in err
    assert lines == [
        "hf-intertrain: error: RuntimeError: CUDA error: device-side assert triggered (set HF_INTERTRAIN_DEBUG=1 for "
        "the traceback)"
    ]
    monkeypatch.setenv("HF_INTERTRAIN_DEBUG", "1")
    with pytest.raises(RuntimeError, match="device-side assert"):
        main(["train", "--output_dir", "unused"])
