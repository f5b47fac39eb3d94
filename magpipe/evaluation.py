"""The metrics of the paper on held-out cells, and their summaries over splits and draws.

Which cells are held out is :mod:`magpipe.splits`; this module only scores predictions.
"""

from __future__ import annotations


import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

from magpipe.metrics import balanced_accuracy
from magpipe.splits import subsample_per_class
from magpipe.svm import fit_svm, predict_with_confidence


def patch_majorities(rows, cols, y_true, y_pred, patch_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Per non-overlapping p x p grid patch: majority true label and majority prediction.

    Ties go to the smaller class code, so the result is deterministic.

    Parameters
    ----------
    rows, cols : (n,) cell indices of the scored cells.
    y_true, y_pred : (n,) non-negative int class codes.
    patch_px : patch side p in cells; patches are the p x p squares of a grid anchored at cell (0, 0).

    Returns
    -------
    truth, pred : (P,) majority codes of the P patches that hold at least one scored cell.
    """
    pid = (np.asarray(rows) // patch_px) * (int(np.max(cols)) // patch_px + 1) + np.asarray(cols) // patch_px
    truth, pred = [], []
    for p in np.unique(pid):
        sel = pid == p
        truth.append(np.bincount(y_true[sel]).argmax())
        pred.append(np.bincount(y_pred[sel]).argmax())
    return np.array(truth), np.array(pred)


def score(rows, cols, y_true: np.ndarray, y_pred: np.ndarray, *, patch_px: int, n_classes: int) -> dict:
    """Pixel-wise, patch-wise and balanced accuracy, per-class F1 and the confusion matrix.

    Parameters
    ----------
    rows, cols : (n,) cell indices of the scored cells (for the patch-wise accuracy).
    y_true, y_pred : (n,) int class codes 1..K.
    patch_px : patch side p in cells (see :func:`patch_majorities`).
    n_classes : K; F1 and the confusion matrix cover classes 1..K even when some are absent.

    Returns
    -------
    ``pixel_accuracy``, ``patch_accuracy``, ``balanced_accuracy`` (0..1), ``f1``, ``precision`` and
    ``recall`` (K floats, class 1 first; 0 where a class is never predicted or absent), ``confusion`` (K x K
    counts, rows true, columns predicted), ``n_pixels``, ``n_patches``.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.arange(1, n_classes + 1)
    pt, pp = patch_majorities(rows, cols, y_true, y_pred, patch_px)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    hits = np.diag(cm).astype(float)
    return {
        "pixel_accuracy": float(np.mean(y_true == y_pred)),
        "patch_accuracy": float(np.mean(pt == pp)),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "f1": f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0).tolist(),
        "precision": (hits / np.maximum(cm.sum(0), 1)).tolist(),
        "recall": (hits / np.maximum(cm.sum(1), 1)).tolist(),
        "confusion": cm.tolist(),
        "n_pixels": int(y_true.size),
        "n_patches": int(pt.size),
    }


METRICS = ("pixel_accuracy", "patch_accuracy", "balanced_accuracy")
# The sparse regime's SVM: fixed, not searched. A blocked search on a few dozen cells picks its
# hyperparameters by noise; C = 10 and gamma = 1 / n_features (on standardised features) sit in the
# middle of what the full-label searches choose.
SPARSE_C, SPARSE_GAMMA_SCALE = 10.0, 1.0


def sparse_label_scores(train: dict[str, np.ndarray], test: dict[str, np.ndarray], y: np.ndarray,
                        groups: np.ndarray, test_cells: tuple[np.ndarray, np.ndarray, np.ndarray], *,
                        per_class: int, repeats: int, patch_px: int, n_classes: int, svm_cfg, seed: int,
                        parts: dict[str, tuple[int, ...]] | None = None) -> dict:
    """Score feature sets trained on only ``per_class`` labelled cells per class (the paper's regime).

    Each of ``repeats`` draws picks the same training cells for every feature set
    (so the comparison is paired) and is scored on the full test set; ``draws``
    holds every draw's scores, for :func:`summarise`. One draw of a few dozen
    cells moves accuracy by several points, which a single number would hide.

    Parameters
    ----------
    train, test : feature set name -> (n_train, F) and (n_test, F) float32 features of the cells.
    y, groups : (n_train,) class codes 1..K and spatial block ids of the training cells.
    test_cells : (rows, cols, y) of the test cells, (n_test,) each.
    per_class, repeats : labelled cells per class in a draw, and the number of draws.
    patch_px, n_classes, svm_cfg, seed : as for :func:`score` and :func:`magpipe.svm.fit_svm`; draw r
        uses ``seed + r``. The SVM's C and gamma are fixed (``SPARSE_C``, ``SPARSE_GAMMA_SCALE``), not
        searched. ``parts``: name -> its parts' feature counts, for concatenated sets.

    Returns
    -------
    ``{"per_class", "repeats", "draws": {name: [score dict per draw]}}``.
    """
    trow, tcol, ty = test_cells
    svm_cfg = svm_cfg.model_copy(update={"C": (SPARSE_C,), "gamma_scale": (SPARSE_GAMMA_SCALE,)})
    runs: dict[str, list[dict]] = {name: [] for name in train}
    for r in range(repeats):
        pick = subsample_per_class(y, per_class, seed + r)
        for name, X in train.items():
            model, _ = fit_svm(X[pick], y[pick], groups[pick], svm_cfg, parts=(parts or {}).get(name),
                               calibrate=False)
            pred, _ = predict_with_confidence(model, test[name])
            runs[name].append(score(trow, tcol, ty, pred, patch_px=patch_px, n_classes=n_classes))
    return {"per_class": per_class, "repeats": repeats, "draws": runs}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Mean and standard deviation of each headline metric over runs (splits or draws), per feature set.

    ``runs`` maps a feature set name to its :func:`score` dicts. Returns ``{metric: {name: mean}}`` and
    ``{metric + "_std": {name: std}}`` for each metric of ``METRICS``.
    """
    out: dict = {}
    for m in METRICS:
        out[m] = {name: float(np.mean([s[m] for s in r])) for name, r in runs.items()}
        out[f"{m}_std"] = {name: float(np.std([s[m] for s in r])) for name, r in runs.items()}
    return out


def paired(a: str, b: str, metric: str, runs: list[dict]) -> dict:
    """Paired difference a - b of one metric over runs scored on the same cells (splits or draws).

    ``runs`` are per-run dicts name -> score dict. Returns ``a``, ``b``, ``metric``, ``mean_diff``
    and ``sd`` (fractions, not points), ``wins`` (runs where a scored higher) and ``n``.
    """
    d = np.array([r[a][metric] - r[b][metric] for r in runs])
    return {"a": a, "b": b, "metric": metric, "mean_diff": float(d.mean()), "sd": float(d.std()),
            "wins": int((d > 0).sum()), "n": int(d.size)}


def verdict(p: dict, *, margin: float = 0.01) -> str:
    """'beat', 'lost to' or 'did not clearly beat': a win needs a mean lead of ``margin`` (1 point)
    and at least 80 % of the paired runs, so a tie in the noise is called one."""
    if p["mean_diff"] >= margin and p["wins"] >= 0.8 * p["n"]:
        return "beat"
    if p["mean_diff"] <= -margin and p["wins"] <= 0.2 * p["n"]:
        return "lost to"
    return "did not clearly beat"


def cv_score(info: dict) -> float:
    """A search summary's ``cv_balanced_accuracy``, -inf when unsearched (missing or NaN): it never wins."""
    v = info.get("cv_balanced_accuracy", float("nan"))
    return -np.inf if v is None or np.isnan(v) else v


def best_by_validation(table: dict[str, dict], names: tuple[str, ...] | list[str]) -> str:
    """The first of ``names`` whose ``cv_balanced_accuracy`` in ``table`` is within one standard error
    (``cv_se``) of the best: the one-standard-error rule (Hastie, Tibshirani & Friedman, *Elements of
    Statistical Learning*, 7.10).

    ``names`` go simplest first, so a richer choice must beat a simpler one by more than the validation
    noise; a choice by the bare maximum follows that noise (the cost is paid on test blocks, never seen
    here). Scores are validation inside the training region, never test cells; an unsearched (NaN)
    score never wins, and a missing ``cv_se`` counts as 0 (the bare maximum).
    """
    def cv(name: str) -> float:
        return cv_score(table[name])

    best = max(names, key=lambda n: (cv(n), -list(names).index(n)))
    se = table[best].get("cv_se")
    threshold = cv(best) - (0.0 if se is None or np.isnan(se) else se)
    return next(n for n in names if cv(n) >= threshold)
