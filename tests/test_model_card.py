import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import runpy
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import timm
from huggingface_hub import ModelCard
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects

from conftest import REPO, TINY_TRAINING, make_dataset, make_model, make_split
from hf_intertrain import InterTrainArguments, InterTrainTrainer
from hf_intertrain.checkpoint import RESUME_SETTINGS
from hf_intertrain.experiments.compare import run_comparison
from hf_intertrain.config import DataArguments, ModelArguments
from hf_intertrain.data import EMBEDDED_DATASET
from hf_intertrain.metrics import build_compute_metrics
from hf_intertrain.model_card import describe_dataset, template_text

BASE_MODEL = "timm/test_resnet.r160_in1k"
TRAINING = dict(TINY_TRAINING, per_device_eval_batch_size=32, eval_strategy="epoch")
# what Trainer.push_to_hub leaves out of the upload
UPLOAD_IGNORE = ["_*", "checkpoint-*"]


def _trainer(output_dir, epochs: int, **overrides) -> InterTrainTrainer:
    args = InterTrainArguments(output_dir=str(output_dir), num_train_epochs=epochs, **{**TRAINING, **overrides})
    return InterTrainTrainer(
        model=make_model(output_stride=16),
        args=args,
        train_dataset=make_dataset(96, training=True),
        eval_dataset=make_dataset(32, seed=0),
        compute_metrics=build_compute_metrics(),
    )


@pytest.fixture(scope="module")
def carded(tmp_path_factory):
    """Three epochs (interpolation starts at epoch 2), then the card, as `hf-intertrain train` writes it."""
    trainer = _trainer(tmp_path_factory.mktemp("card") / "colors-resnet", epochs=3)
    trainer.train()
    trainer.create_model_card(dataset_name="someone/colors", finetuned_from=BASE_MODEL)
    return trainer, Path(trainer.args.output_dir)


def _table_rows(text: str) -> list[list[str]]:
    """Cells of the per-epoch table (the rows after its header)."""
    lines = text.split("| Epoch | Interpolated fraction |", 1)[1].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_card_metadata_is_valid_hub_metadata(carded):
    trainer, output_dir = carded
    card = ModelCard.load(output_dir / "README.md")
    data = card.data
    assert data.library_name == "timm"
    assert {"intertrain", "timm", "image-classification"} <= set(data.tags)
    assert data.datasets == ["someone/colors"]
    assert data.metrics == ["accuracy"]
    assert data.base_model == BASE_MODEL
    assert data.pipeline_tag == "image-classification"
    # model-index parsed back into EvalResults: the final evaluation of the run
    final = [entry for entry in trainer.state.log_history if "eval_top1" in entry][-1]
    top1 = next(result for result in data.eval_results if result.metric_type == "accuracy")
    assert top1.metric_value == pytest.approx(final["eval_top1"], abs=1e-4)
    assert (top1.task_type, top1.dataset_type) == ("image-classification", "someone/colors")
    assert data.model_name == "colors-resnet"
    assert "model-index" in data.to_dict()
    # the rendered text is a card huggingface_hub reads back unchanged
    assert str(ModelCard(str(card))) == str(card)


def test_card_reports_the_measured_interpolated_fraction_per_epoch(carded):
    trainer, output_dir = carded
    history = trainer.intertrain_history
    assert history[2]["intertrain/pairs"] > 0, "the run must interpolate for this test to mean something"
    rows = _table_rows(ModelCard.load(output_dir / "README.md").text)
    assert len(rows) == len(history) == 3
    for row, stats in zip(rows, history):
        epoch, fraction, items, pairs = row[:4]
        assert int(epoch) == stats["epoch"]
        assert float(fraction) == pytest.approx(stats["intertrain/interpolated_fraction"], abs=5e-4)
        assert (int(items), int(pairs)) == (stats["intertrain/items"], stats["intertrain/pairs"])
        assert [int(cell) for cell in row[4:7]] == [stats[f"intertrain/region_{i}"] for i in (1, 2, 3)]
    facts = json.loads((output_dir / "intertrain_card.json").read_text())
    assert [row["interpolated_fraction"] for row in facts["epochs"]] == [
        stats["intertrain/interpolated_fraction"] for stats in history
    ]


def test_card_body_reports_training_settings_and_how_to_load(carded):
    trainer, output_dir = carded
    text = ModelCard.load(output_dir / "README.md").text
    seconds = sum(stats["intertrain/epoch_seconds"] for stats in trainer.intertrain_history)
    items = int(sum(stats["intertrain/items"] for stats in trainer.intertrain_history))
    assert "`test_resnet`" in text and '`{"output_stride": 16}`' in text
    assert "[`someone/colors`](https://huggingface.co/datasets/someone/colors)" in text
    assert "| Epochs | 3 |" in text
    assert f"| Training wall-clock time (evaluation excluded) | {seconds:.1f} s" in text
    assert f"{items} instead of {3 * 96}" in text
    for setting in ("| `interpolation` | randpatch |", "| `split_propagation` | True |", "| `amenability_regions` | 1,3 |"):
        assert setting in text
    facts = json.loads((output_dir / "intertrain_card.json").read_text())
    assert list(facts["intertrain_settings"]) == list(RESUME_SETTINGS)  # the settings a resume must match
    assert 'timm.create_model("hf-hub:your-username/colors-resnet", pretrained=True)' in text
    assert 'pipeline("image-classification", model="your-username/colors-resnet")' in text
    assert 'AutoModelForImageClassification.from_pretrained("your-username/colors-resnet")' in text
    assert f"fine-tuned from [`{BASE_MODEL}`]" in text


def test_plot_is_saved_beside_the_card_and_linked_by_name(carded):
    _, output_dir = carded
    assert (output_dir / "intertrain_fraction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Interpolated fraction per epoch](intertrain_fraction.png)" in (output_dir / "README.md").read_text()


def test_push_to_hub_prepares_the_whole_folder_then_stops_at_the_upload(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    trainer = _trainer(tmp_path / "run", epochs=2, save_strategy="epoch", hub_model_id="someone/colors-r18")
    trainer.train()
    trainer.create_model_card(dataset_name="someone/colors", finetuned_from=BASE_MODEL)
    trainer.hub_model_id = "someone/colors-r18"  # what init_hf_repo sets once the Hub has created the repo
    with pytest.raises(OfflineModeIsEnabled):
        trainer.push_to_hub()
    output_dir = tmp_path / "run"
    files = sorted(str(path.relative_to(output_dir)) for path in output_dir.rglob("*") if path.is_file())
    uploaded = set(filter_repo_objects(files, ignore_patterns=UPLOAD_IGNORE))
    assert {"README.md", "config.json", "model.safetensors", "intertrain_fraction.png"} <= uploaded
    assert not any(name.startswith("checkpoint-") for name in uploaded)
    assert "pretrained_cfg" in json.loads((output_dir / "config.json").read_text())
    # the card of the push names the repo and keeps the dataset and base model of the earlier call
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.model_name == "colors-r18"
    assert card.data.datasets == ["someone/colors"] and card.data.base_model == BASE_MODEL
    assert 'timm.create_model("hf-hub:someone/colors-r18", pretrained=True)' in card.text
    # the uploaded folder is the shared checkpoint: it loads in timm with the trained weights
    assert timm.create_model(f"local-dir:{output_dir}", pretrained=True).num_classes == 4


def test_local_datasets_get_no_hub_dataset_metadata(tmp_path):
    folder = tmp_path / "my_photos"
    folder.mkdir()
    local = describe_dataset(str(folder))
    assert local["hub_ids"] == [] and local["name"] == "my_photos" and str(tmp_path) not in json.dumps(local)
    assert describe_dataset(EMBEDDED_DATASET)["hub_ids"] == ["uoft-cs/cifar10"]
    assert describe_dataset("uoft-cs/cifar10")["hub_ids"] == ["uoft-cs/cifar10"]


def test_template_is_installed_as_package_data():
    assert "{{ card_data }}" in template_text()
    with pytest.raises(ValueError, match="no model-card template"):
        template_text("missing.md")


def _reference_card_script():
    """scripts/make_reference_cards.py's `main`, run in this process (a subprocess would re-import torch)."""
    return runpy.run_path(str(REPO / "scripts" / "make_reference_cards.py"), run_name="make_reference_cards")["main"]


def test_reference_card_script_renders_a_named_card_from_a_run(carded, tmp_path):
    _, output_dir = carded
    note = "Smoke-scale run: not a benchmark."
    main = _reference_card_script()
    assert main([str(output_dir), "--name", "colors_ref", "--note", note, "--dest", str(tmp_path)]) == 0
    card = ModelCard.load(tmp_path / "colors_ref.md")
    assert card.data.model_name == "colors_ref"
    assert f"> **{note}**" in card.text and "![Interpolated fraction per epoch](colors_ref.png)" in card.text
    assert 'timm.create_model("hf-hub:your-username/colors_ref"' in card.text
    assert (tmp_path / "colors_ref.png").is_file()
    assert _table_rows(card.text) == _table_rows(ModelCard.load(output_dir / "README.md").text)


def test_reference_card_script_refuses_a_folder_without_facts(tmp_path):
    with pytest.raises(ValueError, match=r"intertrain_card\.json does not exist"):
        _reference_card_script()([str(tmp_path), "--name", "x"])


def test_reference_cards_of_a_comparison_report_the_measured_speedup(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    split = make_split(64, seed=0).train_test_split(test_size=16, shuffle=False)
    (tmp_path / "colors").mkdir()
    split["train"].to_parquet(str(tmp_path / "colors" / "train.parquet"))
    split["test"].to_parquet(str(tmp_path / "colors" / "test.parquet"))
    compare_dir = tmp_path / "compare"
    comparison = run_comparison(
        ModelArguments(model_name="test_resnet", model_kwargs={"output_stride": 16}),
        DataArguments(dataset_name=str(tmp_path / "colors")),
        InterTrainArguments(output_dir=str(compare_dir), num_train_epochs=2, **TRAINING),
        ["baseline", "intertrain"],
    )
    assert _reference_card_script()([str(compare_dir), "--name", "colors", "--dest", str(tmp_path / "cards")]) == 0
    assert sorted(path.name for path in (tmp_path / "cards").iterdir()) == ["colors_intertrain.md", "colors_intertrain.png"]
    text = ModelCard.load(tmp_path / "cards" / "colors_intertrain.md").text
    run = comparison["runs"]["intertrain"]
    assert f"| {run['speedup']:.2f}x training-time speed-up, top-1 {run['accuracy_delta']:+.4f}" in text
