"""The SVM on features: scaling + RBF SVC, C and gamma chosen by spatially blocked CV.

Blocked CV (folds are groups of spatial blocks) matters for the same reason as
the spatial holdout: random folds of neighbouring cells would reward
overfitting to local texture and pick too-small kernels.

Prediction cost, not training, is what scales with the survey, so the RBF kernel
is computed by :class:`RBFFeatures` as one BLAS matrix product per batch and fed
to ``SVC(kernel="precomputed")``: the same decision function as ``SVC(kernel="rbf")``
(libsvm evaluates one kernel pair at a time, several times slower; figures in
docs/performance.md). ``kernel="nystroem"`` trades exactness for another factor
of several: a low-rank feature map on ``n_components`` landmarks and a linear SVM. ``kernel="lowrank"``
keeps the exact SVM (``SVC``, the same hinge loss and C) on that low-rank kernel: its decision is linear
in the feature map, so it costs the landmarks, not the support vectors, per cell.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from magpipe.config import SVMConfig
from magpipe.metrics import balanced_accuracy

log = logging.getLogger("magpipe.svm")


PREDICT_BATCH = 8192  # cells per kernel block: bounds memory at ~ batch x landmarks x 12 bytes


class RBFFeatures(TransformerMixin, BaseEstimator):
    """RBF kernel values against landmarks: all training cells (exact) or a Nystroem sample.

    ``n_components=None``: landmarks are every training cell and ``transform`` gives
    K(X, X_train), the input of ``SVC(kernel="precomputed")``. An integer m: m random
    landmarks and the Nystroem map K(X, L) K(L, L)^-1/2, whose inner products
    approximate the kernel, for a linear model.

    Parameters
    ----------
    gamma : RBF width, exp(-gamma |x - x'|^2), in 1 / squared units of the (standardised) features.
    n_components : Nystroem landmarks m, or None for the exact kernel against every training cell.
    random_state : seed of the landmark draw.
    """

    def __init__(self, gamma: float = 1.0, n_components: int | None = None, random_state: int = 0):
        self.gamma = gamma
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, y=None):
        """Keep the landmarks from training features X (n, F), and for Nystroem K(L, L)^-1/2 (m, m) float32."""
        return self.fit_landmarks(X).fit_normalization()

    def fit_landmarks(self, X) -> RBFFeatures:
        """The landmarks alone (what does not depend on ``gamma``): all of X (n, F), or the Nystroem draw."""
        X = np.asarray(X, dtype=np.float32)
        if self.n_components is None or self.n_components >= len(X):
            self.landmarks_ = X.copy()
        else:
            pick = np.random.default_rng(self.random_state).choice(len(X), self.n_components, replace=False)
            self.landmarks_ = X[np.sort(pick)]
        self.landmark_sq_ = (self.landmarks_.astype(np.float64) ** 2).sum(1).astype(np.float32)
        return self

    def fit_normalization(self, landmark_distances: np.ndarray | None = None) -> RBFFeatures:
        """For Nystroem, K(L, L)^-1/2 (m, m) float32 at the current ``gamma`` (from the landmarks' squared
        distances when given, else computed); None for the exact kernel."""
        if self.n_components is None:
            self.normalization_ = None
        else:  # K_mm^-1/2 by SVD, as sklearn's Nystroem, but directions below float32 resolution are
            # dropped, not floored at 1e-12: their 1/sqrt(S) would amplify rounding of K into the decision
            d = self.sq_distances(self.landmarks_) if landmark_distances is None else landmark_distances
            U, S, Vt = np.linalg.svd(self.kernel_of(d).astype(np.float64))
            inv = np.where(S > 1e-5 * S[0], 1 / np.sqrt(np.maximum(S, 1e-300)), 0.0)
            self.normalization_ = ((U * inv) @ Vt).astype(np.float32)
        return self

    def sq_distances(self, X: np.ndarray) -> np.ndarray:
        """Squared distances (n, m) float32 of features X (n, F) to the landmarks: what the kernel is of."""
        X = np.asarray(X, dtype=np.float32)
        d = X @ self.landmarks_.T
        d *= -2.0
        d += (X.astype(np.float64) ** 2).sum(1).astype(np.float32)[:, None]
        d += self.landmark_sq_
        return np.maximum(d, 0.0, out=d)

    def kernel_of(self, sq_distances: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """exp(-gamma d) of squared distances, into ``out`` (may be the distances themselves) or a new array."""
        if out is None:
            out = sq_distances.copy()
        elif out is not sq_distances:
            np.copyto(out, sq_distances)
        out *= -self.gamma
        return np.exp(out, out=out)

    def _kernel(self, X: np.ndarray) -> np.ndarray:
        d = self.sq_distances(X)
        return self.kernel_of(d, out=d)

    def transform(self, X):
        """Features X (n, F) -> (n, m) float32: K(X, landmarks), or the Nystroem map of it."""
        return self.map_kernel(self._kernel(X))

    def map_kernel(self, k: np.ndarray) -> np.ndarray:
        """Kernel values (n, m) -> the model's input: themselves (exact), or their Nystroem map."""
        return k if self.normalization_ is None else k @ self.normalization_


class PartScaler(StandardScaler):
    """Standardise each feature, then weight the parts of a concatenated feature set equally.

    Standardised features each add about 2 to an RBF kernel's squared distance, so a part with
    176 features (an encoder) would outweigh one with 21 (window statistics) eightfold; here each of
    the n parts contributes 1/n of the distance, whatever its size. ``parts`` = the parts' feature
    counts, in column order; None or one part: plain standardisation.
    """

    def __init__(self, parts: tuple[int, ...] | None = None, *, copy: bool = True, with_mean: bool = True,
                 with_std: bool = True):
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)
        self.parts = parts

    def fit(self, X, y=None, sample_weight=None):
        super().fit(X, y, sample_weight)
        if self.parts and len(self.parts) > 1:
            if sum(self.parts) != self.scale_.size:
                raise ValueError(f"parts {self.parts} do not add up to {self.scale_.size} features")
            total, n = sum(self.parts), len(self.parts)
            self.scale_ = self.scale_ * np.concatenate([np.full(k, np.sqrt(n * k / total)) for k in self.parts])
        return self


def make_svm(*, C: float = 1.0, gamma: float = 1.0, kernel: str = "exact", n_components: int = 300,
             seed: int = 0, parts: tuple[int, ...] | None = None, class_weight: str = "balanced") -> Pipeline:
    """Scaling (:class:`PartScaler`), then an exact RBF SVC or its Nystroem approximation (same
    hyperparameter names).

    By default classes are weighted inversely to their frequency (``class_weight="balanced"``): labelled
    areas of rock units are rarely of one size, and a rare unit should not be outvoted by a common one.
    ``"prior"`` weights every cell alike, so common units win close calls: higher pixel accuracy,
    lower balanced accuracy.

    Parameters
    ----------
    C : SVM regularisation.
    gamma : RBF width in 1 / squared standardised feature units (see :class:`RBFFeatures`).
    kernel : ``"exact"`` (precomputed RBF kernel, ``SVC``), ``"nystroem"`` (its low-rank map, ``LinearSVC``)
        or ``"lowrank"`` (the low-rank map, ``SVC(kernel="linear")``: the exact SVM on the approximate kernel).
    n_components : Nystroem landmarks; ignored for ``"exact"``.
    seed : seed of the landmark draw and of ``LinearSVC``.
    parts : feature counts of a concatenated set's parts, weighted equally (see :class:`PartScaler`).
    class_weight : ``"balanced"`` or ``"prior"``.

    Raises
    ------
    ValueError
        For an unknown ``kernel``.
    """
    if class_weight not in ("balanced", "prior"):
        raise ValueError(f"unknown class_weight {class_weight!r}; use 'balanced' or 'prior'")
    weight = "balanced" if class_weight == "balanced" else None
    if kernel == "exact":
        feats, svc = RBFFeatures(gamma), SVC(kernel="precomputed", C=C, class_weight=weight)
    elif kernel == "nystroem":
        feats = RBFFeatures(gamma, n_components=n_components, random_state=seed)
        svc = LinearSVC(C=C, class_weight=weight, random_state=seed)
    elif kernel == "lowrank":
        feats = RBFFeatures(gamma, n_components=n_components, random_state=seed)
        svc = LinearKernelSVC(C=C, class_weight=weight)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; use 'exact', 'nystroem' or 'lowrank'")
    return Pipeline([("scale", PartScaler(parts)), ("kernel", feats), ("svc", svc)])


class LinearKernelSVC(SVC):
    """``SVC(kernel="linear")`` whose decision function is one product with its primal weights, (n, F) x (F, P)
    for its P class pairs, where libsvm sums over every support vector: the same function (to float rounding,
    tested), and on a low-rank map of 300 columns several times cheaper than over 1,389 support vectors."""

    def __init__(self, *, C: float = 1.0, class_weight=None):
        super().__init__(kernel="linear", C=C, class_weight=class_weight)

    def fit(self, X, y, sample_weight=None):
        super().fit(X, y, sample_weight)
        self.primal_ = np.asarray(self.coef_)  # SVC computes coef_ from its support vectors at every access
        return self

    def _decision_function(self, X):
        # sklearn's binary margin, or its one-vs-one values (SVC.decision_function turns those into one-vs-rest)
        d = self._validate_for_predict(X) @ self.primal_.T + self.intercept_
        return d.ravel() if len(self.classes_) == 2 else d


class VoteWithProbabilities(ClassifierMixin, BaseEstimator):
    """The SVM's own class (its one-vs-one vote), with a calibrated confidence: how often a call like this
    one is right, for the mix of units where the map is used.

    The class is what the blocked-CV search scored: the argmax of the SVM's decision function. Taking
    instead the argmax of calibrated probabilities (sklearn's ``CalibratedClassifierCV``) cost 5 to 7
    points of validation balanced accuracy on Britain: the per-class sigmoids, fitted one class against
    the rest on vote counts, do not rank the classes as the vote does.

    The confidence is calibrated per voted class ("top-label", Gupta & Ramdas 2022): for each class k, a
    Platt sigmoid ``P(right | vote k) = 1 / (1 + exp(-(a_k d_k + b_k)))`` of its decision value ``d_k``,
    fitted on the cells voted k out of fold. Two things make it hold on held-out ground:

    - the out-of-fold decisions come from the spatially blocked folds of the search (``folds``), since
      cells beside a training cell are easier than the held-out blocks a map is judged on;
    - the cells are weighted by ``mix`` / (their class's share of the training cells): training cells are
      drawn per class, so a rare unit is as common among them as the commonest, and a confidence fitted
      on them says how often a vote is right on a balanced map, not on the survey's.

    On five spatial splits this took the test cells' expected calibration error from 28 to 8 points on the
    demo and from 28 to 4 on Britain 1 km; on Rondônia, where no spatial fold holds every unit and the
    folds fall back to stratified ones, it is worse than before (``benchmarks/calibration.py``,
    docs/results.md). A slope below 0 (a larger margin less often right: noise) is replaced by the constant
    rate; so is a class never voted out of fold (the overall rate). One SVM is deployed, refitted on all
    cells, so prediction costs one kernel pass.

    Only the voted class's probability is calibrated, so it is the only one given: probabilities (n, K)
    hold the confidence in the voted column and 0 in the others. A smoothed map's confidence
    (:mod:`magpipe.smoothing`) is then the window's mean of the confidences of the cells voting its class,
    lowered by every neighbour voting another.

    Parameters
    ----------
    estimator : the SVM pipeline (:func:`make_svm`).
    folds : the (fit, validation) index pairs of the out-of-fold decisions (:func:`magpipe.splits.cv_folds`),
        or a number of stratified folds where there are no spatial ones.
    mix : (max class code + 1,) share of each class code among the labelled cells of the region the
        training cells were drawn from (:attr:`magpipe.splits.Cells.mix`); None weighs the cells alike.
    """

    def __init__(self, estimator=None, folds: int | list = 3, mix: np.ndarray | None = None):
        self.estimator = estimator
        self.folds = folds
        self.mix = mix

    def fit(self, X, y):
        from sklearn.base import clone

        y = np.asarray(y)
        d, y_oof = out_of_fold_decisions(self.estimator, X, y, self.folds)
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.classes_ = self.estimator_.classes_
        self.slope_, self.intercept_ = top_label_sigmoids(d, y_oof, self.classes_, prior_weights(y, y_oof, self.mix))
        self.top_label_ = True
        return self

    def decision_function(self, X):
        return decision_matrix(self.estimator_.decision_function(X))

    def proba_from_decision(self, d: np.ndarray) -> np.ndarray:
        """Probabilities (n, K) from decision values (n, K), without a second kernel pass: the voted column
        is the calibrated confidence, the others 0. (A bundle from before the top-label calibration
        normalises its one-against-the-rest sigmoids to sum to 1, as it was fitted for.)"""
        with np.errstate(over="ignore"):  # exp overflows to inf far from the boundary: p = 0 there, as it should be
            p = 1.0 / (1.0 + np.exp(-(d * self.slope_ + self.intercept_)))
        if getattr(self, "top_label_", False):
            return np.where(np.arange(d.shape[1]) == d.argmax(axis=1)[:, None], p, 0.0)
        return p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)

    def predict_proba(self, X):
        return self.proba_from_decision(self.decision_function(X))

    def predict(self, X):
        return self.classes_[self.decision_function(X).argmax(axis=1)]


def out_of_fold_decisions(estimator, X: np.ndarray, y: np.ndarray, folds: int | list) -> tuple[np.ndarray, np.ndarray]:
    """Decision values (m, K) of ``estimator`` refitted without each fold, on that fold's validation cells, and
    their classes (m,); folds whose fitting side lacks a class are skipped (their columns would not match).
    ``folds``: (fit, validation) index pairs, or a number of stratified folds."""
    from sklearn.base import clone

    K = np.unique(y).size
    pairs = folds if isinstance(folds, list) else list(StratifiedKFold(folds).split(X, y))
    d, idx = [], []
    for fit, val in pairs:
        if np.unique(y[fit]).size < K or len(val) == 0:
            continue
        d.append(decision_matrix(clone(estimator).fit(X[fit], y[fit]).decision_function(X[val])))
        idx.append(np.asarray(val))
    if not d:
        return np.zeros((0, K)), np.zeros(0, dtype=y.dtype)
    return np.concatenate(d), y[np.concatenate(idx)]


def prior_weights(y_train: np.ndarray, y: np.ndarray, mix: np.ndarray | None) -> np.ndarray:
    """Weights (m,) of cells of classes ``y`` that make the training cells' class shares (``y_train``) those
    of ``mix`` (by class code); ones where ``mix`` is None."""
    if mix is None or y.size == 0:
        return np.ones(y.size)
    share = np.bincount(y_train, minlength=len(mix)) / y_train.size
    return np.asarray(mix, dtype=float)[y] / np.maximum(share[y], 1e-12)


def top_label_sigmoids(d: np.ndarray, y: np.ndarray, classes: np.ndarray, w: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept (K,) of each class's Platt sigmoid of P(right | voted k) on its decision value,
    from out-of-fold decisions ``d`` (m, K), classes ``y`` (m,) and weights ``w`` (m,)
    (:class:`VoteWithProbabilities`)."""
    from scipy.special import logit
    from sklearn.linear_model import LogisticRegression

    vote = d.argmax(axis=1) if len(d) else np.zeros(0, dtype=int)
    right = classes[vote] == y if len(d) else np.zeros(0, dtype=bool)

    def rate(m):  # a weighted rate kept off 0 and 1 (half a pseudo-cell of each outcome)
        return (np.sum(w[m] * right[m]) + 0.5) / (np.sum(w[m]) + 1.0)

    overall = rate(np.ones(len(right), dtype=bool))
    slope, intercept = np.zeros(len(classes)), np.zeros(len(classes))
    for k in range(len(classes)):
        m = vote == k
        intercept[k] = logit(rate(m) if m.any() else overall)
        if np.unique(right[m]).size == 2:
            lr = LogisticRegression(C=1e4).fit(d[m, k : k + 1], right[m].astype(int), sample_weight=w[m])
            if lr.coef_[0, 0] > 0:
                slope[k], intercept[k] = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    return slope, intercept


def decision_matrix(d: np.ndarray) -> np.ndarray:
    """Decision values as (n, K): a binary SVM's (n,) margin becomes (-d, d), so argmax is its class."""
    d = np.asarray(d, dtype=np.float64)
    return np.column_stack([-d, d]) if d.ndim == 1 else d


def calibrated(svm: Pipeline, y: np.ndarray, folds: list | None = None, mix: np.ndarray | None = None
               ) -> VoteWithProbabilities | Pipeline:
    """The SVM with a calibrated confidence (:class:`VoteWithProbabilities`) from the spatial ``folds`` where
    two or more can be fitted (every class on their fitting side), else from min(3, cells of the smallest
    class) stratified folds. A class with one training cell leaves nothing to calibrate on: ``svm`` is
    returned unchanged."""
    K, stratified = np.unique(y).size, min(3, int(np.unique(y, return_counts=True)[1].min()))
    if stratified < 2:
        return svm
    if folds is not None and sum(np.unique(y[fit]).size == K for fit, _ in folds) >= 2:
        return VoteWithProbabilities(svm, folds=list(folds), mix=mix)
    return VoteWithProbabilities(svm, folds=stratified, mix=mix)


def with_probabilities(model: Pipeline, X: np.ndarray, y: np.ndarray, *, folds: list | None = None,
                       mix: np.ndarray | None = None) -> VoteWithProbabilities | Pipeline:
    """An uncalibrated :func:`fit_svm` result refitted on X (n, F), y (n,) with a calibrated confidence
    (:func:`calibrated`: ``folds``, the search's, and ``mix``, the training region's class shares), for a
    choice among several SVMs to calibrate only the one it keeps."""
    from sklearn.base import clone

    out = calibrated(clone(model), y, folds, mix).fit(X, y)
    fold_nystroem(out)
    return out


def fit_svm(X: np.ndarray, y: np.ndarray, groups: np.ndarray | list, cfg: SVMConfig, *,
            parts: tuple[int, ...] | None = None, calibrate: bool = True, validate: bool = False,
            mix: np.ndarray | None = None) -> tuple[Pipeline, dict]:
    """Search C and gamma by blocked CV (balanced accuracy), then refit with calibrated probabilities.

    Parameters
    ----------
    X : (n, F) float32 features of the training cells.
    y : (n,) int class codes 1..K.
    groups : (n,) spatial block id of each cell (CV folds never split a block), or the CV folds themselves:
        (fit, validation) index pairs, as :func:`magpipe.splits.cv_folds` makes them with a gap between.
    cfg : the SVM section of the run config; gammas searched are ``cfg.gamma_scale / F``, scaled to the
        number of features so one grid suits any feature set. ``kernel: auto`` fits the exact kernel (the
        choice of kernel is :func:`magpipe.selection.choose_kernel`'s, for the deployed set alone).
    parts : for a concatenated feature set, its parts' feature counts (weighted equally).
    calibrate : False where only the classes are wanted (scores, choices): the same classes without the
        calibration's extra fits, and probabilities NaN (:func:`class_scores`).
    mix : the training region's class shares, for the calibration (:class:`VoteWithProbabilities`).
    validate : score a grid of one (C, gamma) by the CV too (a choice between fixed models), where it
        is otherwise used unscored.

    Returns
    -------
    model : fitted classifier, with ``predict_proba`` when calibrated.
    info : ``kernel``, ``C``, ``gamma``, ``cv_balanced_accuracy`` (NaN when the grid holds one pair, which is
        then used unsearched, or when fewer than 2 blocks left nothing to search: then the middle C and
        gamma = 1 / F are used), ``cv_se`` (its standard error over the folds), ``cv_folds``, ``n_support``,
        and ``n_components`` for the low-rank kernels.
    """
    n_features, cv_se = X.shape[1], float("nan")
    kernel = "exact" if cfg.kernel == "auto" else cfg.kernel
    grid = {"svc__C": list(cfg.C), "kernel__gamma": [g / n_features for g in cfg.gamma_scale]}
    base = make_svm(kernel=kernel, n_components=cfg.n_components, seed=cfg.seed, parts=parts,
                    class_weight=cfg.class_weight)
    if isinstance(groups, list):  # explicit (fit, validation) folds, e.g. with a gap (splits.cv_folds)
        cv, folds, n_groups = groups, len(groups), len(groups)
    else:
        n_groups = np.unique(groups).size
        folds = min(cfg.cv_folds, n_groups)
        cv = GroupKFold(n_splits=folds) if folds >= 2 else None
    if len(cfg.C) * len(cfg.gamma_scale) == 1 and not validate:  # nothing to choose: no search, no CV score
        best, cv_score = {"svc__C": cfg.C[0], "kernel__gamma": cfg.gamma_scale[0] / n_features}, float("nan")
    elif folds >= 2 and np.unique(y).size > 1:
        fold_list = groups if isinstance(groups, list) else list(cv.split(X, y, groups))
        results = grid_search(base, X, y, fold_list, C=grid["svc__C"], gamma=grid["kernel__gamma"])
        i = results["best_index"]
        best, cv_score = results["params"][i], float(results["mean_test_score"][i])
        cv_se = float(results["std_test_score"][i]) / np.sqrt(folds)
    else:
        log.debug("only %d spatial fold(s) in training; C/gamma not searched", n_groups)  # the stage warns once
        best, cv_score = {"svc__C": cfg.C[len(cfg.C) // 2], "kernel__gamma": 1.0 / n_features}, float("nan")
    spatial = (groups if isinstance(groups, list) else list(cv.split(X, y, groups))) if folds >= 2 else None
    model = calibrated(base.set_params(**best), y, spatial, mix) if calibrate else base.set_params(**best)
    model.fit(X, y)
    fold_nystroem(model)
    info = {"kernel": kernel, "C": float(best["svc__C"]), "gamma": float(best["kernel__gamma"]),
            "cv_balanced_accuracy": cv_score, "cv_se": cv_se, "cv_folds": folds, "n_support": n_support(model),
            **({"n_components": cfg.n_components} if kernel != "exact" else {})}
    log.debug("SVM (%s kernel): C=%g gamma=%.3g cv balanced acc %.3f, %s support vectors", kernel, info["C"],
             info["gamma"], cv_score, info["n_support"])
    return model, info


def grid_search(base: Pipeline, X: np.ndarray, y: np.ndarray, folds: list, *, C, gamma) -> dict:
    """Balanced accuracy of ``base`` (:func:`make_svm`) at every (gamma, C) on every (fit, validation) fold:
    sklearn's ``GridSearchCV(base, {"svc__C": C, "kernel__gamma": gamma}, cv=folds,
    scoring="balanced_accuracy")`` figure for figure (tested), without its refit, and with each fold's
    scaling and squared distances to the landmarks computed once rather than once per grid point: the
    search was most of the cost of choosing on validation and of evaluation.

    Parameters
    ----------
    X, y : (n, F) features and (n,) classes.
    folds : (fit, validation) index pairs.
    C, gamma : the values searched.

    Returns
    -------
    ``params`` (one dict per grid point, gamma outermost, as ``GridSearchCV`` orders them), their
    ``mean_test_score`` and ``std_test_score`` over the folds (NaN where a fold's fitting side holds one
    class: it cannot be fit, as with ``error_score=nan``), and ``best_index`` (the first of the best,
    a NaN mean never best unless all are).
    """
    from sklearn.base import clone

    scores = np.full((len(gamma), len(C), len(folds)), np.nan)
    for f, (fit, val) in enumerate(folds):
        if np.unique(y[fit]).size < 2:
            continue
        scaler = clone(base.named_steps["scale"]).fit(X[fit])
        z_fit = scaler.transform(X[fit])
        feats = clone(base.named_steps["kernel"]).fit_landmarks(z_fit)
        d_fit, d_val = feats.sq_distances(z_fit), feats.sq_distances(scaler.transform(X[val]))
        d_mm = feats.sq_distances(feats.landmarks_) if feats.n_components is not None else None
        for g, gam in enumerate(gamma):
            feats.set_params(gamma=gam).fit_normalization(d_mm)
            # in float64 once, as both SVCs would convert them on every fit and prediction
            k_fit, k_val = (feats.map_kernel(feats.kernel_of(d)).astype(np.float64) for d in (d_fit, d_val))
            for c, cc in enumerate(C):
                svc = clone(base.named_steps["svc"]).set_params(C=cc).fit(k_fit, y[fit])
                scores[g, c, f] = balanced_accuracy(y[val], svc.predict(k_val))
    scores = scores.reshape(len(gamma) * len(C), len(folds))
    mean = np.average(scores, axis=1)
    std = np.sqrt(np.average((scores - mean[:, None]) ** 2, axis=1))
    ranked = np.nan_to_num(mean, nan=np.nanmin(mean) - 1) if not np.isnan(mean).all() else np.zeros_like(mean)
    return {"params": [{"svc__C": cc, "kernel__gamma": gam} for gam in gamma for cc in C],
            "mean_test_score": mean, "std_test_score": std, "best_index": int(np.argmax(ranked))}


def _pipelines(model) -> list[Pipeline]:
    if hasattr(model, "estimator_"):  # VoteWithProbabilities
        return [model.estimator_]
    if hasattr(model, "calibrated_classifiers_"):  # bundles from before it: CalibratedClassifierCV
        return [c.estimator for c in model.calibrated_classifiers_]
    return [model]


def feature_scaler(model) -> StandardScaler:
    """The fitted StandardScaler the SVM sees features through (for similarity in the same units)."""
    return _pipelines(model)[0].named_steps["scale"]


def fold_nystroem(model) -> None:
    """Fold the Nystroem map's K_mm^-1/2 into the fitted linear SVM: (K N) w = K (N w), in place.

    The same decision function with one matrix product per cell fewer (m x m of the
    m x (F + m) multiply-adds), which halves prediction cost at 300 landmarks.
    """
    for pipe in _pipelines(model):
        kernel, svc = pipe.named_steps["kernel"], pipe.named_steps["svc"]
        if isinstance(kernel, RBFFeatures) and kernel.normalization_ is not None and isinstance(svc, LinearSVC):
            svc.coef_ = (svc.coef_ @ kernel.normalization_.T).astype(svc.coef_.dtype)
            kernel.normalization_ = None


def n_support(model) -> int | None:
    """Support vectors of the deployed exact SVM (what its prediction cost grows with); None for the low-rank
    kernels, whose cost is their landmarks."""
    pipe = _pipelines(model)[0]
    svc, kernel = pipe.named_steps["svc"], pipe.named_steps["kernel"]
    low_rank = getattr(kernel, "n_components", None) is not None
    return int(svc.support_.size) if hasattr(svc, "support_") and not low_rank else None


def class_scores(model, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Votes and probabilities (n, K) float32 of ``model.classes_`` for features X (n, F), computed
    ``PREDICT_BATCH`` rows at a time to bound the kernel's memory.

    Votes are the SVM's decision values (their argmax is its class); probabilities are calibrated,
    NaN from an SVM left uncalibrated. A bundle from before :class:`VoteWithProbabilities` votes with
    its probabilities, as it always classified.
    """
    K = len(model.classes_)
    votes, proba = np.zeros((len(X), K), dtype="float32"), np.full((len(X), K), np.nan, dtype="float32")
    for b0 in range(0, len(X), PREDICT_BATCH):  # the kernel block of a whole tile would not fit
        x = X[b0 : b0 + PREDICT_BATCH]
        if hasattr(model, "proba_from_decision"):
            votes[b0 : b0 + len(x)] = d = model.decision_function(x)
            proba[b0 : b0 + len(x)] = model.proba_from_decision(d)
        elif hasattr(model, "predict_proba"):
            votes[b0 : b0 + len(x)] = proba[b0 : b0 + len(x)] = model.predict_proba(x)
        else:  # a class with one training cell: nothing to calibrate on
            votes[b0 : b0 + len(x)] = decision_matrix(model.decision_function(x))
    return votes, proba


def best_class(model, votes: np.ndarray, proba: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Class = the SVM's vote (argmax of ``votes`` along ``axis``), confidence = that class's probability.

    NaN votes mark no-data cells: class 0 and confidence NaN there (:func:`vote`, on arrays).
    """
    classes = torch.as_tensor(np.asarray(model.classes_).astype(np.int64))
    cls, conf = vote(classes, torch.from_numpy(np.asarray(votes)), torch.from_numpy(np.asarray(proba)), axis)
    return cls.numpy(), conf.numpy()


def vote(classes: torch.Tensor, votes: torch.Tensor, proba: torch.Tensor, axis: int = -1
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class codes ``classes`` (K,) of the argmax of ``votes`` along ``axis`` (the first of equals, as numpy),
    and that class's probability; class 0 and confidence NaN where a vote is NaN (no data).

    Returns int16 and float32 tensors on the votes' device.
    """
    missing = torch.isnan(votes).any(dim=axis)
    # along a contiguous last axis: argmax over the first axis of (K, H, W) was 6x slower on the CPU
    best = torch.nan_to_num(votes, nan=-torch.inf).movedim(axis, -1).contiguous().argmax(-1).unsqueeze(axis)
    cls = torch.where(missing, 0, classes[best.squeeze(axis)]).to(torch.int16)
    conf = torch.take_along_dim(proba, best, dim=axis).squeeze(axis)
    return cls, torch.where(missing, float("nan"), conf).float()


def predict_with_confidence(model: Pipeline, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class = the SVM's vote, confidence = its calibrated probability (:func:`best_class`).

    Parameters
    ----------
    model : fitted classifier with ``predict_proba`` (from :func:`fit_svm`).
    X : (n, F) float32 features.

    Returns
    -------
    cls : (n,) int16 class codes 1..K.
    conf : (n,) float32 probability of ``cls``, 0..1; NaN from an SVM left uncalibrated (:func:`calibrated`).
    """
    return best_class(model, *class_scores(model, X), axis=1)
