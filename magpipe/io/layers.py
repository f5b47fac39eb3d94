"""The layers of a survey stack (gamma-ray, terrain, imagery ...) brought onto the survey's own cells.

The survey file is the reference grid: its cells, CRS and extent. Each layer is read like a survey
(:func:`magpipe.io.grids.read_grid`, so any format and URLs) and, where its grid differs, resampled
onto the survey's cells by GDAL's warper (rasterio), one survey chunk at a time: each chunk reads
only the part of the layer under it (plus a margin for the resampling kernel), so memory stays flat
whatever the sizes. A layer already on the survey's grid is taken as it is, without resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from magpipe.config import LayerSource
from magpipe.errors import DataValidationError, InputError
from magpipe.io.grids import band_count, read_grid
from magpipe.io.location import as_path, remote_errors


@dataclass(frozen=True)
class Layer:
    """One single-band layer: its name in the stack, its file, the band read (None: the only one) and
    how it is resampled (a name of ``rasterio.enums.Resampling``)."""

    name: str
    path: Path
    band: int | None
    resampling: str


def resolve_layers(sources: dict[str, LayerSource] | None) -> list[Layer]:
    """The single-band layers ``sources`` name, in order: a multi-band file given without a band becomes
    ``NAME_1 .. NAME_n``.

    Raises InputError for a missing or unreadable file or a band out of range, DataValidationError
    when two layers end with one name.
    """
    out: list[Layer] = []
    for name, src in (sources or {}).items():
        path = as_path(src.path)
        with remote_errors(path, kind=InputError):
            if not path.exists():
                raise InputError(f"{path}: layer '{name}': file not found")
            n = band_count(path)
        if src.band is not None:
            if not 1 <= src.band <= n:
                raise InputError(f"{path}: layer '{name}': band {src.band} out of range 1..{n}")
            out.append(Layer(name, path, src.band, src.resampling))
        elif n == 1:
            out.append(Layer(name, path, None, src.resampling))
        else:
            out += [Layer(f"{name}_{b}", path, b, src.resampling) for b in range(1, n + 1)]
    seen: dict[str, Layer] = {}
    for layer in out:
        if layer.name in seen:
            raise DataValidationError(f"{layer.path}: layer name '{layer.name}' is given twice (also by "
                                      f"{seen[layer.name].path}); name each layer once")
        seen[layer.name] = layer
    return out


def layer_on_grid(layer: Layer, grid: xr.DataArray, *, chunk_px: int) -> xr.DataArray:
    """``layer`` on the cells of ``grid`` (the survey's field): lazy float32 (y, x), NaN = no data.

    Raises
    ------
    DataValidationError
        If the layer has no CRS where one is needed, or does not overlap the survey.
    """
    src = read_grid(layer.path, band=layer.band, chunk_px=chunk_px)
    src_crs, dst_crs = src.rio.crs, grid.rio.crs
    if _same_grid(src, grid) and (src_crs == dst_crs):
        return src.assign_coords(y=grid.y, x=grid.x).rename(layer.name)
    if dst_crs is None:
        raise DataValidationError(f"{layer.path}: layer '{layer.name}' is on another grid than the survey, and the "
                                  "survey has no CRS to resample it onto (give the survey's with --crs)")
    if src_crs is None:
        raise DataValidationError(f"{layer.path}: layer '{layer.name}' has no CRS and is not on the survey's grid; "
                                  "write its CRS into the file (e.g. gdal_edit.py -a_srs)")
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(src_crs, dst_crs, *src.rio.bounds(), densify_pts=21)
    g_left, g_bottom, g_right, g_top = grid.rio.bounds()
    if left >= g_right or right <= g_left or bottom >= g_top or top <= g_bottom:
        raise DataValidationError(
            f"{layer.path}: layer '{layer.name}' does not overlap the survey (its extent in the survey's CRS: "
            f"x {left:.6g}..{right:.6g}, y {bottom:.6g}..{top:.6g}; the survey's: x {g_left:.6g}..{g_right:.6g}, "
            f"y {g_bottom:.6g}..{g_top:.6g})")
    transform = grid.rio.transform()
    ny, nx = grid.shape
    edges_y = list(range(0, ny, chunk_px)) + [ny]
    edges_x = list(range(0, nx, chunk_px)) + [nx]
    rows = [[da.from_delayed(dask.delayed(_warp_chunk)(layer, (y0, y1, x0, x1), transform, dst_crs.to_wkt(),
                                                       chunk_px), shape=(y1 - y0, x1 - x0), dtype="float32")
             for x0, x1 in zip(edges_x[:-1], edges_x[1:])] for y0, y1 in zip(edges_y[:-1], edges_y[1:])]
    return xr.DataArray(da.block(rows), dims=("y", "x"), coords={"y": grid.y, "x": grid.x}, name=layer.name)


def _same_grid(a: xr.DataArray, b: xr.DataArray) -> bool:
    """Same shape and the same cell edges (to a millionth of a cell)."""
    if a.shape != b.shape:
        return False
    ta, tb = a.rio.transform(), b.rio.transform()
    cell = max(abs(tb.a), abs(tb.e))
    return all(math.isclose(u, v, abs_tol=1e-6 * cell) for u, v in zip(ta[:6], tb[:6]))


def _warp_chunk(layer: Layer, tile: tuple[int, int, int, int], transform, dst_wkt: str, chunk_px: int) -> np.ndarray:
    """One survey chunk of ``layer``, (y1 - y0, x1 - x0) float32: the part of the layer under the chunk,
    with a margin of source cells for the kernel, warped onto the chunk's cells."""
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.warp import reproject, transform_bounds
    from rasterio.windows import Window, from_bounds
    from rasterio.windows import transform as window_transform

    y0, y1, x0, x1 = tile
    src = read_grid(layer.path, band=layer.band, chunk_px=chunk_px)
    dst_crs = CRS.from_wkt(dst_wkt)
    out = np.full((y1 - y0, x1 - x0), np.nan, dtype="float32")
    ox, oy = transform @ (x0, y0)
    dst_transform = from_origin(ox, oy, transform.a, -transform.e)
    bounds = transform_bounds(dst_crs, src.rio.crs, ox, oy + (y1 - y0) * transform.e, ox + (x1 - x0) * transform.a,
                              oy, densify_pts=21)
    st = src.rio.transform()
    window = from_bounds(*bounds, transform=st)
    # the kernel reaches past the chunk's edge: by 2 source cells, more when the layer is finer than the survey
    ratio = max(window.height / (y1 - y0), window.width / (x1 - x0), 1.0)
    pad = int(math.ceil(2 * ratio)) + 2
    r0 = max(0, int(math.floor(window.row_off)) - pad)
    c0 = max(0, int(math.floor(window.col_off)) - pad)
    r1 = min(src.sizes["y"], int(math.ceil(window.row_off + window.height)) + pad)
    c1 = min(src.sizes["x"], int(math.ceil(window.col_off + window.width)) + pad)
    if r1 <= r0 or c1 <= c0:
        return out
    part = src.isel(y=slice(r0, r1), x=slice(c0, c1))
    values = np.asarray(part.values, dtype="float32")
    if not np.isfinite(values).any():
        return out
    reproject(values, out, src_transform=window_transform(Window(c0, r0, c1 - c0, r1 - r0), st), src_crs=src.rio.crs,
              dst_transform=dst_transform, dst_crs=dst_crs, resampling=Resampling[layer.resampling],
              src_nodata=np.nan, dst_nodata=np.nan)
    return out
