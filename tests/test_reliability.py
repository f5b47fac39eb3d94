"""Crash and concurrency guarantees: one writer per output, lost workers, tiling geometry, data root."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from hypothesis import given, settings, strategies as st
from magpipe.testing import (assert_one_line_error, external_cluster, run_cli as magpipe, run_cli_process, start_cli,
                             stop_when)

from magpipe.bundle import load_bundle
from magpipe.classify import classify_array
from magpipe.io.schema import Layout
from magpipe.stages.classify import classify_into
from magpipe.cluster import dask_client
from magpipe.io.stores import is_complete
from magpipe.locking import LOCK_NAME
from magpipe.patches import read_window
from magpipe.tiling import tiles


def test_flow_runs_on_one_output_wait_for_each_other_where_a_command_is_refused(tmp_path, monkeypatch):
    """Inside waiting_for_locks (what every flow runs in), a second run on a held output waits and then gets it;
    outside, it is refused at once naming the holder; a wait that runs out is refused the same way."""
    import threading

    from magpipe import locking

    monkeypatch.setattr(locking, "LOCK_POLL_S", 0.05)
    out, order = tmp_path / "out", []
    held = threading.Event()

    def first() -> None:
        with locking.output_lock(out):
            order.append("first in")
            held.set()
            time.sleep(0.5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    with pytest.raises(locking.OutputLockedError, match="in use by another run"):
        with locking.output_lock(out):
            pass
    with pytest.raises(locking.OutputLockedError), locking.waiting_for_locks(0.1), locking.output_lock(out):
        pass
    with locking.waiting_for_locks(30), locking.output_lock(out):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]


def test_second_writer_is_refused_and_a_killed_holder_frees_the_output(survey_files, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom magpipe.locking import output_lock\n"
        f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = magpipe("ingest", survey_files["survey"], "--out", out)
        assert_one_line_error(r, str(out), "in use by another magpipe run", f"pid {holder.pid}")
        assert not is_complete(out / "survey.zarr")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = magpipe("ingest", survey_files["survey"], "--out", out)  # the kernel dropped the dead run's lock
    assert r.returncode == 0, r.stderr
    assert is_complete(out / "survey.zarr") and (out / LOCK_NAME).exists()


@pytest.mark.parametrize("cluster", ["LocalCluster", "dask scheduler + dask worker"])
def test_a_worker_killed_mid_run_is_replaced_and_the_result_is_identical(trained_run, tmp_path, cluster):
    survey, model = trained_run["out"] / "survey.zarr", trained_run["out"] / "model"
    killed: list[int] = []
    external = external_cluster(tmp_path) if cluster != "LocalCluster" else contextlib.nullcontext(None)
    with external as address, dask_client(address, workers=2) as client:
        client.wait_for_workers(2, timeout=60)
        pids = client.run(os.getpid)

        def kill_a_busy_worker(done: int, total: int) -> None:
            if killed or done < 4:
                return
            for _ in range(200):  # the first worker seen running a tile
                busy = [w for w, keys in client.processing().items() if keys]
                if busy:
                    killed.append(pids[busy[0]])
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    return
                time.sleep(0.01)

        out = classify_into(Layout(trained_run["out"]), model, tmp_path / "classified.zarr", tile_px=16,
                              client=client, progress=kill_a_busy_worker)
        assert killed, "no worker was busy to kill"
        deadline = time.time() + 60
        while len(client.scheduler_info()["workers"]) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert killed[0] not in client.run(os.getpid).values()  # the nanny started a new process
    field = zarr.open_array(survey / "field", mode="r")[:]
    ref = classify_array(load_bundle(model), field)[0]
    np.testing.assert_array_equal(zarr.open_array(out / "class", mode="r")[:], ref)
    assert is_complete(out)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(ny=st.integers(1, 90), nx=st.integers(1, 90), tile=st.integers(1, 40))
def test_tiles_cover_every_cell_exactly_once(ny, nx, tile):
    count = np.zeros((ny, nx), dtype=int)
    for y0, y1, x0, x1 in tiles((ny, nx), tile):
        assert 0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx
        assert y1 - y0 <= tile and x1 - x0 <= tile
        count[y0:y1, x0:x1] += 1
    assert np.all(count == 1)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data(), ny=st.integers(1, 40), nx=st.integers(1, 40), halo=st.integers(0, 12))
def test_window_halo_is_the_grid_padded_with_no_data(data, ny, nx, halo):
    rng = np.random.default_rng(ny * 100 + nx)
    grid = rng.normal(size=(ny, nx)).astype("float32")
    grid[rng.random((ny, nx)) < 0.2] = np.nan  # holes stay holes
    y0 = data.draw(st.integers(0, ny - 1))
    x0 = data.draw(st.integers(0, nx - 1))
    y1, x1 = data.draw(st.integers(y0 + 1, ny)), data.draw(st.integers(x0 + 1, nx))
    window = read_window(grid, y0, y1, x0, x1, halo)
    padded = np.pad(grid, halo, constant_values=np.nan)
    np.testing.assert_array_equal(window, padded[y0 : y1 + 2 * halo, x0 : x1 + 2 * halo])


@pytest.mark.parametrize("tile_px", [7, 50])
def test_every_valid_cell_is_classified_once_whatever_the_tile_size(trained_run, tmp_path, tile_px):
    survey, model = trained_run["out"] / "survey.zarr", trained_run["out"] / "model"
    out = classify_into(Layout(trained_run["out"]), model, tmp_path / "c.zarr", tile_px=tile_px)
    field = zarr.open_array(survey / "field", mode="r")[:]
    ref_cls, ref_conf, _ = classify_array(load_bundle(model), field)
    g = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(g["class"][:], ref_cls)
    np.testing.assert_allclose(g["confidence"][:], ref_conf, atol=1e-5, equal_nan=True)
    assert g["tile_done"][:].all()


def test_flow_paths_cannot_leave_the_data_root(tmp_path, monkeypatch):
    from flows._common import DATA_ROOT_ENV, data_path

    from magpipe.errors import InputError

    root = tmp_path / "data"
    (root / "surveys").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "link").symlink_to(tmp_path / "secret")
    assert data_path(str(tmp_path / "anything"), "out") == str(tmp_path / "anything")  # no root: unrestricted
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))
    assert data_path("surveys/a.tif", "survey") == str(root / "surveys" / "a.tif")
    assert data_path(str(root / "runs"), "out") == str(root / "runs")
    for bad in ("../secret/x.tif", str(tmp_path / "secret"), "link/x.tif", "/etc/passwd"):
        with pytest.raises(InputError, match=f"flow parameter 'survey': .* outside the data root {root}"):
            data_path(bad, "survey")


@pytest.mark.parametrize("sig,group", [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_stops_classification_cleanly_and_the_rerun_finishes_identical(trained_run, tmp_path, config_file,
                                                                                  sig, group):
    import psutil
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run["out"], out, ignore=shutil.ignore_patterns("classified.zarr*", ".magpipe.lock"))
    small_tiles = tmp_path / "tiles.yaml"
    small_tiles.write_text(config_file.read_text().replace("chunk_px: 64", "chunk_px: 32"))
    assert "chunk_px: 32" in small_tiles.read_text()
    proc = start_cli("classify", "--out", out, "--config", small_tiles, "--workers", "2")
    children, seconds, err = stop_when(proc, "classify:", sig, group=group, after_s=0.3)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err, err
    assert seconds < 20, seconds
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]  # no Dask worker outlives the run
    assert not is_complete(out / "classified.zarr")
    r = magpipe("classify", "--out", out, "--config", small_tiles, "--serial")  # the lock is free: resume
    assert r.returncode == 0, r.stderr
    field = zarr.open_array(out / "survey.zarr" / "field", mode="r")[:]
    np.testing.assert_array_equal(zarr.open_array(out / "classified.zarr" / "class", mode="r")[:],
                                  classify_array(load_bundle(out / "model"), field)[0])


def test_sigterm_during_training_leaves_a_checkpoint_the_rerun_resumes(survey_files, tmp_path, config_file):
    out = tmp_path / "run"
    assert magpipe("ingest", survey_files["survey"], "--out", out).returncode == 0
    assert magpipe("labels", survey_files["labels"], "--out", out).returncode == 0
    longer = tmp_path / "longer.yaml"
    longer.write_text(config_file.read_text().replace("epochs: 3\n", "epochs: 25\n").replace("patience: 3\n", "patience: 25\n"))
    assert "epochs: 25" in longer.read_text() and "patience: 25" in longer.read_text()
    proc = start_cli("train", "--out", out, "--config", longer)
    _, seconds, err = stop_when(proc, "autoencoder 2/", signal.SIGTERM, group=False, after_s=0.0)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err and seconds < 20, err
    assert list(out.glob("train-*.ckpt")) and not (out / "model" / "metadata.json").exists()
    r = magpipe("train", "--out", out, "--config", longer)
    assert r.returncode == 0, r.stderr
    assert "resum" in r.stderr.lower(), r.stderr


@pytest.mark.slow
def test_run_killed_at_every_stage_in_turn_then_rerun_gives_the_identical_map(reference_run, tmp_path):
    """SIGKILL (no chance to clean up) of the whole process group while training, then (the same command
    again) while classifying, then while evaluating; each kill leaves a state the next command resumes, and
    the last one finishes with the uninterrupted run's map and report. (Was three tests, one kill each.)"""
    import json

    out = tmp_path / "run"
    for marker, after_s in (("autoencoder 2/", 0.2), ("classify:", 0.2), ("classify 4/4 tiles", 1.0)):
        proc = start_cli("run", *reference_run["args"], "--out", out)
        stop_when(proc, marker, signal.SIGKILL, group=True, after_s=after_s)
        assert proc.returncode == -signal.SIGKILL, marker
        if marker.startswith("autoencoder"):
            assert list(out.glob("train-*.ckpt")) and not (out / "model" / "metadata.json").exists()
        else:
            assert (out / "model" / "metadata.json").exists() and not (out / "report.json").exists()
            assert not is_complete(out / "classified.zarr") or marker.endswith("tiles")
    r = run_cli_process("run", *reference_run["args"], "--out", out)  # a process, as the reference
    assert r.returncode == 0, r.stderr
    for name in ("class", "confidence", "anomaly"):
        np.testing.assert_array_equal(zarr.open_array(out / "classified.zarr" / name, mode="r")[:],
                                      zarr.open_array(reference_run["out"] / "classified.zarr" / name, mode="r")[:])
    a, b = (json.loads((d / "report.json").read_text()) for d in (out, reference_run["out"]))
    assert a["balanced_accuracy"] == b["balanced_accuracy"] and a["confusion"] == b["confusion"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_request_a_library_swallows_still_stops_the_next_step(monkeypatch):
    """A signal handler runs between any two bytecodes, also inside a ``__del__`` whose exceptions Python
    drops: the stop must not be lost there, the next epoch, tile or split raises it again."""
    from magpipe import process
    from magpipe.progress import progress

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(process, "_received", [])
    try:
        with process.stop_on_signals():

            class Swallows:
                def __del__(self):
                    os.kill(os.getpid(), signal.SIGTERM)
                    for _ in range(100_000):  # the handler runs in here; its exception is dropped
                        pass

            Swallows()
            assert process._received == [signal.SIGTERM]
            with pytest.raises(process.Interrupted) as stop, progress("tiles", 3, "tiles") as step:
                step()
            assert stop.value.signum == signal.SIGTERM
        # the stop belonged to that command: the next one in this process starts clean, with the old handlers
        assert process._received == []
        with progress("tiles", 3, "tiles") as step:
            step()
        assert {s: signal.getsignal(s) for s in handlers} == handlers
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def test_a_model_retrained_into_the_same_path_is_used_by_a_long_lived_cluster(trained_run, tmp_path):
    """Workers cache a bundle by its content, not its path: after a retrain into the same OUT/model the
    same `dask worker` processes classify with the new model."""
    import shutil

    from magpipe.pipeline import run_train

    run = tmp_path / "run"
    shutil.copytree(trained_run["out"], run, ignore=shutil.ignore_patterns(".magpipe.lock"))
    model, field = run / "model", zarr.open_array(run / "survey.zarr" / "field", mode="r")[:]
    (tmp_path / "cluster").mkdir()
    with external_cluster(tmp_path / "cluster") as address, dask_client(address, workers=2) as client:
        client.wait_for_workers(2, timeout=60)
        pids = client.run(os.getpid)
        maps = []
        for features in ("auto", "raw"):  # the run's own model, then one retrained into the same path
            cfg = trained_run["cfg"].with_inputs(survey=trained_run["survey"], labels=trained_run["labels"])
            run_train(run, cfg.model_copy(update={"svm": cfg.svm.model_copy(update={"features": features})}))
            expected = classify_array(load_bundle(model), field)[0]
            out = classify_into(Layout(run), model, tmp_path / f"{features}.zarr", tile_px=32, client=client)
            maps.append(zarr.open_array(out / "class", mode="r")[:])
            np.testing.assert_array_equal(maps[-1], expected)
        assert client.run(os.getpid) == pids  # the same worker processes served both
    assert (maps[0] != maps[1]).any()  # the two models differ, so a stale one would have shown


def test_a_dask_comm_closed_under_a_stopped_worker_is_one_line(caplog):
    """A worker killed after Ctrl-C while it sends makes Dask log the closed comm with its traceback; the CLI's
    process settings make that one warning line (the signal test's 'no Traceback' depends on it)."""
    import logging

    from magpipe.process import configure_process

    configure_process()
    log = logging.getLogger("distributed.batched")
    try:
        raise ConnectionError("stream closed")
    except ConnectionError:
        with caplog.at_level(logging.INFO, logger="distributed.batched"):
            log.info("Batched Comm Closed <TCP (closed) local=tcp://127.0.0.1:1>", exc_info=True)
    (record,) = [r for r in caplog.records if r.name == "distributed.batched"]
    assert record.exc_info is None and record.levelname == "WARNING"
    assert record.getMessage() == "Batched Comm Closed <TCP (closed) local=tcp://127.0.0.1:1> " \
                                  "(ConnectionError: stream closed)"


_BLAS_THREADS = """
import numpy, scipy.linalg
from magpipe.process import configure_process, configure_worker
{call}
from threadpoolctl import threadpool_info
print(sorted({{i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}}))
"""


@pytest.mark.parametrize("call, env, expected", [
    ("configure_process()", {}, "[1]"),
    ("configure_process()", {"OPENBLAS_NUM_THREADS": "2"}, "[2]"),  # the user's own setting wins
    ("configure_worker(threads=None)", {}, None),  # an external cluster's worker: as it started
])
def test_an_entry_point_leaves_one_pool_of_threads_running_work_in_parallel(call, env, expected):
    """numpy's BLAS runs single-threaded beside torch's pool (magpipe.process.one_thread_pool): two pools of
    spinning threads made a tile classified in the CLI's process 3x as slow on 2 cores."""
    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                             "MKL_NUM_THREADS", "GOTO_NUM_THREADS")}

    def blas_threads(call: str) -> str:
        out = subprocess.run([sys.executable, "-c", _BLAS_THREADS.format(call=call)], env={**base, **env},
                             capture_output=True, text=True, check=True, timeout=120).stdout
        return out.strip().splitlines()[-1]

    assert blas_threads(call) == (expected or blas_threads("pass"))
