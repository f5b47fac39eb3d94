"""Process-wide settings, made once by an entry point (the CLI, a flow, a Dask worker's startup).

Library modules never change global state when imported or called; whatever must hold for
a whole process is set here, and each entry point calls :func:`configure_process` (driver)
or registers :class:`WorkerSetup` (Dask workers) before the work starts.
"""

from __future__ import annotations

import os
import warnings

# GDAL's block cache defaults to 5 % of RAM and fills up during one sequential pass over a large
# GeoTIFF, where it never serves a second read: ingest of a 16k x 16k survey peaked at 1.56 GiB
# with it (benchmarks/run.py). It must be set before GDAL first allocates its cache.
GDAL_CACHE_MB = "128"


def configure_process() -> None:
    """Settings of a driver process: GDAL's cache (a user's own ``GDAL_CACHEMAX`` wins) and silence
    for third-party deprecation notices that are not the user's to fix."""
    os.environ.setdefault("GDAL_CACHEMAX", GDAL_CACHE_MB)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(xrft|harmonica)\b")


def configure_worker() -> None:
    """Settings of a Dask worker process: the driver's, and one torch thread per worker thread, so
    torch never oversubscribes the cores that Dask already shares out."""
    import torch

    configure_process()
    torch.set_num_threads(1)


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # distributed is a dependency; this only keeps the module importable without it
    WorkerPlugin = object


class WorkerSetup(WorkerPlugin):
    """Runs :func:`configure_worker` on every worker of a cluster, present and future."""

    name = "magpipe-worker-setup"

    def setup(self, worker) -> None:
        configure_worker()
