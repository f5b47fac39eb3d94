"""Similarity search: "where else does the survey look like this?"

A query (a point, or polygons, in the survey's CRS) becomes the mean AE embedding
of its cells; every cell's similarity is the cosine between its embedding and the
query's. Embeddings are standardised with the SVM's own scaler first, so each
feature counts as much as it does for classification, not by its raw magnitude.
The map is made tile by tile from dense features (flat memory) by the tile writer of
:mod:`magpipe.tiling`; the stage is :func:`magpipe.stages.similar.run_similar`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from magpipe.bundle import ModelBundle
from magpipe.classify import window_masks
from magpipe.errors import InputError
from magpipe.features import cell_features, window_input
from magpipe.io.labels import polygon_cells
from magpipe.io.schema import Layout
from magpipe.io.survey import open_inputs
from magpipe.patches import read_stack
from magpipe.svm import feature_scaler
from magpipe.tiling import Tile


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=-1, keepdims=True), 1e-12)


def query_cells(survey: xr.Dataset, *, point: tuple[float, float] | None = None,
                polygons: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Valid cells (rows, cols) of the query: the cell holding ``point`` (x, y, survey CRS), or the
    cells inside ``polygons`` (a vector file, reprojected to the survey's CRS).

    ``survey`` is the run's survey dataset (its ``valid`` mask, coordinates and CRS). Returns (m,)
    int64 cell indices, m = 1 for a point. Raises InputError unless exactly one query is given, or
    when it falls outside the survey or on no valid cell.
    """
    valid = survey["valid"].values.astype(bool)
    if (point is None) == (polygons is None):
        raise InputError("give exactly one query: a point (x y) or a polygon file")
    if point is not None:
        return _point_cell(survey, valid, point)
    rows, cols = np.nonzero(polygon_cells(polygons, survey) & valid)
    if rows.size == 0:
        raise InputError(f"{polygons}: the polygons cover no valid cell of the survey")
    return rows, cols


def _point_cell(survey: xr.Dataset, valid: np.ndarray, point: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = point
    xs, ys = survey.x.values, survey.y.values
    dx, dy = abs(xs[1] - xs[0]), abs(ys[1] - ys[0])
    if not (xs.min() - dx / 2 <= x <= xs.max() + dx / 2 and ys.min() - dy / 2 <= y <= ys.max() + dy / 2):
        raise InputError(f"point ({x}, {y}) is outside the survey "
                         f"(x {xs.min():.1f}..{xs.max():.1f}, y {ys.min():.1f}..{ys.max():.1f})")
    r, c = int(np.abs(ys - y).argmin()), int(np.abs(xs - x).argmin())
    if not valid[r, c]:
        raise InputError(f"point ({x}, {y}) falls on a no-data cell of the survey")
    return np.array([r]), np.array([c])


def query_embedding(bundle: ModelBundle, arrays: list, rows: np.ndarray, cols: np.ndarray, *,
                    max_cells: int = 2000) -> np.ndarray:
    """Unit vector (F,) of the mean standardised embedding of the query cells (at most ``max_cells``
    of them, drawn with a fixed seed).

    ``arrays`` are the bundle's C input grids (2-D, y/x), ``rows``, ``cols`` (m,) cell indices. Each
    cell's embedding is scaled to unit length before the mean, so every cell of a polygon counts
    alike. Returns float32.
    """
    if rows.size > max_cells:
        pick = np.random.default_rng(0).choice(rows.size, max_cells, replace=False)
        rows, cols = rows[pick], cols[pick]
    feats = cell_features({"ae": bundle.features}, arrays, bundle.scaling, rows, cols)["ae"]
    return _unit(_unit(feature_scaler(bundle.svm).transform(feats)).mean(axis=0))


def similarity_window(bundle: ModelBundle, window: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity to ``query`` of every cell of a window's interior (NaN where no data).

    ``window`` is a raw (C, H + 2h, W + 2h) stack (NaN = no data), ``query`` the (F,) unit vector of
    :func:`query_embedding`. Returns (H, W) float32 in -1..1.
    """
    _, inner = window_masks(bundle.features.window_px, window)
    out = np.full(inner.shape, np.nan, dtype="float32")
    if inner.any():
        feats = bundle.features.dense(window_input(bundle.scaling, window)).numpy()
        X = feature_scaler(bundle.svm).transform(feats[:, inner].T)
        out[inner] = _unit(X) @ query
    return out


def similarity_tile(run: str, bundle: ModelBundle, query: np.ndarray, tile: Tile) -> dict[str, np.ndarray]:
    """The similarity of one tile of the run in ``run`` to ``query``.

    ``tile`` is (y0, y1, x0, x1) in cells; returns ``{"similarity": (y1 - y0, x1 - x0) float32}``, the
    values a task of :func:`magpipe.tiling.write_tiles` writes.
    """
    y0, y1, x0, x1 = tile
    window = read_stack(open_inputs(Layout(run), bundle.inputs), y0, y1, x0, x1, bundle.features.window_px // 2)
    return {"similarity": similarity_window(bundle, window, query)}
