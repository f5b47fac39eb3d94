"""Synthetic surveys whose right answer is known, for tests, examples and benchmarks.

Geological units are Voronoi cells; each unit has its own magnetisation (mean
level) and texture (amplitude and wavelength of smooth noise), so both the
value and the look of a patch tell units apart, as on a real survey.
"""

from __future__ import annotations

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from scipy.ndimage import gaussian_filter

CRS = "EPSG:32633"  # UTM 33N: metres, so spacing and patch sizes are meaningful


def synthetic_survey(
    shape: tuple[int, int] = (128, 160),
    *,
    n_units: int = 3,
    cells_per_unit: int = 4,
    spacing_m: float = 100.0,
    hole_fraction: float = 0.02,
    seed: int = 0,
) -> tuple[xr.DataArray, np.ndarray]:
    """A (field, truth) pair.

    Returns
    -------
    field : float32 DataArray (y, x) in nT, y descending, CRS EPSG:32633, NaN holes.
    truth : int16 (y, x) unit codes 1..n_units for every cell.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    n_seeds = n_units * cells_per_unit
    sy, sx = rng.uniform(0, ny, n_seeds), rng.uniform(0, nx, n_seeds)
    unit_of_seed = np.arange(n_seeds) % n_units + 1
    yy, xx = np.mgrid[0:ny, 0:nx]
    nearest = np.argmin((yy[..., None] - sy) ** 2 + (xx[..., None] - sx) ** 2, axis=-1)
    truth = unit_of_seed[nearest].astype("int16")
    field = np.zeros(shape)
    for u in range(1, n_units + 1):
        level = 120.0 * (u - (n_units + 1) / 2)
        sigma = 1.0 + 1.5 * (u - 1)  # texture: fine for unit 1, broad for the last
        amp = 20.0 + 10.0 * ((u * 7) % n_units)
        noise = gaussian_filter(rng.normal(size=shape), sigma)
        noise *= amp / max(noise.std(), 1e-9)
        field = np.where(truth == u, level + noise, field)
    field = gaussian_filter(field, 0.7) + rng.normal(0, 1.0, shape)
    if hole_fraction > 0:  # contiguous blobs of no data, as in real surveys
        blobs = gaussian_filter(rng.normal(size=shape), 4)
        field[blobs > np.quantile(blobs, 1 - hole_fraction)] = np.nan
    x = 500_000 + spacing_m * (np.arange(nx) + 0.5)
    y = 6_000_000 - spacing_m * (np.arange(ny) + 0.5)
    da = xr.DataArray(field.astype("float32"), dims=("y", "x"), coords={"y": y, "x": x}, name="field",
                      attrs={"units": "nT"})
    return da.rio.write_crs(CRS), truth
