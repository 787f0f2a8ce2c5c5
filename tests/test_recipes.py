import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import pytest
import timm
import yaml
from transformers import TimmWrapperForImageClassification

from hf_intertrain.cli import DEFAULT_RECIPE, main, parse_args
from hf_intertrain.experiments.run import RUN_REPORT_NAME
from hf_intertrain.method.split import feature_grid
from test_cli import write_image_dataset

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
ALL_RECIPES = [*RECIPES, DEFAULT_RECIPE]
DRY_RUN_IMAGE_SIZE = 64  # ImageNet recipes are dry-run at 64x64: a 2x2 grid for every model, cheap on a CPU.


def recipe_id(path: Path) -> str:
    return path.stem


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_image_dataset(tmp_path_factory.mktemp("recipes") / "data", {"train": 16, "test": 8})


def test_the_issue_recipes_exist():
    names = {path.stem for path in RECIPES}
    for arch in ("resnet18", "resnet34"):
        for operator in ("randpatch", "linavg"):
            assert f"cifar10_{arch}_{operator}" in names
    for arch in ("resnet18", "resnet34", "resnet50", "mobilenetv2"):
        assert f"imagenet_{arch}_randpatch" in names
    assert any("cifar10" in name and "cpu" in name for name in names)


@pytest.mark.parametrize("path", ALL_RECIPES, ids=recipe_id)
def test_recipe_parses_for_train_and_compare(path):
    model_args, data_args, training_args = parse_args("train", ["--config", str(path)])
    assert training_args.interpolation in ("randpatch", "linavg")
    parse_args("compare", ["--config", str(path)])
    model_args.create_kwargs()
    text = path.read_text()
    if path != DEFAULT_RECIPE:
        assert "Expected time" in text and ("Paper" in text or "paper" in text)


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem.startswith("cifar10_resnet") and "cpu" not in p.stem], ids=recipe_id)
def test_cifar10_recipes_use_the_papers_hyper_parameters_and_a_4x4_grid(path):
    model_args, data_args, args = parse_args("train", ["--config", str(path)])
    assert (args.per_device_train_batch_size, args.learning_rate, args.weight_decay) == (64, 0.05, 5e-4)
    assert (args.num_train_epochs, data_args.image_size, args.optim.value) == (90, 32, "sgd")
    assert args.interpolation == path.stem.rsplit("_", 1)[1]
    model = timm.create_model(model_args.model_name, num_classes=10, **model_args.create_kwargs())
    assert feature_grid(model, (32, 32)) == (4, 4)  # the final grid of the paper's CIFAR ResNets


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem.startswith("imagenet_")], ids=recipe_id)
def test_imagenet_recipes_use_the_papers_hyper_parameters(path):
    _, data_args, args = parse_args("train", ["--config", str(path)])
    mobilenet = "mobilenetv2" in path.stem
    assert (args.per_device_train_batch_size, args.weight_decay, data_args.image_size) == (64, 4e-5, 224)
    assert args.learning_rate == (0.0125 if mobilenet else 0.025)
    assert args.num_train_epochs == (150 if mobilenet else 90)


def test_cpu_recipe_uses_the_shared_cifar10_and_a_splittable_small_model():
    path = next(p for p in RECIPES if "cifar10" in p.stem and "cpu" in p.stem)
    model_args, data_args, args = parse_args("train", ["--config", str(path)])
    assert data_args.dataset_name == "../shared/data/cifar10"
    assert data_args.max_train_samples <= 50_000 and args.dataloader_num_workers == 0
    assert args.num_train_epochs >= 10  # interpolation starts at epoch 2 and needs epochs to settle
    model = timm.create_model(model_args.model_name, num_classes=10, **model_args.create_kwargs())
    assert min(feature_grid(model, (32, 32))) >= 2


@pytest.mark.parametrize("path", ALL_RECIPES, ids=recipe_id)
def test_recipe_dry_runs_a_few_steps_with_its_model(path, tiny_dataset, tmp_path):
    recipe = yaml.safe_load(path.read_text())
    image_size = min(recipe.get("image_size") or 32, DRY_RUN_IMAGE_SIZE)
    output_dir = tmp_path / "out"
    argv = ["train", "--config", str(path), "--dataset_name", str(tiny_dataset), "--output_dir", str(output_dir)]
    argv += ["--image_size", str(image_size), "--max_train_samples", "16", "--max_eval_samples", "8"]
    # Naive interpolation pairs every sample from the first step, so the recipe's interpolation path (split
    # propagation or adaptive LinAvg) runs within two steps; CPU-only settings replace the GPU ones.
    argv += ["--selective_interpolation", "false", "--max_steps", "2", "--per_device_train_batch_size", "4"]
    argv += ["--per_device_eval_batch_size", "8", "--bf16", "false", "--dataloader_num_workers", "0"]
    argv += ["--dataloader_persistent_workers", "false", "--save_strategy", "no", "--disable_tqdm", "true"]
    assert main(argv) == 0

    report = json.loads((output_dir / RUN_REPORT_NAME).read_text())
    assert report["interpolation"] == recipe["interpolation"]
    assert report["epochs"][0]["pairs"] == 8 and report["epochs"][0]["items"] == 8
    reloaded = TimmWrapperForImageClassification.from_pretrained(output_dir)
    assert reloaded.config.architecture == recipe["model_name"]
    assert (reloaded.config.model_args or {}) == (recipe.get("model_kwargs") or {})
    grid = feature_grid(reloaded.timm_model, (image_size, image_size))
    assert min(grid) >= 2  # the reloaded model has the grid RandPatch was trained on
