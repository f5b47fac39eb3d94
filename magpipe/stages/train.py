"""Stage ``train``: the autoencoder on the patches, then the SVM on the labelled training cells -> ``OUT/model/``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from magpipe.bundle import ModelBundle, check_model_files, read_bundle_meta, save_bundle
from magpipe.errors import InputError
from magpipe.config import RunConfig
from magpipe.evaluation import best_by_validation, cv_score
from magpipe.features import StackScaling, cell_features, feature_set, part_sizes
from magpipe.io import schema as S
from magpipe.io.location import remove
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, open_store
from magpipe.io.survey import read_label_grids, survey_attrs
from magpipe.locking import locks_output
from magpipe.model import resolve_layers
from magpipe.objectives import NEIGHBOUR_FRACTION
from magpipe.patches import neighbour_centres, stack_patches
from magpipe.stages.patches import resolved_config
from magpipe.splits import Cells, cv_folds, labelled_split, training_cells
from magpipe.smoothing import radius_scores
from magpipe.stages.inputs import input_stack
from magpipe.svm import fit_svm
from magpipe.training import TrainResult, train_autoencoder

log = logging.getLogger("magpipe")


def train_hash(patches_hash: str, labels_hash: str, cfg: RunConfig) -> str:
    """What a model depends on: its patches, the labels and the model, SVM and split options
    (tile size, cluster and device are not the model's business).

    Returns a 32-hex-digit content hash, stored as the bundle's ``input_hash``.
    """
    return content_hash("train-v2", patches_hash, labels_hash, cfg.section_json("model"), cfg.section_json("svm"),
                        cfg.section_json("evaluate"))


def fit_autoencoder(raw: np.ndarray, scaling: StackScaling, cfg: RunConfig, *, views: np.ndarray | None = None,
                    checkpoint: Path | None = None, progress=None) -> TrainResult:
    """The autoencoder of raw patches (n, C, p, p), NaN = no data: standardised, no-data masked from the loss.

    ``views`` are the contrastive objective's second views, raw patches shaped as ``raw``
    (see :func:`second_views`); ignored by the other objectives.
    """
    pairs = None
    if cfg.model.objective == "contrastive":
        pairs = (scaling.apply(views, axis=1), np.isfinite(views))
    return train_autoencoder(scaling.apply(raw, axis=1), np.isfinite(raw), cfg.model, checkpoint=checkpoint,
                             progress=progress, device=cfg.runtime.device, pairs=pairs)


def second_views(arrays: list, rows: np.ndarray, cols: np.ndarray, cfg: RunConfig) -> np.ndarray | None:
    """For the contrastive objective, the raw patch a few cells from each training patch's centre
    (up to ``NEIGHBOUR_FRACTION`` of a patch width away); None for the other objectives."""
    if cfg.model.objective != "contrastive":
        return None
    p = cfg.patches.patch_px
    nrows, ncols = neighbour_centres(rows, cols, arrays[0].shape, max_offset=round(NEIGHBOUR_FRACTION * p),
                                     seed=cfg.patches.seed + 1)
    return stack_patches(arrays, nrows, ncols, p)


def candidates(cfg: RunConfig) -> tuple[str, ...]:
    """The feature sets the deployed choice is made from: ``svm.candidates`` under ``auto``, else the one set."""
    return cfg.svm.candidates if cfg.svm.features == "auto" else (cfg.svm.features,)


def fit_candidates(model, arrays: list, scaling: StackScaling, cells: Cells, cfg: RunConfig) -> dict[str, tuple]:
    """The SVM of each candidate feature set of ``model`` (:func:`candidates`) on the training ``cells``,
    searched by blocked CV with a gap (:func:`magpipe.splits.cv_folds`): name -> (SVM, search summary)."""
    layers = resolve_layers(model, cfg.model.layers)
    sets = {n: feature_set(n, model, layers, readout=cfg.model.readout, seed=cfg.model.seed) for n in candidates(cfg)}
    X = cell_features(sets, arrays, scaling, cells.rows, cells.cols)
    log.info("SVM on %d labelled cells (features %s)", len(cells.y),
             ", ".join(f"{n}: {x.shape[1]}" for n, x in X.items()))
    folds = cv_folds(cells, cfg)
    return {n: fit_svm(X[n], cells.y, folds, cfg.svm, parts=part_sizes(fs)) for n, fs in sets.items()}


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


def smoothing_radii(cfg: RunConfig) -> tuple[int, ...]:
    """The radii ``smooth_px: auto`` tries: ``svm.smooth_radii`` up to one patch width, the CV folds' gap,
    so a validation cell's window never reaches a cell the fold's SVM was fitted on."""
    return tuple(r for r in cfg.svm.smooth_radii if r <= cfg.patches.patch_px) or (0,)


def choose_smoothing(fs, arrays: list, scaling: StackScaling, cells: Cells, info: dict, cfg: RunConfig,
                     *, level: int = logging.INFO) -> tuple[int, dict]:
    """The map's smoothing radius: ``svm.smooth_px``, or under ``auto`` the radius of :func:`smoothing_radii`
    chosen by blocked CV on the training ``cells`` with the one-standard-error rule (smallest first).

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
    fixed = cfg.svm.model_copy(update={"C": (info["C"],), "gamma_scale": (info["gamma"] * X.shape[1],)})

    def fit(idx: np.ndarray):
        return fit_svm(X[idx], cells.y[idx], np.zeros(len(idx)), fixed, parts=part_sizes(fs))[0]

    table = radius_scores(fit, fs, scaling, arrays, cells, cv_folds(cells, cfg), radii,
                          block_px=cfg.evaluate.block_patches * cfg.patches.patch_px)
    chosen = int(best_by_validation(table, [str(r) for r in radii]))
    log.log(level, "train: smoothing radius %d chosen on validation (%s)", chosen, ", ".join(
        f"{r}: {v['cv_balanced_accuracy']:.3f}" for r, v in table.items()))
    return chosen, table


@locks_output
def run_train(out: str | Path, cfg: RunConfig, *, progress=None) -> Path:
    """Train the autoencoder and the SVM; skipped when the bundle was made from the same inputs and options.

    ``progress`` is called with each epoch's row of the training history. Returns the bundle directory.

    Training resumes from ``OUT/train-<hash>.ckpt`` after an interruption. Raises DataValidationError
    when the labels cannot be split spatially for the SVM.
    """
    lay = Layout(out)
    cfg.save(lay.config)
    cfg = resolved_config(lay, cfg)
    sattrs = survey_attrs(lay.survey)
    pds = open_store(lay.patches)
    names = tuple(pds.attrs[S.INPUTS])
    h = train_hash(str(pds.attrs[S.HASH]), str(sattrs.get(S.LABELS_HASH)), cfg)
    meta = read_bundle_meta(lay.model) if (lay.model / "metadata.json").exists() else {}
    if meta.get("input_hash") == h:
        try:
            check_model_files(lay.model, meta)
            log.info("train: %s is up to date", lay.model)
            return lay.model
        except InputError as exc:
            log.warning("train: %s; training again", exc)
    # the labels are split (and checked: learnable and scorable classes) before the autoencoder trains
    split, grids = labelled_split(read_label_grids(lay.survey), cfg, need_test=True, warn_unscored=False)
    cells = training_cells(split, grids.labels, cfg)
    arrays, scaling = input_stack(lay, names)
    raw = pds["patch"].values
    t0 = time.perf_counter()
    log.info("train: autoencoder (%s) on %d patches of %d px, inputs %s", cfg.model.objective, len(raw),
             raw.shape[-1], ", ".join(names))
    views = second_views(arrays, pds["row"].values, pds["col"].values, cfg)
    result = fit_autoencoder(raw, scaling, cfg, views=views, checkpoint=lay.checkpoint(h), progress=progress)
    train_s = time.perf_counter() - t0
    chosen, svm, svm_info, table = choose_features(fit_candidates(result.model, arrays, scaling, cells, cfg), cfg)
    if svm_info.get("cv_folds", 0) < 2:
        log.warning("train: the labelled cells fall in fewer than two spatial blocks, so C and gamma were not "
                    "searched (C = %g, gamma = 1 / n_features); more labelled area makes the fit better founded",
                    svm_info["C"])
    layers = resolve_layers(result.model, cfg.model.layers)
    fs = feature_set(chosen, result.model, layers, readout=cfg.model.readout, seed=cfg.model.seed)
    radius, smoothing = choose_smoothing(fs, arrays, scaling, cells, svm_info, cfg)
    bundle = ModelBundle(result.model, svm, layers, scaling, grids.classes, cfg.model.anomaly_px,
                         inputs=names, feature_set=chosen, readout=cfg.model.readout, smooth_px=radius, meta={
        "input_hash": h, "config": cfg.saved(), "survey_source": sattrs.get(S.SOURCE),
        "training": {"objective": cfg.model.objective, "history": result.history, "best_epoch": result.best_epoch,
                     "best_val_loss": result.best_val_loss, "device": result.device, "seconds": train_s,
                     "n_patches": len(raw)},
        "svm": {**svm_info, "n_train": len(cells.y)},
        "selection": {"features": cfg.svm.features, "chosen": chosen, "cv": table,
                      "smoothing": {"smooth_px": cfg.svm.smooth_px, "chosen": radius, "cv": smoothing}},
    })
    save_bundle(bundle, lay.model)
    remove(lay.checkpoint(h))
    return lay.model
