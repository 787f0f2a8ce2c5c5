import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import random
from pathlib import Path

import datasets
import pytest
import safetensors
import safetensors.torch
import timm
import torch
from huggingface_hub import ModelCard
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from conftest import FLAT_CONFIG, TINY_TRAINING, make_dataset, make_model, make_split
from hf_intertrain import InterTrainArguments, InterTrainTrainer
from hf_intertrain.config import DataArguments, ModelArguments
from hf_intertrain.data import build_transforms
from hf_intertrain.hub import (
    build_root_config,
    eval_data_config,
    image_size_of,
    make_loadable,
    resolve_repo_id,
    strip_wrapper_prefix,
)
from hf_intertrain.experiments.run import run_training

CLASS_NAMES = [f"class_{i}" for i in range(4)]
TRAINING = dict(TINY_TRAINING, num_train_epochs=2, per_device_eval_batch_size=32, eval_strategy="epoch", save_strategy="epoch")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """`hf-intertrain train`'s code path for 2 epochs on a generated parquet dataset (ClassLabel class_0..3)."""
    root = tmp_path_factory.mktemp("hub")
    split = make_split(128, seed=0).train_test_split(test_size=32, shuffle=False)
    data_dir = root / "colors"
    data_dir.mkdir()
    split["train"].to_parquet(str(data_dir / "train.parquet"))
    split["test"].to_parquet(str(data_dir / "test.parquet"))
    output_dir = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", root / "datasets_cache")
        run_training(
            ModelArguments(model_name="test_resnet", model_kwargs='{"output_stride": 16}'),
            DataArguments(dataset_name=str(data_dir)),
            InterTrainArguments(output_dir=str(output_dir), **TRAINING),
        )
    return output_dir, split["test"]


def _eval_pixels(image) -> torch.Tensor:
    """The eval transform training used (test_resnet's data config: mean/std 0.5, bilinear) at 32 px."""
    return build_transforms(FLAT_CONFIG, 32, is_training=False)(image)[None]


def _load_three_ways(folder: Path):
    timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    auto_model = AutoModelForImageClassification.from_pretrained(folder).eval()
    return timm_model, auto_model


def test_final_model_gives_identical_logits_in_timm_auto_and_pipeline(trained_run):
    output_dir, test_split = trained_run
    timm_model, auto_model = _load_three_ways(output_dir)
    classifier = pipeline("image-classification", model=str(output_dir))
    for image in test_split.select(range(3))["image"]:
        pixels = _eval_pixels(image)
        with torch.no_grad():
            timm_logits = timm_model(pixels)
            auto_logits = auto_model(pixel_values=pixels).logits
        torch.testing.assert_close(timm_logits, auto_logits, rtol=0, atol=1e-6)
        scores = {row["label"]: row["score"] for row in classifier(image, top_k=4)}
        expected = dict(zip(CLASS_NAMES, timm_logits.softmax(-1)[0].tolist()))
        assert scores == pytest.approx(expected, abs=1e-5)
    # the loaded weights are the trained ones, not a fresh initialisation
    fresh = timm.create_model("test_resnet", num_classes=4, output_stride=16).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(pixels), timm_logits, atol=1e-3)


def test_image_processor_reproduces_the_training_eval_transform(trained_run):
    output_dir, test_split = trained_run
    processor = AutoImageProcessor.from_pretrained(output_dir)
    image = test_split[0]["image"]
    torch.testing.assert_close(processor(image)["pixel_values"], _eval_pixels(image), rtol=0, atol=1e-6)


def test_labels_are_the_dataset_class_names_in_both_libraries(trained_run):
    output_dir, _ = trained_run
    timm_model, auto_model = _load_three_ways(output_dir)
    assert list(timm_model.pretrained_cfg["label_names"]) == CLASS_NAMES
    assert [auto_model.config.id2label[i] for i in range(4)] == CLASS_NAMES


def test_pretrained_cfg_carries_the_eval_transform_and_model_args_omit_num_classes(trained_run):
    output_dir, _ = trained_run
    config = json.loads((output_dir / "config.json").read_text())
    assert config["architecture"] == "test_resnet"
    assert config["num_classes"] == 4
    assert config["model_args"] == {"output_stride": 16}
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32]
    assert cfg["mean"] == cfg["std"] == [0.5, 0.5, 0.5]
    assert (cfg["crop_pct"], cfg["crop_mode"], cfg["interpolation"]) == (1.0, "center", "bilinear")
    assert not {"hf_hub_id", "url", "tag", "file", "source"} & set(cfg)


def test_output_stride_is_rebuilt_by_timm_and_transformers(trained_run):
    output_dir, _ = trained_run
    timm_model, auto_model = _load_three_ways(output_dir)
    pixels = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        # output_stride 16 leaves a 2x2 grid at 32 px (the default stride 32 would leave 1x1)
        assert timm_model.forward_features(pixels).shape[-2:] == (2, 2)
        assert auto_model.timm_model.forward_features(pixels).shape[-2:] == (2, 2)


def test_every_checkpoint_folder_loads_in_both_libraries(trained_run):
    output_dir, test_split = trained_run
    checkpoints = sorted(output_dir.glob("checkpoint-*"))
    assert len(checkpoints) == 2
    pixels = _eval_pixels(test_split[0]["image"])
    logits = []
    for checkpoint in checkpoints:
        with safetensors.safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
            assert not any(key.startswith("timm_model.") for key in f.keys())
        timm_model, auto_model = _load_three_ways(checkpoint)
        assert [auto_model.config.id2label[i] for i in range(4)] == CLASS_NAMES
        with torch.no_grad():
            logits.append(timm_model(pixels))
            torch.testing.assert_close(auto_model(pixel_values=pixels).logits, logits[-1], rtol=0, atol=1e-6)
    assert not torch.allclose(logits[0], logits[1])


def test_resume_from_a_rewritten_checkpoint_restores_its_weights(trained_run, tmp_path):
    output_dir, _ = trained_run
    last = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    model = AutoModelForImageClassification.from_config(AutoModelForImageClassification.from_pretrained(last).config)
    trainer = InterTrainTrainer(
        model=model,
        args=InterTrainArguments(output_dir=str(tmp_path), **{**TRAINING, "eval_strategy": "no", "save_strategy": "no"}),
        train_dataset=make_dataset(96, training=True),
    )
    trainer.train(resume_from_checkpoint=str(last))  # nothing left to train: only the load happens
    saved = timm.create_model(f"local-dir:{last}", pretrained=True).state_dict()
    for name, value in trainer.model.timm_model.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0)


def test_bare_timm_model_is_saved_loadable_by_transformers(tmp_path):
    model = timm.create_model("test_resnet", num_classes=4, output_stride=16)
    trainer = InterTrainTrainer(
        model=model,
        args=InterTrainArguments(output_dir=str(tmp_path), **{**TRAINING, "num_train_epochs": 1, "eval_strategy": "no", "save_strategy": "no"}),
        train_dataset=make_dataset(32, training=True),
    )
    trainer.train()
    trainer.save_model()
    auto_model = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert auto_model.config.model_args == {"output_stride": 16}
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(auto_model(pixel_values=pixels).logits, model.eval()(pixels), rtol=0, atol=1e-6)


def test_large_images_keep_the_model_crop_pct_and_small_ones_use_full_crop():
    model = timm.create_model("test_resnet", num_classes=4)
    assert eval_data_config(model, 32)["crop_pct"] == 1.0
    large = eval_data_config(model, 160)
    assert large["crop_pct"] == pytest.approx(model.pretrained_cfg["crop_pct"])
    assert large["input_size"] == [3, 160, 160]


def test_model_args_never_repeat_num_classes():
    model = timm.create_model("test_resnet", num_classes=4, output_stride=16)
    assert model._model_args["num_classes"] == 4  # what timm's own save_for_hf would export
    root = build_root_config(model, 32)
    assert root["model_args"] == {"output_stride": 16}
    assert root["num_classes"] == root["pretrained_cfg"]["num_classes"] == 4


def test_label_names_must_match_the_head():
    model = timm.create_model("test_resnet", num_classes=4)
    with pytest.raises(ValueError, match="3 label names for a 4-class head"):
        build_root_config(model, 32, label_names=["a", "b", "c"])


def test_make_loadable_is_idempotent(tmp_path):
    model = timm.create_model("test_resnet", num_classes=4)
    safetensors.torch.save_file({f"timm_model.{k}": v for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    make_loadable(tmp_path, model, 32, label_names=CLASS_NAMES)
    first = (tmp_path / "config.json").read_text(), (tmp_path / "model.safetensors").read_bytes()
    make_loadable(tmp_path, model, 32)
    strip_wrapper_prefix(tmp_path / "model.safetensors")
    assert ((tmp_path / "config.json").read_text(), (tmp_path / "model.safetensors").read_bytes()) == first
    assert json.loads(first[0])["label_names"] == CLASS_NAMES


def test_repo_id_follows_the_created_repo_then_hub_model_id_then_output_dir():
    assert resolve_repo_id(None, "/runs/cifar_r18") == "your-username/cifar_r18"
    assert resolve_repo_id("cifar-r18", "/runs/x") == "your-username/cifar-r18"
    assert resolve_repo_id("org/cifar-r18", "/runs/x") == "org/cifar-r18"
    assert resolve_repo_id("cifar-r18", "/runs/x", created_repo_id="me/cifar-r18") == "me/cifar-r18"
    with pytest.raises(ValueError, match="not a Hub repo id"):
        resolve_repo_id("a/b/c", "/runs/x")


def test_train_run_writes_a_card_with_its_local_dataset_and_class_names(trained_run):
    output_dir, _ = trained_run
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.model_name == "run"
    assert card.data.datasets is None  # a local folder is no Hub dataset
    assert card.data.base_model is None
    assert "trained from scratch on the local dataset `colors`" in card.text
    assert "Classes (4): class_0, class_1, class_2, class_3" in card.text


def test_reading_the_image_size_leaves_the_augmentation_generators_alone():
    dataset = make_dataset(4, training=True)
    random.seed(0)
    before = random.getstate(), torch.random.get_rng_state()
    dataset[0]
    assert random.getstate() != before[0]  # a training item does draw from the generators
    random.setstate(before[0])
    assert image_size_of(dataset) == (32, 32)
    assert random.getstate() == before[0]
    assert torch.equal(torch.random.get_rng_state(), before[1])


def test_model_without_model_args_saves_no_null_model_args(tmp_path):
    model = make_model()  # config.model_args is None, which transformers writes as null
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_args"] is None
    make_loadable(tmp_path, model.timm_model, 32)
    assert "model_args" not in json.loads((tmp_path / "config.json").read_text())
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(pixel_values=pixels).logits
        torch.testing.assert_close(timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()(pixels), expected)
        torch.testing.assert_close(AutoModelForImageClassification.from_pretrained(tmp_path).eval()(pixel_values=pixels).logits, expected)
