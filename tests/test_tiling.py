"""Tiled outputs with overlapped I/O: the next tiles are read while one computes, finished tiles are
written from a pool, and the store ends as the one-tile-at-a-time writer makes it."""

import threading

import numpy as np
import pytest
import xarray as xr
import zarr

from magpipe import tiling
from magpipe.io.location import storage_options, storage_scope
from magpipe.io.stores import is_complete, open_store, partial_path

WAIT_S = 20  # a step waiting on another thread's event fails after this long: the steps did not overlap


class Recorder:
    """A StagedTile whose tile values are a function of the tile, recording which thread did what.

    ``compute_waits_for`` maps a tile index to an event that its compute waits on (the overlap tests)."""

    def __init__(self, grid, fail_at=None, fail_read_at=None):
        self.grid, self.fail_at, self.fail_read_at = grid, fail_at, fail_read_at
        self.read_started = {i: threading.Event() for i in range(len(grid))}
        self.compute_waits_for: dict[int, threading.Event] = {}
        self.threads: dict[str, set[str]] = {"read": set(), "compute": set()}
        self.options_seen: list[dict] = []

    def read(self, tile):
        i = self.grid.index(tile)
        self.read_started[i].set()
        self.threads["read"].add(threading.current_thread().name)
        self.options_seen.append(storage_options())
        if i == self.fail_read_at:
            raise OSError(f"unreadable tile {i}")
        y0, y1, x0, x1 = tile
        return np.add.outer(np.arange(y0, y1), np.arange(x0, x1) * 1000).astype("float32")

    def compute(self, tile, data):
        i = self.grid.index(tile)
        self.threads["compute"].add(threading.current_thread().name)
        if i in self.compute_waits_for:
            assert self.compute_waits_for[i].wait(WAIT_S), f"tile {i} computed without the step it waits for"
        if i == self.fail_at:
            raise RuntimeError(f"compute failed at tile {i}")
        return {"v": data}

    def __call__(self, tile):
        return self.compute(tile, self.read(tile))


def _template(ny=40, nx=36, tile_px=8):
    grid = xr.Dataset(coords={"y": np.arange(float(ny)), "x": np.arange(float(nx))})
    return tiling.output_template(grid, {"v": ("float32", np.nan, {})}, tile_px=tile_px)


def _expected(ny=40, nx=36):
    return np.add.outer(np.arange(ny), np.arange(nx) * 1000).astype("float32")


def test_a_staged_tile_function_is_recognised():
    assert isinstance(Recorder([]), tiling.StagedTile)
    assert not isinstance(lambda t: {}, tiling.StagedTile)


def test_overlapped_tiles_read_ahead_while_one_computes(tmp_path):
    """Tile i's compute waits until tile i + 2's read has started: it can only end when reads run ahead."""
    template = _template()
    grid = tiling.tiles((40, 36), 8)
    fn = Recorder(grid)
    fn.compute_waits_for = {i: fn.read_started[i + tiling.PREFETCH] for i in range(len(grid) - tiling.PREFETCH)}
    out = tiling.write_tiles(tmp_path / "o.zarr", template, fn, stage_hash="h", tile_px=8, overlap=True)
    np.testing.assert_array_equal(open_store(out)["v"].values, _expected())
    assert fn.threads["compute"] == {threading.current_thread().name}
    assert fn.threads["read"] and threading.current_thread().name not in fn.threads["read"]


def test_overlapped_tiles_are_written_while_the_next_computes(tmp_path, monkeypatch):
    """Tile i + 1's compute waits until tile i's write has started: it can only end when writes run aside."""
    template = _template()
    grid = tiling.tiles((40, 36), 8)
    fn = Recorder(grid)
    write_started = {i: threading.Event() for i in range(len(grid))}
    writers = set()
    real = tiling.write_tile

    def write_tile(store, tile, values, *, tile_px):  # the real write, noting when and where it starts
        writers.add(threading.current_thread().name)
        write_started[grid.index(tile)].set()
        real(store, tile, values, tile_px=tile_px)

    monkeypatch.setattr(tiling, "write_tile", write_tile)
    fn.compute_waits_for = {i + 1: write_started[i] for i in range(len(grid) - 1)}
    out = tiling.write_tiles(tmp_path / "o.zarr", template, fn, stage_hash="h", tile_px=8, overlap=True)
    np.testing.assert_array_equal(open_store(out)["v"].values, _expected())
    assert writers and threading.current_thread().name not in writers


@pytest.mark.parametrize("where", ["compute", "read"])
def test_a_failed_tile_leaves_a_partial_store_that_resumes_to_the_same_map(tmp_path, where):
    template = _template()
    grid = tiling.tiles((40, 36), 8)
    out = tmp_path / "o.zarr"
    fn = Recorder(grid, fail_at=7) if where == "compute" else Recorder(grid, fail_read_at=7)
    with pytest.raises(RuntimeError if where == "compute" else OSError, match="tile 7"):
        tiling.write_tiles(out, template, fn, stage_hash="h", tile_px=8, overlap=True)
    assert not out.exists() and partial_path(out).exists()  # nothing that looks finished
    done = zarr.open_array(partial_path(out) / "tile_done", mode="r")[:].ravel()
    assert done[:7].all() and not done[7:].any()  # every tile before the failure written whole, none after
    seen = []
    tiling.write_tiles(out, template, Recorder(grid), stage_hash="h", tile_px=8, overlap=True,
                       progress=lambda d, t: seen.append(d))
    assert seen == list(range(8, len(grid) + 1))  # only the unfinished tiles ran
    assert is_complete(out, "h")
    np.testing.assert_array_equal(open_store(out)["v"].values, _expected())


def test_the_threads_see_the_storage_options_of_the_caller(tmp_path):
    grid = tiling.tiles((16, 16), 8)
    fn = Recorder(grid)
    with storage_scope({"s3": {"endpoint_url": "http://127.0.0.1:9"}}):
        list(tiling.overlapped(fn, str(_store(tmp_path)), grid, 8))
    assert fn.options_seen == [{"s3": {"endpoint_url": "http://127.0.0.1:9"}}] * len(grid)


def _store(tmp_path):
    from magpipe.io.stores import create_tiled_store

    path = tmp_path / "s.zarr"
    create_tiled_store(path, _template(16, 16), tile_px=8)
    return path


def test_overlap_needs_a_staged_tile_function(tmp_path):
    with pytest.raises(TypeError, match="StagedTile"):
        tiling.write_tiles(tmp_path / "o.zarr", _template(), lambda t: {}, stage_hash="h", tile_px=8, overlap=True)
    assert not (tmp_path / "o.zarr").exists() and not partial_path(tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("n, workers, sizes", [(64, 1, [16] * 4), (10, 2, [2] * 5), (3, 4, [1] * 3), (0, 1, [])])
def test_task_runs_are_consecutive_and_cover_every_tile(n, workers, sizes):
    todo = [(i, (i, i + 1, 0, 1)) for i in range(n)]
    runs = tiling.task_runs(todo, workers)
    assert [len(r) for r in runs] == sizes
    assert [x for r in runs for x in r] == todo
