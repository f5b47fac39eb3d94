"""Similarity search: "where else does the survey look like this?"

A query (a point, or polygons, in the survey's CRS) becomes the mean AE embedding
of its cells; every cell's similarity is the cosine between its embedding and the
query's. Embeddings are standardised with the SVM's own scaler first, so each
feature counts as much as it does for classification, not by its raw magnitude.
The map is computed tile by tile from dense features (flat memory) and written to
``OUT/similar.zarr`` atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr

from magpipe.bundle import ModelBundle
from magpipe.classify import output_template, window_features, window_masks
from magpipe.errors import InputError
from magpipe.io.stores import check_output_path, grid_encoding, mark_complete, open_store, partial_path, replace_dir
from magpipe.inputs import input_arrays
from magpipe.patches import read_stack, stack_patches, tiles
from magpipe.svm import feature_scaler

log = logging.getLogger("magpipe.similarity")


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=-1, keepdims=True), 1e-12)


def query_cells(survey: xr.Dataset, *, point: tuple[float, float] | None = None,
                polygons: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Valid cells of the query: the cell holding ``point`` (x, y), or the cells inside ``polygons``."""
    valid = survey["valid"].values.astype(bool)
    if (point is None) == (polygons is None):
        raise InputError("give exactly one query: a point (x y) or a polygon file")
    if point is not None:
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
    import geopandas as gpd
    from rasterio.features import geometry_mask

    path = Path(polygons)
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable vector file ({str(exc).splitlines()[0][:200]})") from None
    crs = survey.rio.crs
    if gdf.crs is not None and crs is not None:
        gdf = gdf.to_crs(crs)
    inside = ~geometry_mask(list(gdf.geometry), out_shape=valid.shape, transform=survey.rio.transform())
    rows, cols = np.nonzero(inside & valid)
    if rows.size == 0:
        raise InputError(f"{path}: the polygons cover no valid cell of the survey")
    return rows, cols


def query_embedding(bundle: ModelBundle, arrays: list, rows: np.ndarray, cols: np.ndarray, *,
                    max_cells: int = 2000) -> np.ndarray:
    """Unit vector of the mean standardised embedding of the query cells."""
    from magpipe.model import patch_features

    if rows.size > max_cells:
        pick = np.random.default_rng(0).choice(rows.size, max_cells, replace=False)
        rows, cols = rows[pick], cols[pick]
    x = bundle.scaling.apply(stack_patches(arrays, rows, cols, bundle.patch_px), axis=1)
    feats = patch_features(bundle.model, torch.from_numpy(x), bundle.layers).numpy()
    return _unit(_unit(feature_scaler(bundle.svm).transform(feats)).mean(axis=0))


def similarity_window(bundle: ModelBundle, window: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity to ``query`` of every cell of a window's interior (NaN where no data)."""
    _, inner = window_masks(bundle, window)
    out = np.full(inner.shape, np.nan, dtype="float32")
    if inner.any():
        _, feats = window_features(bundle, window)
        X = feature_scaler(bundle.svm).transform(feats[:, inner].T)
        out[inner] = _unit(X) @ query
    return out


def similarity_map(survey: str | Path, bundle: ModelBundle, out: str | Path, query: np.ndarray, *,
                   tile_px: int = 512) -> Path:
    """Write ``similarity`` for every cell of ``survey`` to the store ``out`` (written aside, then moved)."""
    survey, out = Path(survey), Path(out)
    check_output_path(out)
    ds = open_store(survey)
    tmp = partial_path(out)
    tmpl = output_template(ds, {"similarity": ("float32", np.nan, {
        "long_name": "cosine similarity of the AE embedding to the query", "units": "1"})}, tile_px)
    enc = grid_encoding(tmpl, shard_px=tile_px)
    enc["tile_done"] = {"chunks": (1, 1)}
    tmpl.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, compute=False, encoding=enc)
    arrays = input_arrays(survey, bundle.inputs)
    group = zarr.open_group(tmp, mode="r+")
    grid = tiles(arrays[0].shape, tile_px)
    for i, (y0, y1, x0, x1) in enumerate(grid):
        group["similarity"][y0:y1, x0:x1] = similarity_window(
            bundle, read_stack(arrays, y0, y1, x0, x1, bundle.patch_px // 2), query)
        group["tile_done"][y0 // tile_px, x0 // tile_px] = 1
        if (i + 1) % max(1, len(grid) // 10) == 0:
            log.info("similarity: tiles %d/%d", i + 1, len(grid))
    mark_complete(tmp)
    replace_dir(tmp, out)
    return out
