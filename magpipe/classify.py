"""Classify a whole survey tile by tile, out of core, in parallel on Dask.

Each tile task reads its window of the survey plus a halo of p // 2 from Zarr
(the same halo ``map_overlap`` would add), computes dense features, SVM classes
and confidences and the reconstruction-error anomaly, and writes its region of
``classified.zarr``. A tile is one Zarr shard, so no two tasks touch the same
object. Each finished tile sets its cell in ``tile_done``; a re-run of an
interrupted classification skips those tiles, and the store is renamed into
place (and marked complete) only after the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr

from magpipe.bundle import ModelBundle, load_bundle, read_bundle_meta
from magpipe.io.stores import (
    COMPLETE,
    HASH,
    check_output_path,
    grid_encoding,
    mark_complete,
    partial_path,
    replace_dir,
    store_attrs,
    version,
)
from magpipe.model import dense_anomaly, dense_features
from magpipe.inputs import input_arrays
from magpipe.patches import read_stack, read_window, tiles
from magpipe.svm import PREDICT_BATCH, predict_with_confidence

log = logging.getLogger("magpipe.classify")

NODATA_CLASS = 0  # class code of cells with no data (classes are 1..K)


def _channels(window: np.ndarray) -> np.ndarray:
    """Windows are (C, H, W); a 2-D one is the single-input case."""
    return window[None] if window.ndim == 2 else window


def window_masks(bundle: ModelBundle, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid cells (every input has data) of a window carrying a halo of p // 2, and of its interior."""
    h = bundle.patch_px // 2
    valid = np.isfinite(_channels(window)).all(0)
    return valid, (valid[h:-h, h:-h] if h else valid)


def window_features(bundle: ModelBundle, window: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """The standardised window as the model's input (1, C, H, W) and its interior's dense features (F, h, w)."""
    x = torch.from_numpy(bundle.scaling.apply(_channels(window), axis=0))[None]
    return x, dense_features(bundle.model, x, bundle.layers).numpy()


def classify_window(bundle: ModelBundle, window: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classify the interior of a raw window carrying a halo of p // 2 (NaN = no data).

    Returns class (int16, 0 = no data), confidence (float32, probability of the class)
    and anomaly (float32, mean squared reconstruction error, standardised units).
    """
    valid, inner = window_masks(bundle, window)
    shape = inner.shape
    cls = np.full(shape, NODATA_CLASS, dtype="int16")
    conf = np.full(shape, np.nan, dtype="float32")
    anom = np.full(shape, np.nan, dtype="float32")
    if not inner.any():
        return cls, conf, anom
    x, feats = window_features(bundle, window)
    rows = max(1, PREDICT_BATCH // shape[1])  # row strips: the (cells, features) copy stays small
    for r0 in range(0, shape[0], rows):
        sel = inner[r0 : r0 + rows]
        if sel.any():
            X = feats[:, r0 : r0 + rows][:, sel].T
            cls[r0 : r0 + rows][sel], conf[r0 : r0 + rows][sel] = predict_with_confidence(bundle.svm, X)
    del feats
    a = dense_anomaly(bundle.model, x, torch.from_numpy(valid)[None, None], bundle.anomaly_px)
    anom[inner] = a.numpy()[inner]
    return cls, conf, anom


def classify_array(bundle: ModelBundle, field: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single-process reference: the whole grid as one window."""
    h = bundle.patch_px // 2
    return classify_window(bundle, read_window(field, 0, field.shape[0], 0, field.shape[1], h))


@lru_cache(maxsize=4)
def _cached_bundle(path: str) -> ModelBundle:
    """Each worker process loads a bundle once, however many tiles it runs."""
    try:
        from distributed import get_worker

        get_worker()
        torch.set_num_threads(1)  # one thread per Dask worker thread; no oversubscription
    except (ImportError, ValueError):
        pass
    return load_bundle(path)


def classify_tile(survey: str, out: str, bundle_path: str, tile: tuple[int, int, int, int], index: int,
                  tile_px: int) -> int:
    """Classify one tile of ``survey``'s field into the partial store ``out``; returns its index."""
    bundle = _cached_bundle(bundle_path)
    y0, y1, x0, x1 = tile
    window = read_stack(input_arrays(survey, bundle.inputs), y0, y1, x0, x1, bundle.patch_px // 2)
    cls, conf, anom = classify_window(bundle, window)
    group = zarr.open_group(out, mode="r+")
    group["class"][y0:y1, x0:x1] = cls
    group["confidence"][y0:y1, x0:x1] = conf
    group["anomaly"][y0:y1, x0:x1] = anom
    group["tile_done"][y0 // tile_px, x0 // tile_px] = 1  # last: the tile is done only once all is written
    return index


def output_template(survey_ds: xr.Dataset, variables: dict[str, tuple[str, float, dict]], tile_px: int
                    ) -> xr.Dataset:
    """A lazy dataset on the survey's grid and CRS: name -> (dtype, fill value, attrs), plus ``tile_done``."""
    import dask.array as da

    ny, nx = survey_ds.sizes["y"], survey_ds.sizes["x"]
    chunks = (tile_px, tile_px)
    coords = {k: survey_ds.coords[k] for k in ("y", "x", "spatial_ref") if k in survey_ds.coords}
    grid = {"grid_mapping": "spatial_ref"} if "spatial_ref" in coords else {}
    ds = xr.Dataset({name: (("y", "x"), da.full((ny, nx), fill, dtype=dtype, chunks=chunks), {**attrs, **grid})
                     for name, (dtype, fill, attrs) in variables.items()}, coords=coords)
    nty, ntx = -(-ny // tile_px), -(-nx // tile_px)
    ds["tile_done"] = (("tile_y", "tile_x"), da.zeros((nty, ntx), dtype="uint8", chunks=(1, 1)))
    return ds


def _template(survey_ds: xr.Dataset, classes: list[str], tile_px: int) -> xr.Dataset:
    return output_template(survey_ds, {
        "class": ("int16", NODATA_CLASS, {"long_name": "class code (see flag_values / flag_meanings)",
                                          "nodata": NODATA_CLASS,
                                          "flag_values": list(range(1, len(classes) + 1)),
                                          "flag_meanings": " ".join(c.replace(" ", "_") for c in classes)}),
        "confidence": ("float32", np.nan, {"long_name": "probability of the predicted class", "units": "1"}),
        "anomaly": ("float32", np.nan, {"long_name": "autoencoder reconstruction error (MSE, standardised units)"}),
    }, tile_px)


def classify_survey(
    survey: str | Path,
    bundle_path: str | Path,
    out: str | Path,
    *,
    stage_hash: str,
    tile_px: int = 512,
    client=None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Classify every valid cell of ``survey`` (a survey.zarr) into ``out`` (classified.zarr).

    With a ``distributed.Client`` tiles run on its workers; without one, in this process.
    Resumes a partial store made with the same ``stage_hash``; skips when already complete.
    """
    survey, out = Path(survey), Path(out)
    check_output_path(out)
    attrs = store_attrs(out)
    if attrs and attrs.get(COMPLETE) and attrs.get(HASH) == stage_hash:
        log.info("%s is up to date; nothing to do", out)
        return out
    tmp = partial_path(out)
    survey_ds = xr.open_zarr(survey, consolidated=False, decode_coords="all")
    classes = read_bundle_meta(bundle_path)["classes"]  # weights load in the workers (2 s here, 1k-survey runs take 9)
    grid = tiles((survey_ds.sizes["y"], survey_ds.sizes["x"]), tile_px)
    prev = store_attrs(tmp)
    if prev is None or prev.get(HASH) != stage_hash:
        ds = _template(survey_ds, classes, tile_px)
        ds.attrs.update({HASH: stage_hash, "magpipe_version": version(), "source": str(survey.resolve().name),
                         "classes": classes, "tile_px": tile_px})
        enc = grid_encoding(ds, shard_px=tile_px)
        enc["tile_done"] = {"chunks": (1, 1)}
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, compute=False, encoding=enc)
        # the template's data chunks are never written by xarray here; coords are
        done = np.zeros(ds["tile_done"].shape, dtype="uint8")
    else:
        done = zarr.open_array(tmp / "tile_done", mode="r")[:]
    todo = [(i, t) for i, t in enumerate(grid) if not done[t[0] // tile_px, t[2] // tile_px]]
    log.info("classifying %d of %d tiles (%d px) into %s", len(todo), len(grid), tile_px, out)
    args = (str(survey), str(tmp), str(Path(bundle_path)))
    finished = len(grid) - len(todo)
    if client is None:
        for i, t in todo:
            classify_tile(*args, t, i, tile_px)
            finished += 1
            _report(progress, finished, len(grid))
    else:
        from distributed import as_completed

        futures = [client.submit(classify_tile, *args, t, i, tile_px, key=f"classify-tile-{stage_hash}-{i}",
                                 pure=False) for i, t in todo]
        for fut in as_completed(futures, loop=client.loop):
            fut.result()
            finished += 1
            _report(progress, finished, len(grid))
    mark_complete(tmp)
    replace_dir(tmp, out)
    return out


def _report(progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
    if done == total or done % max(1, total // 10) == 0:
        log.info("tiles %d/%d", done, total)
