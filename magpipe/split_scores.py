"""One spatial split of the evaluation, in pieces that can run apart: each feature set scored on its own
(:func:`score_set`), then what depends on the set the map would choose (:func:`finish_split`).

Every feature set is scored on the same cells: ``ae`` (the trained encoder), ``raw`` (the paper's
baseline), ``stats`` (window statistics, the strong classical control), ``random`` (the same encoder
untrained: what training added), ``ae+stats``, and ``deployed``: the set the map uses, chosen afresh on
each split's training region when ``svm.features`` is ``auto``. The pieces are independent until the
choice, so the evaluate stage runs them as separate tasks on a Dask cluster
(:func:`magpipe.stages.evaluate.score_splits`); :func:`evaluate_split` runs them in turn, with the same
results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from magpipe.bundle import ModelBundle
from magpipe.config import RunConfig
from magpipe.evaluation import best_by_validation, score, sparse_label_scores
from magpipe.features import cell_features, part_sizes
from magpipe.io.survey import LabelGrids
from magpipe.layer_groups import layer_groups, occluded
from magpipe.metrics import calibration
from magpipe.selection import candidates, choose_kernel, choose_smoothing, fixed_svm
from magpipe.smoothing import block_predictions
from magpipe.splits import Cells, cv_folds, holdout_cells, labelled_split, training_cells
from magpipe.svm import fit_svm, predict_with_confidence, with_probabilities

log = logging.getLogger("magpipe")

SCORED = ("ae", "raw", "stats", "random", "ae+stats")  # always scored: the encoder and its controls
OTHER_WEIGHT = {"balanced": "prior", "prior": "balanced"}


def evaluation_sets(bundle: ModelBundle, cfg: RunConfig) -> tuple[str, ...]:
    """The names of every feature set scored: the trained encoder ``ae``, its controls, the candidates of the
    deployed choice and the bundle's own set (each of the bundle's encoder, patch size and inputs:
    :meth:`magpipe.bundle.ModelBundle.named_features`)."""
    return tuple(dict.fromkeys((*SCORED, *candidates(cfg), bundle.feature_set)))


@dataclass(frozen=True)
class SplitCells:
    """The cells of one spatial split (``cfg.evaluate.seed``): its SVM ``train`` and scored ``test`` cells,
    the label ``grids`` it was made from (without classes left out), ``unscored`` (labelled classes with no
    scored test cell) and the number of held-out cells before subsampling."""

    grids: LabelGrids
    train: Cells
    test: Cells
    majority: int  # the most common class of the (unsubsampled) training region: the floor to clear
    unscored: list[str]
    n_test_available: int


def split_cells(cfg: RunConfig, grids: LabelGrids) -> SplitCells:
    """The split of ``cfg.evaluate.seed``. Raises DataValidationError when a class falls short on one side."""
    labelled = np.flatnonzero(np.bincount(grids.labels.ravel(), minlength=len(grids.classes) + 1)[1:])
    split, grids = labelled_split(grids, cfg, need_test=True)
    train, test = training_cells(split, grids.labels, cfg), holdout_cells(split, grids.labels, cfg)
    scored = set(np.unique(test.y).tolist())
    majority = int(np.bincount(grids.labels[split.train_rows, split.train_cols]).argmax())
    return SplitCells(grids, train, test, majority, [grids.classes[k] for k in labelled if k + 1 not in scored],
                      int(split.test_rows.size))


def score_set(cfg: RunConfig, bundle: ModelBundle, arrays: list, cells: SplitCells, name: str, *,
              deployed: bool) -> dict:
    """Feature set ``name`` on one split: its SVM (the bundle's own on the deployed split, else refitted on the
    split's training cells with the same search), its scores on the test cells and its sparse-label draws.

    ``arrays`` are the C input grids (2-D, y/x) in ``bundle.inputs`` order. Returns ``model``, ``info`` (the
    search summary), ``score`` (:func:`magpipe.evaluation.score`), ``sparse`` (the draws' scores, or None) and,
    on the deployed split, ``calibration`` (:func:`magpipe.metrics.calibration` of its calibrated
    confidences on the test cells, unsmoothed; None elsewhere).
    """
    fs, train, test = bundle.named_features(name), cells.train, cells.test
    p, K = bundle.patch_px, len(cells.grids.classes)
    X_te = cell_features({name: fs}, arrays, bundle.scaling, test.rows, test.cols)[name]
    X_tr = cell_features({name: fs}, arrays, bundle.scaling, train.rows, train.cols)[name]
    folds = cv_folds(train, cfg)
    if name == bundle.feature_set and deployed:
        model, info = bundle.svm, bundle.meta.get("svm", {})
    else:  # scored by class alone: no calibration
        model, info = fit_svm(X_tr, train.y, folds, cfg.svm, parts=part_sizes(fs), calibrate=False)
    # on the deployed split, how well confidences say how often a set is right: the map's own SVM, the others
    # calibrated as it is (the same classes: calibration leaves the vote alone)
    calibrated = (with_probabilities(model, X_tr, train.y, folds=folds, mix=train.mix)
                  if deployed and model is not bundle.svm else model)
    cls, conf = predict_with_confidence(calibrated, X_te)
    result = score(test.rows, test.cols, test.y, cls, patch_px=p, n_classes=K)
    reliability = calibration(cls == test.y, conf) if deployed else None
    sparse = None
    if cfg.evaluate.sparse_per_class:
        sparse = sparse_label_scores({name: X_tr}, {name: X_te}, train.y, train.blocks, (test.rows, test.cols, test.y),
                                     per_class=cfg.evaluate.sparse_per_class, repeats=cfg.evaluate.sparse_repeats,
                                     patch_px=p, n_classes=K, svm_cfg=cfg.svm, seed=cfg.evaluate.seed,
                                     parts={name: part_sizes(fs)})["draws"][name]
    return {"model": model, "info": info, "score": result, "sparse": sparse, "calibration": reliability}


def finish_split(cfg: RunConfig, bundle: ModelBundle, arrays: list, cells: SplitCells, sets: dict[str, dict], *,
                 deployed: bool) -> dict:
    """The split's result from each feature set's :func:`score_set` (``sets``, in :func:`evaluation_sets`
    order): the deployed choice and what depends on it.

    ``deployed`` is the procedure the map uses, repeated on the split: under ``svm.features: auto`` the
    candidate with the best blocked CV on the split's training cells (its test cells unseen), with the SVM
    kernel chosen as the map's is (:func:`magpipe.selection.choose_kernel`), smoothed as the map's is
    (:func:`magpipe.selection.choose_smoothing`). The controls, the other weighting and the sparse draws use
    the exact kernel; the layer groups the deployed SVM's.

    Returns the split's ``seed``, ``classes``, ``scores`` (every set, ``deployed`` and ``majority``:
    :func:`magpipe.evaluation.score` dicts; ``deployed@prior`` or ``deployed@balanced``: the deployed set
    under the other class weighting, unsmoothed; ``deployed@unsmoothed``: without the map's smoothing;
    ``without <group>``: with a group of layers held at its mean), ``chosen``, ``smooth_px``, ``kernel`` (the
    deployed SVM's), ``kernel_cv`` (the kernel choice's validation table, empty where none was made),
    ``kernel_scores`` (kernel -> test balanced accuracy of the deployed set, unsmoothed, for each kernel of
    that table), ``unscored``,
    ``svm`` search summaries, cell counts, ``sparse`` scores (or None), and the deployed set's
    ``test_features`` (n, F) float32 with their ``test_labels`` (n,) for the embedding view.
    """
    train, test, p, K = cells.train, cells.test, bundle.patch_px, len(cells.grids.classes)
    infos = {name: r["info"] for name, r in sets.items()}
    scores = {name: r["score"] for name, r in sets.items()}
    chosen = bundle.feature_set if deployed else best_by_validation(infos, candidates(cfg))
    fs = bundle.named_features(chosen)
    X_tr, X_te = (cell_features({chosen: fs}, arrays, bundle.scaling, c.rows, c.cols)[chosen] for c in (train, test))
    folds = cv_folds(train, cfg)

    def test_score(m) -> dict:
        return score(test.rows, test.cols, test.y, predict_with_confidence(m, X_te)[0], patch_px=p, n_classes=K)

    model, info, kernels, models = deployed_kernel(cfg, bundle, sets[chosen], X_tr, train.y, folds,
                                                   parts=part_sizes(fs), deployed=deployed)
    def scored(m) -> dict:  # the set's own SVM was scored already
        return scores[chosen] if m is sets[chosen]["model"] else test_score(m)

    unsmoothed = scored(model)
    # both kernels on the test cells, where the choice was made
    kernel_scores = {k: (unsmoothed if m is model else scored(m))["balanced_accuracy"] for k, m in models.items()}
    # the map's smoothing: the bundle's radius, or the same choice made on this split's training cells
    radius = bundle.smooth_px if deployed else \
        choose_smoothing(fs, arrays, bundle.scaling, train, info, cfg, level=logging.DEBUG)[0]
    scores["deployed"] = unsmoothed
    if radius:
        smoothed = block_predictions(model, fs, bundle.scaling, arrays, test.rows, test.cols, (radius,),
                                     block_px=cfg.evaluate.block_patches * p)[radius]
        scores["deployed"] = score(test.rows, test.cols, test.y, smoothed, patch_px=p, n_classes=K)
    # the trade-off of the class weighting: the deployed set under the other one, on the same cells
    other = OTHER_WEIGHT[cfg.svm.class_weight]
    alt, _ = fit_svm(X_tr, train.y, folds, cfg.svm.model_copy(update={"class_weight": other}), parts=part_sizes(fs),
                     calibrate=False)
    scores[f"deployed@{other}"] = test_score(alt)
    scores["deployed@unsmoothed"] = unsmoothed  # what the smoothing added, on the same cells
    groups = layer_groups(bundle.inputs, cfg.inputs.groups) if cfg.evaluate.layer_ablation else {}
    if len(groups) > 1:  # the deployed set (unsmoothed) with each group of layers held at its mean
        fixed = fixed_svm(cfg, info, X_tr.shape[1])  # the deployed SVM's kernel, C and gamma
        for group, channels in groups.items():
            hidden = occluded(bundle.scaling, channels)
            tr, te = (cell_features({chosen: fs}, arrays, hidden, c.rows, c.cols)[chosen] for c in (train, test))
            model_without, _ = fit_svm(tr, train.y, folds, fixed, parts=part_sizes(fs), calibrate=False)
            scores[f"without {group}"] = score(test.rows, test.cols, test.y,
                                               predict_with_confidence(model_without, te)[0], patch_px=p, n_classes=K)
    scores["majority"] = score(test.rows, test.cols, test.y, np.full_like(test.y, cells.majority), patch_px=p,
                               n_classes=K)
    sparse = None
    if cfg.evaluate.sparse_per_class:
        draws = {name: r["sparse"] for name, r in sets.items()}
        sparse = {"per_class": cfg.evaluate.sparse_per_class, "repeats": cfg.evaluate.sparse_repeats,
                  "draws": {**draws, "deployed": draws[chosen]}}
    return {"seed": cfg.evaluate.seed, "classes": cells.grids.classes, "scores": scores, "chosen": chosen,
            "smooth_px": int(radius), "kernel": info["kernel"], "kernel_cv": kernels, "kernel_scores": kernel_scores,
            "unscored": cells.unscored, "svm": infos,
            "n_train": int(len(train.y)), "n_test": int(len(test.y)), "n_test_available": cells.n_test_available,
            "sparse": sparse, "test_features": X_te, "test_labels": test.y,
            "calibration": {name: r["calibration"] for name, r in {**sets, "deployed": sets[chosen]}.items()
                            if r.get("calibration")}}


def deployed_kernel(cfg: RunConfig, bundle: ModelBundle, fitted: dict, X: np.ndarray, y: np.ndarray, folds: list, *,
                    parts: tuple[int, ...] | None, deployed: bool) -> tuple[object, dict, dict, dict]:
    """The deployed set's SVM on a split, as :func:`magpipe.selection.choose_kernel` returns it: on the deployed
    split the bundle's own (``fitted``: its :func:`score_set` result), with the other kernel of the bundle's
    choice refitted at its validated C and gamma; elsewhere the choice made afresh on the training cells
    ``X`` (n, F), ``y`` from the exact SVM ``fitted``."""
    if not deployed:
        return choose_kernel(X, y, folds, (fitted["model"], fitted["info"]), cfg, parts=parts, level=logging.DEBUG)
    model, info = fitted["model"], fitted["info"]
    kernels = bundle.meta.get("selection", {}).get("kernel", {}).get("cv", {})
    models = {k: model if k == info["kernel"] else
              fit_svm(X, y, folds, fixed_svm(cfg, kinfo, X.shape[1]), parts=parts, calibrate=False)[0]
              for k, kinfo in kernels.items()}
    return model, info, kernels, models


def evaluate_split(cfg: RunConfig, bundle: ModelBundle, arrays: list, grids: LabelGrids, *, deployed: bool) -> dict:
    """Every feature set of :func:`evaluation_sets` on one spatial split (``cfg.evaluate.seed``), in this
    process: :func:`score_set` for each, then :func:`finish_split` (whose result this is).

    ``deployed``: the first split, where the bundle's own SVM is scored for its feature set. Raises
    DataValidationError when a class falls short on one side of the split.
    """
    cells = split_cells(cfg, grids)
    log.debug("evaluate: split seed %d, %d training, %d test cells", cfg.evaluate.seed, len(cells.train.y),
              len(cells.test.y))
    sets = {name: score_set(cfg, bundle, arrays, cells, name, deployed=deployed)
            for name in evaluation_sets(bundle, cfg)}
    return finish_split(cfg, bundle, arrays, cells, sets, deployed=deployed)
