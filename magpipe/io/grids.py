"""Readers that turn any supported survey file into one normalised grid.

Whatever the format, the result is a lazy float32 ``xarray.DataArray`` named
``field`` with dims ``(y, x)``, y descending (north up, as in a GeoTIFF), no-data
as NaN, the CRS and transform recorded by rioxarray. Downstream code then never
needs to know where a grid came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from magpipe.errors import DataValidationError, InputError
from magpipe.io.location import first_line, input_path, is_url, local_file, named_as, remote_errors, zarr_options

RASTER_SUFFIXES = {".tif", ".tiff", ".gtiff", ".vrt", ".img", ".grd", ".ers"}
NETCDF_SUFFIXES = {".nc", ".nc4", ".cdf", ".h5"}
LINE_SUFFIXES = {".csv", ".xyz", ".txt", ".dat"}
COMPRESSED = {".xz", ".gz", ".bz2"}

X_NAMES = ("x", "easting", "east", "lon", "longitude")
Y_NAMES = ("y", "northing", "north", "lat", "latitude")


def grid_format(path: Path) -> str:
    """Name the reader for ``path`` from its suffix: raster, netcdf, zarr or lines.

    A trailing ``.gz``/``.bz2``/``.xz`` is looked through; a directory holding Zarr metadata is zarr
    whatever its name. Raises InputError for any other suffix.
    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last == ".zarr" or (path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists())):
        return "zarr"
    if last in RASTER_SUFFIXES:
        return "raster"
    if last in NETCDF_SUFFIXES:
        return "netcdf"
    if last in LINE_SUFFIXES:
        return "lines"
    if path.is_dir():
        raise InputError(f"{path}: a directory, not a survey file or a Zarr store (zarr.json / .zgroup)")
    raise InputError(
        f"{path}: unknown survey format '{last or path.name}' "
        "(expected GeoTIFF .tif, NetCDF .nc, Zarr .zarr, or line data .csv/.xyz)"
    )


def read_grid(
    path: str | Path,
    *,
    nodata: float | None = None,
    band: int | None = None,
    variable: str | None = None,
    spacing: float | None = None,
    crs: str | None = None,
    chunk_px: int = 1024,
) -> xr.DataArray:
    """Open a survey as a normalised, lazy grid.

    Parameters
    ----------
    path : GeoTIFF (or any GDAL raster), NetCDF, Zarr store, or CSV/XYZ line data.
    nodata : extra sentinel value to mask (e.g. -99999 or 1e30), on top of NaN and
        the file's own nodata.
    band : 1-based band of a multi-band raster; required when there are several.
    variable : data variable of a NetCDF/Zarr dataset; required when there are several.
    spacing, crs : grid spacing (CRS units) and target CRS for line data; ``crs`` is
        also assigned to a grid that carries none.
    chunk_px : dask chunk side of the returned array.

    Returns
    -------
    DataArray ``field`` (y, x), float32, NaN = no data, with ``rio.crs`` set when known.
    Values keep the file's units (nT for a magnetic survey); y is descending (north up).

    Raises
    ------
    InputError
        If the file is missing, unreadable or ambiguous (several bands or variables and none chosen).
    DataValidationError
        If its values are not real numbers or it is not a 2-D grid of at least 2 x 2 cells.
    """
    path = input_path(path)
    with remote_errors(path, kind=InputError):
        kind = grid_format(path)
    if is_url(path) and kind in ("lines", "netcdf"):  # their readers need a real file: read a local copy
        with named_as(path):
            return read_grid(local_file(path), nodata=nodata, band=band, variable=variable, spacing=spacing,
                             crs=crs, chunk_px=chunk_px)
    if kind == "lines":
        from magpipe.io.lines import grid_line_data, read_line_data

        if spacing is None or crs is None:
            raise InputError(f"{path}: line data needs --spacing and --crs to be gridded")
        da = grid_line_data(read_line_data(path), spacing=spacing, crs=crs).chunk(chunk_px)
    elif kind == "raster":
        da = _read_raster(path, band=band, chunk_px=chunk_px)
    else:
        da = _read_dataset(path, kind=kind, variable=variable, band=band, chunk_px=chunk_px)
    return _normalise(da, path=path, nodata=nodata, crs=crs, chunk_px=chunk_px)


def band_count(path: str | Path) -> int:
    """Bands of a raster file (1 for any other format); raises InputError when it cannot be opened."""
    path = input_path(path)
    if grid_format(path) != "raster":
        return 1
    from rasterio.errors import RasterioIOError

    try:
        da = rioxarray.open_rasterio(str(path), **({"opener": path.fs} if is_url(path) else {}))
    except (RasterioIOError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable raster ({first_line(exc)})") from None
    if isinstance(da, list):
        raise InputError(f"{path}: holds several subdatasets; convert the one you want to GeoTIFF")
    return int(da.sizes.get("band", 1))


def _read_raster(path: Path, *, band: int | None, chunk_px: int) -> xr.DataArray:
    from rasterio.errors import RasterioIOError

    try:
        da = rioxarray.open_rasterio(str(path), chunks={"x": chunk_px, "y": chunk_px}, masked=True,
                                     **({"opener": path.fs} if is_url(path) else {}))
    except (RasterioIOError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable raster ({first_line(exc)})") from None
    if isinstance(da, list):
        raise InputError(f"{path}: holds several subdatasets; convert the one you want to GeoTIFF")
    return _pick_band(da, path=path, band=band)


def _read_dataset(path: Path, *, kind: str, variable: str | None, band: int | None, chunk_px: int) -> xr.DataArray:
    try:
        if kind == "zarr":
            ds = xr.open_zarr(str(path), consolidated=None, decode_coords="all", **zarr_options(path))
        else:
            ds = xr.open_dataset(path, chunks={}, decode_coords="all")
    except Exception as exc:  # any backend failure means the same thing to the user
        raise InputError(f"{path}: not a readable {kind} dataset ({first_line(exc)})") from None
    candidates = [name for name, v in ds.data_vars.items() if v.ndim >= 2]
    if variable is not None:
        if variable not in ds.data_vars:
            raise InputError(f"{path}: no variable '{variable}' (has: {', '.join(map(str, ds.data_vars))})")
        name = variable
    elif len(candidates) == 1:
        name = candidates[0]
    elif "field" in candidates:
        name = "field"
    elif not candidates:
        raise InputError(f"{path}: no 2-D variable to read")
    else:
        raise InputError(f"{path}: several grids ({', '.join(map(str, candidates))}); choose one with --variable")
    da = ds[name]
    rename = {}
    for dim in da.dims:
        low = str(dim).lower()
        if low in X_NAMES:
            rename[dim] = "x"
        elif low in Y_NAMES:
            rename[dim] = "y"
    da = da.rename(rename)
    if "band" in da.dims:
        da = _pick_band(da, path=path, band=band)
    extra = [d for d in da.dims if d not in ("y", "x")]
    if extra or set(da.dims) != {"y", "x"}:
        raise InputError(f"{path}: variable '{name}' has dims {tuple(da.dims)}; expected (y, x) or (band, y, x)")
    return da.chunk({"y": chunk_px, "x": chunk_px})


def _pick_band(da: xr.DataArray, *, path: Path, band: int | None) -> xr.DataArray:
    n = da.sizes.get("band", 1)
    if band is None:
        if n > 1:
            raise InputError(f"{path}: has {n} bands; choose one with --band (1..{n})")
        band = 1
    if not 1 <= band <= n:
        raise InputError(f"{path}: band {band} out of range 1..{n}")
    return da.isel(band=band - 1, drop=True) if "band" in da.dims else da


def _normalise(da: xr.DataArray, *, path: Path, nodata: float | None, crs: str | None, chunk_px: int) -> xr.DataArray:
    if not (np.issubdtype(da.dtype, np.floating) or np.issubdtype(da.dtype, np.integer)):
        raise DataValidationError(f"{path}: values are {da.dtype}; expected real numbers")
    if da.ndim != 2:
        raise DataValidationError(f"{path}: grid has {da.ndim} dims; expected 2 (y, x)")
    if da.sizes["y"] < 2 or da.sizes["x"] < 2:
        raise DataValidationError(f"{path}: grid is {da.sizes['y']} x {da.sizes['x']} cells; too small")
    file_nodata = da.attrs.get("_FillValue", da.encoding.get("_FillValue"))
    da = da.transpose("y", "x").astype("float32")
    for sentinel in (nodata, file_nodata):
        if sentinel is not None and np.isfinite(sentinel):
            da = da.where(da != np.float32(sentinel))
    da = da.where(np.isfinite(da))
    if float(da.y[0]) < float(da.y[-1]):
        da = da.isel(y=slice(None, None, -1))
    da = da.chunk({"y": chunk_px, "x": chunk_px})
    if da.rio.crs is None and crs is not None:
        da = da.rio.write_crs(crs)
    keep = {k: v for k, v in da.attrs.items() if k in ("units", "long_name")}
    da.attrs = keep
    da.encoding = {}
    da.name = "field"
    return da


