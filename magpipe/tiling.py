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

**Overlapped I/O.** A tile function that is a :class:`StagedTile` (``read`` then ``compute``) can run
its tiles as a pipeline (``overlap=True``): the next tiles' reads and decompression run in a thread
while this tile computes, and finished tiles are compressed and written from a pool of threads. On a
GPU the device then waits for neither; on a CPU worker of one thread the threads only compete with
the compute, so it is off there by default. On a cluster a task then runs a short run of tiles.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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

PREFETCH = 2  # tiles read ahead of the one computing: each holds its window (C x (tile + 2 halo)^2 float32)
WRITERS = 2  # threads compressing and writing finished tiles; as many finished tiles wait at most
TASKS_PER_WORKER = 4  # with overlap on a cluster: tiles are cut into about this many runs per worker


@runtime_checkable
class StagedTile(Protocol):
    """A tile function in two steps, so that one tile's read can overlap another's compute.

    ``read(tile)`` does the I/O (reading and decompressing the tile's window; no device work) and
    ``compute(tile, data)`` turns it into the tile's ``{variable: (y1 - y0, x1 - x0) array}``;
    calling it with a tile does both.
    """

    def read(self, tile: Tile) -> Any: ...

    def compute(self, tile: Tile, data: Any) -> dict[str, np.ndarray]: ...

    def __call__(self, tile: Tile) -> dict[str, np.ndarray]: ...


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


def run_tiles(tile_fn: StagedTile, store: str, batch: Sequence[Tile], tile_px: int,
              storage: dict | None = None) -> list[Tile]:
    """Compute and write a run of tiles with overlapped I/O (the task of a worker when ``overlap`` is on).

    Returns the tiles, each written and marked done; ``storage`` as in :func:`run_tile`."""
    with storage_scope(storage):
        return list(overlapped(tile_fn, store, batch, tile_px))


def overlapped(tile_fn: StagedTile, store: str, batch: Sequence[Tile], tile_px: int, *,
               prefetch: int = PREFETCH, writers: int = WRITERS) -> Iterator[Tile]:
    """Yield each tile of ``batch`` once it is written, reading up to ``prefetch`` tiles ahead of the one
    computing (in one thread, in order) and writing up to ``writers`` tiles at once (in a pool).

    Tiles are computed in this thread, in the order given; they are yielded in that order too. Memory
    holds at most ``prefetch`` read windows and ``writers`` finished tiles besides the one computing. On
    an error (a read, the compute or a write) nothing further is started, the writes already under way
    finish (their tiles are whole and marked done, so a re-run skips them) and the error is raised.
    The threads run in this thread's context, storage options included.
    """
    if not batch:
        return
    reads: deque[Future] = deque()
    writes: deque[tuple[Tile, Future]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="tile-read") as reader, \
            ThreadPoolExecutor(writers, thread_name_prefix="tile-write") as writer:
        def submit(pool: ThreadPoolExecutor, fn: Callable, *args, **kw) -> Future:
            return pool.submit(contextvars.copy_context().run, fn, *args, **kw)

        ahead = iter(batch)
        try:
            for t in ahead:
                reads.append(submit(reader, tile_fn.read, t))
                if len(reads) > prefetch:
                    break
            for t in batch:
                data = reads.popleft().result()
                nxt = next(ahead, None)
                if nxt is not None:
                    reads.append(submit(reader, tile_fn.read, nxt))
                values = tile_fn.compute(t, data)
                del data
                while len(writes) >= writers:
                    done, fut = writes.popleft()
                    fut.result()
                    yield done
                writes.append((t, submit(writer, write_tile, store, t, values, tile_px=tile_px)))
                del values
            while writes:
                done, fut = writes.popleft()
                fut.result()
                yield done
        finally:
            for f in reads:
                f.cancel()


def write_tiles(out: str | Path, template: xr.Dataset, tile_fn: TileFn, *, stage_hash: str, tile_px: int,
                attrs: dict | None = None, client=None, progress: Callable[[int, int], None] | None = None,
                name: str = "tiles", resources: dict[str, float] | None = None, overlap: bool = False) -> Path:
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
    overlap : run the tiles with overlapped I/O (:func:`overlapped`; ``tile_fn`` must be a
        :class:`StagedTile`), on a cluster as runs of tiles, about ``TASKS_PER_WORKER`` per worker.

    Returns
    -------
    ``out``, complete.

    Raises
    ------
    StorageError
        If ``out`` exists and is not a magpipe store.
    """
    out = as_path(out)
    if overlap and not isinstance(tile_fn, StagedTile):
        raise TypeError(f"overlap needs a StagedTile (read, compute), not {tile_fn!r}")
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
        for n in _run(tile_fn, str(tmp), todo, tile_px, client, key=f"{name}-{stage_hash}", resources=resources,
                      overlap=overlap):
            finished += n
            step(n)
            if progress is not None:
                progress(finished, len(grid))
    mark_complete(tmp)
    publish(tmp, out)
    return out


def _run(tile_fn: TileFn, store: str, todo: list[tuple[int, Tile]], tile_px: int, client, *, key: str,
         resources: dict[str, float] | None = None, overlap: bool = False) -> Iterator[int]:
    """Yield the number of tiles just finished (1, or a task's run of them), in completion order."""
    if client is None:
        if overlap:
            yield from (1 for _ in overlapped(tile_fn, store, [t for _, t in todo], tile_px))
        else:
            for _, t in todo:
                run_tile(tile_fn, store, t, tile_px)
                yield 1
        return
    from distributed import as_completed

    storage = worker_storage_options(client)
    if overlap:
        runs = task_runs(todo, capable_workers(client, resources))
        futures = [client.submit(run_tiles, tile_fn, store, [t for _, t in run], tile_px, storage,
                                 key=f"{key}-{run[0][0]}", pure=False, resources=resources) for run in runs]
    else:
        futures = [client.submit(run_tile, tile_fn, store, t, tile_px, storage, key=f"{key}-{i}", pure=False,
                                 resources=resources) for i, t in todo]
    for fut in as_completed(futures, loop=client.loop):
        done = fut.result()
        yield len(done) if overlap else 1


def task_runs(todo: list[tuple[int, Tile]], workers: int) -> list[list[tuple[int, Tile]]]:
    """``todo`` cut into consecutive runs, about ``TASKS_PER_WORKER`` per worker (fewer when tiles are few):
    long enough that most reads overlap a compute, short enough to balance the workers and show progress."""
    size = max(1, math.ceil(len(todo) / (max(1, workers) * TASKS_PER_WORKER)))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def capable_workers(client, resources: dict[str, float] | None) -> int:
    """How many of ``client``'s workers can run a task needing ``resources``."""
    workers = client.scheduler_info().get("workers", {}).values()
    return sum(all(w.get("resources", {}).get(k, 0) >= v for k, v in (resources or {}).items()) for w in workers)
