"""Evaluation metrics shipped with the package as `evaluate` modules, and the Trainer glue.

The trainer reports `eval_top1` / `eval_top5` (docs/method.md, "What the paper measures") through
`build_compute_metrics`, which loads the bundled `top_k_accuracy` module with `evaluate.load` on
its local path: no Hub access is needed, so it works with `HF_HUB_OFFLINE=1`.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from transformers import EvalPrediction

TOP_K_ACCURACY_PATH: str = str(Path(__file__).resolve().parent / "top_k_accuracy")

__all__ = ["TOP_K_ACCURACY_PATH", "build_compute_metrics"]


def build_compute_metrics(k: Sequence[int] = (1, 5)) -> Callable[[EvalPrediction], dict[str, float]]:
    """Return a `compute_metrics` for `transformers.Trainer` giving {"top1", "top5"} from logits.

    The module is loaded once here, not at every evaluation. `keep_in_memory=True` keeps its
    scratch table off disk, so concurrent processes of a distributed run (each of which gets
    the gathered predictions from the Trainer) never share cache files or locks.

    Args:
        k: the k values to report; "top{k}" is left out when k >= the number of classes.
    """
    import evaluate

    metric = evaluate.load(TOP_K_ACCURACY_PATH, keep_in_memory=True)

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = np.asarray(logits, dtype=np.float32)
        labels = eval_prediction.label_ids
        if isinstance(labels, (tuple, list)):
            labels = labels[0]
        return metric.compute(predictions=logits, references=np.asarray(labels, dtype=np.int64), k=tuple(k))

    return compute_metrics
