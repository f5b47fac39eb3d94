"""Standard derived magnetic channels (derivatives, tilt, analytic signal) via Harmonica.

Geophysicists read these before the field itself: derivatives sharpen shallow
sources, the tilt angle equalises strong and weak anomalies, and the analytic
signal amplitude peaks over source edges whatever the magnetisation direction.
They are offered as extra autoencoder inputs and compared against the field
alone (``benchmarks/ablate.py``).

The FFT filters need a gap-free grid, so holes are filled with the field's
median, the grid is padded with the median to damp wrap-around, and the
holes are put back as NaN in every output.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

CHANNELS = ("field", "dz", "thd", "tilt", "asa")
DESCRIPTIONS = {
    "field": "the survey grid itself",
    "dz": "first vertical derivative (FFT)",
    "thd": "total horizontal derivative",
    "tilt": "tilt angle, arctan(dz / thd)",
    "asa": "analytic signal amplitude, sqrt(dx^2 + dy^2 + dz^2)",
}
PAD_FRACTION = 0.25


def _regular(field: xr.DataArray) -> xr.DataArray:
    """Rename dims to (northing, easting) with ascending coordinates, as Harmonica expects."""
    grid = field.rename({field.dims[0]: "northing", field.dims[1]: "easting"})
    return grid.sortby(["northing", "easting"])


def derived_channels(field: xr.DataArray, channels: tuple[str, ...] = CHANNELS, *, fill: float | None = None
                     ) -> xr.Dataset:
    """The requested channels of a 2-D grid (dims y, x), NaN where the field has no data.

    ``fill`` replaces no-data before filtering (default: the grid's median); pass one value
    for every piece of a grid computed piecewise, so the pieces agree.

    Parameters
    ----------
    field : 2-D grid in nT, regular coordinates in the survey's CRS units (metres when projected).
    channels : names from :data:`CHANNELS`.
    fill : no-data fill, in nT.

    Returns
    -------
    One float32 variable per channel on ``field``'s dims and coordinates, NaN where ``field`` is:
    ``field`` in nT; ``dz``, ``thd`` and ``asa`` in nT per CRS unit (nT/m); ``tilt`` in radians,
    -pi/2..pi/2.

    Raises
    ------
    ImportError
        If Harmonica (or xrft) is not installed.
    ValueError
        For an unknown channel or a grid that is not 2-D.
    """
    try:
        import harmonica as hm
        import xrft
    except ImportError:
        raise ImportError("derived channels need Harmonica: pip install 'magpipe[derived]'") from None

    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown:
        raise ValueError(f"unknown derived channels {unknown}; choose from {list(CHANNELS)}")
    if field.ndim != 2:
        raise ValueError(f"derived channels need a 2-D grid, got dims {field.dims}")
    return _derived(field, channels, hm, xrft, fill)


def _derived(field, channels, hm, xrft, fill) -> xr.Dataset:
    grid = _regular(field.astype("float64"))
    holes = ~np.isfinite(grid)
    filled = (grid - (float(grid.median()) if fill is None else fill)).fillna(0.0)  # derivatives ignore offsets
    pad = {d: max(1, int(round(filled.sizes[d] * PAD_FRACTION))) for d in filled.dims}
    padded = xrft.pad(filled, pad)  # zeros (the median) around the survey
    dz = xrft.unpad(hm.derivative_upward(padded), pad)
    dx = hm.derivative_easting(filled)
    dy = hm.derivative_northing(filled)
    thd = np.hypot(dx, dy)
    out = {
        "field": grid,
        "dz": dz,
        "thd": thd,
        "tilt": np.arctan2(dz, thd),
        "asa": np.sqrt(dx**2 + dy**2 + dz**2),
    }
    data = {}
    for name in channels:
        da = out[name].reindex_like(grid).where(~holes)  # unpad may leave float coordinate noise
        da = da.rename({"northing": field.dims[0], "easting": field.dims[1]}).reindex_like(field)
        data[name] = da.astype("float32").assign_attrs(long_name=DESCRIPTIONS[name])
    return xr.Dataset(data)
