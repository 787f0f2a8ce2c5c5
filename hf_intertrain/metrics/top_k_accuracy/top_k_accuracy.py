"""Top-k accuracy from logits: the accuracy the InterTrain paper reports (docs/method.md, "What the
paper measures": top-1; top-5 for ImageNet-scale label sets).

An `evaluate` module so that `evaluate.load("<path to this folder>")` works offline, like any
metric on the Hub. Predictions are raw logits (one row of floats per sample), not class ids,
because top-k needs the scores of every class.
"""

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-k accuracy: the fraction of samples whose label is among the k highest-scoring classes.
Ties are broken towards the lower class index, as `argmax` does, so top-1 equals
`mean(argmax(logits) == label)` exactly, and a model that outputs constant logits is not
counted as always right. A top-k value is reported only when k is smaller than the number of
classes (read from the width of the logits), since it is trivially 1.0 otherwise; top-1 is
always reported.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): logits, one row of num_classes scores per sample.
    references (`list` of `int`): the true class index of each sample, in [0, num_classes).
    k (`int` or `Sequence[int]`, defaults to `(1, 5)`): the k values to report.

Returns:
    dict: `{"top1": float, "top5": float}`; "top{k}" is left out when k >= num_classes (except k = 1).

Examples:
    >>> metric = evaluate.load("hf_intertrain/metrics/top_k_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], references=[1, 2], k=(1, 2))
    {'top1': 0.5, 'top2': 0.5}
"""

_CITATION = """
@misc{intertrain2022,
  title = {InterTrain: Accelerating DNN Training using Input Interpolation},
  note  = {ICLR 2022 submission},
  year  = {2022}
}
"""


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int | Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies of `logits` [N, C] against `labels` [N], ties broken towards lower index.

    A sample is top-k correct when fewer than k classes rank above its label, where class j
    ranks above the label y if `logits[j] > logits[y]`, or if they are equal and `j < y`.
    """
    logits = np.asarray(logits)
    if not np.issubdtype(logits.dtype, np.floating):
        logits = logits.astype(np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2:
        raise ValueError(
            f"predictions must be logits of shape [num_samples, num_classes], got shape {logits.shape}; pass the "
            "model's logits, not class ids"
        )
    num_samples, num_classes = logits.shape
    if labels.shape != (num_samples,):
        raise ValueError(
            f"references must hold one label per row of predictions: got {labels.shape[0] if labels.ndim else 0} "
            f"labels for {num_samples} rows; pass matching predictions and references"
        )
    if num_samples == 0:
        raise ValueError("top_k_accuracy got no samples; pass at least one prediction and reference")
    if labels.min() < 0 or labels.max() >= num_classes:
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise ValueError(
            f"reference label {bad} is outside [0, {num_classes}) for logits with {num_classes} classes; check the "
            "label column and the model's num_labels"
        )
    k = (k,) if isinstance(k, int) else tuple(k)
    bad_k = [kk for kk in k if int(kk) < 1]
    if bad_k:
        raise ValueError(f"k must hold positive integers, got {list(k)}; use e.g. k=(1, 5)")

    rows = np.arange(num_samples)
    label_scores = logits[rows, labels][:, None]
    higher = (logits > label_scores).sum(axis=1)
    lower_index_tie = ((logits == label_scores) & (np.arange(num_classes)[None, :] < labels[:, None])).sum(axis=1)
    rank = higher + lower_index_tie
    return {f"top{int(kk)}": float((rank < int(kk)).mean()) for kk in k if int(kk) == 1 or int(kk) < num_classes}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    """`evaluate` wrapper of `top_k_accuracy`: logits and integer labels in, {"top1", "top5"} out."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, k: int | Sequence[int] = (1, 5)) -> dict[str, float]:
        return top_k_accuracy(np.asarray(predictions, dtype=np.float32), np.asarray(references), k=k)
