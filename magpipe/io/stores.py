"""Zarr v3 stores that are either complete or absent, on a local disk or object storage.

A store's attributes carry ``magpipe_complete = true`` and the stage's content hash, set by
the last write of the store; a stage whose hash matches a complete store is skipped, and
anything else at the output path is never mistaken for a result. Locally a store is written
under ``<name>.partial`` and renamed into place, so the previous result stays whole until the
new one is. Object storage has no rename: there the store is written in place and its
``zarr.json``, rewritten in one PUT with the completion attribute, is the marker; a store
without it is treated as absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import rioxarray  # noqa: F401  (the .rio accessor, used on the grids and stores here)
import xarray as xr
import zarr

from magpipe.errors import StorageError, StoreUnavailableError
from magpipe.io.location import as_path, first_line, is_url, remote_errors, remove, write_bytes, zarr_options
from magpipe.io.schema import COMPLETE, HASH, TILE_DONE, VERSION
from magpipe.locking import assert_owned

log = logging.getLogger("magpipe")

INNER_CHUNK_PX = 256


def version() -> str:
    """The installed magpipe version (``"0+unknown"`` when not installed), recorded in every store."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _v

    try:
        return _v("magpipe")
    except PackageNotFoundError:
        return "0+unknown"


def content_hash(*parts: str) -> str:
    """SHA-256 over strings, order-sensitive: a stage's inputs plus its config.

    Returns the first 32 hex digits (128 bits); a stage whose output carries it is skipped.
    """
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def bytes_hash(data: bytes) -> str:
    """:func:`file_hash` of a file holding ``data``."""
    return hashlib.sha256(data).hexdigest()[:32]


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of every file (and its relative name) in a directory.

    Read in 1 MiB blocks, so any size hashes in flat memory. Returns the first 32 hex digits.
    """
    path = as_path(path)
    h = hashlib.sha256()
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.parts) if path.is_dir() else [path]
    for f in files:
        h.update(str(f)[len(str(path)):].lstrip("/").encode() if path.is_dir() else b"")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:32]


READ_RETRY_S = (0.5, 2.0, 5.0)  # waits before each new try of a store that did not answer


def store_attrs(path: str | Path) -> dict[str, Any] | None:
    """Attributes of the Zarr group at ``path``, or None when there is none (no ``zarr.json``, or one that is not
    a Zarr group's).

    "Could not read" never passes for "absent", which would recompute a finished stage or refuse an output as
    not magpipe's: a store that does not answer (a timeout, a dropped connection, a 5xx) is tried again after
    each wait of :data:`READ_RETRY_S`, with a warning line, then StoreUnavailableError names it; a local store
    that cannot be read is a StorageError at once.
    """
    path = as_path(path)
    for wait in (*READ_RETRY_S, None):
        try:
            with remote_errors(path):
                raw = _read_file(path / "zarr.json")
            break
        except FileNotFoundError:
            return None
        except StoreUnavailableError as exc:
            if wait is None:
                raise
            log.warning("%s; trying again in %.1f s", exc, wait)
            time.sleep(wait)
        except NotADirectoryError:
            return None  # a file at path: not a store
        except OSError as exc:
            if is_url(path) or isinstance(exc, StorageError):
                raise
            raise StorageError(f"{path}: cannot read the store ({exc.strerror or first_line(exc)})") from None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None  # zarr.json that is not JSON: something else is here
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) and meta.get("node_type") == "group" else None
    return dict(attrs) if isinstance(attrs, dict) else None


def _read_file(p: Path) -> bytes:
    """A file's bytes in one request on object storage (a GET: no HEAD first, whose failure a storage library
    may report as 'not found')."""
    return p.fs.cat_file(p.path) if is_url(p) else p.read_bytes()


def is_complete(path: str | Path, stage_hash: str | None = None) -> bool:
    """True when ``path`` is a finished magpipe store (made from ``stage_hash`` if given)."""
    attrs = store_attrs(path)
    if not attrs or not attrs.get(COMPLETE):
        return False
    return stage_hash is None or attrs.get(HASH) == stage_hash


def check_output_path(path: str | Path) -> None:
    """Refuse to replace something at ``path`` that magpipe did not write."""
    path = as_path(path)
    if path.exists() and store_attrs(path) is None:
        raise StorageError(f"{path}: exists and is not a magpipe store; refusing to overwrite it")


def partial_path(path: str | Path) -> Path:
    """Where a store is written before it counts: ``<path>.partial`` locally (moved to ``path`` by
    :func:`publish`), ``path`` itself on object storage (no rename there; see the module docstring)."""
    path = as_path(path)
    return path if is_url(path) else path.with_name(path.name + ".partial")


def publish(tmp: Path, path: Path) -> None:
    """Put a finished store or bundle written at ``partial_path(path)`` in place (a no-op in place)."""
    if str(tmp) != str(path):
        replace_dir(tmp, path)


def grid_encoding(ds: xr.Dataset, *, shard_px: int) -> dict[str, dict]:
    """Shards of ``shard_px`` (one dask chunk = one shard, so parallel writes never share
    a shard) holding inner chunks of at most 256 px, which keeps reads of small windows cheap.

    Returns the Zarr encoding of every variable whose last two dims are (y, x): name -> ``chunks``
    and ``shards``, with 1 along any leading dims.
    """
    inner = min(INNER_CHUNK_PX, shard_px)
    enc: dict[str, dict] = {}
    for name, var in ds.data_vars.items():
        if var.dims[-2:] == ("y", "x"):
            lead = (1,) * (var.ndim - 2)
            enc[str(name)] = {"chunks": lead + (inner, inner), "shards": lead + (shard_px, shard_px)}
    return enc


def write_store(ds: xr.Dataset, path: str | Path, *, stage_hash: str, shard_px: int | None = None,
                encoding: dict | None = None, summary=None) -> Path:
    """Write ``ds`` as a complete Zarr v3 store at ``path``, replacing a previous magpipe store.

    ``summary(written_path) -> dict`` adds attributes computed from the written data (statistics
    of a lazily computed ``ds``, say) before the store is marked complete, without computing it twice.

    Parameters
    ----------
    ds : the dataset, numpy- or dask-backed.
    path : the store; written at ``<path>.partial`` and moved into place once complete.
    stage_hash : content hash of what ``ds`` was made from (see :func:`content_hash`).
    shard_px : when given, rechunk y/x to it and shard every (y, x) variable (see :func:`grid_encoding`).
    encoding : per-variable Zarr encoding, taking precedence over the sharding.
    summary : optional callable, as above.

    Returns
    -------
    ``path``.

    Raises
    ------
    StorageError
        If ``path`` holds something magpipe did not write, or the store cannot be written.
    """
    path = as_path(path)
    check_output_path(path)
    tmp = partial_path(path)
    remove(tmp)
    enc = dict(encoding or {})
    if shard_px is not None:
        ds = ds.chunk({d: shard_px for d in ("y", "x") if d in ds.dims})
        for k, v in grid_encoding(ds, shard_px=shard_px).items():
            enc.setdefault(k, v)
    ds = ds.copy()
    ds.attrs.update({HASH: stage_hash, VERSION: version()})
    try:
        with remote_errors(path):  # a bucket's errors name the output asked for, and keep their kind
            ds.to_zarr(str(tmp), mode="w", zarr_format=3, consolidated=False, encoding=enc, **zarr_options(tmp))
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"{path}: cannot write store ({first_line(exc)})") from exc
    try:
        extra = summary(tmp) if summary else None
    except BaseException:  # a summary that refuses the data leaves nothing behind
        remove(tmp)
        raise
    mark_complete(tmp, extra)
    publish(tmp, path)
    return path


def mark_complete(path: str | Path, extra: dict | None = None) -> None:
    """Set ``magpipe_complete`` (and ``extra`` attributes) on a fully written store: its last write, made only
    while this run still holds the output's writer lock (:func:`magpipe.locking.assert_owned`)."""
    assert_owned(path)
    update_attrs(path, {**(extra or {}), COMPLETE: True})


def update_attrs(path: str | Path, attrs: dict[str, Any]) -> None:
    """Add or change attributes of the group at ``path`` (its variables are untouched)."""
    with remote_errors(path):
        zarr.open_group(str(path), mode="r+", **zarr_options(path)).attrs.update(attrs)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place; the old one is removed only after the swap."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def require_complete(path: str | Path) -> Path:
    """``path`` if it is a complete magpipe store; a clear error for a missing or partial one."""
    path = as_path(path)
    if not path.exists():
        raise StorageError(f"{path}: store not found (run the stage that makes it first)")
    if not is_complete(path):
        raise StorageError(f"{path}: store is incomplete (an interrupted run?); re-run its stage")
    return path


def open_store(path: str | Path, *, partial: bool = False) -> xr.Dataset:
    """Open a complete magpipe store lazily; refuse partial or foreign ones (unless ``partial``:
    a store still being written, read back by its own writer).

    Returns a dask-backed dataset with its CRS decoded; raises StorageError for a missing or
    incomplete store.
    """
    path = as_path(path) if partial else require_complete(path)
    return xr.open_zarr(str(path), consolidated=False, decode_coords="all", **zarr_options(path))


def open_array(store: str | Path, name: str, *, mode: str = "r") -> zarr.Array:
    """One variable of a store as a Zarr array: sliced windows are read (or written) on demand."""
    return zarr.open_array(str(as_path(store) / name), mode=mode, **zarr_options(store))


def add_variable(store: str | Path, name: str, values, *, like: str, attrs: dict[str, Any]) -> None:
    """Write (or replace) a 2-D variable chunked and sharded like ``like``, leaving the store's
    attributes (and so its completeness) untouched, which xarray's append mode does not promise.

    ``values`` is a 2-D (y, x) array of ``like``'s shape, stored in its own dtype with dims y, x and
    fill value 0; ``like``'s grid mapping is copied, so the CRS applies to it too.
    """
    group = zarr.open_group(str(store), mode="r+", **zarr_options(store))
    ref = group[like]
    if name in group:
        del group[name]
    grid = {"grid_mapping": ref.attrs["grid_mapping"]} if "grid_mapping" in ref.attrs else {}
    arr = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=ref.chunks, shards=ref.shards,
                             fill_value=0, dimension_names=("y", "x"), attributes={**attrs, **grid})
    arr[:] = values


# --- tiled outputs: a template written lazily, then filled tile by tile (see magpipe.tiling) ------

def create_tiled_store(path: str | Path, template: xr.Dataset, *, tile_px: int) -> None:
    """Write a template's metadata and coordinates; its (lazy) data variables are filled later by tiles."""
    enc = grid_encoding(template, shard_px=tile_px)
    enc[TILE_DONE] = {"chunks": (1, 1)}
    with remote_errors(path):
        template.to_zarr(str(path), mode="w", zarr_format=3, consolidated=False, compute=False, encoding=enc,
                         **zarr_options(path))


def write_tile(path: str | Path, tile: tuple[int, int, int, int], values: dict[str, Any], *, tile_px: int) -> None:
    """Write one tile's region of every variable, then mark the tile done (last, so a crash redoes it).

    ``tile`` is (y0, y1, x0, x1) in cells, on the grid of ``tile_px`` tiles; ``values`` maps each
    variable to its (y1 - y0, x1 - x0) array.
    """
    y0, y1, x0, x1 = tile
    with remote_errors(path):
        group = zarr.open_group(str(path), mode="r+", **zarr_options(path))
        for name, v in values.items():
            group[name][y0:y1, x0:x1] = v
        group[TILE_DONE][y0 // tile_px, x0 // tile_px] = 1


def tiles_done(path: str | Path):
    """The ``tile_done`` grid of a tiled store being filled: (tile_y, tile_x) uint8, 1 = written."""
    return zarr.open_array(str(as_path(path) / TILE_DONE), mode="r", **zarr_options(path))[:]


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default), path)


def write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically."""
    write_bytes(text.encode(), as_path(path))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike) or type(o).__module__.startswith("upath"):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
