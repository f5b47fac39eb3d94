"""Choose the Dask cluster for an entry point (CLI or flow); library code never makes one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from magpipe.errors import DeviceError
from magpipe.process import SharedChange

# glibc returns each large array of a tile to the OS when it is freed and faults it back in for
# the next tile, and Dask's nanny makes that worse (MALLOC_TRIM_THRESHOLD_=65536). These let a worker
# reuse up to 256 MiB it already holds at its peak, which halved a 512 px tile's time when measured
# (CHANGELOG.md). Set them on external workers too (deploy/dask.yaml).
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20)}


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, *, workers: int = 2, gpu: bool = False) -> Iterator[object]:
    """A client of ``scheduler`` (or ``$DASK_SCHEDULER_ADDRESS``), else of a new LocalCluster.

    The LocalCluster uses processes with one thread each: torch and libsvm are
    then never oversubscribed, and a crashing tile cannot take the driver down.
    Every worker runs :class:`magpipe.process.WorkerSetup` first, and a LocalCluster's workers keep their
    shutdown off the user's terminal (:class:`magpipe.process.QuietShutdown`). The client is never made
    dask's default: work is submitted to it explicitly, so clients opened by concurrent flows
    (threads) cannot leak a global scheduler setting.

    Parameters
    ----------
    scheduler : address of a running scheduler (``tcp://host:port``); its workers are used as they are.
    workers : worker processes of the LocalCluster when there is no scheduler.
    gpu : the LocalCluster has one worker per visible GPU instead, each declaring the resource ``GPU=1``
        and pinned to its own device (:class:`magpipe.process.GPUDevice`), for ``classify.device: cuda``.

    Yields
    ------
    A ``distributed.Client``, closed (and its LocalCluster shut down) on leaving the block.
    """
    import logging

    import dask
    from distributed import Client, LocalCluster

    from magpipe.process import GPUDevice, QuietShutdown, WorkerSetup

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        with Client(address, set_as_default=False) as client:
            client.register_plugin(WorkerSetup(threads=None))  # its operator chose its threads
            yield client
        return
    gpus = _visible_gpus() if gpu else 0
    if gpu and not gpus:
        raise DeviceError("classify.device is cuda, but this machine has no CUDA device torch can use; "
                          "classify on 'cpu', or point runtime.scheduler at a cluster with GPU workers")
    env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC_ENV}
    # the nanny lets the parent's environment override pre-spawn-environ, and every nanny writes its own
    # values (OMP_NUM_THREADS=1 among them) into the parent's environment: an earlier cluster in this process
    # would win, and torch, first loaded after it, would run the driver's training on one thread. The
    # driver's environment is restored when the cluster closes.
    with _quiet_after() as closing, _environ({k: str(v) for k, v in env.items()}), \
            dask.config.set({"distributed.nanny.pre-spawn-environ": env}), \
            LocalCluster(n_workers=gpus or workers, threads_per_worker=1, processes=True,
                         # no dashboard (nobody outlives the run to look at it), and its HTTP server (health
                         # checks) on a free port: the default 8787 warned wherever another cluster held it
                         dashboard_address=":0", scheduler_kwargs={"dashboard": False},
                         memory_limit="auto", silence_logs=logging.WARNING,
                         resources={"GPU": 1} if gpus else None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.register_plugin(WorkerSetup())
        client.register_plugin(QuietShutdown())
        if gpus:
            client.register_plugin(GPUDevice())
        try:
            yield client
        finally:
            closing()


# the scheduler's loggers (it runs in this process) that report a worker's connection closing
SHUTDOWN_LOGGERS = ("distributed.batched", "distributed.comm", "distributed.core")


def _hold_at_error() -> dict[str, int]:
    import logging

    saved = {name: logging.getLogger(name).level for name in SHUTDOWN_LOGGERS}
    for name in SHUTDOWN_LOGGERS:
        log = logging.getLogger(name)
        log.setLevel(max(log.getEffectiveLevel(), logging.ERROR))
    return saved


def _put_back(saved: dict[str, int]) -> None:
    import logging

    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


# clusters of concurrent flows (threads) close at their own times: the first to close holds the loggers, the
# last to finish closing puts them back
_closing = SharedChange(_hold_at_error, _put_back)


@contextlib.contextmanager
def _quiet_after() -> Iterator:
    """Yields ``closing()``: called as a LocalCluster starts to close, it holds :data:`SHUTDOWN_LOGGERS` at
    ERROR until the block ends. A worker's connection closing while the cluster shuts down is the shutdown
    itself, yet the scheduler warned of it ("Batched Comm Closed") on the user's terminal now and then;
    errors still show."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(_closing())


def worker_storage_options(client) -> dict | None:
    """The storage options in effect here, for tasks sent to ``client``'s workers when they are this run's own
    (a LocalCluster started in this process); None for an external cluster's, which use their own environment
    (a warning says so when options are in effect: they never leave this process)."""
    import logging

    from magpipe.io.location import storage_options

    storage = storage_options()
    if getattr(client, "cluster", None) is not None:
        return storage
    if storage:
        logging.getLogger("magpipe").warning(
            "runtime.storage_options stay in this process: the external cluster's workers use the storage "
            "options and credentials of their own environment")
    return None


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _restore_environ(saved: dict[str, str]) -> None:
    for k in set(os.environ) - set(saved):
        del os.environ[k]
    os.environ.update(saved)


# Set environment variables while a block runs, then restore the whole environment as it was before the first
# of the blocks open in this process (variables set meanwhile, such as a nanny's, included). Safe for clusters
# started and closed by concurrent flows (threads): the environment comes back when the last of them closes.
_environ = SharedChange(lambda: dict(os.environ), _restore_environ, each=os.environ.update)
