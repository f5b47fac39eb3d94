"""Stage ``train``: the autoencoder on the patches, then the SVM on the labelled training cells -> ``OUT/model/``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from magpipe.bundle import ModelBundle, read_bundle_meta, save_bundle
from magpipe.config import RunConfig
from magpipe.features import AEFeatures, StackScaling, cell_features
from magpipe.io import schema as S
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, open_store
from magpipe.io.survey import read_label_grids, survey_attrs
from magpipe.locking import locks_output
from magpipe.model import resolve_layers
from magpipe.splits import labelled_split, training_cells
from magpipe.stages.inputs import input_stack
from magpipe.svm import fit_svm
from magpipe.training import TrainResult, train_autoencoder

log = logging.getLogger("magpipe")


def train_hash(patches_hash: str, labels_hash: str, cfg: RunConfig) -> str:
    """What a model depends on: its patches, the labels and the model, SVM and split options
    (tile size, cluster and device are not the model's business).

    Returns a 32-hex-digit content hash, stored as the bundle's ``input_hash``.
    """
    return content_hash("train-v1", patches_hash, labels_hash, cfg.section_json("model"), cfg.section_json("svm"),
                        cfg.section_json("evaluate"))


def fit_autoencoder(raw: np.ndarray, scaling: StackScaling, cfg: RunConfig, *, checkpoint: Path | None = None,
                    progress=None) -> TrainResult:
    """The autoencoder of raw patches (n, C, p, p), NaN = no data: standardised, no-data masked from the loss."""
    return train_autoencoder(scaling.apply(raw, axis=1), np.isfinite(raw), cfg.model, checkpoint=checkpoint,
                             progress=progress, device=cfg.runtime.device)


@locks_output
def run_train(out: str | Path, cfg: RunConfig, *, progress=None) -> Path:
    """Train the autoencoder and the SVM; skipped when the bundle was made from the same inputs and options.

    ``progress`` is called with each epoch's row of the training history. Returns the bundle directory.

    Training resumes from ``OUT/train-<hash>.ckpt`` after an interruption. Raises DataValidationError
    when the labels cannot be split spatially for the SVM.
    """
    lay = Layout(out)
    cfg.save(lay.config)
    sattrs = survey_attrs(lay.survey)
    pds = open_store(lay.patches)
    names = tuple(pds.attrs[S.INPUTS])
    h = train_hash(str(pds.attrs[S.HASH]), str(sattrs.get(S.LABELS_HASH)), cfg)
    if (lay.model / "metadata.json").exists() and read_bundle_meta(lay.model).get("input_hash") == h:
        log.info("train: %s is up to date", lay.model)
        return lay.model
    arrays, scaling = input_stack(lay, names)
    raw = pds["patch"].values
    t0 = time.perf_counter()
    log.info("train: autoencoder on %d patches of %d px, inputs %s", len(raw), raw.shape[-1], ", ".join(names))
    lay.model.mkdir(parents=True, exist_ok=True)
    result = fit_autoencoder(raw, scaling, cfg, checkpoint=lay.checkpoint(h), progress=progress)
    train_s = time.perf_counter() - t0
    features = AEFeatures(result.model, resolve_layers(result.model, cfg.model.layers))
    split, grids = labelled_split(read_label_grids(lay.survey), cfg)
    cells = training_cells(split, grids.labels, cfg)
    X = cell_features({"ae": features}, arrays, scaling, cells.rows, cells.cols)["ae"]
    log.info("train: SVM on %d labelled cells, %d AE features", len(cells.y), X.shape[1])
    svm, svm_info = fit_svm(X, cells.y, cells.blocks, cfg.svm)
    bundle = ModelBundle(result.model, svm, list(features.layers), scaling, grids.classes, cfg.model.anomaly_px,
                         inputs=names, meta={
        "input_hash": h, "config": cfg.saved(), "survey_source": sattrs.get(S.SOURCE),
        "training": {"history": result.history, "best_epoch": result.best_epoch,
                     "best_val_loss": result.best_val_loss, "device": result.device, "seconds": train_s,
                     "n_patches": len(raw)},
        "svm": {**svm_info, "n_train": len(cells.y)},
    })
    save_bundle(bundle, lay.model)
    lay.checkpoint(h).unlink(missing_ok=True)
    return lay.model
