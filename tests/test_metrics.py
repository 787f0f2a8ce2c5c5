import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import evaluate
import numpy as np
import pytest
from transformers import EvalPrediction

from hf_intertrain.metrics import TOP_K_ACCURACY_PATH, build_compute_metrics

# Seven classes, four samples. Label ranks (0 = highest logit):
#   row 0: label 2 has the highest logit                      -> rank 0 (top-1 and top-5 hit)
#   row 1: label 6 is 4th highest                             -> rank 3 (top-5 hit only)
#   row 2: label 0 is 6th highest                             -> rank 5 (miss)
#   row 3: label 4 ties with class 1 for the top; 1 < 4 wins  -> rank 1 (top-5 hit only)
LOGITS = np.array(
    [
        [0.1, 0.2, 3.0, 0.0, -1.0, 0.5, 0.3],
        [5.0, 4.0, 3.0, -2.0, -3.0, -4.0, 2.5],
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, -1.0],
        [0.0, 2.0, 1.0, 1.5, 2.0, -1.0, 0.5],
    ],
    dtype=np.float32,
)
LABELS = np.array([2, 6, 0, 4])


@pytest.fixture(scope="module")
def metric() -> evaluate.EvaluationModule:
    return evaluate.load(TOP_K_ACCURACY_PATH, keep_in_memory=True)


def test_top1_and_top5_match_hand_computed_values(metric):
    assert metric.compute(predictions=LOGITS, references=LABELS) == {"top1": 0.25, "top5": 0.75}


def test_other_k_values_are_reported_under_their_own_names(metric):
    assert metric.compute(predictions=LOGITS, references=LABELS, k=(2, 4)) == {"top2": 0.5, "top4": 0.75}


def test_a_single_int_k_is_accepted(metric):
    assert metric.compute(predictions=LOGITS, references=LABELS, k=3) == {"top3": 0.5}


def test_ties_go_to_the_lower_class_index_like_argmax(metric):
    constant = np.zeros((4, 6), dtype=np.float32)
    result = metric.compute(predictions=constant, references=[0, 0, 3, 5])

    assert result == {"top1": 0.5, "top5": 0.75}  # labels 0, 0, 3 rank 0, 0, 3; label 5 ranks 5


@pytest.mark.parametrize("num_classes, expected_keys", [(2, {"top1"}), (5, {"top1"}), (6, {"top1", "top5"})])
def test_top5_is_reported_only_with_more_than_five_classes(metric, num_classes, expected_keys):
    logits = np.eye(num_classes, dtype=np.float32)

    result = metric.compute(predictions=logits, references=np.arange(num_classes))

    assert set(result) == expected_keys and result["top1"] == 1.0


def test_label_outside_the_logits_width_is_rejected(metric):
    with pytest.raises(ValueError, match=r"reference label 7 is outside \[0, 7\)"):
        metric.compute(predictions=LOGITS, references=[2, 6, 0, 7])


def test_module_loads_by_script_path_as_well_as_by_folder():
    metric = evaluate.load(str(Path(TOP_K_ACCURACY_PATH) / "top_k_accuracy.py"), keep_in_memory=True)

    assert type(metric).__name__ == "TopKAccuracy"
    assert metric.compute(predictions=LOGITS.tolist(), references=LABELS.tolist()) == {"top1": 0.25, "top5": 0.75}


def test_compute_metrics_reads_logits_from_a_tuple_of_predictions():
    compute_metrics = build_compute_metrics()
    hidden = np.ones((4, 3), dtype=np.float32)

    from_tuple = compute_metrics(EvalPrediction(predictions=(LOGITS, hidden), label_ids=LABELS))
    from_array = compute_metrics(EvalPrediction(predictions=LOGITS, label_ids=LABELS))

    assert from_tuple == from_array == {"top1": 0.25, "top5": 0.75}


def test_compute_metrics_can_be_called_for_every_evaluation():
    compute_metrics = build_compute_metrics()
    perfect = EvalPrediction(predictions=np.eye(7, dtype=np.float32), label_ids=np.arange(7))

    first = compute_metrics(EvalPrediction(predictions=LOGITS, label_ids=LABELS))
    second = compute_metrics(perfect)

    assert first["top1"] == 0.25 and second == {"top1": 1.0, "top5": 1.0}
