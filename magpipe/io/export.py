"""Layers of a run as GeoTIFFs that open in QGIS in the right place."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import rioxarray  # noqa: F401  (the .rio accessor, used on the grids and stores here)

from magpipe.io import schema as S
from magpipe.io.location import as_path, is_url
from magpipe.io.stores import open_store, write_text


def export_geotiff(classified: str | Path, variable: str, path: str | Path, *, blocksize: int = 512) -> Path:
    """Write one variable of classified.zarr as a Cloud-Optimized GeoTIFF (opens in QGIS in place).

    GDAL's COG driver: DEFLATE-compressed ``blocksize`` tiles and overviews down to one tile, laid out
    so a viewer (QGIS, or a browser over HTTP range requests) reads only the tiles and zoom level it
    shows. Class overviews take the nearest cell (a class code is not averaged), the others the mean.
    The class map is written as bytes (uint8; uint16 past 255 units) with a colour table (the report's
    class colours) and each unit's name in the band's metadata (``CLASS_<code>``), and a QGIS style
    (``<name>.qml``, which QGIS loads with the file) draws it in those colours with the unit names.

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
    classes = list(ds.attrs.get(S.CLASSES, [])) if variable == "class" else []
    if variable == "class":
        da = da.astype("uint8" if len(classes) < 256 else "uint16").rio.write_nodata(0, encoded=False)
    else:
        da = da.rio.write_nodata(np.nan, encoded=False)
    da = da.rio.write_crs(ds.rio.crs) if ds.rio.crs is not None else da
    path = as_path(path)
    local = path if not is_url(path) else Path(tempfile.mkdtemp(prefix="magpipe-export-")) / path.name
    tmp = local.with_name(local.name + ".partial")
    cog = {"driver": "COG", "compress": "DEFLATE", "blocksize": blocksize, "overviews": "AUTO",
           "overview_resampling": "NEAREST" if variable == "class" else "AVERAGE"}
    try:
        if variable == "class":  # the colour table goes on a plain GeoTIFF, which GDAL's COG driver copies
            plain = local.with_name(local.name + ".plain.tif")
            da.rio.to_raster(plain, driver="GTiff", tiled=True, compress="DEFLATE")
            style_classes(plain, classes)
            rasterio.shutil.copy(plain, tmp, **cog)
            plain.unlink()
        else:
            da.rio.to_raster(tmp, **cog)
        if is_url(path):  # GDAL writes a COG to a local file; one upload puts it in place whole
            path.fs.put_file(str(tmp), path.path)
        else:
            tmp.replace(path)
        if classes:
            write_text(qgis_style(classes), path.with_suffix(".qml"))
    finally:
        if is_url(path):
            shutil.rmtree(local.parent, ignore_errors=True)
    return path


def class_colours(n: int) -> list[tuple[int, int, int]]:
    """The RGB (0..255) of classes 1..n: the report's class map's (matplotlib's tab10, tab20 past 10 classes)."""
    from magpipe.report import _class_colours

    return [tuple(int(round(255 * c)) for c in rgb[:3]) for rgb in _class_colours(n).colors]


def style_classes(tif: Path, classes: list[str]) -> None:
    """Give the class GeoTIFF ``tif`` its colour table (code k in class k's colour, 0 = no data transparent)
    and each unit's name in its band's metadata (``CLASS_<k>``)."""
    colours = class_colours(len(classes))
    with rasterio.open(tif, "r+") as dst:
        dst.write_colormap(1, {0: (0, 0, 0, 0), **{k: (*rgb, 255) for k, rgb in enumerate(colours, start=1)}})
        dst.update_tags(1, **{f"CLASS_{k}": name for k, name in enumerate(classes, start=1)})


def qgis_style(classes: list[str]) -> str:
    """A QGIS layer style (.qml) drawing a class raster in the report's colours, each code labelled with its unit."""
    from xml.sax.saxutils import quoteattr

    entries = "\n".join(f'        <paletteEntry value="{k}" color="#{r:02x}{g:02x}{b:02x}" alpha="255" '
                         f"label={quoteattr(name)}/>"
                         for k, (name, (r, g, b)) in enumerate(zip(classes, class_colours(len(classes))), start=1))
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
  </pipe>
</qgis>
"""
