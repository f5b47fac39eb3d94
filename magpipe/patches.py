"""Patch geometry and sampling: windows with a halo, patches cut from them, training centres.

The model sees standardised values with no-data (and everything beyond the
survey edge) set to 0, the mean; that filling is the same whether a patch is cut
alone or a whole tile is processed, which is what keeps the two paths equal.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

from magpipe.tiling import tiles


def read_window(array, y0: int, y1: int, x0: int, x1: int, halo: int) -> np.ndarray:
    """Rows y0:y1, cols x0:x1 of a 2-D array plus ``halo`` cells each side; NaN beyond its edges.

    ``array`` is any sliceable 2-D (y, x) grid (zarr or numpy, NaN = no data); only the part inside
    it is read. Returns (y1 - y0 + 2 halo, x1 - x0 + 2 halo) float32 in the grid's units. Beyond the
    edge is no data, so edge cells see the same filled patch whichever window they are read in.
    """
    ny, nx = array.shape
    out = np.full((y1 - y0 + 2 * halo, x1 - x0 + 2 * halo), np.nan, dtype="float32")
    ry0, ry1 = max(0, y0 - halo), min(ny, y1 + halo)
    rx0, rx1 = max(0, x0 - halo), min(nx, x1 + halo)
    out[ry0 - (y0 - halo) : ry1 - (y0 - halo), rx0 - (x0 - halo) : rx1 - (x0 - halo)] = np.asarray(
        array[ry0:ry1, rx0:rx1]
    )
    return out


def cut_patches(window: np.ndarray, rows: np.ndarray, cols: np.ndarray, patch_px: int) -> np.ndarray:
    """Patches centred on (rows, cols) of a window's interior (window carries a halo of p // 2).

    ``window`` is 2-D (H + 2h, W + 2h); ``rows``, ``cols`` are (n,) indices into its (H, W) interior.
    Returns (n, p, p), a copy in the window's dtype.
    """
    view = np.lib.stride_tricks.sliding_window_view(window, (patch_px, patch_px))
    # interior cell (r, c) is window cell (r + h, c + h), whose patch starts at (r, c)
    return np.ascontiguousarray(view[rows, cols])


def read_stack(arrays: list, y0: int, y1: int, x0: int, x1: int, halo: int) -> np.ndarray:
    """:func:`read_window` of every input channel: (C, H + 2 halo, W + 2 halo) float32, NaN = no data."""
    return np.stack([read_window(a, y0, y1, x0, x1, halo) for a in arrays])


def stack_patches(arrays: list, rows: np.ndarray, cols: np.ndarray, patch_px: int, *, tile_px: int = 1024
                  ) -> np.ndarray:
    """Raw patches (n, C, p, p) of C same-shaped grids centred on given cells, NaN outside them.

    Parameters
    ----------
    arrays : the C 2-D (y, x) grids (zarr or numpy), NaN = no data.
    rows, cols : (n,) cell indices of the patch centres, in any order.
    patch_px : odd patch side p in cells.
    tile_px : the grids are read one tile (plus halo) at a time, and only tiles holding a centre,
        so memory is bounded whatever the grid's size.

    Returns
    -------
    (n, C, p, p) float32 raw values in each grid's units, in the order of the cells.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    out = np.empty((len(rows), len(arrays), patch_px, patch_px), dtype="float32")
    h = patch_px // 2
    for y0, y1, x0, x1 in tiles(arrays[0].shape, tile_px):
        sel = np.flatnonzero((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1))
        if sel.size:
            for c, a in enumerate(arrays):
                win = read_window(a, y0, y1, x0, x1, h)
                out[sel, c] = cut_patches(win, rows[sel] - y0, cols[sel] - x0, patch_px)
    return out


def sample_centres(
    valid: np.ndarray, *, patch_px: int, n: int, min_valid_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random valid cells whose patch holds at least ``min_valid_fraction`` valid cells.

    Sorted (row-major) so patches are cut tile by tile; deterministic for a seed.

    Parameters
    ----------
    valid : (y, x) bool, True where the survey has data; cells beyond its edge count as invalid.
    patch_px : odd patch side p in cells.
    n : number of centres wanted; fewer are returned when fewer cells qualify.
    min_valid_fraction : least share (0..1) of a patch's p x p cells that must be valid.
    seed : seed of the draw.

    Returns
    -------
    rows, cols : (<= n,) int64 cell indices.

    Raises
    ------
    ValueError
        If no cell qualifies.
    """
    frac = uniform_filter(valid.astype("float32"), size=patch_px, mode="constant", cval=0.0)
    cand = np.flatnonzero(valid & (frac >= min_valid_fraction - 1e-6))
    if cand.size == 0:
        raise ValueError(
            f"no cell has a {patch_px} px patch with >= {min_valid_fraction:.0%} valid cells"
        )
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(cand, size=min(n, cand.size), replace=False))
    return np.unravel_index(pick, valid.shape)


def neighbour_centres(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], *, max_offset: int, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """A cell at most ``max_offset`` cells from each given cell (never itself), inside a grid of ``shape``.

    The second views of the contrastive objective: nearby ground tends to be the same rock unit
    (Tile2Vec's premise). Deterministic for ``seed``; returns two (n,) int64 arrays.
    """
    rng = np.random.default_rng(seed)
    n, m = len(rows), max(1, int(max_offset))
    dy, dx = rng.integers(-m, m + 1, size=(2, n))
    same = (dy == 0) & (dx == 0)
    dx[same] = rng.choice([-1, 1], size=int(same.sum()))
    return (np.clip(np.asarray(rows) + dy, 0, shape[0] - 1).astype("int64"),
            np.clip(np.asarray(cols) + dx, 0, shape[1] - 1).astype("int64"))
