"""Stage ``train``: the autoencoder on the patches, then the SVM on the labelled training cells -> ``OUT/model/``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from magpipe.bundle import ModelBundle, check_model_files, read_bundle_meta, save_bundle
from magpipe.config import RunConfig
from magpipe.errors import InputError
from magpipe.features import cell_features, feature_set, part_sizes
from magpipe.inputs import input_stack
from magpipe.io import schema as S
from magpipe.io.location import remove
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, open_store
from magpipe.io.survey import read_label_grids, survey_attrs
from magpipe.locking import locks_output
from magpipe.model import resolve_layers
from magpipe.resolve import resolved_config
from magpipe.selection import choose_features, choose_kernel, choose_reach, choose_smoothing, fit_candidates
from magpipe.splits import cv_folds, labelled_split, training_cells
from magpipe.svm import with_probabilities
from magpipe.training import fit_autoencoder, second_views

log = logging.getLogger("magpipe")


def train_hash(patches_hash: str, labels_hash: str, cfg: RunConfig) -> str:
    """What a model depends on: its patches, the labels and the model, SVM and split options
    (tile size, cluster and device are not the model's business).

    Returns a 32-hex-digit content hash, stored as the bundle's ``input_hash``.
    """
    return content_hash("train-v2", patches_hash, labels_hash, cfg.section_json("model"), cfg.section_json("svm"),
                        cfg.section_json("evaluate", model_only=True))


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
    log.info("train: autoencoder trained on %s in %.0f s (best epoch %s)", result.device, train_s, result.best_epoch)
    reach, reach_table, stats_fit = choose_reach(result.model, arrays, scaling, cells, cfg)
    chosen, svm, svm_info, table = choose_features(
        fit_candidates(result.model, arrays, scaling, cells, cfg, stats_reach=reach, fitted=stats_fit), cfg)
    if svm_info.get("cv_folds", 0) < 2:
        log.warning("train: the labelled cells fall in fewer than two spatial blocks, so C and gamma were not "
                    "searched (C = %g, gamma = 1 / n_features); more labelled area makes the fit better founded",
                    svm_info["C"])
    layers = resolve_layers(result.model, cfg.model.layers)
    fs = feature_set(chosen, result.model, layers, readout=cfg.model.readout, seed=cfg.model.seed,
                     stats_reach=reach)
    X = cell_features({chosen: fs}, arrays, scaling, cells.rows, cells.cols)[chosen]
    folds = cv_folds(cells, cfg)
    svm, svm_info, kernels, _ = choose_kernel(X, cells.y, folds, (svm, svm_info), cfg, parts=part_sizes(fs))
    svm = with_probabilities(svm, X, cells.y, folds=folds, mix=cells.mix)  # the kept SVM alone is calibrated
    radius, smoothing = choose_smoothing(fs, arrays, scaling, cells, svm_info, cfg)
    bundle = ModelBundle(result.model, svm, layers, scaling, grids.classes, cfg.model.anomaly_px,
                         inputs=names, feature_set=chosen, readout=cfg.model.readout, smooth_px=radius,
                         stats_reach=reach, meta={
        "input_hash": h, "config": cfg.saved(), "survey_source": sattrs.get(S.SOURCE),
        "training": {"objective": cfg.model.objective, "history": result.history, "best_epoch": result.best_epoch,
                     "best_val_loss": result.best_val_loss, "device": result.device, "seconds": train_s,
                     "n_patches": len(raw)},
        "svm": {**svm_info, "n_train": len(cells.y)},
        "selection": {"features": cfg.svm.features, "chosen": chosen, "cv": table,
                      "stats_reach": {"stats_windows": cfg.svm.stats_windows, "chosen": reach, "cv": reach_table},
                      "smoothing": {"smooth_px": cfg.svm.smooth_px, "chosen": radius, "cv": smoothing},
                      "kernel": {"kernel": cfg.svm.kernel, "chosen": svm_info["kernel"], "cv": kernels}},
    })
    save_bundle(bundle, lay.model)
    remove(lay.checkpoint(h))
    return lay.model
