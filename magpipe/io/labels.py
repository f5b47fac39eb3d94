"""Put labels of any form onto the survey grid.

Labels arrive as a raster (any grid and CRS), as polygons with an attribute
field, or as a few dozen points. All become one integer grid on the survey's
own cells: ``0`` = unlabelled, ``1..K`` = class codes, with the class names kept
alongside, so the rest of magpipe sees a single form.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor, used on the grids and stores here)
import xarray as xr

from magpipe.errors import CRSMismatchError, InputError
from magpipe.io.location import as_path, input_path, is_url, local_file, named_as, remote_errors

VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".parquet"}
UNLABELLED = 0


def read_class_table(path: str | Path) -> dict[int, str]:
    """Read a class table CSV into ``{code: name}``.

    The table needs a ``code`` column of integers; the name is the first other
    column holding text, so tables with extra numeric columns (counts, colours)
    still work.

    Parameters
    ----------
    path
        CSV file with a header row.

    Returns
    -------
    dict[int, str]
        Class names by label code, in file order.

    Raises
    ------
    InputError
        If the file is missing, has no ``code`` column or no text column, or a
        code is not an integer.
    """
    path = as_path(path)
    with remote_errors(path, kind=InputError):
        if not path.is_file():
            raise InputError(f"{path}: file not found")
    with local_file(path).open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    columns = list(rows[0]) if rows else []
    if "code" not in columns:
        raise InputError(f"{path}: no 'code' column (columns: {', '.join(columns) or 'none'})")
    name_col = next((c for c in columns if c != "code" and not _all_numbers(rows, c)), None)
    if name_col is None:
        raise InputError(f"{path}: no text column to name the classes")
    try:
        return {int(row["code"]): row[name_col].strip() for row in rows}
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: class codes must be integers ({err})") from err


def _all_numbers(rows: list[dict[str, str]], column: str) -> bool:
    try:
        for row in rows:
            float(row[column])
    except (TypeError, ValueError):
        return False
    return True


def read_labels(
    path: str | Path,
    survey: xr.DataArray,
    *,
    label_field: str | None = None,
    classes: str | Path | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Rasterise or reproject labels onto the survey grid.

    Parameters
    ----------
    path : label raster (GeoTIFF...), or vector file (GeoPackage, GeoJSON, Shapefile)
        of polygons or points.
    survey : the normalised survey grid (see :func:`magpipe.io.grids.read_grid`); its
        CRS and transform define the target cells.
    label_field : attribute holding the class of each vector feature (required for vectors).
    classes : optional CSV (``code`` + name) naming the values of a label raster.

    Returns
    -------
    codes : int16 array (y, x) on the survey grid, 0 = unlabelled, 1..K = class.
    names : the K class names; ``names[k - 1]`` is the name of code ``k``.

    Raises
    ------
    InputError
        If the file is missing or unreadable, the label field is missing or unknown, a raster has
        several bands, non-integer values or values not in ``classes``, or no label falls on a
        valid survey cell.
    CRSMismatchError
        If the labels or the survey lack the CRS needed to place one on the other.
    """
    path = input_path(path)
    if is_url(path):  # GDAL's readers need a real file (and a shapefile its sidecars): read a local copy
        with named_as(path):
            return read_labels(local_file(path), survey, label_field=label_field, classes=classes)
    suffix = path.suffix.lower()
    if suffix in VECTOR_SUFFIXES or path.name.lower().endswith(".geojson"):
        values, names = _rasterise_vector(path, survey, label_field=label_field)
    else:
        values, names = _reproject_raster(path, survey, classes=classes)
    valid = np.asarray(survey.notnull())
    if not np.any((values > 0) & valid):
        raise InputError(f"{path}: labels do not overlap the survey's valid cells")
    return values, names


def polygon_cells(path: str | Path, survey: xr.Dataset | xr.DataArray) -> np.ndarray:
    """Cells (bool, y/x) of the survey grid whose centre lies inside the polygons of a vector file,
    reprojected to the survey's CRS (a file without a CRS is taken to be in the survey's).

    Returns a (y, x) bool mask the survey grid's shape; raises InputError for an unreadable file.
    """
    import geopandas as gpd
    from rasterio.features import geometry_mask

    path = as_path(path)
    try:
        gdf = gpd.read_file(local_file(path))
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise InputError(f"{path}: not a readable vector file ({str(exc).splitlines()[0][:200]})") from None
    crs = survey.rio.crs
    if gdf.crs is not None and crs is not None:
        gdf = gdf.to_crs(crs)
    return ~geometry_mask(list(gdf.geometry), out_shape=(survey.sizes["y"], survey.sizes["x"]),
                          transform=survey.rio.transform())


def _survey_crs(survey: xr.DataArray, path: Path):
    crs = survey.rio.crs
    if crs is None:
        raise CRSMismatchError(f"{path}: the survey has no CRS, so labels cannot be placed; give the survey --crs")
    return crs


def _rasterise_vector(path: Path, survey: xr.DataArray, *, label_field: str | None) -> tuple[np.ndarray, list[str]]:
    import geopandas as gpd
    from rasterio.features import rasterize

    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise InputError(f"{path}: not a readable vector file ({str(exc).splitlines()[0][:200]})") from None
    if gdf.empty:
        raise InputError(f"{path}: holds no features")
    if label_field is None:
        raise InputError(f"{path}: vector labels need --label-field (fields: {', '.join(_fields(gdf))})")
    if label_field not in gdf.columns:
        raise InputError(f"{path}: no field '{label_field}' (fields: {', '.join(_fields(gdf))})")
    gdf = gdf[gdf.geometry.notna() & gdf[label_field].notna()]
    if gdf.empty:
        raise InputError(f"{path}: no features with a geometry and a '{label_field}' value")
    if gdf.crs is None:
        raise CRSMismatchError(f"{path}: has no CRS; cannot place it on the survey grid")
    gdf = gdf.to_crs(_survey_crs(survey, path))
    names = sorted({str(v) for v in gdf[label_field]})
    code_of = {n: i + 1 for i, n in enumerate(names)}
    # Points burn one cell each; polygons burn the cells whose centre they contain.
    shapes = ((geom, code_of[str(v)]) for geom, v in zip(gdf.geometry, gdf[label_field]))
    values = rasterize(
        shapes,
        out_shape=(survey.sizes["y"], survey.sizes["x"]),
        transform=survey.rio.transform(),
        fill=UNLABELLED,
        dtype="int16",
    )
    return values, names


def _reproject_raster(path: Path, survey: xr.DataArray, *, classes: str | Path | None) -> tuple[np.ndarray, list[str]]:
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError

    try:
        lab = rioxarray.open_rasterio(path, masked=False)
    except (RasterioIOError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable label raster ({str(exc).splitlines()[0][:200]})") from None
    if lab.sizes.get("band", 1) != 1:
        raise InputError(f"{path}: label raster has {lab.sizes['band']} bands; expected 1")
    lab = lab.isel(band=0, drop=True)
    if not np.issubdtype(lab.dtype, np.integer):
        raw = np.asarray(lab)
        finite = raw[np.isfinite(raw)]
        if finite.size and not np.all(finite == np.round(finite)):
            raise InputError(f"{path}: label values must be integer class codes, found {lab.dtype} fractions")
    nodata = lab.rio.nodata
    if not np.any(_labelled(np.asarray(lab), nodata)):
        raise InputError(f"{path}: holds no labelled cells (every value is no-data{'' if nodata is None else f' ({nodata:g})'} "
                         "or <= 0)")
    same_grid = (
        lab.shape == (survey.sizes["y"], survey.sizes["x"])
        and lab.rio.crs == survey.rio.crs
        and np.allclose(tuple(lab.rio.transform())[:6], tuple(survey.rio.transform())[:6])
    )
    if not same_grid:
        if lab.rio.crs is None:
            raise CRSMismatchError(f"{path}: label raster has no CRS and is not on the survey grid")
        _survey_crs(survey, path)
        lab = lab.rio.reproject_match(survey, resampling=Resampling.nearest)
        nodata = lab.rio.nodata
    raw = np.asarray(lab).astype("float64")
    bad = ~_labelled(raw, nodata)
    table = read_class_table(classes) if classes else {}
    present = sorted(int(v) for v in np.unique(raw[~bad]))
    unknown = [v for v in present if table and v not in table]
    if unknown:
        raise InputError(f"{path}: label values {unknown} are not in the class table {classes}")
    names = [table.get(v, f"class_{v}") for v in present]
    codes = np.zeros(raw.shape, dtype="int16")
    for i, v in enumerate(present):
        codes[(raw == v) & ~bad] = i + 1
    return codes, names


def _labelled(raw: np.ndarray, nodata) -> np.ndarray:
    """Cells holding a class code: finite, positive, and not the raster's no-data value."""
    raw = raw.astype("float64", copy=False)
    ok = np.isfinite(raw) & (raw > 0)
    return ok & (raw != nodata) if nodata is not None else ok


def _fields(gdf) -> list[str]:
    return [str(c) for c in gdf.columns if c != gdf.geometry.name]
