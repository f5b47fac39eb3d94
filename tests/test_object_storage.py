"""Runs whose inputs and outputs live on object storage, against a real S3-protocol server on loopback
(moto in server mode, credentials checked): the same results as on a local disk, the same guarantees
(complete-or-absent, resumable, one writer), and one-line errors for what a bucket adds."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
import xarray as xr
import yaml

from magpipe.io.stores import is_complete
from magpipe.locking import LOCK_NAME, OutputLockedError, output_lock
from magpipe.testing import (assert_one_line_error, external_cluster, run_cli as magpipe, run_cli_process, start_cli,
                             stop_when)

MAPS = ("class", "confidence", "anomaly")


def _upload(local: Path, url: str) -> str:
    fsspec.filesystem("s3").put(str(local), url.removeprefix("s3://"), recursive=local.is_dir())
    return url


def _maps(store) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(str(store), consolidated=False)
    return {n: ds[n].values for n in MAPS}


def _assert_same_maps(a, b) -> None:
    ma, mb = _maps(a), _maps(b)
    for n in MAPS:
        np.testing.assert_array_equal(ma[n], mb[n], err_msg=n)


# --- the lock: a conditionally created object ---------------------------------------------------------

def _lock_body(fs, url: str) -> dict:
    return json.loads(fs.cat_file(f"{url.removeprefix('s3://')}/run/{LOCK_NAME}"))


def test_one_writer_per_output_on_a_bucket(survey_files, bucket):
    fs = fsspec.filesystem("s3")
    out = f"{bucket}/run"
    lock = f"{bucket.removeprefix('s3://')}/run/{LOCK_NAME}"
    with output_lock(out):
        body = _lock_body(fs, bucket)
        assert body["host"] == socket.gethostname() and isinstance(body["pid"], int)
        r = run_cli_process("ingest", survey_files["survey"], "--out", out)  # a second writer, another process
        assert_one_line_error(r, out, "in use by another magpipe run", f"pid {body['pid']}")
    assert not fs.exists(lock)  # released: deleted
    # a lock left by a run that died on this host (its pid is gone) is taken over at once
    fs.pipe_file(lock, json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7, "token": "x",
                                   "heartbeat": time.time()}).encode())
    with output_lock(out):
        assert _lock_body(fs, bucket)["pid"] != 2**22 + 7
    # a live run elsewhere holds it; the same run, silent for longer than the stale limit, does not
    fs.pipe_file(lock, json.dumps({"host": "elsewhere", "pid": 1, "token": "y", "heartbeat": time.time()}).encode())
    assert "pid 1 on elsewhere" in _try_lock(out)
    fs.pipe_file(lock, json.dumps({"host": "elsewhere", "pid": 1, "token": "y",
                                   "heartbeat": time.time() - 3600}).encode())
    with output_lock(out):
        assert _lock_body(fs, bucket)["host"] == socket.gethostname()


def _try_lock(out: str) -> str:
    try:
        with output_lock(out):
            return "taken"
    except OutputLockedError as exc:
        return str(exc)


# --- whole runs --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_with_inputs_and_outputs_on_a_bucket_equals_the_local_run(survey_files, reference_run, bucket, s3,
                                                                      tmp_path):
    survey = _upload(survey_files["survey"], f"{bucket}/landing/survey.tif")
    labels = _upload(survey_files["labels"], f"{bucket}/landing/labels.tif")
    out = f"{bucket}/runs/a"
    r = run_cli_process("run", survey, "--labels", labels, "--config", reference_run["config"], "--out", out,
                        cwd=tmp_path)  # a process, as the reference
    assert r.returncode == 0, r.stderr
    _assert_same_maps(f"{out}/classified.zarr", reference_run["out"] / "classified.zarr")
    fs = fsspec.filesystem("s3")
    a = json.loads(fs.cat_file(f"{out}/report.json"))
    b = json.loads((reference_run["out"] / "report.json").read_text())
    assert a["balanced_accuracy"] == b["balanced_accuracy"] and a["confusion"] == b["confusion"]
    keys = {k.removeprefix(out.removeprefix("s3://") + "/") for k in fs.find(out)}
    for name in ("survey.zarr/zarr.json", "patches.zarr/zarr.json", "model/metadata.json", "model/autoencoder.pt",
                 "model/svm.skops", "classified.zarr/zarr.json", "report.json", "report.md", "class_map.png",
                 "config.json"):
        assert name in keys, name
    assert not [k for k in keys if ".partial" in k or k.endswith(".ckpt") or k == LOCK_NAME], keys
    assert is_complete(f"{out}/classified.zarr")
    saved = fs.cat_file(f"{out}/config.json").decode()
    assert json.loads(saved)["inputs"]["survey"] == survey  # URLs recorded as given
    secret = s3["AWS_SECRET_ACCESS_KEY"]
    for key in keys:
        if key.endswith((".json", ".md")):
            assert secret not in fs.cat_file(f"{out}/{key}").decode(), key
    assert secret not in r.stdout + r.stderr
    assert not list(tmp_path.iterdir())  # nothing was written to the local directory


@pytest.mark.slow
def test_a_run_killed_while_classifying_on_a_bucket_resumes_to_the_same_maps(survey_files, reference_run, bucket,
                                                                               tmp_path):
    out = f"{bucket}/runs/killed"
    args = [survey_files["survey"], "--labels", survey_files["labels"], "--config", reference_run["config"], "--out", out]
    proc = start_cli("run", *args)
    stop_when(proc, "classify 2/4 tiles", signal.SIGKILL, group=True, after_s=0.0)
    assert proc.returncode == -signal.SIGKILL
    assert not is_complete(f"{out}/classified.zarr")
    assert fsspec.filesystem("s3").exists(f"{out}/{LOCK_NAME}")  # left behind by the killed run
    r = run_cli_process("run", *args)  # a process, as the reference
    assert r.returncode == 0, r.stderr
    assert "taking over the lock" in r.stderr
    _assert_same_maps(f"{out}/classified.zarr", reference_run["out"] / "classified.zarr")


@pytest.mark.slow
def test_an_external_cluster_classifies_from_and_into_the_bucket(trained_run, bucket, s3, tmp_path):
    """`dask scheduler` + `dask worker` as separate programs in their own directory, with only the bucket's
    credentials in common with the driver: every byte they read or write is on the bucket."""
    import shutil

    from magpipe.bundle import load_bundle
    from magpipe.classify import classify_array

    run = tmp_path / "run"
    shutil.copytree(trained_run["out"], run, ignore=shutil.ignore_patterns("classified.zarr*", LOCK_NAME))
    out = _upload(run, f"{bucket}/runs/ext")
    shutil.rmtree(run)  # nothing local for the workers to find
    workers_dir = tmp_path / "workers"
    workers_dir.mkdir()
    with external_cluster(workers_dir, env=s3, cwd=workers_dir) as address:
        r = magpipe("classify", "--out", out, "--scheduler", address)
    assert r.returncode == 0, r.stderr
    field = xr.open_zarr(f"{out}/survey.zarr", consolidated=False)["field"].values
    expected = classify_array(load_bundle(trained_run["out"] / "model"), field)[0]
    np.testing.assert_array_equal(_maps(f"{out}/classified.zarr")["class"], expected)


# --- what a bucket adds to bad input ------------------------------------------------------------------

def test_bucket_errors_are_one_line(survey_files, bucket, s3, tmp_path):
    out = f"{bucket}/runs/bad"
    r = magpipe("ingest", f"{bucket}/landing/missing.tif", "--out", out)
    assert_one_line_error(r, f"{bucket}/landing/missing.tif", "file not found")
    r = magpipe("ingest", survey_files["survey"], "--out", "s3://no-such-bucket-magpipe/run")
    assert_one_line_error(r, "s3://no-such-bucket-magpipe/run", "bucket 'no-such-bucket-magpipe' does not exist")
    # credentials and endpoints from the environment: each a new process, as a user's shell starts one
    r = run_cli_process("ingest", survey_files["survey"], "--out", out, env={"AWS_SECRET_ACCESS_KEY": "wrong-secret-0451"})
    assert_one_line_error(r, out, "access denied", "credentials")
    assert "wrong-secret-0451" not in r.stderr + r.stdout
    # one attempt: botocore's retries of a refused connection take 10 s and do not change the answer
    r = run_cli_process("ingest", survey_files["survey"], "--out", out,
                        env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"})
    assert_one_line_error(r, out, "cannot reach the object store")
    assert not fsspec.filesystem("s3").exists(f"{out}/survey.zarr")


def test_the_landing_watch_finds_new_surveys_and_their_labels_in_a_bucket(survey_files, bucket):
    from flows.watch import labels_for, pending_surveys

    for name in ("a.tif", "b.tif"):
        _upload(survey_files["survey"], f"{bucket}/landing/{name}")
    _upload(survey_files["labels"], f"{bucket}/landing/a.labels.tif")
    found = pending_surveys(f"{bucket}/landing", f"{bucket}/runs", "*.tif")
    assert [str(p) for p in found] == [f"{bucket}/landing/a.tif", f"{bucket}/landing/b.tif"]
    assert str(labels_for(found[0])) == f"{bucket}/landing/a.labels.tif" and labels_for(found[1]) is None


def test_storage_options_from_the_config_reach_the_store_and_are_never_saved(survey_files, bucket, s3, tmp_path):
    """The config's ``runtime.storage_options`` are used (they win over a wrong endpoint in the environment)
    and, like all of runtime, written nowhere."""
    cfg = tmp_path / "store.yaml"
    cfg.write_text(yaml.safe_dump({"runtime": {"storage_options": {"s3": {"endpoint_url": s3["AWS_ENDPOINT_URL"]}}}}))
    out = f"{bucket}/runs/opts"
    r = run_cli_process("ingest", survey_files["survey"], "--out", out, "--config", cfg,
                        env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert r.returncode == 0, r.stderr
    assert is_complete(f"{out}/survey.zarr")
    saved = fsspec.filesystem("s3").cat_file(f"{out}/config.json").decode()
    assert "storage_options" not in saved and s3["AWS_ENDPOINT_URL"] not in saved


@pytest.mark.slow
def test_two_runs_in_one_process_keep_their_own_storage_options(survey_files, bucket, s3, no_s3_environment,
                                                                monkeypatch):
    """A long-lived worker process runs many flows: the storage options of one run (its credentials) are
    never seen by another, whether they run one after another or side by side in two threads, and nothing
    is left in fsspec's process-wide config."""
    import threading

    import fsspec.config

    from magpipe.config import RunConfig
    from magpipe.errors import StorageError
    from magpipe.pipeline import run_ingest

    good = {"s3": {"endpoint_url": s3["AWS_ENDPOINT_URL"], "key": s3["AWS_ACCESS_KEY_ID"],
                   "secret": s3["AWS_SECRET_ACCESS_KEY"]}}
    dead = {"s3": {"endpoint_url": "http://127.0.0.1:9", "key": "nobody", "secret": "nothing",
                   "config_kwargs": {"retries": {"max_attempts": 1}}}}  # fail at once, not after backoffs
    from magpipe.io import stores

    monkeypatch.setattr(stores, "READ_RETRY_S", (0.01,))
    conf_before = json.dumps(fsspec.config.conf, sort_keys=True)

    def run(out: str, options: dict) -> str:
        cfg = RunConfig(runtime={"storage_options": options}).with_inputs(survey=survey_files["survey"])
        try:
            run_ingest(out, cfg)
            return "done"
        except StorageError as exc:
            return str(exc)

    refused = f"{bucket}/two: "  # a one-line StorageError naming the output (which one depends on the fault)
    assert run(f"{bucket}/one", good) == "done"
    assert run(f"{bucket}/two", {}).startswith(refused)  # the first run's credentials are gone with it
    assert run(f"{bucket}/two", dead).startswith(refused)
    said: dict[str, str] = {}
    threads = [threading.Thread(target=lambda k=k, o=o: said.__setitem__(k, run(f"{bucket}/{k}", o)))
               for k, o in (("three", good), ("four", dead))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert said["three"] == "done" and said["four"].startswith(f"{bucket}/four: "), said
    assert json.dumps(fsspec.config.conf, sort_keys=True) == conf_before
    fs = fsspec.filesystem("s3", **good["s3"])
    assert fs.exists(f"{bucket.removeprefix('s3://')}/three/survey.zarr/zarr.json")
    assert not fs.exists(f"{bucket.removeprefix('s3://')}/four/survey.zarr")


# --- an owned lock: lost, it stops the run -------------------------------------------------------------

@pytest.fixture
def quick_beats(monkeypatch):
    """Heartbeats every 0.05 s and a lock stale after 1.5 s, so a test sees in seconds what takes minutes."""
    from magpipe import locking

    monkeypatch.setattr(locking, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(locking, "STALE_S", 1.5)
    return locking


def test_a_run_that_cannot_refresh_its_lock_stops_before_another_could_take_it(s3, bucket, quick_beats):
    """The store refuses the lock's heartbeat writes (through a fault-injecting proxy): the run stops at its
    next step, in one line, before STALE_S, and leaves the lock object as it was (no one's to delete)."""
    from magpipe.io.location import storage_scope
    from magpipe.locking import LockLostError
    from magpipe.process import raise_if_interrupted
    from magpipe.testing import FaultProxy

    proxy = FaultProxy(s3["AWS_ENDPOINT_URL"])
    try:
        with storage_scope({"s3": {"endpoint_url": proxy.endpoint}}):
            with pytest.raises(LockLostError) as err, output_lock(f"{bucket}/run"):
                proxy.fault("status", method="PUT", path=LOCK_NAME, status=403, code="AccessDenied")
                start = time.monotonic()
                while time.monotonic() - start < 10:  # a run's steps
                    raise_if_interrupted()
                    time.sleep(0.02)
            took = time.monotonic() - start
    finally:
        proxy.close()
    msg = str(err.value)
    assert took < quick_beats.STALE_S, took
    assert "could not be refreshed" in msg, msg
    assert "\n" not in msg and msg.startswith(f"{bucket}/run: the writer lock")
    assert any(kind == "status" for _, _, kind in proxy.hits)


def test_a_lock_taken_over_by_force_stops_the_first_writer_and_the_second_finishes_identical(trained_run, bucket,
                                                                                          tmp_path, quick_beats):
    """A run classifying into a bucket has its lock taken over by another run: it stops at its next tile in one
    line with its tiles kept, marks nothing complete; the other run finishes; the map equals an uninterrupted
    run's. A takeover the heartbeat has not seen yet is caught before the completion marker."""
    import shutil

    from magpipe.locking import LockLostError
    from magpipe.pipeline import run_classify

    fs = fsspec.filesystem("s3")
    local = tmp_path / "local"
    for name in ("survey.zarr", "model", "config.json"):
        src = trained_run["out"] / name
        shutil.copytree(src, local / name) if src.is_dir() else shutil.copy(src, local / name)
    cfg = trained_run["cfg"]
    run_classify(local, cfg)  # the uninterrupted reference, in this process as the runs below

    def upload(out: str) -> str:
        for name in ("survey.zarr", "model", "config.json"):
            fs.put(str(local / name), f"{out.removeprefix('s3://')}/{name}", recursive=(local / name).is_dir())
        return out

    def take_over(out: str) -> None:  # what a run elsewhere that found this lock stale would write
        fs.pipe_file(f"{out.removeprefix('s3://')}/{LOCK_NAME}", json.dumps(
            {"host": "elsewhere", "pid": 7, "token": "theirs", "heartbeat": time.time()}).encode())

    out = upload(f"{bucket}/runs/taken")

    def at_tile(done: int, total: int) -> None:
        if done == 1:
            take_over(out)
            time.sleep(10 * quick_beats.HEARTBEAT_S)  # the heartbeat reads the lock meanwhile

    with pytest.raises(LockLostError) as err:
        run_classify(out, cfg, progress=at_tile)
    msg = str(err.value)
    assert "taken over by another run (pid 7 on elsewhere)" in msg and "\n" not in msg, msg
    assert not is_complete(f"{out}/classified.zarr")
    assert json.loads(fs.cat_file(f"{out.removeprefix('s3://')}/{LOCK_NAME}"))["token"] == "theirs"  # left to them
    done = zarr_tiles_done(f"{out}/classified.zarr")
    assert 1 <= done < 4, done  # finished tiles are kept for the next run
    fs.rm(f"{out.removeprefix('s3://')}/{LOCK_NAME}")  # the other run ends
    run_classify(out, cfg)
    _assert_same_maps(f"{out}/classified.zarr", local / "classified.zarr")

    # a takeover at the last tile, before the heartbeat's next read: the completion check catches it
    quick_beats.HEARTBEAT_S = 60.0
    late = upload(f"{bucket}/runs/late")
    with pytest.raises(LockLostError):
        run_classify(late, cfg, progress=lambda done, total: take_over(late) if done == total else None)
    assert not is_complete(f"{late}/classified.zarr")


def zarr_tiles_done(store: str) -> int:
    from magpipe.io.stores import partial_path, tiles_done

    return int(tiles_done(partial_path(store)).sum())


# --- faults of the network and the store ----------------------------------------------------------------

def _classify_run_on(fs, trained_run, out: str) -> str:
    for name in ("survey.zarr", "model", "config.json"):
        src = trained_run["out"] / name
        fs.put(str(src), f"{out.removeprefix('s3://')}/{name}", recursive=src.is_dir())
    return out


@pytest.mark.slow
def test_dropped_connections_503s_and_slow_replies_leave_the_map_identical_and_no_traceback(trained_run, bucket, s3,
                                                                                          tmp_path):
    """Classification into a bucket through a proxy that drops connections, answers 503 SlowDown and delays
    replies: the run completes with the map of a clean run, and the terminal shows no traceback (at most a
    warning line per fault). Faults that do not end (every write refused) fail the run in one line with
    nothing marked complete."""
    import shutil

    from magpipe.testing import FaultProxy

    fs = fsspec.filesystem("s3")
    local = tmp_path / "local"
    for name in ("survey.zarr", "model", "config.json"):
        src = trained_run["out"] / name
        shutil.copytree(src, local / name) if src.is_dir() else shutil.copy(src, local / name)
    r = run_cli_process("classify", "--out", local)
    assert r.returncode == 0, r.stderr
    proxy = FaultProxy(s3["AWS_ENDPOINT_URL"])
    try:
        out = _classify_run_on(fs, trained_run, f"{bucket}/runs/faults")
        proxy.fault("drop", method="PUT", path="classified.zarr", times=3)
        proxy.fault("status", method="GET", path="survey.zarr", times=3, status=503, code="SlowDown")
        proxy.fault("slow", method="PUT", path="tile_done", times=2, seconds=2.0)
        proxy.fault("outage", method="PUT", path="class/c", seconds=4.0)  # the store gone for 4 s mid-run
        r = run_cli_process("classify", "--out", out, env={"AWS_ENDPOINT_URL": proxy.endpoint})
        assert r.returncode == 0, r.stderr
        faults = len(proxy.hits)
        assert faults >= 6, proxy.hits
        _assert_same_maps(f"{out}/classified.zarr", local / "classified.zarr")
        assert "Traceback" not in r.stderr and "never retrieved\n" not in r.stderr, r.stderr[-3000:]
        said = [line for line in r.stderr.splitlines() if line.strip() and " magpipe: classify " not in line
                and " magpipe.tiling: " not in line]  # what is not progress: a line per fault at most
        assert len(said) <= faults, r.stderr

        proxy.clear()
        broken = _classify_run_on(fs, trained_run, f"{bucket}/runs/refused")
        proxy.fault("status", method="PUT", path="classified.zarr", status=403, code="AccessDenied")
        r = run_cli_process("classify", "--out", broken, env={"AWS_ENDPOINT_URL": proxy.endpoint})
    finally:
        proxy.close()
    assert_one_line_error(r, f"{broken}/classified.zarr", "access denied")
    assert not is_complete(f"{broken}/classified.zarr")


@pytest.mark.slow
def test_a_store_that_does_not_answer_is_never_taken_for_an_absent_one(trained_run, bucket, s3, monkeypatch):
    """Reading a store's attributes through dropped connections: a few are retried to the right answer; a store
    that keeps not answering is StoreUnavailableError naming it (retried with backoff first, a warning each),
    never None, which would recompute a finished stage or refuse an output as not magpipe's."""
    from magpipe.errors import StoreUnavailableError
    from magpipe.io import stores
    from magpipe.io.location import storage_scope
    from magpipe.testing import FaultProxy

    monkeypatch.setattr(stores, "READ_RETRY_S", (0.05, 0.05))
    out = _classify_run_on(fsspec.filesystem("s3"), trained_run, f"{bucket}/runs/unanswered")
    url = f"{out}/survey.zarr"
    proxy = FaultProxy(s3["AWS_ENDPOINT_URL"])
    try:
        # botocore gives up at the first failure here (s3fs still retries a few times, quickly)
        once = {"endpoint_url": proxy.endpoint, "config_kwargs": {"retries": {"max_attempts": 1}}}
        with storage_scope({"s3": once}):
            assert stores.is_complete(url)
            proxy.fault("drop", path="survey.zarr/zarr.json", times=2)
            assert stores.is_complete(url)  # retried
            proxy.fault("drop", path="survey.zarr/zarr.json")  # for good
            with pytest.raises(StoreUnavailableError) as err:
                stores.is_complete(url)
            assert stores.store_attrs(f"{out}/absent.zarr") is None  # absent is still absent
    finally:
        proxy.close()
    msg = str(err.value)
    assert msg.startswith(f"{url}: cannot reach the object store") and "\n" not in msg, msg


def test_a_bucket_that_stops_answering_mid_write_is_named_once_and_retried(bucket, s3):
    """A store's write through connections that keep dropping: one line naming the output once, of the kind
    flows retry (StoreUnavailableError), and nothing marked complete."""
    from magpipe.errors import StoreUnavailableError, is_transient
    from magpipe.io.location import storage_scope
    from magpipe.io.stores import write_store
    from magpipe.testing import FaultProxy

    url = f"{bucket}/runs/dropped/grid.zarr"
    ds = xr.Dataset({"v": (("y", "x"), np.zeros((8, 8), "float32"))})
    proxy = FaultProxy(s3["AWS_ENDPOINT_URL"])
    try:
        proxy.fault("drop", method="PUT", path="runs/dropped/grid.zarr/v/")  # the data, after the group's metadata
        once = {"endpoint_url": proxy.endpoint, "config_kwargs": {"retries": {"max_attempts": 1}}}
        with storage_scope({"s3": once}), pytest.raises(StoreUnavailableError) as err:
            write_store(ds, url, stage_hash="h")
    finally:
        proxy.close()
    msg = str(err.value)
    assert msg.startswith(f"{url}: cannot reach the object store") and msg.count(url) == 1 and "\n" not in msg, msg
    assert is_transient(err.value) and proxy.hits
    assert not is_complete(url)

def test_only_failures_a_retry_may_cure_are_retried():
    """What flows retry (flows._common.retry_if_transient): a store or network that did not answer, a lost worker;
    not bad input, bad config, a lock held or lost, or a bug."""
    import errno

    from magpipe.errors import ConfigError, InputError, StorageError, StoreUnavailableError, is_transient
    from magpipe.locking import LockLostError

    class KilledWorker(Exception):  # distributed's, by name (magpipe never imports it to classify errors)
        pass

    for exc in (StoreUnavailableError("s3://b/x: cannot reach the object store"), TimeoutError(),
                ConnectionResetError(), OSError(errno.ETIMEDOUT, "timed out"), KilledWorker("tile-3")):
        assert is_transient(exc), exc
    for exc in (InputError("a.tif: file not found"), ConfigError("x"), OutputLockedError("in use"),
                LockLostError("taken over"), StorageError("s3://b/x: access denied"), ValueError("a bug"),
                KeyError("a bug"), OSError(errno.ENOSPC, "no space left"), PermissionError("denied")):
        assert not is_transient(exc), exc
