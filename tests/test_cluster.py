"""The LocalCluster magpipe starts, and the worker settings shipped for external clusters."""

from pathlib import Path

import yaml

from magpipe.cluster import WORKER_MALLOC_ENV, dask_client

ROOT = Path(__file__).resolve().parents[1]


def test_local_workers_get_the_allocator_settings_and_one_thread():
    import os

    before = dict(os.environ)
    with dask_client(None, workers=2) as client:
        env = client.run(lambda: {k: os.environ.get(k) for k in (*WORKER_MALLOC_ENV, "OMP_NUM_THREADS")})
        threads = client.nthreads()
    assert len(env) == 2 and all(v == {**WORKER_MALLOC_ENV, "OMP_NUM_THREADS": "1"} for v in env.values())
    assert sorted(threads.values()) == [1, 1]
    # the workers' settings stay theirs: the driver's environment is as it was (torch loaded after a cluster
    # once read OMP_NUM_THREADS=1 from it and trained the driver's model on one thread)
    assert dict(os.environ) == before


def test_container_dask_config_matches_the_local_cluster():
    cfg = yaml.safe_load((ROOT / "deploy" / "dask.yaml").read_text())
    environ = cfg["distributed"]["nanny"]["pre-spawn-environ"]
    assert {k: str(v) for k, v in environ.items()} == WORKER_MALLOC_ENV
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda"):
        assert "deploy/dask.yaml /etc/dask/" in (ROOT / "deploy" / dockerfile).read_text()


def _worker_logs(messages: list[str]) -> list[bool]:
    """On a worker: whether each message would pass the filters of distributed's worker logger."""
    import logging

    logger = logging.getLogger("distributed.worker")
    return [all(f.filter(logging.makeLogRecord({"msg": m, "levelno": logging.ERROR})) for f in logger.filters)
            for m in messages]


def test_local_workers_keep_their_shutdown_heartbeat_off_the_terminal():
    """When the driver stops, a worker may beat once more at the closed scheduler: distributed logs that with a
    traceback on the worker's stderr, the user's terminal. Only that report is dropped."""
    messages = ["Failed to communicate with scheduler during heartbeat.", "Worker is at 95% memory usage."]
    with dask_client(None, workers=1) as client:
        passed = list(client.run(_worker_logs, messages).values())
    assert passed == [[False, True]]


def test_clusters_of_concurrent_runs_leave_the_process_as_it_was():
    """Two flows (threads) of one long-lived process start and close LocalClusters at once: each gets its
    workers, and afterwards the environment and the ``distributed`` logger are as before (no cluster sets
    process-wide state that outlives it)."""
    import logging
    import os
    import threading

    before, level = dict(os.environ), logging.getLogger("distributed").level
    got: dict[int, int] = {}

    def run(i: int) -> None:
        with dask_client(None, workers=1) as client:
            got[i] = client.submit(lambda x: x + 1, i, pure=False).result()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {0: 1, 1: 2}
    assert dict(os.environ) == before
    assert logging.getLogger("distributed").level == level


def test_an_external_clusters_workers_keep_their_own_torch_threads(tmp_path):
    """magpipe sets one torch thread on the workers of a LocalCluster it starts (one per Dask thread); the
    workers of an external cluster keep what their operator set up."""
    import torch

    from magpipe.testing import external_cluster

    two = {k: "2" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}  # as its operator set
    with external_cluster(tmp_path, env=two, workers=[["--no-nanny", "--nthreads", "1"]]
                          ) as address, dask_client(address) as client:
        client.wait_for_workers(1, timeout=60)
        threads = client.run(torch.get_num_threads)
    assert list(threads.values()) == [2]
    with dask_client(None, workers=1) as client:
        assert list(client.run(torch.get_num_threads).values()) == [1]


def test_a_local_cluster_starts_no_dashboard_and_warns_of_no_port_in_use():
    """The LocalCluster of a run starts no dashboard, and its HTTP server takes a free port: with 8787 held
    (another cluster's dashboard, say) it says nothing about it."""
    import socket
    import warnings

    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        held.bind(("0.0.0.0", 8787))
        held.listen()
    except OSError:
        pass  # something holds it already: the same test
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with dask_client(None, workers=1) as client:
                status = _http_status(client.dashboard_link)
    finally:
        held.close()
    assert not [w for w in caught if "already in use" in str(w.message)], [str(w.message) for w in caught]
    assert status == 404  # the scheduler's HTTP server answers (health checks), with no dashboard behind it


def _http_status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_local_cluster_closing_keeps_its_shutdown_off_the_terminal_and_restores_the_loggers():
    """As a LocalCluster closes, the scheduler's connection loggers (in this process) drop to ERROR: a worker's
    connection closing is the shutdown itself ("Batched Comm Closed" reached users now and then). A warning
    from them still shows while the cluster runs, and their levels are put back after."""
    import logging

    from magpipe.cluster import SHUTDOWN_LOGGERS, dask_client

    batched = logging.getLogger("distributed.batched")
    before = {n: logging.getLogger(n).level for n in SHUTDOWN_LOGGERS}
    seen: list[int] = []

    class Levels(logging.Handler):
        def emit(self, record):  # pragma: no cover - only a record that gets through
            seen.append(record.levelno)

    handler = Levels()
    batched.addHandler(handler)
    try:
        with dask_client(workers=1) as client:
            assert client.submit(sum, [1, 2]).result() == 3
            assert batched.isEnabledFor(logging.WARNING)  # running: its warnings show
            batched.warning("while running")
        assert {n: logging.getLogger(n).level for n in SHUTDOWN_LOGGERS} == before
    finally:
        batched.removeHandler(handler)
    assert seen[0] == logging.WARNING and all(lv >= logging.ERROR for lv in seen[1:]), seen
