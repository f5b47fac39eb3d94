"""Choices made on validation inside the training region: how far window statistics look, the feature
set the map uses, its SVM's kernel and its smoothing radius.

Each choice is scored by blocked cross-validation with a gap on the training cells
(:func:`magpipe.splits.cv_folds`) and made by the one-standard-error rule
(:func:`magpipe.evaluation.best_by_validation`): the simplest option within one standard error of
the best. Test blocks are never seen. The train stage makes the choices for the map; the evaluate
stage repeats them on each split's training region, so the reported scores are of the procedure.
"""

from __future__ import annotations

import logging

import numpy as np

from magpipe.config import RunConfig
from magpipe.evaluation import best_by_validation, cv_score
from magpipe.features import REACHES, StackScaling, cell_features, feature_set, part_sizes
from magpipe.model import resolve_layers
from magpipe.smoothing import radius_scores
from magpipe.splits import Cells, cv_folds
from magpipe.svm import fit_svm

log = logging.getLogger("magpipe")


def candidates(cfg: RunConfig) -> tuple[str, ...]:
    """The feature sets the deployed choice is made from: ``svm.candidates`` under ``auto``, else the one set."""
    return cfg.svm.candidates if cfg.svm.features == "auto" else (cfg.svm.features,)


def fixed_reach(cfg: RunConfig) -> str:
    """``svm.stats_windows`` where it is set, else ``patch`` (what a choice made elsewhere starts from)."""
    return "patch" if cfg.svm.stats_windows == "auto" else cfg.svm.stats_windows


def choose_reach(model, arrays: list, scaling: StackScaling, cells: Cells, cfg: RunConfig
                 ) -> tuple[str, dict, dict[str, tuple]]:
    """How far window statistics look (:data:`magpipe.features.REACHES`): ``svm.stats_windows``, or under
    ``auto`` the reach whose ``stats`` set has the best blocked-CV balanced accuracy on the training
    ``cells``, by the one-standard-error rule (``patch`` first). Returns the reach, the table (reach ->
    CV summary; empty when nothing was chosen) and the fitted ``stats`` SVM of the chosen reach
    (``{"stats": (SVM, summary)}``, for :func:`fit_candidates` not to search it again; empty without a choice)."""
    if cfg.svm.stats_windows != "auto" or not any("stats" in n.split("+") for n in candidates(cfg)):
        return fixed_reach(cfg), {}, {}
    sets = {r: feature_set("stats", model, (), stats_reach=r) for r in REACHES}
    X = cell_features(sets, arrays, scaling, cells.rows, cells.cols)
    folds = cv_folds(cells, cfg)
    fits = {r: fit_svm(X[r], cells.y, folds, cfg.svm, parts=part_sizes(fs), calibrate=False)
            for r, fs in sets.items()}
    table = {r: info for r, (_, info) in fits.items()}
    chosen = best_by_validation(table, list(REACHES))
    log.info("train: window statistics reach %s chosen on validation (%s)", chosen, ", ".join(
        f"{r} ({max(sets[r].windows)} px) {table[r]['cv_balanced_accuracy']:.3f} ± {table[r].get('cv_se', float('nan')):.3f}"
        for r in REACHES))
    return chosen, table, {"stats": fits[chosen]}


def fit_candidates(model, arrays: list, scaling: StackScaling, cells: Cells, cfg: RunConfig, *,
                   stats_reach: str | None = None, fitted: dict[str, tuple] | None = None) -> dict[str, tuple]:
    """The SVM of each candidate feature set of ``model`` (:func:`candidates`) on the training ``cells``,
    searched by blocked CV with a gap (:func:`magpipe.splits.cv_folds`): name -> (SVM, search summary). The
    SVMs are uncalibrated (a choice needs their classes only): :func:`magpipe.svm.with_probabilities`
    calibrates the one kept.

    ``arrays`` are the C input grids (2-D, y/x) the encoder reads, ``scaling`` their standardisation;
    window statistics look as far as ``stats_reach`` (default: :func:`fixed_reach`). Sets in ``fitted``
    (name -> (SVM, summary), fitted on the same cells) are taken as they are.
    """
    layers = resolve_layers(model, cfg.model.layers)
    reach = stats_reach or fixed_reach(cfg)
    sets = {n: feature_set(n, model, layers, readout=cfg.model.readout, seed=cfg.model.seed, stats_reach=reach)
            for n in candidates(cfg)}
    log.info("SVM on %d labelled cells (features %s)", len(cells.y),
             ", ".join(f"{n}: {fs.n_features}" for n, fs in sets.items()))
    fits = {n: fit for n, fit in (fitted or {}).items() if n in sets}
    todo = {n: fs for n, fs in sets.items() if n not in fits}
    if todo:
        X = cell_features(todo, arrays, scaling, cells.rows, cells.cols)
        folds = cv_folds(cells, cfg)
        fits.update({n: fit_svm(X[n], cells.y, folds, cfg.svm, parts=part_sizes(fs), calibrate=False)
                     for n, fs in todo.items()})
    return {n: fits[n] for n in sets}


def choose_features(fits: dict[str, tuple], cfg: RunConfig) -> tuple[str, object, dict, dict]:
    """The configured feature set, or under ``features: auto`` the candidate chosen by blocked-CV balanced
    accuracy and the one-standard-error rule (:func:`magpipe.evaluation.best_by_validation`), from
    :func:`fit_candidates`' ``fits``.

    Returns the chosen name, its fitted SVM and search summary, and the selection table (name -> CV summary).
    """
    names = candidates(cfg)
    table = {name: info for name, (_, info) in fits.items()}
    chosen = best_by_validation(table, names)
    if len(names) > 1 and all(cv_score(table[n]) == -np.inf for n in names):
        log.warning("train: validation could not score the feature sets (each blocked-CV fold's fitting side "
                    "lacks a class: the labels cover too few blocks); %s, the simplest, is used", chosen)
    elif len(names) > 1:
        log.info("train: features %s chosen on validation (%s)", chosen, ", ".join(
            f"{n} {table[n]['cv_balanced_accuracy']:.3f} ± {table[n].get('cv_se', float('nan')):.3f}" for n in names))
    return chosen, *fits[chosen], table


def choose_kernel(X: np.ndarray, y: np.ndarray, folds: list, fit: tuple, cfg: RunConfig, *,
                  parts: tuple[int, ...] | None = None, level: int = logging.INFO
                  ) -> tuple[object, dict, dict, dict[str, object]]:
    """The deployed set's SVM: ``svm.kernel`` as configured, or under ``auto`` the exact SVM ``fit`` (SVM,
    search summary from :func:`magpipe.svm.fit_svm`) or the same SVM on a low-rank kernel (``lowrank``).

    The low-rank kernel is tried only where it is the cheaper to apply: where the exact SVM keeps more
    support vectors than the low-rank kernel has landmarks (``svm.n_components``), for each cell's decision
    costs one kernel value per support vector or landmark. It is the exact SVM with its kernel approximated
    (Nystroem) at the exact search's C and gamma, so the two differ by the approximation alone and nothing
    more is searched; it is scored on the same blocked-CV ``folds`` of the training cells ``X`` (n, F), ``y``.
    The one-standard-error rule then takes it first: it is kept unless the exact kernel validates better by
    more than the noise. Returns the SVM (uncalibrated), its summary, the table (kernel -> CV summary;
    empty where nothing was chosen) and the SVM of each kernel of the table; the choice is logged at ``level``.
    """
    model, info = fit
    n_support, landmarks = info.get("n_support") or 0, cfg.svm.n_components
    if cfg.svm.kernel != "auto" or n_support <= landmarks or cv_score(info) == -np.inf:
        return model, info, {}, {}
    low = fixed_svm(cfg, {**info, "kernel": "lowrank"}, X.shape[1])
    low_model, low_info = fit_svm(X, y, folds, low, parts=parts, calibrate=False, validate=True)
    table = {"lowrank": low_info, "exact": info}
    chosen = best_by_validation(table, ["lowrank", "exact"])
    log.log(level, "train: SVM kernel %s chosen on validation (lowrank, %d landmarks: %.3f ± %.3f; exact, %d support "
            "vectors: %.3f ± %.3f)", chosen, landmarks, low_info["cv_balanced_accuracy"], low_info["cv_se"], n_support,
            info["cv_balanced_accuracy"], info["cv_se"])
    models = {"lowrank": low_model, "exact": model}
    return models[chosen], table[chosen], table, models


def smoothing_radii(cfg: RunConfig) -> tuple[int, ...]:
    """The radii (px) ``smooth_px: auto`` tries: ``svm.smooth_radii`` up to one patch width, the CV folds'
    gap, so a validation cell's window never reaches a cell the fold's SVM was fitted on."""
    return tuple(r for r in cfg.svm.smooth_radii if r <= cfg.patches.patch_px) or (0,)


def fixed_svm(cfg: RunConfig, info: dict, n_features: int):
    """``cfg.svm`` with the kernel, C and gamma of a search summary ``info`` and nothing left to search."""
    return cfg.svm.model_copy(update={"C": (info["C"],), "gamma_scale": (info["gamma"] * n_features,),
                                      "kernel": info.get("kernel", cfg.svm.kernel)})


def choose_smoothing(fs, arrays: list, scaling: StackScaling, cells: Cells, info: dict, cfg: RunConfig,
                     *, level: int = logging.INFO) -> tuple[int, dict]:
    """The map's smoothing radius (px): ``svm.smooth_px``, or under ``auto`` the radius of
    :func:`smoothing_radii` chosen by blocked CV on the training ``cells`` with the one-standard-error rule
    (smallest first).

    Each fold refits the SVM of feature set ``fs`` with the searched C and gamma (``info``) on its fitting
    cells and classifies its validation blocks densely, smoothed at every radius. Returns the radius and
    the table (radius -> CV summary; empty when nothing was chosen); the choice is logged at ``level``
    (evaluate repeats it on every split, at DEBUG).
    """
    if cfg.svm.smooth_px != "auto":
        return int(cfg.svm.smooth_px), {}
    radii = smoothing_radii(cfg)
    if len(radii) == 1:
        return radii[0], {}
    X = cell_features({"set": fs}, arrays, scaling, cells.rows, cells.cols)["set"]
    fixed = fixed_svm(cfg, info, X.shape[1])

    def fit(idx: np.ndarray):
        return fit_svm(X[idx], cells.y[idx], np.zeros(len(idx)), fixed, parts=part_sizes(fs), calibrate=False)[0]

    table = radius_scores(fit, fs, scaling, arrays, cells, cv_folds(cells, cfg), radii,
                          block_px=cfg.evaluate.block_patches * cfg.patches.patch_px)
    chosen = int(best_by_validation(table, [str(r) for r in radii]))
    log.log(level, "train: smoothing radius %d chosen on validation (%s)", chosen, ", ".join(
        f"{r}: {v['cv_balanced_accuracy']:.3f}" for r, v in table.items()))
    return chosen, table
