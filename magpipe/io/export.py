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
    class colours) and each unit's name in the band's metadata (``CLASS_<code>``). A QGIS style
    (``<name>.qml``, which QGIS loads with the file) goes beside every layer: the class map in those colours
    with the unit names; confidence and anomaly in the report's colour ramps and stretches (:data:`RAMPS`:
    confidence 0 to 1, anomaly 0 to its 99th percentile), their band described in words.

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
    da = ds[variable].copy()
    da.encoding = {}  # the store's own encoding (its fill value among it) is not the GeoTIFF's
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
        # colour table and descriptions go on a plain GeoTIFF, which GDAL's COG driver copies
        plain = local.with_name(local.name + ".plain.tif")
        da.rio.to_raster(plain, driver="GTiff", tiled=True, compress="DEFLATE")
        if variable == "class":
            style_classes(plain, classes)
            style = qgis_style(classes)
        else:
            with rasterio.open(plain, "r+") as dst:
                dst.set_band_description(1, RAMPS[variable][1])
            style = qgis_ramp_style(RAMPS[variable][0], 0.0, stretch_max(da, variable))
        rasterio.shutil.copy(plain, tmp, **cog)
        plain.unlink()
        if is_url(path):  # GDAL writes a COG to a local file; one upload puts it in place whole
            path.fs.put_file(str(tmp), path.path)
        else:
            tmp.replace(path)
        write_text(style, path.with_suffix(".qml"))
    finally:
        if is_url(path):
            shutil.rmtree(local.parent, ignore_errors=True)
    return path


# the float layers as the report draws them: (matplotlib colour map, what a value is)
RAMPS = {"confidence": ("viridis", "calibrated probability that the map's class is right (0 to 1)"),
         "anomaly": ("magma", "mean squared reconstruction error (standardised units)")}
STRETCH_SAMPLE = 4_000_000  # cells read to place the anomaly's stretch: a regular subsample of larger maps


def stretch_max(da, variable: str) -> float:
    """The top of a float layer's colour stretch: 1 for confidence, the 99th percentile of the anomaly (of a
    regular subsample of at most :data:`STRETCH_SAMPLE` cells), so a few extreme cells do not wash out the rest."""
    if variable == "confidence":
        return 1.0
    step = max(1, int(np.ceil(np.sqrt(da.size / STRETCH_SAMPLE))))
    sample = np.asarray(da[::step, ::step].values, dtype=np.float64)
    return float(np.nanpercentile(sample, 99)) if np.isfinite(sample).any() else 1.0


def class_colours(n: int) -> list[tuple[int, int, int]]:
    """The RGB (0..255) of classes 1..n: the report's class map's (:func:`magpipe.report.class_colormap`)."""
    from magpipe.report import class_colormap

    return [tuple(int(round(255 * c)) for c in rgb[:3]) for rgb in class_colormap(n).colors]


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
    return _qml(f"""    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>""")


def qgis_ramp_style(cmap: str, lo: float, hi: float, stops: int = 11) -> str:
    """A QGIS layer style (.qml) drawing a float raster through matplotlib's colour map ``cmap`` stretched from
    ``lo`` to ``hi`` (``stops`` colours, interpolated; values beyond take the end colours)."""
    from matplotlib import colormaps

    ramp = colormaps[cmap]
    items = "\n".join(
        f'          <item alpha="255" value="{v:.6g}" label="{v:.3g}" color="#{r:02x}{g:02x}{b:02x}"/>'
        for v, (r, g, b) in ((lo + (hi - lo) * t, tuple(int(round(255 * c)) for c in ramp(t)[:3]))
                             for t in np.linspace(0, 1, stops)))
    return _qml(f"""    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" alphaBand="-1" nodataColor=""
                    classificationMin="{lo:.6g}" classificationMax="{hi:.6g}">
      <rastershader>
        <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0"
                         minimumValue="{lo:.6g}" maximumValue="{hi:.6g}">
{items}
        </colorrampshader>
      </rastershader>
    </rasterrenderer>""")


def _qml(renderer: str) -> str:
    """A QGIS layer style (.qml) of the symbology alone, around one raster renderer's XML."""
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28" styleCategories="Symbology">
  <pipe>
{renderer}
  </pipe>
</qgis>
"""
