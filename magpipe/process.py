"""Process-wide settings, made once by an entry point (the CLI, a flow, a Dask worker's startup).

Library modules never change global state when imported or called; whatever must hold for
a whole process is set here, and each entry point calls :func:`configure_process` (driver)
or registers :class:`WorkerSetup` (Dask workers) before the work starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

# GDAL's block cache defaults to 5 % of RAM and fills up during one sequential pass over a large
# GeoTIFF, where it never serves a second read: ingest of a 16k x 16k survey peaked at 1.56 GiB
# with it (benchmarks/run.py). It must be set before GDAL first allocates its cache.
GDAL_CACHE_MB = "128"


# loggers whose errors come with a traceback of a background task: asyncio's, and Dask's batched comms, which
# log a worker's connection closing under them (a worker killed after Ctrl-C while it sends) with its traceback
ONE_LINE_LOGGERS = ("asyncio", "distributed.batched")


# what a user sets for the threads of numpy's BLAS: any of them, and magpipe leaves that pool alone
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOTO_NUM_THREADS")


def configure_process(*, own_threads: bool = True) -> None:
    """Settings of a driver process: GDAL's cache (a user's own ``GDAL_CACHEMAX`` wins), silence for
    third-party deprecation notices that are not the user's to fix, one line for each error of a
    background I/O task and of a Dask connection closed under it (:class:`OneLineBackgroundErrors`), and,
    where the process's thread pools are magpipe's to set (``own_threads``), one pool of threads
    (:func:`one_thread_pool`)."""
    os.environ.setdefault("GDAL_CACHEMAX", GDAL_CACHE_MB)
    os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")  # cuBLAS and cuDNN in full fp32 (see full_fp32)
    silence_third_party_notices()
    for name in ONE_LINE_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, OneLineBackgroundErrors) for f in log.filters):
            log.addFilter(OneLineBackgroundErrors())
    if own_threads:
        one_thread_pool()


def one_thread_pool() -> None:
    """numpy's BLAS single-threaded, so that torch's pool is the one that runs work in parallel.

    Both pools keep their threads spinning a while after each call. Where a process alternates between
    them (the SVM's kernel products in numpy between torch's elementwise steps, sklearn between torch's
    features), each pool's spinning threads took the cores the other's work needed: on 2 cores a tile
    classified in this process took 3x as long (41.6 s against 13.6 s for a 2048^2 survey), and each
    torch step 10x. A user's own thread setting for BLAS (``BLAS_THREAD_VARIABLES``) is left alone.
    Sets ``OPENBLAS_NUM_THREADS=1`` for the libraries loaded later (and this process's children) and
    limits those already loaded."""
    if any(v in os.environ for v in BLAS_THREAD_VARIABLES):
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


class OneLineBackgroundErrors(logging.Filter):
    """asyncio reports an exception nobody retrieved from a background task with its whole traceback, when
    the task is collected: aiohttp writing to a connection the object store dropped (which s3fs retries) gave
    a terminal 7 tracebacks for two short outages of a bucket. Each becomes one warning line; so does a Dask
    comm closed under a worker that a stop killed (``ONE_LINE_LOGGERS``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            first = (record.getMessage().splitlines() or [""])[0]
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            what = "a background I/O task failed" if first.startswith("Task exception was never retrieved") else first
            record.msg, record.args = f"{what} ({type(exc).__name__}: {detail})", ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def silence_third_party_notices() -> None:
    """Hide the deprecation notices of libraries magpipe calls (xrft through harmonica) that a user
    cannot act on."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(xrft|harmonica)\b")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: unwind as Ctrl-C does (closing clusters, releasing locks), then exit
    with 128 + the signal's number. A KeyboardInterrupt, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_received: list[int] = []  # signals whose Interrupted was raised, in order
_step_checks: list = []  # more reasons to stop at the next step (a writer lock lost: magpipe.locking)


def raise_if_interrupted() -> None:
    """Raise Interrupted again for a signal already received, or the error of any other reason to stop
    (:func:`add_step_check`). A signal handler runs between any two bytecodes of the main thread, also
    inside a ``__del__`` or a library callback whose exceptions are printed and dropped; the long loops
    (every epoch, tile and split, see :mod:`magpipe.progress`) and every stage call this, so a stop
    request lost that way still stops the run at the next step."""
    if _received:
        raise Interrupted(_received[-1])
    for check in _step_checks:
        check()


def add_step_check(check) -> None:
    """Have :func:`raise_if_interrupted` also call ``check()``, which raises to stop the calling thread's run."""
    if check not in _step_checks:
        _step_checks.append(check)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """For one command: SIGTERM (what ``kill``, systemd and container runtimes send) stops it the way Ctrl-C
    does, rather than at once, so a run leaves no orphaned Dask workers and a resumable state.

    On leaving the block the handlers from before it are back and the signals it received are forgotten:
    the next command in the same process (a long-lived worker or a notebook calling
    :func:`magpipe.cli.main`) starts clean rather than stopping at its first step. Main thread only
    (Python's rule for signal handlers); elsewhere it changes nothing.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        _received.append(signum)
        raise Interrupted(signum)

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _received.clear()
    for sig, handler in before.items():
        if handler is not signal.SIG_IGN:  # a background job keeps ignoring SIGINT, as asked
            signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        _received.clear()


class SharedChange:
    """A process-wide change that concurrent blocks (flows on threads) share: the first to enter makes it
    (``first()``, which returns what undoing it needs), the last to leave undoes it (``last(saved)``), never
    half way; ``each(*args)``, if given, runs for every block as it enters, under the same lock. Use an
    instance as a context manager factory: ``with change(*args): ...``."""

    def __init__(self, first: Callable[[], Any], last: Callable[[Any], None],
                 each: Callable[..., None] | None = None) -> None:
        self._first, self._last, self._each = first, last, each
        self._lock, self._users, self._saved = threading.Lock(), 0, None

    @contextlib.contextmanager
    def __call__(self, *args) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = self._first()
            self._users += 1
            if self._each is not None:
                self._each(*args)
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._last(self._saved)


def configure_worker(threads: int | None = 1) -> None:
    """Settings of a Dask worker process: the driver's, full fp32 on a GPU, and ``threads`` torch threads
    (one per worker thread on a LocalCluster magpipe starts, so torch never oversubscribes the cores Dask
    already shares out; None leaves the worker's own setting, as on an external cluster its operator set up)."""
    configure_process(own_threads=threads is not None)
    full_fp32()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def full_fp32() -> None:
    """No TF32 in cuDNN's convolutions or in matrix products, for the whole process: its 10-bit mantissa
    moved features by ~1e-3 and flipped 10 of 786k classes against the CPU on an H200. Set once by the
    entry point that owns the process (a Dask worker's setup; a script that classifies on a GPU in its own
    process); :func:`configure_process` also sets ``NVIDIA_TF32_OVERRIDE=0`` before CUDA starts, which the
    libraries themselves honour."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # distributed is a dependency; this only keeps the module importable without it
    WorkerPlugin = object


class WorkerSetup(WorkerPlugin):
    """Runs :func:`configure_worker` on every worker of a cluster, present and future: with one torch thread
    on a LocalCluster magpipe started, leaving the thread count of an external cluster's workers alone."""

    name = "magpipe-worker-setup"

    def __init__(self, threads: int | None = 1) -> None:
        self.threads = threads

    def setup(self, worker) -> None:
        configure_worker(self.threads)


class GPUDevice(WorkerPlugin):
    """Pins the worker of a GPU LocalCluster to its own GPU: worker i (its name) uses ``cuda:i``, so tasks
    asking for ``cuda`` (the current device) spread over the machine's GPUs, one worker each."""

    name = "magpipe-gpu-device"

    def setup(self, worker) -> None:
        import torch

        if torch.cuda.is_available() and str(worker.name).isdigit():
            torch.cuda.set_device(int(worker.name) % torch.cuda.device_count())


class _ShutdownHeartbeat:
    """Drops a worker's report that its heartbeat found the scheduler gone (``CommClosedError`` with its
    traceback). A LocalCluster's scheduler lives in the driver: when a run ends, or is stopped by a
    signal while a tile computes, a worker can beat once more after the scheduler has closed. That is
    the end of the run, not an error, and the worker's stderr is the user's terminal."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("Failed to communicate with scheduler during heartbeat")


class QuietShutdown(WorkerPlugin):
    """Keeps a LocalCluster's shutdown off the user's terminal (:class:`_ShutdownHeartbeat`); registered
    only on clusters magpipe starts, never on an external cluster's workers."""

    name = "magpipe-quiet-shutdown"

    def setup(self, worker) -> None:
        import logging

        logger = logging.getLogger("distributed.worker")
        if not any(isinstance(f, _ShutdownHeartbeat) for f in logger.filters):
            logger.addFilter(_ShutdownHeartbeat())
