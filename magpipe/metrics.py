"""Balanced accuracy, counted directly: the score every choice on validation and every search is made by;
and the calibration of confidences (:func:`calibration`).

Searches score it thousands of times per run (every grid point of every fold), where scikit-learn's
``balanced_accuracy_score`` spends most of its time validating its input and building a confusion
matrix of every label; this is its figure, bit for bit (tested), from two counts per class.
"""

from __future__ import annotations

import numpy as np


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes of ``y_true`` (n,) given predictions ``y_pred`` (n,), 0..1.

    Predictions of classes absent from ``y_true`` (learnt, but not held out on this split) count as
    errors, silently: they are expected, not a fault; so is a validation fold that holds one class.
    The recalls are averaged in class order, as scikit-learn does, so the figure is its own.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes, index = np.unique(y_true, return_inverse=True)
    hits = np.bincount(index[y_true == y_pred], minlength=classes.size)
    return float(np.mean(hits / np.bincount(index, minlength=classes.size)))


def calibration(correct: np.ndarray, confidence: np.ndarray, bins: int = 10) -> dict:
    """How well confidences say how often the map is right: the expected calibration error and a reliability
    table.

    ``correct`` (n,) bool says whether each held-out cell's class is right, ``confidence`` (n,) the
    probability the map gave that class (0..1; NaN cells left out). The cells fall into ``bins`` equal
    ranges of confidence; the ECE (0..1) is the mean over the cells of |accuracy - mean confidence| of
    their range (Guo et al. 2017, "On calibration of modern neural networks"). Returns ``ece``, ``n`` and
    ``bins``: for each non-empty range its ``lo``, ``hi``, ``n`` cells, ``confidence`` (mean) and ``accuracy``.
    """
    ok = np.isfinite(confidence)
    correct, confidence = np.asarray(correct)[ok].astype(float), np.asarray(confidence)[ok]
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table, gap = [], 0.0
    for b in range(bins):
        sel = which == b
        if not sel.any():
            continue
        acc, conf = float(correct[sel].mean()), float(confidence[sel].mean())
        gap += sel.sum() * abs(acc - conf)
        table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(sel.sum()), "confidence": conf,
                      "accuracy": acc})
    return {"ece": gap / len(confidence) if len(confidence) else float("nan"), "n": int(len(confidence)),
            "bins": table}
