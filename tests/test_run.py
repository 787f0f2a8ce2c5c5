"""Tests of hf_intertrain/experiments/run.py: which splits are decoded before training once the input path is known."""

import pytest
from conftest import FLAT_CONFIG, default_features, encode, image_value, noise_image, write_dataset, write_split

from hf_intertrain.data import DataError, load_image_classification_data
from hf_intertrain.experiments.run import build_split_datasets, verify_uncached_images

pytestmark = pytest.mark.usefixtures("datasets_cache_in_tmp")


def served(folder, pipeline: str, verify_images: str = "auto"):
    data = load_image_classification_data(str(folder), verify_images="none")
    return verify_uncached_images(data, build_split_datasets(data, FLAT_CONFIG, 32, pipeline, "cpu"), verify_images)


def test_splits_served_from_a_decoded_cache_are_not_decoded_again(tmp_path):
    folder = write_dataset(tmp_path / "d", {"train": 6, "test": 3})

    assert served(folder, "device") == []
    assert served(folder, "workers") == ["train", "test"]
    assert served(folder, "workers", verify_images="none") == []


def test_a_bad_image_stops_the_run_before_training_on_either_path(tmp_path):
    good = encode(noise_image(0))
    images = [image_value(good), image_value(good), image_value(b"not an image"), image_value(good)]
    write_split(tmp_path / "d", "train", {"image": images, "label": [0, 1, 2, 0]}, default_features())

    for pipeline in ("workers", "device"):
        with pytest.raises(DataError, match="split 'train' row 2"):
            served(tmp_path / "d", pipeline)


@pytest.mark.parametrize("pipeline", ["workers", "device"])
def test_a_finished_run_records_its_per_image_results_and_its_saved_model_gives_them_again(tmp_path, pipeline):
    from hf_intertrain.config import DataArguments, InterTrainArguments, ModelArguments
    from hf_intertrain.experiments.run import evaluate_saved_model, run_training

    folder = write_dataset(tmp_path / "d", {"train": 24, "test": 10})
    model_args = ModelArguments(model_name="test_resnet", model_kwargs={"output_stride": 16})
    data_args = DataArguments(dataset_name=str(folder), image_size=32)
    args = InterTrainArguments(
        output_dir=str(tmp_path / "run"), num_train_epochs=1, per_device_train_batch_size=8, save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, data_pipeline=pipeline, interpolation="none",
    )
    report = run_training(model_args, data_args, args)
    correct = report.correct()
    assert correct.dtype == bool and correct.shape == (10,) and correct.mean() == pytest.approx(report.eval_accuracy)
    again = evaluate_saved_model(model_args, data_args, args)
    assert (again == correct).all()
