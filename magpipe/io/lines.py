"""Line (point) survey data: read it and grid it onto a north-up raster.

Aeromagnetic surveys are delivered as points along flight lines, but the
classifier works on regular grids. These helpers turn a CSV or XYZ point file
into a ``float32`` :class:`xarray.DataArray` that looks like a GeoTIFF read
with rioxarray, so gridded and line surveys enter the pipeline the same way.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from magpipe.errors import ConfigError, DataValidationError, InputError
from magpipe.io.location import as_path

if TYPE_CHECKING:
    import os

    import pyproj

__all__ = ["read_line_data", "grid_line_data"]

_X_NAMES = ("x", "easting", "east", "lon", "longitude", "long")
_Y_NAMES = ("y", "northing", "north", "lat", "latitude")
_GEOGRAPHIC_NAMES = {"lon", "longitude", "long", "lat", "latitude"}
_VALUE_NAMES = (
    "value",
    "tmi",
    "total_field_anomaly_nt",
    "total_field_anomaly",
    "mag",
    "mag_anomaly",
    "magnetic_anomaly",
    "anomaly",
    "rmi",
    "field",
)
_VALUE_HINTS = ("anomaly", "tmi", "mag")
_TEXT_SUFFIXES = {".csv", ".xyz", ".txt"}
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def read_line_data(
    path: str | os.PathLike[str],
    *,
    x_col: str | None = None,
    y_col: str | None = None,
    value_col: str | None = None,
) -> pd.DataFrame:
    """Read point survey data into a tidy ``x, y, value`` table.

    Survey files name their columns in many ways, so columns not given are
    found by name (case-insensitive): x from ``x, easting, east, lon,
    longitude``, y from ``y, northing, north, lat, latitude`` and the value
    from ``value, tmi, total_field_anomaly_nt, mag, anomaly, ...``, else the
    last numeric column that is neither x nor y. Files without a header take
    x and y from the first two columns.

    Parameters
    ----------
    path
        ``.csv`` (comma separated) or ``.xyz``/``.txt`` (whitespace
        separated) file, optionally compressed as ``.gz``, ``.bz2`` or
        ``.xz``. Lines starting with ``#`` or ``/`` are comments.
    x_col, y_col, value_col
        Column names to use instead of auto-detection.

    Returns
    -------
    pandas.DataFrame
        Columns ``x, y, value`` (float64), rows with any missing or
        non-numeric entry dropped. ``attrs["geographic"]`` is True when x/y
        came from longitude/latitude columns, so :func:`grid_line_data` knows
        to project them.

    Raises
    ------
    InputError
        If the file is missing or unsupported, a column is not found, or no
        row has numeric x, y and value. The message starts with the path.
    """
    path = as_path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffixes = [s.lower() for s in path.suffixes]
    opener = _OPENERS.get(suffixes[-1]) if suffixes else None
    kind = suffixes[-2] if opener and len(suffixes) > 1 else (suffixes or [""])[-1]
    if kind not in _TEXT_SUFFIXES:
        raise InputError(
            f"{path}: unsupported file type; expected .csv, .xyz or .txt "
            "(optionally .gz, .bz2 or .xz compressed)"
        )
    sep = "," if kind == ".csv" else r"\s+"
    try:
        table, has_header = _read_table(path, sep, opener or open)
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: cannot be parsed as {kind} point data ({err})") from err
    if table.empty:
        raise InputError(f"{path}: no data rows")

    x_name = _column(path, table, x_col, _X_NAMES, "x", 0 if not has_header else None)
    y_name = _column(path, table, y_col, _Y_NAMES, "y", 1 if not has_header else None)
    if value_col is not None:
        v_name = _column(path, table, value_col, (), "value", None)
    else:
        v_name = _value_column(path, table, (x_name, y_name))

    out = pd.DataFrame(
        {
            key: pd.to_numeric(table[name], errors="coerce").astype("float64")
            for key, name in (("x", x_name), ("y", y_name), ("value", v_name))
        }
    )
    out = out[np.isfinite(out.to_numpy()).all(axis=1)].reset_index(drop=True)
    if out.empty:
        raise InputError(f"{path}: no numeric rows in columns {x_name!r}, {y_name!r}, {v_name!r}")
    out.attrs["geographic"] = bool(
        {str(x_name).lower(), str(y_name).lower()} & _GEOGRAPHIC_NAMES
    )
    return out


def _read_table(path: Path, sep: str, opener: Any) -> tuple[pd.DataFrame, bool]:
    """Parse the file; a first non-comment line that is not all numbers is the header."""
    skip = 0
    first = ""
    with opener(path, "rt") as stream:
        for line in stream:
            first = line.strip()
            if first and not first.startswith(("#", "/")):
                break
            skip += 1
    tokens = first.split(",") if sep == "," else first.split()
    has_header = not all(_is_number(token) for token in tokens)
    table = pd.read_csv(
        path,
        sep=sep,
        skiprows=skip,
        header=0 if has_header else None,
        comment="#",
        compression="infer",
        low_memory=False,
    )
    if has_header:
        table.columns = [str(c).strip() for c in table.columns]
    else:
        table.columns = [f"column{i}" for i in range(table.shape[1])]
    return table, has_header


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _column(
    path: Path,
    table: pd.DataFrame,
    requested: str | None,
    names: tuple[str, ...],
    role: str,
    position: int | None,
) -> str:
    """Resolve a column: the requested name, else a known name, else a position."""
    columns = list(table.columns)
    by_lower = {c.lower(): c for c in columns}
    if requested is not None:
        match = requested if requested in columns else by_lower.get(requested.lower())
        if match is None:
            raise InputError(
                f"{path}: {role} column {requested!r} not found; columns are {', '.join(columns)}"
            )
        return match
    for name in names:
        if name in by_lower:
            return by_lower[name]
    if position is not None and position < len(columns):
        return columns[position]
    raise InputError(
        f"{path}: no {role} column found (looked for {', '.join(names)}); "
        f"columns are {', '.join(columns)}; pass {role}_col="
    )


def _value_column(path: Path, table: pd.DataFrame, used: tuple[str, str]) -> str:
    """Find the data column by known names, then name hints, then the last numeric one."""
    others = [c for c in table.columns if c not in used]
    by_lower = {c.lower(): c for c in others}
    for name in _VALUE_NAMES:
        if name in by_lower:
            return by_lower[name]
    hinted = [c for hint in _VALUE_HINTS for c in others if hint in c.lower()]
    for col in hinted + others[::-1]:
        if pd.to_numeric(table[col], errors="coerce").notna().any():
            return col
    raise InputError(f"{path}: no numeric value column besides {used[0]!r} and {used[1]!r}")


def grid_line_data(
    df: pd.DataFrame,
    *,
    spacing: float,
    crs: str | int | pyproj.CRS,
    input_crs: str | int | pyproj.CRS | None = None,
    maxdist: float | None = None,
) -> xr.DataArray:
    """Grid point survey data onto a north-up raster in a projected CRS.

    Points are projected to ``crs``, reduced to the median of each grid cell
    (robust to spikes and to the uneven along-line sampling of digitised
    surveys), then interpolated linearly between cell medians by Delaunay
    triangulation. Linear interpolation never overshoots the data, unlike
    cubic or spline gridding, which ring between widely spaced flight lines.
    Cells farther than ``maxdist`` from every point are NaN, so offshore gaps
    and survey edges are not invented.

    Parameters
    ----------
    df
        Table with ``x, y, value`` columns, as from :func:`read_line_data`.
    spacing
        Cell size in units of ``crs`` (metres for a projected CRS).
    crs
        Output CRS; must be projected, since ``spacing`` is in its units.
    input_crs
        CRS of ``df``'s x/y. Default EPSG:4326 when
        ``df.attrs["geographic"]`` is true, else ``crs`` (no projection).
    maxdist
        Mask cells whose centre is farther than this from any data point.
        Default ``2.5 * spacing``.

    Returns
    -------
    xarray.DataArray
        ``float32`` grid named ``"field"`` with dims ``("y", "x")``, y
        descending like a GeoTIFF, cell edges on multiples of ``spacing``,
        NaN where there is no data, ``attrs["units"] = "nT"``, and CRS and
        transform set for rioxarray.

    Raises
    ------
    ConfigError
        If ``spacing`` or ``maxdist`` is not positive or ``crs`` is geographic.
    DataValidationError
        If ``df`` lacks the columns or has fewer than three finite points.
    """
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import verde as vd
    from affine import Affine

    x, y, data, out_crs, maxdist = _projected_points(df, spacing=spacing, crs=crs, input_crs=input_crs,
                                                    maxdist=maxdist)
    west = math.floor(x.min() / spacing) * spacing
    south = math.floor(y.min() / spacing) * spacing
    east = (math.floor(x.max() / spacing) + 1) * spacing
    north = (math.floor(y.max() / spacing) + 1) * spacing
    nx = round((east - west) / spacing)
    ny = round((north - south) / spacing)
    xc = west + (np.arange(nx) + 0.5) * spacing
    yc = north - (np.arange(ny) + 0.5) * spacing
    grid_x, grid_y = np.meshgrid(xc, yc)

    reducer = vd.BlockReduce("median", spacing=spacing, region=(west, east, south, north))
    block_coords, block_data = reducer.filter((x, y), data)
    gridder = vd.Linear().fit(block_coords, block_data)
    field = gridder.predict((grid_x, grid_y))
    far = ~vd.distance_mask((x, y), maxdist=maxdist, coordinates=(grid_x, grid_y))
    field[far] = np.nan

    grid = xr.DataArray(field.astype("float32"), coords={"y": yc, "x": xc}, dims=("y", "x"), name="field",
                        attrs={"units": "nT"})
    grid = grid.rio.write_crs(out_crs)
    grid = grid.rio.write_transform(Affine(spacing, 0.0, west, 0.0, -spacing, north))
    return grid.rio.write_nodata(np.nan, encoded=False)


def _projected_points(df: pd.DataFrame, *, spacing: float, crs, input_crs, maxdist: float | None):
    """The finite x, y, value points of ``df`` in the output CRS, checked, with the default ``maxdist``."""
    import pyproj

    if not (spacing > 0 and math.isfinite(spacing)):
        raise ConfigError(f"spacing must be a positive number, got {spacing!r}")
    maxdist = 2.5 * spacing if maxdist is None else maxdist
    if not maxdist > 0:
        raise ConfigError(f"maxdist must be positive, got {maxdist!r}")
    out_crs = pyproj.CRS.from_user_input(crs)
    if out_crs.is_geographic:
        raise ConfigError(f"crs must be projected so spacing is a distance, got {out_crs}")
    missing = {"x", "y", "value"} - set(df.columns)
    if missing:
        raise DataValidationError(f"line data lacks columns {sorted(missing)}")
    values = df[["x", "y", "value"]].to_numpy(dtype="float64")
    values = values[np.isfinite(values).all(axis=1)]
    if len(values) < 3:
        raise DataValidationError(f"line data has {len(values)} finite points; need at least 3")
    if input_crs is None:
        input_crs = "EPSG:4326" if df.attrs.get("geographic") else out_crs
    in_crs = pyproj.CRS.from_user_input(input_crs)
    x, y, data = values.T
    if in_crs != out_crs:
        transformer = pyproj.Transformer.from_crs(in_crs, out_crs, always_xy=True)
        x, y = transformer.transform(x, y)
        x, y = np.asarray(x), np.asarray(y)
    return x, y, data, out_crs, maxdist
