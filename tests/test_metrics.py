import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from fl_iot.metrics import confusion_matrix, scores


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)

    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_scores_by_hand():
    # class 0: tp 1, support 2, predicted 1 -> p 1, r 0.5, f1 2/3
    # class 1: tp 1, support 1, predicted 3 -> p 1/3, r 1, f1 0.5
    # class 2: tp 0, support 1, predicted 0 -> f1 0
    result = scores(np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0]]))

    assert result["accuracy"] == pytest.approx(0.5)
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert result["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_scores_match_scikit_learn_on_random_labels():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 5, 500), rng.integers(0, 5, 500)

    result = scores(confusion_matrix(y_true, y_pred, 5))

    assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_absent_classes_do_not_drag_macro_scores_down():
    # 5 classes but only classes 0 and 1 ever occur
    matrix = np.zeros((5, 5), dtype=int)
    matrix[0, 0], matrix[1, 1] = 3, 2

    assert scores(matrix) == {"accuracy": 1.0, "macro_f1": 1.0, "balanced_accuracy": 1.0}


def test_empty_matrix_scores_zero():
    assert scores(np.zeros((3, 3)))["accuracy"] == 0.0
