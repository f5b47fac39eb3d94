"""The stages of a run, each a function of (inputs, out dir, config) -> paths.

Layout of an output directory::

    OUT/config.json        the full config of the run
    OUT/survey.zarr        field (float32, y/x), valid (uint8), labels (int16, 0 = unlabelled), CRS
    OUT/inputs.zarr        derived channels (dz, thd, tilt, asa) when patches.inputs names any
    OUT/patches.zarr       patch (n, p, p), or (n, C, p, p) for C inputs: raw training patches, row/col/x/y
    OUT/model/             autoencoder.pt, svm.skops, metadata.json (see magpipe.bundle)
    OUT/classified.zarr    class (int16, 0 = no data), confidence, anomaly (float32)
    OUT/report.json, OUT/report.md, OUT/*.png

Each stage records a content hash of its inputs and config; a stage whose
output carries the same hash is skipped, so re-running a finished run is cheap
and changing one option recomputes only what depends on it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr

from magpipe.bundle import ModelBundle, load_bundle, read_bundle_meta, save_bundle
from magpipe.config import RunConfig
from magpipe.errors import DataValidationError, InputError
from magpipe.evaluation import (METRICS, Split, score, sparse_label_scores, spatial_split, subsample_per_class,
                                summarise)
from magpipe.io.grids import read_grid
from magpipe.io.labels import read_labels
from magpipe.io.stores import (
    HASH,
    check_output_path,
    content_hash,
    file_hash,
    is_complete,
    open_store,
    store_attrs,
    write_json,
    write_store,
)
from magpipe.explore import PICK_SPACING_PATCHES, embedding_2d, label_next, top_anomalies, top_blocks
from magpipe.locking import locks_output
from magpipe.model import patch_features, resolve_layers
from magpipe.inputs import StackScaling, ensure_inputs, input_arrays
from magpipe.patches import Scaling, fit_scaling, sample_centres, stack_patches
from magpipe.svm import fit_svm, predict_with_confidence
from magpipe.training import train_autoencoder

log = logging.getLogger("magpipe")


@dataclass(frozen=True)
class Layout:
    """Paths of one run's outputs."""

    root: Path

    @property
    def survey(self) -> Path:
        return self.root / "survey.zarr"

    @property
    def patches(self) -> Path:
        return self.root / "patches.zarr"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def classified(self) -> Path:
        return self.root / "classified.zarr"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def similar(self) -> Path:
        return self.root / "similar.zarr"


@locks_output
def run_ingest(survey: str | Path, out: str | Path, cfg: RunConfig) -> Path:
    """Read any supported survey into OUT/survey.zarr (field, valid mask, CRS, scaling)."""
    survey, lay = Path(survey), Layout(Path(out))
    lay.root.mkdir(parents=True, exist_ok=True)
    if not survey.exists():
        raise InputError(f"{survey}: file not found")
    h = content_hash("ingest-v1", file_hash(survey), cfg.section_json("ingest"))
    if is_complete(lay.survey, h):
        log.info("ingest: %s is up to date", lay.survey)
        return lay.survey
    c = cfg.ingest
    field = read_grid(survey, nodata=c.nodata, band=c.band, variable=c.variable, spacing=c.spacing, crs=c.crs,
                      chunk_px=c.chunk_px)
    try:
        scaling = fit_scaling(field)
    except ValueError:
        raise DataValidationError(f"{survey}: has no valid cells (all no-data)") from None
    if scaling.std < 1e-9:
        raise DataValidationError(f"{survey}: every valid cell has the same value; nothing to learn")
    ds = field.to_dataset()
    ds["valid"] = field.notnull().astype("uint8")
    ds["valid"].attrs = {"long_name": "1 where the survey has data"}
    ds.attrs.update({"source": survey.name, "source_hash": file_hash(survey), "scaling_mean": scaling.mean,
                     "scaling_std": scaling.std, "chunk_px": c.chunk_px, "crs_wkt": field.rio.crs.to_wkt() if field.rio.crs else ""})
    log.info("ingest: %s -> %s (%d x %d cells, %.1f%% valid)", survey, lay.survey, field.sizes["y"],
             field.sizes["x"], 100 * float(ds["valid"].mean()))
    return write_store(ds, lay.survey, stage_hash=h, shard_px=c.chunk_px)


@locks_output
def run_labels(labels: str | Path, out: str | Path, *, label_field: str | None = None,
               classes: str | Path | None = None) -> Path:
    """Put labels onto the survey grid as OUT/survey.zarr:labels."""
    labels, lay = Path(labels), Layout(Path(out))
    if not labels.exists():
        raise InputError(f"{labels}: file not found")
    attrs = store_attrs(lay.survey) or {}
    h = content_hash("labels-v1", attrs.get(HASH, ""), file_hash(labels), str(label_field), str(classes))
    if attrs.get("labels_hash") == h:
        log.info("labels: up to date")
        return lay.survey
    ds = open_store(lay.survey)
    codes, names = read_labels(labels, ds["field"], label_field=label_field, classes=classes)
    # Written with zarr directly: adding a variable must leave the store's attributes (and so
    # its completeness) untouched, which xarray's append mode does not promise.
    group = zarr.open_group(lay.survey, mode="r+")
    field = group["field"]
    if "labels" in group:
        del group["labels"]
    arr = group.create_array("labels", shape=codes.shape, dtype="int16", chunks=field.chunks,
                             shards=field.shards, fill_value=0, dimension_names=("y", "x"),
                             attributes={"long_name": "class code, 0 = unlabelled",
                                         **({"grid_mapping": field.attrs["grid_mapping"]}
                                            if "grid_mapping" in field.attrs else {})})
    arr[:] = codes
    group.attrs.update({"classes": names, "labels_source": labels.name, "labels_hash": h})
    counts = np.bincount(codes.ravel(), minlength=len(names) + 1)[1:]
    log.info("labels: %s -> %d classes, %s", labels, len(names),
             ", ".join(f"{n}: {c}" for n, c in zip(names, counts)))
    return lay.survey


def _survey_arrays(lay: Layout) -> tuple[zarr.Array, np.ndarray, Scaling, dict]:
    open_store(lay.survey)  # refuses incomplete stores
    group = zarr.open_group(lay.survey, mode="r")
    attrs = dict(group.attrs)
    return group["field"], group["valid"][:].astype(bool), Scaling(attrs["scaling_mean"], attrs["scaling_std"]), attrs


def input_stack(lay: Layout, names: tuple[str, ...]) -> tuple[list, StackScaling]:
    """The autoencoder's input grids of a run (derived ones written on first use) and their scalings."""
    try:
        scaling = ensure_inputs(lay.survey, tuple(names))
    except ImportError as exc:
        raise InputError(f"{lay.survey}: inputs {list(names)}: {exc}") from None
    return input_arrays(lay.survey, tuple(names)), scaling


@locks_output
def run_patches(out: str | Path, cfg: RunConfig) -> Path:
    """Sample training patches from valid areas into OUT/patches.zarr."""
    lay, c = Layout(Path(out)), cfg.patches
    field, valid, _, attrs = _survey_arrays(lay)
    h = content_hash("patches-v1", attrs[HASH], cfg.section_json("patches"))
    if is_complete(lay.patches, h):
        log.info("patches: %s is up to date", lay.patches)
        return lay.patches
    if min(field.shape) < c.patch_px:
        raise DataValidationError(
            f"{lay.survey}: survey of {field.shape[0]} x {field.shape[1]} cells is smaller than one "
            f"{c.patch_px} px patch; use a smaller --patch-size"
        )
    try:
        rows, cols = sample_centres(valid, patch_px=c.patch_px, n=c.n_patches,
                                    min_valid_fraction=c.min_valid_fraction, seed=c.seed)
    except ValueError as exc:
        raise DataValidationError(f"{lay.survey}: {exc}") from None
    arrays, _ = input_stack(lay, c.inputs)
    raw = stack_patches(arrays, rows, cols, c.patch_px)
    dims = ("patch", "channel", "py", "px")
    if len(arrays) == 1:  # one input: the layout of earlier versions
        raw, dims = raw[:, 0], ("patch", "py", "px")
    survey = xr.open_zarr(lay.survey, consolidated=False)
    ds = xr.Dataset(
        {"patch": (dims, raw, {"long_name": f"raw values of {', '.join(c.inputs)}, NaN = no data"}),
         "row": ("patch", rows.astype("int64")), "col": ("patch", cols.astype("int64")),
         "x": ("patch", survey.x.values[cols]), "y": ("patch", survey.y.values[rows])},
        attrs={"patch_px": c.patch_px, "survey_hash": attrs[HASH], "inputs": list(c.inputs)},
    )
    log.info("patches: %d patches of %d px -> %s", len(rows), c.patch_px, lay.patches)
    enc = {"patch": {"chunks": (min(len(rows), 4096), *raw.shape[1:])}}
    return write_store(ds, lay.patches, stage_hash=h, encoding=enc)


def label_grids(lay: Layout) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The survey's label grid, valid mask and class names, read once for any number of splits."""
    group = zarr.open_group(lay.survey, mode="r")
    if "labels" not in group:
        raise InputError(f"{lay.survey}: has no labels; run `magpipe labels` first")
    return group["labels"][:], group["valid"][:].astype(bool), list(group.attrs["classes"])


def labelled_split(lay: Layout, cfg: RunConfig, *, need_test: bool = False,
                   grids: tuple[np.ndarray, np.ndarray, list[str]] | None = None
                   ) -> tuple[Split, np.ndarray, list[str]]:
    """The spatial train/test split of the labelled cells (deterministic from the config).

    Every labelled class needs 2 training cells, and with ``need_test`` (evaluation) a test cell.
    ``grids`` are :func:`label_grids`, when the caller already holds them.
    """
    labels, valid, classes = grids or label_grids(lay)
    p = cfg.patches.patch_px
    block_px = cfg.evaluate.block_patches * p
    split = _split(lay, labels, valid, cfg)
    short = _short_classes(split, labels, len(classes), need_test=need_test)
    if short and cfg.evaluate.drop_small_classes:
        log.warning("dropping classes %s: too few labelled cells on one side of the spatial split",
                    ", ".join(classes[k] for k in short))
        labels = np.where(np.isin(labels, [k + 1 for k in short]), 0, labels).astype(labels.dtype)
        split = _split(lay, labels, valid, cfg)
        short = _short_classes(split, labels, len(classes), need_test=need_test)
    if short:
        n_train, n_test = _class_counts(split, labels, len(classes))
        raise DataValidationError(
            f"{lay.survey}: after the spatial split (blocks of {block_px} px) too few labelled cells for class "
            + ", ".join(f"'{classes[k]}' ({n_train[k]} training, {n_test[k]} test cells)" for k in short)
            + "; label more of it, lower evaluate.block_patches, or set evaluate.drop_small_classes")
    return split, labels, classes


def _split(lay: Layout, labels: np.ndarray, valid: np.ndarray, cfg: RunConfig) -> Split:
    p = cfg.patches.patch_px
    try:
        return spatial_split(labels, valid, block_px=cfg.evaluate.block_patches * p, gap_px=p,
                             test_fraction=cfg.evaluate.test_fraction, seed=cfg.evaluate.seed)
    except ValueError as exc:
        raise DataValidationError(f"{lay.survey}: labels cannot be split spatially: {exc}") from None


def _class_counts(split: Split, labels: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.bincount(labels[split.train_rows, split.train_cols], minlength=K + 1)[1:],
            np.bincount(labels[split.test_rows, split.test_cols], minlength=K + 1)[1:])


def _short_classes(split: Split, labels: np.ndarray, K: int, *, need_test: bool) -> list[int]:
    """Labelled classes (0-based) that cannot be learnt (< 2 training cells) or, with ``need_test``, scored."""
    n_train, n_test = _class_counts(split, labels, K)
    return [k for k in range(K) if n_train[k] + n_test[k] > 0 and (n_train[k] < 2 or (need_test and n_test[k] < 1))]


def cell_features(bundle_or_model, arrays: list, scaling: StackScaling, rows, cols, layers, *, batch: int = 512
                  ) -> tuple[np.ndarray, np.ndarray]:
    """AE features and raw-pixel features (the flattened standardised patch, every input) of given cells."""
    model = bundle_or_model.model if isinstance(bundle_or_model, ModelBundle) else bundle_or_model
    p = model.patch_px
    ae, raw = [], []
    for b0 in range(0, len(rows), batch):
        x = scaling.apply(stack_patches(arrays, rows[b0 : b0 + batch], cols[b0 : b0 + batch], p), axis=1)
        ae.append(patch_features(model, torch.from_numpy(x), layers).numpy())
        raw.append(x.reshape(len(x), -1))
    F = model.feature_size(layers)
    return (np.concatenate(ae) if ae else np.zeros((0, F), "float32"),
            np.concatenate(raw) if raw else np.zeros((0, len(arrays) * p * p), "float32"))


def training_cells(split: Split, labels: np.ndarray, cfg: RunConfig) -> tuple[np.ndarray, ...]:
    y = labels[split.train_rows, split.train_cols]
    keep = subsample_per_class(y, cfg.svm.max_per_class, cfg.svm.seed)
    counts = np.bincount(y[keep])
    small = [int(c) for c in np.unique(y) if counts[c] < 2]
    if small:  # (only after subsampling; labelled_split has checked the full counts)
        raise DataValidationError(f"classes {small} have fewer than 2 training cells after subsampling")
    return split.train_rows[keep], split.train_cols[keep], y[keep], split.train_blocks[keep]


def test_cells(split: Split, labels: np.ndarray, cfg: RunConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scored test cells (rows, cols, labels): a deterministic subsample of the held-out blocks."""
    rng = np.random.default_rng(cfg.evaluate.seed)
    n_test = split.test_rows.size
    pick = np.sort(rng.choice(n_test, min(n_test, cfg.evaluate.max_test_pixels), replace=False))
    trow, tcol = split.test_rows[pick], split.test_cols[pick]
    return trow, tcol, labels[trow, tcol]


@locks_output
def run_train(out: str | Path, cfg: RunConfig, *, progress=None) -> Path:
    """Train the autoencoder on OUT/patches.zarr and the SVM on the training cells -> OUT/model/."""
    lay = Layout(Path(out))
    open_store(lay.survey)  # refuses an incomplete store
    sattrs = store_attrs(lay.survey)
    pds = open_store(lay.patches)
    inputs_names = tuple(pds.attrs.get("inputs", ["field"]))
    # anomaly_px is stored in the bundle; the rest of the classify section (tiles, cluster) is not
    # the model's business and must not trigger retraining
    h = content_hash("train-v1", str(pds.attrs[HASH]), str(sattrs.get("labels_hash")), cfg.section_json("model"),
                     cfg.section_json("svm"), cfg.section_json("evaluate"), str(cfg.classify.anomaly_px))
    meta_file = lay.model / "metadata.json"
    if meta_file.exists() and read_bundle_meta(lay.model).get("input_hash") == h:
        log.info("train: %s is up to date", lay.model)
        return lay.model
    arrays, scaling = input_stack(lay, inputs_names)
    raw = pds["patch"].values
    raw = raw[:, None] if raw.ndim == 3 else raw
    inputs, mask = scaling.apply(raw, axis=1), np.isfinite(raw)
    lay.model.mkdir(parents=True, exist_ok=True)
    ckpt = lay.root / f"train-{h[:12]}.ckpt"
    t0 = time.perf_counter()
    log.info("train: autoencoder on %d patches of %d px, inputs %s", len(raw), raw.shape[-1],
             ", ".join(inputs_names))
    result = train_autoencoder(inputs, mask, cfg.model, checkpoint=ckpt, progress=progress)
    train_s = time.perf_counter() - t0
    layers = resolve_layers(result.model, cfg.model.layers)
    split, labels, classes = labelled_split(lay, cfg)
    rows, cols, y, blocks = training_cells(split, labels, cfg)
    X, _ = cell_features(result.model, arrays, scaling, rows, cols, layers)
    log.info("train: SVM on %d labelled cells, %d AE features", len(y), X.shape[1])
    svm, svm_info = fit_svm(X, y, blocks, cfg.svm)
    bundle = ModelBundle(result.model, svm, layers, scaling, classes, cfg.classify.anomaly_px, inputs=inputs_names,
                         meta={
        "input_hash": h, "config": cfg.model_dump(mode="json"), "survey_source": sattrs.get("source"),
        "training": {"history": result.history, "best_epoch": result.best_epoch,
                     "best_val_loss": result.best_val_loss, "device": result.device, "seconds": train_s,
                     "n_patches": len(raw)},
        "svm": {**svm_info, "n_train": len(y)},
    })
    save_bundle(bundle, lay.model)
    ckpt.unlink(missing_ok=True)
    return lay.model


@locks_output
def run_classify(out: str | Path, cfg: RunConfig, *, bundle: str | Path | None = None, client=None,
                 progress=None) -> Path:
    """Classify every valid cell of OUT/survey.zarr into OUT/classified.zarr."""
    from magpipe.classify import classify_survey

    lay = Layout(Path(out))
    bundle_path = Path(bundle) if bundle else lay.model
    sattrs = store_attrs(lay.survey) or {}
    meta = read_bundle_meta(bundle_path)
    input_stack(lay, tuple(meta.get("inputs", ["field"])))  # derived inputs of this survey, written once
    shape = zarr.open_array(lay.survey / "field", mode="r").shape
    if min(shape) < meta["patch_px"]:
        raise DataValidationError(f"{lay.survey}: survey of {shape[0]} x {shape[1]} cells is smaller than the "
                                  f"model's {meta['patch_px']} px patch ({bundle_path})")
    h = content_hash("classify-v1", str(sattrs.get(HASH)), str(meta.get("input_hash")),
                     str(cfg.classify.chunk_px), str(cfg.classify.anomaly_px))
    return classify_survey(lay.survey, bundle_path, lay.classified, stage_hash=h, tile_px=cfg.classify.chunk_px,
                           client=client, progress=progress)


def _evaluate_split(lay: Layout, cfg: RunConfig, bundle: ModelBundle, arrays: list, grids: tuple, *,
                    deployed: bool) -> dict:
    """AE features against raw pixels on one spatial split (``cfg.evaluate.seed``).

    The deployed split scores the bundle's own SVM; another split refits the AE
    SVM on its training cells, with the same search, so both feature sets are
    treated alike on every split.
    """
    split, labels, classes = labelled_split(lay, cfg, need_test=True, grids=grids)
    rows, cols, y, blocks = training_cells(split, labels, cfg)
    trow, tcol, ty = test_cells(split, labels, cfg)
    p, K = bundle.patch_px, len(classes)
    Xae_te, Xraw_te = cell_features(bundle, arrays, bundle.scaling, trow, tcol, bundle.layers)
    Xae_tr, Xraw_tr = cell_features(bundle, arrays, bundle.scaling, rows, cols, bundle.layers)
    log.info("evaluate: split seed %d, %d training, %d test cells", cfg.evaluate.seed, len(y), len(ty))
    ae_svm, ae_info = (bundle.svm, bundle.meta.get("svm", {})) if deployed else fit_svm(Xae_tr, y, blocks, cfg.svm)
    raw_svm, raw_info = fit_svm(Xraw_tr, y, blocks, cfg.svm)
    scores = {name: score(trow, tcol, ty, predict_with_confidence(model, X)[0], patch_px=p, n_classes=K)
              for name, model, X in (("ae", ae_svm, Xae_te), ("raw", raw_svm, Xraw_te))}
    # the floor any classifier must clear: the most common class of the (unsubsampled) training region
    majority = np.bincount(labels[split.train_rows, split.train_cols]).argmax()
    scores["majority"] = score(trow, tcol, ty, np.full_like(ty, majority), patch_px=p, n_classes=K)
    sparse = None
    if cfg.evaluate.sparse_per_class:
        sparse = sparse_label_scores({"ae": Xae_tr, "raw": Xraw_tr}, {"ae": Xae_te, "raw": Xraw_te}, y, blocks,
                                     (trow, tcol, ty), per_class=cfg.evaluate.sparse_per_class,
                                     repeats=cfg.evaluate.sparse_repeats, patch_px=p, n_classes=K,
                                     svm_cfg=cfg.svm, seed=cfg.evaluate.seed)
    return {"seed": cfg.evaluate.seed, "classes": classes, "scores": scores, "svm": {"ae": ae_info, "raw": raw_info},
            "n_train": int(len(y)), "n_test": int(len(ty)), "n_test_available": int(split.test_rows.size),
            "sparse": sparse, "test_features": Xae_te, "test_labels": ty}


def _split_config(cfg: RunConfig, i: int) -> RunConfig:
    return cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"seed": cfg.evaluate.seed + i})})


@locks_output
def run_evaluate(out: str | Path, cfg: RunConfig) -> dict:
    """Score AE features against raw pixels on spatial holdouts; write report.json/.md and figures.

    Headline metrics are means over ``evaluate.splits`` random spatial splits; per-class F1, the
    confusion matrices and the embedding view come from the first (the deployed model's) split.
    """
    from magpipe.report import write_report

    lay = Layout(Path(out))
    bundle = load_bundle(lay.model, patch_px=cfg.patches.patch_px)  # the split's blocks are in patch widths
    arrays, _ = input_stack(lay, bundle.inputs)
    grids = label_grids(lay)
    first = _evaluate_split(lay, cfg, bundle, arrays, grids, deployed=True)
    splits, skipped = [first], []
    for i in range(1, cfg.evaluate.splits):
        try:
            splits.append(_evaluate_split(lay, _split_config(cfg, i), bundle, arrays, grids, deployed=False))
        except DataValidationError as exc:  # a class may fall short on one side of another split
            log.warning("evaluate: split seed %d skipped: %s", cfg.evaluate.seed + i, exc)
            skipped.append({"seed": cfg.evaluate.seed + i, "reason": str(exc)})
    classes, p = first["classes"], bundle.patch_px
    ae, raw = first["scores"]["ae"], first["scores"]["raw"]
    headline = summarise({name: [sp["scores"][name] for sp in splits] for name in ("ae", "raw", "majority")})
    sparse = None
    if cfg.evaluate.sparse_per_class:
        draws = {name: [d for sp in splits for d in sp["sparse"]["draws"][name]] for name in ("ae", "raw")}
        sparse = {"per_class": cfg.evaluate.sparse_per_class, "repeats": len(draws["ae"]), **summarise(draws)}
    rng = np.random.default_rng(cfg.evaluate.seed)
    ty = first["test_labels"]
    view = rng.choice(len(ty), min(len(ty), 3000), replace=False)
    emb, emb_method = embedding_2d(first["test_features"][view])
    report = {
        "classes": classes,
        "n_train": first["n_train"],
        "n_test": first["n_test"],
        "n_test_available": first["n_test_available"],
        "patch_px": p,
        "layers": bundle.layers,
        **headline,
        "n_splits": len(splits),
        "splits_skipped": skipped,
        "splits": [{"seed": sp["seed"], "n_train": sp["n_train"], "n_test": sp["n_test"],
                    **{m: {n: sp["scores"][n][m] for n in ("ae", "raw")} for m in METRICS}} for sp in splits],
        "f1": {"ae": dict(zip(classes, ae["f1"])), "raw": dict(zip(classes, raw["f1"]))},
        "confusion": {"ae": ae["confusion"], "raw": raw["confusion"]},
        "n_test_patches": ae["n_patches"],
        "sparse": sparse,
        "svm": first["svm"],
        "training": bundle.meta.get("training", {}),
        "split": {"block_px": cfg.evaluate.block_patches * p, "gap_px": p,
                  "test_fraction": cfg.evaluate.test_fraction, "seed": cfg.evaluate.seed},
        "anomalies": top_anomalies(lay.classified, cfg.evaluate.top_k, patch_px=p),
        "label_next": label_next(lay.classified, cfg.evaluate.top_k, block=cfg.evaluate.block_patches * p),
        "embedding": {"method": emb_method, "n_cells": len(view)},
    }
    write_report(report, lay, embedding=(emb, ty[view]))
    return report


@locks_output
def run_all(survey: str | Path, labels: str | Path, out: str | Path, cfg: RunConfig, *,
            label_field: str | None = None, classes: str | Path | None = None, client=None) -> dict:
    """Every stage in order; finished stages with unchanged inputs are skipped."""
    out = Path(out)
    check_output_path(out / "survey.zarr")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.json")
    run_ingest(survey, out, cfg)
    run_labels(labels, out, label_field=label_field, classes=classes)
    run_patches(out, cfg)
    run_train(out, cfg)
    run_classify(out, cfg, client=client)
    return run_evaluate(out, cfg)


@locks_output
def run_similar(out: str | Path, cfg: RunConfig, *, point: tuple[float, float] | None = None,
                polygons: str | Path | None = None, bundle: str | Path | None = None, k: int = 10) -> list[dict]:
    """Similarity of every cell to a query -> OUT/similar.zarr, OUT/similar.png; the k most similar places."""
    from magpipe.report import similarity_figure
    from magpipe.similarity import query_cells, query_embedding, similarity_map

    lay = Layout(Path(out))
    ds = open_store(lay.survey)
    bundle_path = Path(bundle) if bundle else lay.model
    model = load_bundle(bundle_path)
    rows, cols = query_cells(ds, point=point, polygons=polygons)
    arrays, _ = input_stack(lay, model.inputs)
    q = query_embedding(model, arrays, rows, cols)
    similarity_map(lay.survey, model, lay.similar, q, tile_px=cfg.classify.chunk_px)
    hits = top_blocks(lay.similar, "similarity", k, block=PICK_SPACING_PATCHES * model.patch_px,
                      exclude=(rows, cols))
    similarity_figure(lay.similar, hits, (rows, cols), lay.root / "similar.png")
    write_json({"query": {"point": point, "polygons": str(polygons) if polygons else None, "n_cells": int(rows.size)},
                "top": hits}, lay.root / "similar.json")
    return hits
