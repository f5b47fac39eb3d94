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

    Parameters
    ----------
    shape : (ny, nx) cells.
    n_units : number of geological units (classes).
    cells_per_unit : Voronoi cells per unit, so each unit is several separate areas, as on a map.
    spacing_m : cell size in metres.
    hole_fraction : approximate share of cells set to no data, in contiguous blobs.
    seed : everything is drawn from it.

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


# --- Surveys of any size, generated block by block -------------------------------------
# The generator above needs the whole grid in memory. For benchmarks at 16k x 16k the
# field must be a pure function of cell coordinates, so any window can be made alone
# and windows join seamlessly: hashed lattice values (value noise) replace filtered
# white noise, and Voronoi seeds sit one per lattice cell at hashed offsets.

_MASK = np.uint64(0xFFFFFFFF)


def _hash01(iy: np.ndarray, ix: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) value per integer lattice point."""
    h = (iy.astype(np.uint64) * np.uint64(0x9E3779B1)) ^ (ix.astype(np.uint64) * np.uint64(0x85EBCA77))
    h ^= np.uint64(salt * 0xC2B2AE3D & 0xFFFFFFFF)
    h = (h ^ (h >> np.uint64(15))) * np.uint64(0x2C1B3C6D) & _MASK
    h = (h ^ (h >> np.uint64(12))) * np.uint64(0x297A2D39) & _MASK
    h ^= h >> np.uint64(15)
    return (h & _MASK).astype(np.float64) / 2.0**32


def _value_noise(yy: np.ndarray, xx: np.ndarray, wavelength: float, salt: int) -> np.ndarray:
    """Smooth noise in [-1, 1] with features about ``wavelength`` cells across."""
    fy, fx = yy / wavelength, xx / wavelength
    iy, ix = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    ty, tx = fy - iy, fx - ix
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)  # smoothstep
    v = [[_hash01(iy + a, ix + b, salt) for b in (0, 1)] for a in (0, 1)]
    top = v[0][0] * (1 - tx) + v[0][1] * tx
    bottom = v[1][0] * (1 - tx) + v[1][1] * tx
    return 2 * (top * (1 - ty) + bottom * ty) - 1


def synthetic_block(y0: int, y1: int, x0: int, x1: int, *, n_units: int = 4, unit_px: int = 160,
                    hole_fraction: float = 0.03, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(field float32 with NaN holes, truth int16) of rows y0:y1, cols x0:x1 of an unbounded survey.

    A pure function of the cell indices and the options, so blocks made apart join seamlessly.

    Parameters
    ----------
    y0, y1, x0, x1 : cell index bounds (any integers, negative too).
    n_units : number of units; ``truth`` codes are 1..n_units.
    unit_px : spacing in cells of the Voronoi seed lattice, about the width of one Voronoi cell.
    hole_fraction : approximate share of cells set to NaN, in blobs about 40 cells across.
    seed : seed of the hashes.

    Returns
    -------
    field : (y1 - y0, x1 - x0) float32 in nT.
    truth : (y1 - y0, x1 - x0) int16 unit codes.
    """
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    cy, cx = np.floor(yy / unit_px).astype(np.int64), np.floor(xx / unit_px).astype(np.int64)
    best = np.full(yy.shape, np.inf)
    truth = np.zeros(yy.shape, dtype="int16")
    for dy in (-1, 0, 1):  # nearest jittered seed among the 3 x 3 neighbouring lattice cells
        for dx in (-1, 0, 1):
            sy = (cy + dy + _hash01(cy + dy, cx + dx, seed + 1)) * unit_px
            sx = (cx + dx + _hash01(cy + dy, cx + dx, seed + 2)) * unit_px
            d = (yy - sy) ** 2 + (xx - sx) ** 2
            unit = (_hash01(cy + dy, cx + dx, seed + 3) * n_units).astype("int16") + 1
            closer = d < best
            best[closer], truth[closer] = d[closer], unit[closer]
    field = np.zeros(yy.shape)
    for u in range(1, n_units + 1):
        sel = truth == u
        level = 120.0 * (u - (n_units + 1) / 2)
        wavelength = 3.0 + 4.0 * (u - 1)  # texture: fine for unit 1, broad for the last
        amp = 20.0 + 10.0 * ((u * 7) % n_units)
        field[sel] = level + amp * _value_noise(yy[sel], xx[sel], wavelength, seed + 10 + u)
    field += 2.0 * (_hash01(yy.astype(np.int64), xx.astype(np.int64), seed + 5) - 0.5)
    if hole_fraction > 0:
        blobs = _value_noise(yy, xx, 40.0, seed + 6)
        field[blobs > 1 - 1.5 * hole_fraction ** 0.5] = np.nan  # about hole_fraction of cells, in blobs
    return field.astype("float32"), truth


def synthetic_large(shape: tuple[int, int], *, chunk_px: int = 1024, spacing_m: float = 100.0,
                    seed: int = 0, **kw) -> xr.DataArray:
    """A dask-backed survey of any size (same georeferencing as :func:`synthetic_survey`), made block by block.

    ``shape`` is (ny, nx) cells, ``chunk_px`` the dask chunk side, ``spacing_m`` the cell size in metres;
    ``kw`` goes to :func:`synthetic_block`. Returns a lazy float32 ``field`` (y, x) in nT, y descending,
    NaN holes; the truth is :func:`synthetic_block`'s for the same window.
    """

    def block(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return synthetic_block(y0, y1, x0, x1, seed=seed, **kw)[0]

    out = _lazy_grid(block, shape, chunk_px, spacing_m, bands=0).rename("field")
    out.attrs["units"] = "nT"
    return out


def synthetic_large_layers(shape: tuple[int, int], n_layers: int, *, chunk_px: int = 1024, spacing_m: float = 100.0,
                           seed: int = 0, **kw) -> xr.DataArray:
    """Further layers of :func:`synthetic_large`'s survey on its grid, as a survey stack carries (gamma-ray,
    terrain): layer k is a different saturating view of the field, so it carries the units, plus smooth
    noise of its own wavelength, so no two layers are copies. Lazy (band, y, x) float32, bands 1..n,
    with the field's no-data holes."""

    def block(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        field = synthetic_block(y0, y1, x0, x1, seed=seed, **kw)[0].astype("float64") / 200.0
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        return np.stack([np.tanh((0.5 + 0.25 * k) * field + 0.3 * k)
                         + 0.3 * _value_noise(yy, xx, 8.0 + 4.0 * k, seed + 100 + k)
                         for k in range(n_layers)]).astype("float32")

    return _lazy_grid(block, shape, chunk_px, spacing_m, bands=n_layers).rename("layers")


def _lazy_grid(block, shape: tuple[int, int], chunk_px: int, spacing_m: float, *, bands: int) -> xr.DataArray:
    """A dask-backed (y, x) grid, or (band, y, x) with ``bands`` > 0, whose blocks are ``block(y0, y1, x0, x1)``,
    on :func:`synthetic_survey`'s georeferencing."""
    import dask.array as da

    def one(block_info=None):
        (*_, (y0, y1), (x0, x1)) = block_info[None]["array-location"]
        return block(y0, y1, x0, x1)

    ny, nx = shape
    chunks = da.core.normalize_chunks(chunk_px, shape)
    if bands:
        chunks = ((bands,), *chunks)
    data = da.map_blocks(one, chunks=chunks, dtype="float32", meta=np.empty((0,) * (2 + bool(bands)), "float32"))
    coords = {"y": 6_000_000 - spacing_m * (np.arange(ny) + 0.5), "x": 500_000 + spacing_m * (np.arange(nx) + 0.5)}
    dims: tuple[str, ...] = ("y", "x")
    if bands:
        coords["band"], dims = np.arange(1, bands + 1), ("band", "y", "x")
    return xr.DataArray(data, dims=dims, coords=coords).rio.write_crs(CRS)
