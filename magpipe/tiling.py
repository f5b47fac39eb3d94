"""Tiles of a survey, and the one resumable, Dask-parallel writer of tiled outputs.

A tiled output (``classified.zarr``, ``similar.zarr``) is made by one function of a tile,
``tile_fn((y0, y1, x0, x1)) -> {variable: (y1 - y0, x1 - x0) array}``, run on every tile:

- the store is written under ``<name>.partial`` (in place on object storage, see
  :mod:`magpipe.io.stores`) from a lazy template on the survey's grid and CRS; one tile is
  one Zarr shard, so no two tasks write the same object;
- each finished tile sets its cell of ``tile_done`` (last), so a re-run of an interrupted
  output with the same stage hash redoes only unfinished tiles and ends identical;
- the store is marked complete and moved into place only after its last tile.

With a ``distributed.Client`` tiles run on its workers (``tile_fn`` must pickle: a
``functools.partial`` of a module-level function of paths); without one, in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from magpipe.cluster import worker_storage_options
from magpipe.io.location import as_path, storage_scope
from magpipe.io.schema import HASH, TILE_DONE, TILE_PX, VERSION
from magpipe.io.stores import (
    check_output_path,
    create_tiled_store,
    is_complete,
    mark_complete,
    partial_path,
    publish,
    store_attrs,
    tiles_done,
    update_attrs,
    version,
    write_tile,
)
from magpipe.progress import progress as steps

log = logging.getLogger("magpipe.tiling")

Tile = tuple[int, int, int, int]  # y0, y1, x0, x1
TileFn = Callable[[Tile], dict[str, np.ndarray]]


def tiles(shape: tuple[int, int], tile_px: int) -> list[Tile]:
    """Row-major (y0, y1, x0, x1) tiles covering a grid; the last row/column may be smaller.

    ``shape`` is (ny, nx) and ``tile_px`` the tile side, both in cells; bounds are end-exclusive.
    """
    ny, nx = shape
    return [
        (y0, min(ny, y0 + tile_px), x0, min(nx, x0 + tile_px))
        for y0 in range(0, ny, tile_px)
        for x0 in range(0, nx, tile_px)
    ]


def output_template(grid: xr.Dataset, variables: dict[str, tuple[str, float, dict]], tile_px: int) -> xr.Dataset:
    """A lazy dataset on ``grid``'s y/x coordinates and CRS, plus ``tile_done``.

    Parameters
    ----------
    grid : any dataset on the survey's grid (its ``y``, ``x`` and ``spatial_ref`` are kept).
    variables : name -> (dtype, fill value, attrs) of each output variable.
    tile_px : tile (= shard) side in cells.

    Returns
    -------
    Dask-backed (y, x) variables filled with their fill value, chunked ``tile_px``, referring to
    ``spatial_ref`` when present, and ``tile_done`` (tile_y, tile_x) uint8 zeros.
    """
    import dask.array as da

    ny, nx = grid.sizes["y"], grid.sizes["x"]
    chunks = (tile_px, tile_px)
    coords = {k: grid.coords[k] for k in ("y", "x", "spatial_ref") if k in grid.coords}
    gm = {"grid_mapping": "spatial_ref"} if "spatial_ref" in coords else {}
    ds = xr.Dataset({name: (("y", "x"), da.full((ny, nx), fill, dtype=dtype, chunks=chunks), {**attrs, **gm})
                     for name, (dtype, fill, attrs) in variables.items()}, coords=coords)
    nty, ntx = -(-ny // tile_px), -(-nx // tile_px)
    ds[TILE_DONE] = (("tile_y", "tile_x"), da.zeros((nty, ntx), dtype="uint8", chunks=(1, 1)))
    return ds


def run_tile(tile_fn: TileFn, store: str, tile: Tile, tile_px: int, storage: dict | None = None) -> Tile:
    """Compute one tile and write it into the partial ``store`` (the task each worker runs).

    ``storage`` is the driver's :func:`magpipe.io.location.storage_options` when the workers are the run's
    own (a LocalCluster it started), for this task only; other workers use their own environment's."""
    with storage_scope(storage):
        write_tile(store, tile, tile_fn(tile), tile_px=tile_px)
    return tile


def write_tiles(out: str | Path, template: xr.Dataset, tile_fn: TileFn, *, stage_hash: str, tile_px: int,
                attrs: dict | None = None, client=None, progress: Callable[[int, int], None] | None = None,
                name: str = "tiles", resources: dict[str, float] | None = None) -> Path:
    """Fill the tiled output ``out`` with ``tile_fn`` of every tile; skip it when complete with
    ``stage_hash``, resume its partial store when that was made with the same hash.

    Parameters
    ----------
    out : the output store (e.g. ``OUT/classified.zarr``).
    template : :func:`output_template` of the output variables.
    tile_fn : tile -> {variable: values}, the values of the tile's cells.
    stage_hash : content hash of everything the output depends on.
    tile_px : tile side in cells (the template's chunk).
    attrs : extra attributes of the store.
    client : a ``distributed.Client``, or None to run in this process.
    progress : called with (tiles done, tiles in all) after every tile.
    name : prefix of the Dask task keys and of log lines.
    resources : Dask resources each tile task needs (``{"GPU": 1}``: only workers declaring a GPU run it).

    Returns
    -------
    ``out``, complete.

    Raises
    ------
    StorageError
        If ``out`` exists and is not a magpipe store.
    """
    out = as_path(out)
    check_output_path(out)
    if is_complete(out, stage_hash):
        log.info("%s is up to date; nothing to do", out)
        return out
    tmp = partial_path(out)
    prev = store_attrs(tmp)
    if prev is None or prev.get(HASH) != stage_hash:
        template = template.copy()
        template.attrs.update({**(attrs or {}), VERSION: version(), TILE_PX: tile_px})
        create_tiled_store(tmp, template, tile_px=tile_px)
        update_attrs(tmp, {HASH: stage_hash})  # last: a partial store with the hash is whole (killed mid-creation: not)
        done = np.zeros(template[TILE_DONE].shape, dtype="uint8")
    else:
        done = tiles_done(tmp)
    grid = tiles((template.sizes["y"], template.sizes["x"]), tile_px)
    todo = [(i, t) for i, t in enumerate(grid) if not done[t[0] // tile_px, t[2] // tile_px]]
    log.info("%s: %d of %d tiles (%d px) into %s", name, len(todo), len(grid), tile_px, out)
    finished = len(grid) - len(todo)
    with steps(name, len(grid), "tiles", done=finished) as step:
        for _ in _run(tile_fn, str(tmp), todo, tile_px, client, key=f"{name}-{stage_hash}", resources=resources):
            finished += 1
            step()
            if progress is not None:
                progress(finished, len(grid))
    mark_complete(tmp)
    publish(tmp, out)
    return out


def _run(tile_fn: TileFn, store: str, todo: list[tuple[int, Tile]], tile_px: int, client, *, key: str,
         resources: dict[str, float] | None = None):
    """Yield once per finished tile, in completion order."""
    if client is None:
        for _, t in todo:
            yield run_tile(tile_fn, store, t, tile_px)
        return
    from distributed import as_completed

    storage = worker_storage_options(client)
    futures = [client.submit(run_tile, tile_fn, store, t, tile_px, storage, key=f"{key}-{i}", pure=False,
                             resources=resources) for i, t in todo]
    for fut in as_completed(futures, loop=client.loop):
        yield fut.result()
