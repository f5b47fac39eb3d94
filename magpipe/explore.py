"""What a run shows beyond the class map: the strongest anomalies and the least certain areas.

Both are read from ``classified.zarr`` one tile at a time, reduced to statistics of
square blocks (one block = one candidate location), so they cost one pass over the
output whatever the survey's size, and picks are at least a block apart rather
than k neighbouring cells of one feature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from magpipe.errors import ConfigError
from magpipe.io.location import as_path
from magpipe.io.stores import open_array

PICK_SPACING_PATCHES = 2  # top-k places (anomalies, similar) are at least this many patch widths apart


def block_reduce(array, block: int, reducer: str, *, tile_blocks: int = 16) -> tuple[np.ndarray, ...]:
    """Per block of ``block`` x ``block`` cells: (value, row, col) of its max (``"max"``), or
    (mean, valid fraction) (``"mean"``), reading ``array`` (zarr or numpy) tile by tile.

    Parameters
    ----------
    array : 2-D (y, x) grid, NaN = no data.
    block : block side in cells; blocks are anchored at cell (0, 0), the last row/column may be cut.
    reducer : ``"max"`` or ``"mean"``.
    tile_blocks : blocks per tile side read at once (bounds memory).

    Returns
    -------
    Arrays of (ceil(ny / block), ceil(nx / block)): ``value`` float64 (NaN for a block without data)
    in the grid's units; for ``"max"`` the int64 row and column of the maximum in the whole grid, for
    ``"mean"`` the float64 share of the block's ``block**2`` cells with data (cells beyond the edge count
    as no data).
    """
    ny, nx = array.shape
    by, bx = -(-ny // block), -(-nx // block)
    value = np.full((by, bx), np.nan)
    extra = [np.zeros((by, bx), dtype=np.int64), np.zeros((by, bx), dtype=np.int64)] if reducer == "max" \
        else [np.zeros((by, bx))]
    step = block * tile_blocks
    for y0 in range(0, ny, step):
        for x0 in range(0, nx, step):
            t = np.asarray(array[y0 : y0 + step, x0 : x0 + step], dtype=np.float64)
            h, w = t.shape
            pad = np.full((-(-h // block) * block, -(-w // block) * block), np.nan)
            pad[:h, :w] = t
            hb, wb = pad.shape[0] // block, pad.shape[1] // block
            cells = pad.reshape(hb, block, wb, block).transpose(0, 2, 1, 3).reshape(hb, wb, -1)
            finite = np.isfinite(cells)
            sl = (slice(y0 // block, y0 // block + hb), slice(x0 // block, x0 // block + wb))
            if reducer == "max":
                filled = np.where(finite, cells, -np.inf)
                arg = filled.argmax(axis=2)
                best = np.take_along_axis(filled, arg[..., None], axis=2)[..., 0]
                value[sl] = np.where(np.isfinite(best), best, np.nan)
                brow, bcol = np.divmod(arg, block)
                extra[0][sl] = y0 + np.arange(hb)[:, None] * block + brow
                extra[1][sl] = x0 + np.arange(wb)[None, :] * block + bcol
            else:
                n = finite.sum(axis=2)
                with np.errstate(invalid="ignore"):
                    value[sl] = np.where(n > 0, np.nansum(cells, axis=2) / np.maximum(n, 1), np.nan)
                extra[0][sl] = n / block**2
    return (value, *extra)


def _coords(store: Path) -> tuple[np.ndarray, np.ndarray]:
    return open_array(store, "y")[:], open_array(store, "x")[:]


def top_blocks(store: str | Path, variable: str, k: int, *, block: int,
               exclude: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict]:
    """The k highest cells of ``variable``, each at least ``block`` cells from a higher pick (k places,
    not one place k times); blocks holding the ``exclude`` cells (rows, cols) are skipped.

    Candidates are the block maxima; a greedy pass drops any within ``block`` cells (Chebyshev) of
    an accepted one, so two maxima either side of a block edge count once.

    Parameters
    ----------
    store : a complete store on the survey grid (``classified.zarr``, ``similar.zarr``).
    variable : its 2-D variable to rank, NaN = no data.
    k : number of picks wanted; fewer when fewer blocks hold data.
    block : block side and least pick spacing, in cells.
    exclude : (rows, cols) cell indices whose blocks are not picked (e.g. the query's own cells).

    Returns
    -------
    Highest first: ``rank`` (from 1), ``x``, ``y`` (cell centre, survey CRS units), ``row``, ``col``
    and ``variable``'s value there.
    """
    store = as_path(store)
    value, rows, cols = block_reduce(open_array(store, variable), block, "max")
    if exclude is not None:
        value[exclude[0] // block, exclude[1] // block] = np.nan
    ys, xs = _coords(store)
    order = np.argsort(np.where(np.isfinite(value), value, -np.inf), axis=None)[::-1]
    picks: list[tuple] = []
    for i in order:
        if len(picks) == k or not np.isfinite(value.flat[i]):
            break
        b = np.unravel_index(i, value.shape)
        if all(max(abs(rows[b] - rows[q]), abs(cols[b] - cols[q])) >= block for q in picks):
            picks.append(b)
    return [{"rank": n + 1, "x": float(xs[cols[b]]), "y": float(ys[rows[b]]), "row": int(rows[b]),
             "col": int(cols[b]), variable: float(value[b])} for n, b in enumerate(picks)]


def top_anomalies(classified: str | Path, k: int = 10, *, patch_px: int) -> list[dict]:
    """The k highest reconstruction errors, at least PICK_SPACING_PATCHES patch widths apart.

    ``classified`` is a complete ``classified.zarr``; ``patch_px`` the model's patch side in cells.
    Rows as :func:`top_blocks`, ``anomaly`` in squared standardised units.
    """
    return top_blocks(classified, "anomaly", k, block=PICK_SPACING_PATCHES * patch_px)


def label_next(classified: str | Path, k: int = 10, *, block: int, min_valid: float = 0.5) -> list[dict]:
    """The k blocks of ``block`` cells where the SVM is least sure: where a new label helps most.

    Parameters
    ----------
    classified : a complete ``classified.zarr``.
    k : number of blocks wanted.
    block : block side in cells.
    min_valid : least share of a block's cells with data; emptier blocks (survey edges, gaps) would
        rank on a handful of cells.

    Returns
    -------
    Least confident first: ``rank``, ``x``, ``y`` (block centre, survey CRS units), ``row``, ``col``,
    ``block_px`` and ``mean_confidence`` (mean calibrated probability that the class is right, 0..1).
    """
    classified = as_path(classified)
    conf, frac = block_reduce(open_array(classified, "confidence"), block, "mean")
    ys, xs = _coords(classified)
    key = np.where(np.isfinite(conf) & (frac >= min_valid), conf, np.inf)
    order = np.argsort(key, axis=None)[:k]
    out = []
    for i in order:
        if not np.isfinite(key.flat[i]):
            break
        by, bx = np.unravel_index(i, key.shape)
        r, c = min(by * block + block // 2, len(ys) - 1), min(bx * block + block // 2, len(xs) - 1)
        out.append({"rank": len(out) + 1, "x": float(xs[c]), "y": float(ys[r]), "row": int(r), "col": int(c),
                    "block_px": block, "mean_confidence": float(conf[by, bx])})
    return out


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``columns`` of ``rows``, or ``"(none)"`` without rows. Coordinates (x, y) keep up
    to 6 decimals, trailing zeros dropped: 409000 m, -63.254117 degrees."""
    if not rows:
        return "(none)"
    fmt = {"anomaly": "{:.3g}", "mean_confidence": "{:.2f}", "similarity": "{:.3f}"}

    def cell(c: str, v) -> str:
        if c in ("x", "y"):
            return f"{float(v):.6f}".rstrip("0").rstrip(".")
        return fmt.get(c, "{}").format(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


EMBEDDINGS = {"pca": "PCA", "umap": "UMAP"}  # evaluate.embedding -> the name on the figure's axes


def require_embedding(method: str) -> None:
    """Raise ConfigError, in one line, when the embedding ``method`` asked for cannot run here (``umap``
    needs umap-learn): checked before a run starts, never discovered after its scoring."""
    if method == "umap":
        import importlib.util

        if importlib.util.find_spec("umap") is None:
            raise ConfigError("evaluate.embedding: 'umap' needs the umap-learn package (pip install umap-learn); "
                              "or use 'pca', the default")


def embedding_2d(X: np.ndarray, method: str = "pca") -> tuple[np.ndarray, str]:
    """2-D view of embeddings: PCA (or UMAP, when asked) of the standardised features.

    ``X`` is (n, F) features; returns the (n, 2) coordinates and the method's name (``"PCA"`` or
    ``"UMAP"``), for the axis labels. Seeded, so a report's view is reproducible; the method is what
    ``evaluate.embedding`` says, never what happens to be installed.
    """
    from sklearn.preprocessing import StandardScaler

    require_embedding(method)
    Z = StandardScaler().fit_transform(X)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=0).fit_transform(Z), EMBEDDINGS[method]
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=0).fit_transform(Z), EMBEDDINGS["pca"]
