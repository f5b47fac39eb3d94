"""Layers of a run as GeoTIFFs that open in QGIS in the right place."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from magpipe.io.stores import open_store


def export_geotiff(classified: str | Path, variable: str, path: str | Path) -> Path:
    """Write one variable of classified.zarr as a tiled, compressed GeoTIFF (opens in QGIS in place).

    Parameters
    ----------
    classified : a complete ``classified.zarr``.
    variable : ``"class"`` (int16, nodata 0), ``"confidence"`` or ``"anomaly"`` (float32, nodata NaN).
    path : the GeoTIFF; written aside and moved into place, so it is never half written.

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
    da.rio.to_raster(tmp, driver="GTiff", tiled=True, compress="DEFLATE")
    tmp.replace(path)
    return path
