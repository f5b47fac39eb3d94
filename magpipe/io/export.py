"""Layers of a run as GeoTIFFs that open in QGIS in the right place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor, used on the grids and stores here)

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
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    da.rio.to_raster(tmp, driver="COG", compress="DEFLATE", blocksize=blocksize, overviews="AUTO",
                     overview_resampling="NEAREST" if variable == "class" else "AVERAGE")
    tmp.replace(path)
    return path
