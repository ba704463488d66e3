"""Classification metrics computed from confusion matrices.

Devices report confusion matrices rather than accuracies, so that the server can sum them and
compute macro-F1 and balanced accuracy over the pooled predictions of all devices; averaging
per-device F1 scores would weigh a device with three beats like one with three thousand.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from clients.data import LabeledData


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the ``(num_classes, num_classes)`` count matrix, rows = true class."""
    flat = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and balanced accuracy of a confusion matrix.

    The matrix may hold weighted counts (floats): the federated evaluation scales each device's
    matrix to bound its weight, and every score is a ratio of sums, so it is defined the same way.
    Classes absent from both truth and predictions are left out of the macro averages, as
    scikit-learn does with ``labels`` restricted to the present classes.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    true_positive = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = (support + predicted) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, true_positive / support, 0.0)
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
    }


@torch.no_grad()
def evaluate_model(
    model: nn.Module, data: LabeledData, num_classes: int, batch_size: int = 1024
) -> tuple[float, np.ndarray]:
    """Return the mean cross-entropy loss and the confusion matrix of ``model`` on ``data``."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    x = torch.from_numpy(np.ascontiguousarray(data.x))
    y = torch.from_numpy(np.ascontiguousarray(data.y))
    total_loss = 0.0
    predictions = []
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        total_loss += float(criterion(logits, y[start : start + batch_size]))
        predictions.append(logits.argmax(dim=1).numpy())
    predicted = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
    loss = total_loss / len(y) if len(y) else float("nan")
    return loss, confusion_matrix(data.y, predicted, num_classes)
