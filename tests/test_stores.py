import numpy as np
import pytest
import xarray as xr

from magpipe.errors import StorageError
from magpipe.io.stores import is_complete, open_store, partial_path, write_store


def _ds(v=1.0):
    return xr.Dataset({"a": (("y", "x"), np.full((10, 12), v, "float32"))})


def test_store_is_complete_only_after_write_and_carries_its_hash(tmp_path):
    p = tmp_path / "s.zarr"
    write_store(_ds(), p, stage_hash="h1", shard_px=8)
    assert is_complete(p, "h1") and not is_complete(p, "h2")
    assert not partial_path(p).exists()
    assert float(open_store(p)["a"].mean()) == 1.0
    write_store(_ds(2.0), p, stage_hash="h2", shard_px=8)  # replacing our own store is fine
    assert is_complete(p, "h2") and float(open_store(p)["a"].mean()) == 2.0


def test_foreign_directory_is_never_overwritten(tmp_path):
    p = tmp_path / "s.zarr"
    p.mkdir()
    (p / "precious.txt").write_text("keep me")
    with pytest.raises(StorageError, match="not a magpipe store"):
        write_store(_ds(), p, stage_hash="h")
    assert (p / "precious.txt").read_text() == "keep me"


def test_incomplete_store_is_refused(tmp_path):
    p = tmp_path / "s.zarr"
    _ds().to_zarr(p, zarr_format=3, consolidated=False)
    assert not is_complete(p)
    with pytest.raises(StorageError, match="incomplete"):
        open_store(p)


def test_a_tiled_store_killed_while_being_created_is_made_again(tmp_path, monkeypatch):
    """A kill between the store's metadata and its tile_done array leaves a partial store that must not be
    resumed (it has no tile_done to resume from): the next run creates it again and finishes."""
    import shutil

    from magpipe import tiling
    from magpipe.io.schema import TILE_DONE

    grid = xr.Dataset(coords={"y": np.arange(10.0), "x": np.arange(12.0)})
    template = tiling.output_template(grid, {"v": ("float32", np.nan, {})}, tile_px=4)
    out = tmp_path / "t.zarr"
    real = tiling.create_tiled_store

    def killed_midway(path, tmpl, *, tile_px):
        real(path, tmpl, tile_px=tile_px)
        shutil.rmtree(path / TILE_DONE)  # as if the process died before this array was written
        raise KeyboardInterrupt

    monkeypatch.setattr(tiling, "create_tiled_store", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        tiling.write_tiles(out, template, lambda t: {"v": np.ones((t[1] - t[0], t[3] - t[2]), "float32")},
                           stage_hash="h", tile_px=4)
    monkeypatch.undo()
    tiling.write_tiles(out, template, lambda t: {"v": np.ones((t[1] - t[0], t[3] - t[2]), "float32")},
                       stage_hash="h", tile_px=4)
    assert is_complete(out, "h") and float(open_store(out)["v"].min()) == 1.0
