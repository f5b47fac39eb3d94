"""Classify a window of the survey: classes, confidences and the reconstruction-error anomaly.

A window is a raw (C, H + 2h, W + 2h) stack of the model's input grids carrying a halo of
h = p // 2 plus the smoothing radius (the halo ``map_overlap`` would add); its interior's cells are classified from
dense features, exactly as the per-patch reference would classify them. The survey-wide
output (tiles in parallel, resumable) is :func:`magpipe.stages.classify.run_classify`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from magpipe.bundle import ModelBundle, load_bundle
from magpipe.features import window_input
from magpipe.io.schema import NODATA_CLASS, Layout
from magpipe.io.survey import open_inputs
from magpipe.model import dense_anomaly
from magpipe.patches import read_stack
from magpipe.smoothing import smoothed_class, window_scores
from magpipe.tiling import Tile

__all__ = ["NODATA_CLASS", "classify_window", "classify_array", "classify_tile", "window_masks"]


def window_masks(patch_px: int, window: np.ndarray, smooth_px: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Valid cells (every input has data) of a (C, H, W) window carrying a halo of p // 2 + ``smooth_px``,
    and of its interior.

    Returns two bool masks: (H, W) over the whole window and (H - 2h, W - 2h) over its interior, with
    h the whole halo. A cell missing any input counts as no data, since the model sees every channel of it.
    """
    h = patch_px // 2 + smooth_px
    valid = np.isfinite(window).all(0)
    return valid, (valid[h:-h, h:-h] if h else valid)


def classify_window(bundle: ModelBundle, window: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classify the interior of a raw (C, H + 2h, W + 2h) window (NaN = no data), h = ``bundle.halo_px``.

    ``window`` holds the bundle's input grids in their own units (the field in nT), in the order of
    ``bundle.inputs``; cells with no data, or beyond the survey's edge, are NaN. The halo is p // 2 for
    the patches plus the smoothing radius ``bundle.smooth_px`` (:mod:`magpipe.smoothing`), so a tile's
    edge cells are smoothed over the same neighbours as any other.

    Returns
    -------
    class : (H, W) int16, 1..K, 0 = no data.
    confidence : (H, W) float32, (smoothed) calibrated probability of the class.
    anomaly : (H, W) float32, mean squared reconstruction error of the central
        ``anomaly_px`` window, standardised units.
    """
    r = bundle.smooth_px
    valid, inner = window_masks(bundle.patch_px, window, r)
    shape = inner.shape
    if not inner.any():
        return (np.full(shape, NODATA_CLASS, dtype="int16"), np.full(shape, np.nan, dtype="float32"),
                np.full(shape, np.nan, dtype="float32"))
    x = window_input(bundle.scaling, window)  # one model input for the features and the anomaly
    scores = window_scores(bundle.svm, bundle.features, bundle.scaling, window, x)  # interior + r
    cls, conf = smoothed_class(bundle.svm, scores, r)
    cls[~inner], conf[~inner] = NODATA_CLASS, np.nan
    del scores
    a = dense_anomaly(bundle.model, x, torch.from_numpy(valid)[None, None], bundle.anomaly_px).numpy()
    anom = np.full(shape, np.nan, dtype="float32")
    anom[inner] = (a[r:-r, r:-r] if r else a)[inner]
    return cls, conf, anom


def classify_array(bundle: ModelBundle, grids: np.ndarray | list[np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single-process reference: the whole grid (one 2-D input, or a list of C) as one window.

    ``grids`` are (ny, nx) raw values (NaN = no data) in the order of ``bundle.inputs``; the result is
    :func:`classify_window`'s for every cell, each (ny, nx). Holds the whole grid's features in memory:
    for tests and small grids.
    """
    arrays = [grids] if isinstance(grids, np.ndarray) and grids.ndim == 2 else list(grids)
    ny, nx = arrays[0].shape
    return classify_window(bundle, read_stack(arrays, 0, ny, 0, nx, bundle.halo_px))


@lru_cache(maxsize=4)
def cached_bundle(path: str) -> ModelBundle:
    """Each worker process loads a bundle once, however many tiles it runs."""
    return load_bundle(path)


def classify_tile(run: str, bundle_path: str, tile: Tile) -> dict[str, np.ndarray]:
    """The class, confidence and anomaly of one tile of the run in ``run`` (what a Dask task computes).

    Takes paths, not objects, so the task pickles cheaply; ``tile`` is (y0, y1, x0, x1) in cells and
    each returned array is (y1 - y0, x1 - x0), as :func:`classify_window` describes.
    """
    bundle = cached_bundle(bundle_path)
    y0, y1, x0, x1 = tile
    window = read_stack(open_inputs(Layout(run), bundle.inputs), y0, y1, x0, x1, bundle.halo_px)
    cls, conf, anom = classify_window(bundle, window)
    return {"class": cls, "confidence": conf, "anomaly": anom}
