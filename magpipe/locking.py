"""One writer per output directory.

Two runs writing the same ``OUT`` would interleave tiles of different models or
configs into one store that then looks complete. Every stage holds an exclusive
``flock`` on ``OUT/.magpipe.lock`` while it writes; a second run (another process,
or another thread of a flow worker) is refused at once with a message naming
the holder. The kernel releases the lock when its process dies, so a crashed or
killed run never leaves a stale lock behind. ``flock`` is local to one host:
runs on several hosts sharing OUT over NFS must not share an output directory.

Object storage has no ``flock``. There the lock is the object ``OUT/.magpipe.lock``, created
only if absent (``If-None-Match: *`` on S3, fsspec's ``mode="create"``), holding its owner's
host, pid and a heartbeat the owner rewrites every :data:`HEARTBEAT_S` seconds, and deleted on
release. A lock left by a killed run is stale, and taken over, when its owner was a process of
this host that no longer exists, or when its heartbeat is older than :data:`STALE_S` seconds.

A lock object can therefore be lost: taken over after its owner's beats failed for :data:`STALE_S`, or
removed by hand. Its owner checks. A beat that finds the object rewritten or removed by another run stops
beating; a run whose beats have failed for half of :data:`STALE_S` gives the lock up itself,
before anyone could take it over; either way the run stops at its next step (every epoch, tile and split)
with one line, its finished work kept. Before writing a completion marker, a writer reads the lock
object once more (:func:`assert_owned`), so a run that lost its lock never marks an output complete.
On S3 a beat is a write conditional on the ETag of the run's own last write (``If-Match``), so it never
overwrites a takeover; on a store without ETags the object is read first, and a takeover in the instant
between that read and the write is overwritten once (the taker's next beat then sees it lost).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import functools
import inspect
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from magpipe.errors import StorageError
from magpipe.io.location import as_path, ensure_dir, first_line, is_url, remote_errors, storage_scope
from magpipe.process import add_step_check, raise_if_interrupted

log = logging.getLogger("magpipe.locking")

LOCK_NAME = ".magpipe.lock"
HEARTBEAT_S = 30.0  # how often the owner of a lock object on object storage refreshes it
STALE_S = 300.0  # a lock object not refreshed for this long belongs to a run that died elsewhere


class OutputLockedError(StorageError):
    """Another run is writing the same output directory."""


class LockLostError(StorageError):
    """This run no longer holds its output's writer lock (object storage only): it stops writing."""


_held: dict[str, tuple[object, int, int]] = {}  # lock -> (fd or remote lock, depth, owning thread id)
_guard = threading.Lock()


LOCK_POLL_S = 2.0  # how often a run waiting for an output's lock tries again
_wait_s: contextvars.ContextVar[float] = contextvars.ContextVar("magpipe_lock_wait_s", default=0.0)


@contextlib.contextmanager
def waiting_for_locks(seconds: float) -> Iterator[None]:
    """Inside the block (its thread, and the Prefect tasks and subflows started from it), a run that finds its
    output locked waits up to ``seconds`` for it, trying every :data:`LOCK_POLL_S`, instead of being refused at
    once: flow runs on the same output then run one after the other. A command keeps refusing at once."""
    token = _wait_s.set(seconds)
    try:
        yield
    finally:
        _wait_s.reset(token)


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold OUT's writer lock; re-entrant within one thread (run_all calls the stages).

    Creates ``out`` if needed and yields it. Raises OutputLockedError when another process or thread
    holds the lock: at once, or after the wait of :func:`waiting_for_locks`; StorageError when ``out``
    cannot be created.
    """
    out = as_path(out)
    try:
        ensure_dir(out)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"{out}: cannot use as an output directory ({exc.strerror})") from None
    path = str(out / LOCK_NAME) if is_url(out) else str((out / LOCK_NAME).resolve())
    deadline, said = time.monotonic() + _wait_s.get(), False
    while True:
        try:
            _acquire(out, path)
            break
        except OutputLockedError as exc:
            if time.monotonic() + LOCK_POLL_S > deadline:
                raise
            if not said:
                log.info("%s; waiting for it (up to %.0f s)", exc, deadline - time.monotonic())
                said = True
            time.sleep(LOCK_POLL_S)
            raise_if_interrupted()
    try:
        yield out
    finally:
        with _guard:
            fd, depth, owner = _held[path]
            if depth > 1:
                _held[path] = (fd, depth - 1, owner)
            else:
                del _held[path]
                if isinstance(fd, _RemoteLock):
                    fd.release()
                else:
                    os.close(fd)  # releases the flock


def _acquire(out: Path, path: str) -> None:
    """Take (or re-enter) the lock at ``path`` for this thread, or raise OutputLockedError at once."""
    me = threading.get_ident()
    with _guard:
        if path in _held:
            fd, depth, owner = _held[path]
            if owner != me:
                raise OutputLockedError(f"{out}: in use by another run in this process; wait for it to finish")
            _held[path] = (fd, depth + 1, owner)
        elif is_url(out):
            _held[path] = (_RemoteLock.take(out), 1, me)
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


class _RemoteLock:
    """The lock object of an output on object storage, refreshed by a daemon thread while held."""

    def __init__(self, out: Path, token: str, etag: str | None = None) -> None:
        self.out, self.token = out, token
        self.etag = etag  # of this run's last write, where the store reports one (S3): beats are then conditional
        self.path = out / LOCK_NAME
        self.lost: str | None = None  # why the lock is no longer this run's
        self._last_beat = time.monotonic()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._refresh, name="magpipe-lock-heartbeat", daemon=True)
        self._beat.start()

    @staticmethod
    def _body(token: str) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                           "heartbeat": time.time()}).encode()

    @classmethod
    def take(cls, out: Path) -> "_RemoteLock":
        """Create the lock object, taking over a stale one; OutputLockedError when a live run holds it."""
        path = out / LOCK_NAME
        token = uuid.uuid4().hex
        for _ in range(2):
            with remote_errors(out):
                try:
                    created = path.fs.pipe_file(path.path, cls._body(token), mode="create")
                    return cls(out, token, _etag(created))
                except FileExistsError:
                    holder = _read_lock(path)
            if holder is None:  # released between our create and read: try again
                continue
            stale = _stale_reason(holder)
            if stale is None:
                age = time.time() - float(holder.get("heartbeat", 0))
                raise OutputLockedError(
                    f"{out}: in use by another magpipe run (pid {holder.get('pid')} on {holder.get('host')}, seen "
                    f"{age:.0f} s ago); wait for it, or stop it and re-run (finished work is kept). A lock not "
                    f"refreshed for {STALE_S:.0f} s is taken over") from None
            log.warning("%s: taking over the lock of a run that %s", out, stale)
            with remote_errors(out):
                path.fs.rm(path.path)
        raise OutputLockedError(f"{out}: another run took the lock at the same moment; re-run")

    def _refresh(self) -> None:
        """Rewrite the heartbeat while the object is still this run's; give the lock up when it is not, or when
        beats have failed for half of STALE_S (before another run could take it over)."""
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat_once()
                if self.lost:
                    return
                self._last_beat = time.monotonic()
            except Exception as exc:  # a missed beat is only a risk after STALE_S; the next one retries
                failing = time.monotonic() - self._last_beat
                if failing > STALE_S / 2:
                    self.lost = (f"could not be refreshed for {failing:.0f} s ({first_line(exc)}); this run gave it "
                                 f"up before another could take it over (after {STALE_S:.0f} s)")
                    return
                log.warning("%s: could not refresh the writer lock (%s); retrying", self.out, first_line(exc))

    def _beat_once(self) -> None:
        """Rewrite the heartbeat only while the object is this run's. On S3 the write is conditional on the ETag
        of this run's last write (``If-Match``), so a takeover between two beats is never overwritten; where the
        store has no ETag, or refuses the condition, the object is read first (a takeover in the instant
        between the read and the write is overwritten once, and the taker's next beat sees it)."""
        body = self._body(self.token)
        if self.etag is not None:
            try:
                self.etag = _etag(self.path.fs.pipe_file(self.path.path, body, IfMatch=self.etag))
                return
            except FileNotFoundError:
                self.lost = "was removed by someone else"
                return
            except OSError as exc:
                if "precondition" not in str(exc).lower().replace("-", ""):
                    self.etag = None  # conditional writes not understood here: read, then write
                    raise
                self._check_token()
                self.lost = self.lost or "was rewritten by someone else"
                return
        self._check_token()
        if not self.lost:
            self.path.fs.pipe_file(self.path.path, body)

    def _check_token(self) -> None:
        """Set ``lost`` when the lock object is gone or holds another run's token."""
        held = _read_lock(self.path)
        if held is None:
            self.lost = "was removed by someone else"
        elif held.get("token") != self.token:
            self.lost = f"was taken over by another run (pid {held.get('pid')} on {held.get('host')})"

    def check(self, *, read: bool = False) -> None:
        """Raise LockLostError if the lock is known lost (``read``: reading the lock object now to be sure)."""
        if read and not self.lost:
            with remote_errors(self.out):
                self._check_token()
        if self.lost:
            raise LockLostError(f"{self.out}: the writer lock {self.lost}; stopped without marking anything "
                                "complete (finished work is kept): run the same command again to go on")

    def release(self) -> None:
        self._stop.set()
        self._beat.join(timeout=5)
        if self.lost:
            return  # another run's now, or nobody's
        with contextlib.suppress(Exception):
            held = _read_lock(self.path)
            if held is not None and held.get("token") == self.token:
                self.path.fs.rm(self.path.path)


def _held_remote(prefix: str | None = None) -> list[_RemoteLock]:
    """The lock objects this thread holds (of outputs holding ``prefix``, when given)."""
    me = threading.get_ident()
    with _guard:
        locks = [fd for fd, _, owner in _held.values() if isinstance(fd, _RemoteLock) and owner == me]
    return [lk for lk in locks if prefix is None or prefix == str(lk.out) or prefix.startswith(str(lk.out) + "/")]


def check_locks() -> None:
    """Stop this thread's run (LockLostError) if a lock object it holds is known lost; called at every step."""
    for lock in _held_remote():
        lock.check()


def assert_owned(path: str | Path) -> None:
    """Before a completion marker at ``path``: the writer lock of the output holding it is still this run's
    (read from the store now). Nothing to check for a local output (``flock`` is never lost) or outside a lock."""
    for lock in _held_remote(str(as_path(path)).rstrip("/")):
        lock.check(read=True)


add_step_check(check_locks)


def _etag(response) -> str | None:
    """The ETag of a write, from the store's reply (s3fs returns S3's; other file systems return nothing)."""
    return response.get("ETag") if isinstance(response, dict) else None


def _read_lock(path: Path) -> dict | None:
    """The lock object's content; None when it is gone; {} when unreadable (treated as held)."""
    try:
        data = json.loads(path.fs.cat_file(path.path))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _stale_reason(holder: dict) -> str | None:
    """Why a lock object is stale (its owner is gone), or None while it may be alive."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        import psutil

        if not psutil.pid_exists(holder["pid"]):
            return f"ended on this host (pid {holder['pid']})"
    age = time.time() - float(holder.get("heartbeat", time.time()))
    if age > STALE_S:
        return f"has not been seen for {age:.0f} s"
    return None


# Write failures that are the output file system's, not magpipe's or the input's.
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def locks_output(fn: Callable) -> Callable:
    """Run a stage function under the lock of its ``out`` argument, with the storage options of its ``cfg``
    (the lock itself may be an object on a bucket) added for the call only."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        """``fn`` under the lock of the ``out`` it is called with."""
        bound = sig.bind(*args, **kwargs).arguments
        out, cfg = bound["out"], bound.get("cfg")
        raise_if_interrupted()
        with storage_scope(cfg.runtime.storage_options if cfg is not None else None), output_lock(out):
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                if exc.errno not in _FULL_OR_READ_ONLY:
                    raise
                raise StorageError(f"{out}: cannot write the output ({exc.strerror}); nothing incomplete is marked "
                                   "done: make room and re-run the same command to go on") from None

    return wrapper
