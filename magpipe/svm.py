"""The SVM on features: scaling + RBF SVC, C and gamma chosen by spatially blocked CV.

Blocked CV (folds are groups of spatial blocks) matters for the same reason as
the spatial holdout: random folds of neighbouring cells would reward
overfitting to local texture and pick too-small kernels.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from magpipe.config import SVMConfig

log = logging.getLogger("magpipe.svm")


def make_svm(*, C: float = 1.0, gamma: float | str = "scale") -> Pipeline:
    return Pipeline(
        [("scale", StandardScaler()), ("svc", SVC(kernel="rbf", C=C, gamma=gamma, class_weight="balanced"))]
    )


def calibrated(svm: Pipeline, n_min_class: int) -> CalibratedClassifierCV | Pipeline:
    """Platt-scaled probabilities from internal CV, then one SVM refit on all cells (ensemble=False)."""
    folds = min(3, n_min_class)
    if folds < 2:
        return svm
    return CalibratedClassifierCV(svm, method="sigmoid", cv=StratifiedKFold(folds), ensemble=False)


def fit_svm(X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: SVMConfig) -> tuple[Pipeline, dict]:
    """Search C and gamma by blocked CV (balanced accuracy), then refit with calibrated probabilities.

    Returns the fitted pipeline and a summary of the search.
    """
    n_features = X.shape[1]
    grid = {"svc__C": list(cfg.C), "svc__gamma": [g / n_features for g in cfg.gamma_scale]}
    n_groups = np.unique(groups).size
    folds = min(cfg.cv_folds, n_groups)
    if folds >= 2 and np.unique(y).size > 1:
        search = GridSearchCV(make_svm(), grid, cv=GroupKFold(n_splits=folds),
                              scoring="balanced_accuracy", n_jobs=1)
        with warnings.catch_warnings():  # a spatial fold may lack a class; the score handles it
            warnings.simplefilter("ignore", UserWarning)
            search.fit(X, y, groups=groups)
        best, cv_score = search.best_params_, float(search.best_score_)
    else:
        log.warning("only %d spatial block(s) in training; C/gamma not searched", n_groups)
        best, cv_score = {"svc__C": cfg.C[len(cfg.C) // 2], "svc__gamma": 1.0 / n_features}, float("nan")
    smallest = int(np.unique(y, return_counts=True)[1].min())
    model = calibrated(make_svm(C=best["svc__C"], gamma=best["svc__gamma"]), smallest)
    model.fit(X, y)
    info = {"C": float(best["svc__C"]), "gamma": float(best["svc__gamma"]), "cv_balanced_accuracy": cv_score,
            "cv_folds": folds, "n_support": n_support(model)}
    log.info("SVM: C=%g gamma=%.3g cv balanced acc %.3f, %d support vectors", info["C"], info["gamma"],
             cv_score, info["n_support"])
    return model, info


def n_support(model) -> int:
    """Support vectors of the deployed SVM: what prediction cost grows with."""
    inner = model.calibrated_classifiers_[0].estimator if hasattr(model, "calibrated_classifiers_") else model
    return int(inner.named_steps["svc"].support_.size)


def predict_with_confidence(model: Pipeline, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class = most probable class, confidence = its probability, so the two always agree."""
    if len(X) == 0:
        return np.zeros(0, dtype="int16"), np.zeros(0, dtype="float32")
    proba = model.predict_proba(X)
    best = proba.argmax(axis=1)
    return model.classes_[best].astype("int16"), proba[np.arange(len(X)), best].astype("float32")
