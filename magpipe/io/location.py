"""Where a run's files live: a local path, or a URL on object storage (``s3://``, ``gs://``, ``az://``, ...).

Local paths stay :class:`pathlib.Path`; URLs become :class:`upath.UPath` over fsspec, with the same
API (``/``, ``exists``, ``read_text``, ``open``), so every module names files one way. What object
storage lacks is handled where it matters: there is no rename, so stores and bundles are written in
place with their completion marker written last (:mod:`magpipe.io.stores`, :mod:`magpipe.bundle`),
and there is no ``flock``, so the writer lock is a conditionally created object (:mod:`magpipe.locking`).

Credentials and endpoints come from the environment the storage library reads (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, fsspec's own
config files, ``FSSPEC_S3_ENDPOINT_URL``-style variables) or from ``runtime.storage_options`` of the
config. Those are held in a context variable, not in fsspec's process-wide config: :func:`storage_scope`
gives them to the code inside it (its thread, and what Prefect runs from it), and every file system,
store and path opened there is given them per call (:func:`as_path`, :func:`zarr_options`). Two runs in
one long-lived process, one after another or side by side in threads, never see each other's options.
They are never written to a file, a report, a log or a Prefect parameter; of the Dask workers, only
those of a LocalCluster the run started itself are handed them (an external cluster's workers take
theirs from their own environment).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from magpipe.errors import InputError, StorageError, StoreUnavailableError

Options = dict[str, dict[str, Any]]  # fsspec options per protocol: {"s3": {"endpoint_url": ...}}
_options: contextvars.ContextVar[Options] = contextvars.ContextVar("magpipe_storage_options", default={})
_cache_dir: Path | None = None


def is_url(p: Any) -> bool:
    """True for a URL of a remote file system (``file://`` is local)."""
    from upath import UPath

    if isinstance(p, Path):
        return False
    if isinstance(p, UPath):
        return True
    s = os.fspath(p) if not isinstance(p, str) else p
    return "://" in s and not s.startswith("file://")


def as_path(p: str | os.PathLike) -> Path:
    """``p`` as a ``Path`` (local) or ``UPath`` (a URL); either is returned unchanged."""
    from upath import UPath

    if isinstance(p, (Path, UPath)):
        return p
    s = os.fspath(p)
    if s.startswith("file://"):
        return Path(s.removeprefix("file://"))
    return UPath(s, **_protocol_options(s)) if is_url(s) else Path(s)


def absolute(p: str | os.PathLike) -> str:
    """An absolute local path or the URL itself, as a string: what a saved config or a task records."""
    p = as_path(p)
    return str(p) if is_url(p) else str(p.expanduser().resolve())


def use_storage_options(options: Options | None) -> None:
    """Give per-protocol options (``{"s3": {"endpoint_url": ..., "anon": false}}``) to the rest of the
    current context: for an entry point that owns its thread (the CLI's command). Anything that may share
    its process with other runs uses :func:`storage_scope` instead. None or {} changes nothing."""
    if options:
        _options.set(_merged(_options.get(), options))


@contextlib.contextmanager
def storage_scope(options: Options | None) -> Iterator[None]:
    """Options added to those already in effect (a run's own win) for the code inside the block only:
    its thread and the Prefect tasks and subflows started from it. None or {} keeps what is in effect."""
    token = _options.set(_merged(_options.get(), options or {}))
    try:
        yield
    finally:
        _options.reset(token)


def storage_options() -> Options:
    """The options in effect here: what a Dask task takes to a worker of the run's own LocalCluster."""
    return {k: dict(v) for k, v in _options.get().items()}


def zarr_options(p: Any) -> dict[str, Any]:
    """Keyword arguments that give Zarr and xarray the options in effect for ``p`` (none for a local path)."""
    opts = _protocol_options(str(p)) if is_url(p) else {}
    return {"storage_options": opts} if opts else {}


def _protocol_options(url: str) -> dict[str, Any]:
    return dict(_options.get().get(url.split("://", 1)[0], {}))


def _merged(base: Options, extra: Options) -> Options:
    return {k: {**base.get(k, {}), **extra.get(k, {})} for k in {*base, *extra}}


def expand(pattern: str) -> list[str]:
    """Paths or URLs matching a glob (``s3://landing/2026-*.tif`` too), sorted; ``pattern`` itself when it has
    no wildcard."""
    if not any(c in pattern for c in "*?["):
        return [pattern]
    if not is_url(pattern):
        import glob

        return sorted(glob.glob(pattern))
    root = as_path(pattern)
    with remote_errors(pattern, kind=InputError):
        return sorted(f"{root.protocol}://{m}" for m in root.fs.glob(root.path))


def input_path(p: str | os.PathLike) -> Path:
    """``p`` as a path, once it is known to exist and not be empty (InputError naming it otherwise)."""
    path = as_path(p)
    with remote_errors(path, kind=InputError):
        if not path.exists():
            raise InputError(f"{path}: file not found")
        if path.is_file() and path.stat().st_size == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
    return path


def ensure_dir(p: Path) -> None:
    """Make the directory ``p`` locally; on object storage, where directories are implied by keys,
    check that its bucket exists and can be reached instead (never create a bucket)."""
    if not is_url(p):
        p.mkdir(parents=True, exist_ok=True)
        return
    bucket = p.path.split("/", 1)[0]
    with remote_errors(p):
        found = p.fs.exists(bucket)
    if not found:
        raise StorageError(f"{p}: bucket '{bucket}' does not exist (or is not visible with these credentials)")


def remove(p: Path) -> None:
    """Delete a file or directory tree at ``p`` if there is one."""
    if is_url(p):
        if p.exists():
            p.fs.rm(p.path, recursive=True)
    elif p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def write_bytes(data: bytes, p: Path) -> None:
    """Write a file whole: a reader never sees half of it (a PUT is atomic on object storage; locally the
    bytes go aside and are renamed into place)."""
    if is_url(p):
        with remote_errors(p):
            p.write_bytes(data)
        return
    tmp = p.with_name(p.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, p)


def save_figure(fig, p: Path, **kwargs) -> None:
    """``fig.savefig`` to any location, written whole."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    write_bytes(buf.getvalue(), p)


def local_file(p: Path) -> Path:
    """``p`` itself when local; else a local copy of the remote file or directory, for readers that need
    a real file (NetCDF, line data, label files). Copies live in one temporary directory per process,
    removed when it exits, so lazily read arrays stay readable meanwhile."""
    if not is_url(p):
        return p
    global _cache_dir
    if _cache_dir is None:
        import atexit
        import tempfile

        _cache_dir = Path(tempfile.mkdtemp(prefix="magpipe-inputs-"))
        atexit.register(shutil.rmtree, _cache_dir, True)
    dst = _cache_dir / f"{len(list(_cache_dir.iterdir()))}" / p.name
    dst.parent.mkdir()
    with remote_errors(p, kind=InputError):
        p.fs.get(p.path, str(dst), recursive=p.is_dir())
        if p.suffix.lower() == ".shp":  # its sidecars (.shx, .dbf, .prj, ...) share its stem
            for side in p.fs.glob(p.path[: -len(p.suffix)] + ".*"):
                p.fs.get(side, str(dst.parent / side.rsplit("/", 1)[-1]))
    return dst


@contextlib.contextmanager
def remote_errors(p: Any, *, kind: type[Exception] = StorageError) -> Iterator[None]:
    """Turn the errors of an object store into one line naming ``p``: wrong or missing credentials as ``kind``,
    a store that does not answer as StoreUnavailableError (worth a retry, :func:`magpipe.errors.is_transient`)."""
    try:
        yield
    except PermissionError as exc:
        raise kind(f"{p}: access denied ({first_line(exc)}); check the credentials "
                   "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or runtime.storage_options)") from None
    except (InputError, StorageError, FileNotFoundError):
        raise
    except OSError as exc:
        if not is_url(p):
            raise
        raise StoreUnavailableError(f"{p}: cannot reach the object store ({first_line(exc)})") from None
    except Exception as exc:  # botocore / aiohttp errors that fsspec passes through unmapped
        if not is_url(p) or type(exc).__module__.split(".")[0] not in {"botocore", "aiobotocore", "aiohttp",
                                                                       "s3fs", "gcsfs", "adlfs"}:
            raise
        if "Credentials" in type(exc).__name__:
            raise kind(f"{p}: no credentials for the object store ({first_line(exc)}); set AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY (or the storage's own) in the environment") from None
        raise StoreUnavailableError(f"{p}: cannot reach the object store ({first_line(exc)})") from None


@contextlib.contextmanager
def named_as(url: Path) -> Iterator[None]:
    """Errors raised while reading the local copy of ``url`` (:func:`local_file`) name ``url``."""
    try:
        yield
    except (InputError, StorageError) as exc:
        if _cache_dir is None or str(_cache_dir) not in str(exc):
            raise
        import re

        msg = re.sub(re.escape(str(_cache_dir)) + r"/\d+/[^:]*", str(url), str(exc))
        raise type(exc)(msg) from None


def first_line(exc: BaseException) -> str:
    """An exception as one short line, for messages that name a file and a problem."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
