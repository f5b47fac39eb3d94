"""One writer per output directory.

Two runs writing the same ``OUT`` would interleave tiles of different models or
configs into one store that then looks complete. Every stage holds an exclusive
``flock`` on ``OUT/.magpipe.lock`` while it writes; a second run (another process,
or another thread of a flow worker) is refused at once with a message naming
the holder. The kernel releases the lock when its process dies, so a crashed or
killed run never leaves a stale lock behind. ``flock`` is local to one host:
runs on several hosts sharing OUT over NFS must not share an output directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from magpipe.errors import StorageError

LOCK_NAME = ".magpipe.lock"


class OutputLockedError(StorageError):
    """Another run is writing the same output directory."""


_held: dict[Path, tuple[int, int, int]] = {}  # path -> (fd, depth, owning thread id)
_guard = threading.Lock()


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold OUT's writer lock; re-entrant within one thread (run_all calls the stages).

    Creates ``out`` if needed and yields it. Raises OutputLockedError at once (never waits) when
    another process or thread holds the lock, StorageError when ``out`` cannot be created.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"{out}: cannot use as an output directory ({exc.strerror})") from None
    path = (out / LOCK_NAME).resolve()
    me = threading.get_ident()
    with _guard:
        if path in _held:
            fd, depth, owner = _held[path]
            if owner != me:
                raise OutputLockedError(f"{out}: in use by another run in this process; wait for it to finish")
            _held[path] = (fd, depth + 1, owner)
        else:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StorageError(f"{out}: cannot use as an output directory ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputLockedError(
                    f"{out}: in use by another magpipe run ({holder}); wait for it, or stop it and re-run "
                    "(finished work is kept)") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            _held[path] = (fd, 1, me)
    try:
        yield out
    finally:
        with _guard:
            fd, depth, owner = _held[path]
            if depth > 1:
                _held[path] = (fd, depth - 1, owner)
            else:
                del _held[path]
                os.close(fd)  # releases the flock


# Write failures that are the output file system's, not magpipe's or the input's.
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def locks_output(fn: Callable) -> Callable:
    """Run a stage function under the lock of its ``out`` argument."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        """``fn`` under the lock of the ``out`` it is called with."""
        out = sig.bind(*args, **kwargs).arguments["out"]
        with output_lock(out):
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                if exc.errno not in _FULL_OR_READ_ONLY:
                    raise
                raise StorageError(f"{out}: cannot write the output ({exc.strerror}); nothing incomplete is marked "
                                   "done: make room and re-run the same command to go on") from None

    return wrapper
