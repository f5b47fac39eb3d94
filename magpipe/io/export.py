"""Layers of a run as GeoTIFFs that open in QGIS in the right place."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor, used on the grids and stores here)

from magpipe.io.location import as_path, is_url
from magpipe.io.stores import open_store


def export_geotiff(classified: str | Path, variable: str, path: str | Path, *, blocksize: int = 512) -> Path:
    """Write one variable of classified.zarr as a Cloud-Optimized GeoTIFF (opens in QGIS in place).

    GDAL's COG driver: DEFLATE-compressed ``blocksize`` tiles and overviews down to one tile, laid out
    so a viewer (QGIS, or a browser over HTTP range requests) reads only the tiles and zoom level it
    shows. Class overviews take the nearest cell (a class code is not averaged), the others the mean.

    Parameters
    ----------
    classified : a complete ``classified.zarr``.
    variable : ``"class"`` (int16, nodata 0), ``"confidence"`` or ``"anomaly"`` (float32, nodata NaN).
    path : the GeoTIFF; written aside and moved into place, so it is never half written.
    blocksize : tile side in cells (a power of two).

    Returns
    -------
    ``path``, in the survey's CRS with its transform.
    """
    ds = open_store(classified)
    da = ds[variable]
    if variable == "class":
        da = da.rio.write_nodata(0, encoded=False)
    else:
        da = da.rio.write_nodata(np.nan, encoded=False)
    da = da.rio.write_crs(ds.rio.crs) if ds.rio.crs is not None else da
    path = as_path(path)
    local = path if not is_url(path) else Path(tempfile.mkdtemp(prefix="magpipe-export-")) / path.name
    tmp = local.with_name(local.name + ".partial")
    try:
        da.rio.to_raster(tmp, driver="COG", compress="DEFLATE", blocksize=blocksize, overviews="AUTO",
                         overview_resampling="NEAREST" if variable == "class" else "AVERAGE")
        if is_url(path):  # GDAL writes a COG to a local file; one upload puts it in place whole
            path.fs.put_file(str(tmp), path.path)
        else:
            tmp.replace(path)
    finally:
        if is_url(path):
            shutil.rmtree(local.parent, ignore_errors=True)
    return path
