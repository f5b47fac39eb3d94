"""Helpers for tests and examples: configs small enough for a whole run in seconds, the CLI as a
user runs it, and label rasters of synthetic surveys. The one home of test helpers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr

from magpipe.config import RunConfig


def tiny_config(**sections: dict) -> RunConfig:
    """A complete run on a ~100 x 100 survey in a few seconds on 2 CPU cores."""
    base: dict = {
        "patches": {"patch_px": 9, "n_patches": 1200},
        "model": {"channels": [4, 8, 8, 8], "hidden": 32, "epochs": 3, "batch_size": 64, "anomaly_px": 3},
        "svm": {"max_per_class": 150, "C": [1.0, 10.0], "gamma_scale": [1.0]},
        "evaluate": {"block_patches": 2, "splits": 2, "sparse_per_class": 10, "sparse_repeats": 3},
        "classify": {"chunk_px": 64},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return RunConfig.model_validate(base)


@dataclass
class CliResult:
    """What a user's terminal shows of one ``magpipe`` command: exit status, stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, cwd=None, env: dict | None = None) -> CliResult:
    """``magpipe ARGS`` run in this process (typer's CliRunner), as a user's terminal would show it.

    The same code path as the installed command after its process setup (:func:`magpipe.cli.main`:
    signal handlers, GDAL's cache), without a cold start of Python, torch and the rest per call.
    What a user would see on stderr is kept there: the command's own lines, the ``magpipe`` log,
    warnings (with Python's default filters plus the CLI's), and the traceback of any exception that
    escapes the command (so "no traceback" assertions can fail). ``env`` adds environment variables
    for the call; ``cwd`` runs it from another directory. The command runs in a copy of this thread's
    context, so storage options a config gives end with it, as they would with a user's process.
    :func:`run_cli_process` runs a real process.
    """
    import contextvars
    import traceback
    import warnings

    from typer.testing import CliRunner

    from magpipe import cli

    with contextlib.chdir(cwd or os.getcwd()), warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)  # hidden outside __main__ by Python's defaults
        from magpipe.process import silence_third_party_notices

        silence_third_party_notices()
        result = contextvars.copy_context().run(CliRunner().invoke, cli.app, [str(a) for a in args], env=env,
                                                prog_name="magpipe")
    stderr = result.stderr + "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                                     for w in caught)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return CliResult(result.exit_code, result.stdout, stderr)


def run_cli_process(*args, cwd=None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m magpipe ARGS`` in a fresh process, as a user runs it (``env`` adds variables): for what
    only a real process shows (exit status through the interpreter, signal handling, import-time output)."""
    return subprocess.run([sys.executable, "-m", "magpipe", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env=None if env is None else {**os.environ, **env})


def assert_one_line_error(r: CliResult | subprocess.CompletedProcess, *needles: str) -> None:
    """The command failed with exit status 2 and exactly one ``error:`` line holding every needle,
    and no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def write_labels_raster(truth: np.ndarray, like: xr.DataArray, path: Path, *, x_max: int | None = None) -> Path:
    """Labels on the survey grid as a GeoTIFF, optionally only left of column ``x_max`` (a small mapped area)."""
    lab = truth.copy()
    if x_max is not None:
        lab[:, x_max:] = 0
    da = xr.DataArray(lab.astype("int16"), dims=("y", "x"), coords={"y": like.y, "x": like.x})
    da.rio.write_crs(like.rio.crs).rio.write_nodata(0).rio.to_raster(path)
    return path


def write_layer(path: Path, values: np.ndarray, *, crs: str | None, left: float, top: float, cell: float,
                nodata: float | None = None) -> Path:
    """``values`` ((ny, nx), or (bands, ny, nx)) as a float32 GeoTIFF of north-up ``cell`` cells from (left, top)."""
    bands = values if values.ndim == 3 else values[None]
    _, ny, nx = bands.shape
    da = xr.DataArray(bands.astype("float32"), dims=("band", "y", "x"),
                      coords={"band": np.arange(1, len(bands) + 1), "y": top - (np.arange(ny) + 0.5) * cell,
                              "x": left + (np.arange(nx) + 0.5) * cell})
    if crs is not None:
        da = da.rio.write_crs(crs)
    if nodata is not None:
        da = da.rio.write_nodata(nodata)
    da.rio.to_raster(path)
    return path


def synthetic_stack(d: Path, *, carrier: str, extra: dict[str, int] | None = None) -> dict:
    """A survey stack whose classes live in one layer only: the field (a synthetic survey of other units),
    layers ``alpha`` and ``beta`` of smooth noise, the ``carrier`` among them with its unit added (4 per
    unit, against noise of sd 0.4), and ``extra`` layers of noise (name -> bands). All on the field's grid.

    Returns the paths: ``survey``, ``labels`` (the units, left 80 columns) and ``layers`` (name -> path).
    """
    from scipy.ndimage import gaussian_filter

    from magpipe.synthetic import synthetic_survey

    _, truth = synthetic_survey((96, 128), n_units=3, seed=7, hole_fraction=0.0)
    field, _ = synthetic_survey((96, 128), n_units=3, seed=8, hole_fraction=0.0)
    left, _, _, top = field.rio.bounds()
    grid = {"crs": str(field.rio.crs), "left": left, "top": top, "cell": float(field.rio.resolution()[0])}
    rng = np.random.default_rng(9)
    noise = {n: gaussian_filter(rng.normal(size=(b, *truth.shape)), (0, 2, 2)) * 3
             for n, b in {"alpha": 1, "beta": 1, **(extra or {})}.items()}
    noise[carrier] = noise[carrier] + 4.0 * truth
    layers = {n: str(write_layer(d / f"{n}.tif", v if v.shape[0] > 1 else v[0], **grid)) for n, v in noise.items()}
    field.rio.to_raster(d / "field.tif")
    return {"survey": d / "field.tif", "labels": write_labels_raster(truth, field, d / "labels.tif", x_max=80),
            "layers": layers}


def start_cli(*args, env: dict | None = None) -> subprocess.Popen:
    """``magpipe ARGS`` in its own process group, as a terminal would run it, stderr piped line by line.

    As from a terminal, the command starts with SIGINT and SIGTERM at their defaults and unblocked,
    whatever the test process's own state: a child inherits an ignored or blocked signal across exec, and
    the CLI keeps ignoring a SIGINT it was started ignoring (a background job's)."""
    import signal

    def as_from_a_terminal() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT, signal.SIGTERM])

    return subprocess.Popen([sys.executable, "-m", "magpipe", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=None if env is None else {**os.environ, **env}, preexec_fn=as_from_a_terminal)


def stop_when(proc: subprocess.Popen, marker: str, sig: int, *, group: bool, after_s: float = 1.0
              ) -> tuple[list, float, str]:
    """Send ``sig`` (to the process, or its whole group as Ctrl-C does) once ``marker`` appears on stderr.
    Returns the processes it had started by then, the seconds it took to exit, and all of stderr."""
    import psutil

    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            break
    assert any(marker in x for x in seen), "".join(seen)
    time.sleep(after_s)  # well inside the stage
    children = psutil.Process(proc.pid).children(recursive=True)
    t0 = time.perf_counter()
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    return children, time.perf_counter() - t0, "".join(seen) + rest


@contextlib.contextmanager
def external_cluster(workdir: Path, *, env: dict | None = None, cwd: Path | None = None,
                     workers: list[list[str]] | None = None) -> Iterator[str]:
    """`dask scheduler` and `dask worker` (2 nanny-managed processes) started as separate programs, as on
    a real cluster, their files in ``workdir``; yields the scheduler's address. ``env`` adds variables
    (a worker's storage credentials), ``cwd`` is the workers' directory, ``workers`` the arguments of each
    `dask worker` program instead (e.g. ``["--name", "gpu0", "--resources", "GPU=1"]``)."""
    bin_dir = Path(sys.executable).parent
    info = workdir / "scheduler.json"
    common = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True,
              "env": None if env is None else {**os.environ, **env}}
    scheduler = subprocess.Popen([bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", info], **common)
    procs = [scheduler]
    try:
        deadline = time.time() + 60
        while not info.exists() and time.time() < deadline:
            time.sleep(0.2)
        for args in workers or [["--nworkers", "2", "--nthreads", "1"]]:
            procs.append(subprocess.Popen([bin_dir / "dask", "worker", "--scheduler-file", info, "--no-dashboard",
                                           *args], cwd=cwd, **common))
        yield json.loads(info.read_text())["address"]
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[dict[str, str]]:
    """A real S3-protocol server on loopback (moto in server mode, as s3fs's own tests use) that checks
    credentials; yields the environment a client needs (``AWS_ENDPOINT_URL``, a valid key pair) and
    stops the server afterwards. Needs the ``moto[server]`` test dependency."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    # the first 3 requests (the user, its policy, its key) are let through; every later one is authenticated
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    with open(log, "w") as out:
        proc = subprocess.Popen([Path(sys.executable).with_name("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"moto_server did not start: {Path(log).read_text()[-2000:]}")
            time.sleep(0.2)
        import boto3

        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="magpipe")
        iam.put_user_policy(UserName="magpipe", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="magpipe")["AccessKey"]
        yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def gpu_worker_tile(tile: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """A tile function that records where it ran: ``w`` = the GPUs its Dask worker declares (a
    resource), for every cell of the tile."""
    from distributed import get_worker

    gpus = get_worker().state.total_resources.get("GPU", 0)
    return {"w": np.full((tile[1] - tile[0], tile[3] - tile[2]), gpus, dtype="int16")}


def json_leaves(tree, path: str = "") -> dict[str, object]:
    """Every number and string of a JSON document (report.json, say) by its path (``/svm/ae/C``, ``/splits[0]/...``),
    NaN as the string "nan" so that two documents compare equal leaf for leaf."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in json_leaves(sub, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in json_leaves(sub, f"{path}[{i}]").items()}
    return {path: "nan" if isinstance(tree, float) and tree != tree else tree}


def files_holding(needle: str, *roots: Path) -> list[str]:
    """Every file under ``roots`` (files or directories) whose bytes contain ``needle``: where a secret
    must not be. Reads files whole; for test directories, databases and logs."""
    found = []
    for root in map(Path, roots):
        for f in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            if needle.encode() in f.read_bytes():
                found.append(str(f))
    return found


def prefect_database_files() -> list[Path]:
    """The SQLite files (database, WAL) of the Prefect server this process talks to, once the logs and events
    this process sent are flushed and the server has had time to store them (its persister writes every few
    seconds)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    APILogWorker.drain_all()
    EventsWorker.drain_all()
    time.sleep(6)
    db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    return sorted(db.parent.glob(db.name + "*"))


class FaultProxy:
    """An HTTP proxy on loopback in front of an S3-protocol server that injects the faults of a real network
    and store: refused requests (an S3 error status), dropped connections and slow replies, for the requests
    a rule matches. Point a client's endpoint at :attr:`endpoint`; :meth:`fault` arms a rule, :meth:`clear`
    disarms them all. Every request is forwarded whole (bodies buffered), one upstream connection per thread.
    """

    def __init__(self, upstream: str) -> None:
        import http.client
        import http.server
        import threading
        import urllib.parse

        self.upstream = urllib.parse.urlsplit(upstream)
        self.rules: list[dict] = []
        self._down_until = 0.0
        self.hits: list[tuple[str, str, str]] = []  # (method, path, fault) of every faulted request
        self._lock = threading.Lock()
        proxy = self
        local = threading.local()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # the test's output is the client's, not the proxy's
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rule = proxy._match(self.command, self.path)
                if rule is not None:
                    if rule["kind"] == "drop":
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if rule["kind"] == "slow":
                        time.sleep(rule["seconds"])
                    if rule["kind"] == "status":
                        msg = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{rule['code']}</Code><Message>"
                               "injected by FaultProxy</Message></Error>").encode()
                        self.send_response(rule["status"])
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(msg)))
                        self.end_headers()
                        self.wfile.write(msg)
                        return
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                                   timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException):
                    local.conn = None
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():  # a HEAD's Content-Length is the object's size: kept
                    if k.lower() not in ("transfer-encoding", "connection") and (
                            k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        class Server(http.server.ThreadingHTTPServer):
            def verify_request(self, request, client_address) -> bool:  # in an outage, new connections are cut
                return time.monotonic() >= proxy._down_until

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def fault(self, kind: str, *, method: str | None = None, path: str = "", times: int | None = None,
              status: int = 503, code: str = "SlowDown", seconds: float = 5.0) -> None:
        """Arm a fault for requests of ``method`` (any if None) whose path contains ``path``: ``"status"``
        answers ``status`` with the S3 error ``code`` (503 SlowDown, 403 AccessDenied...), ``"drop"``
        closes the connection without a reply, ``"slow"`` waits ``seconds`` before forwarding, ``"outage"``
        drops every request for ``seconds`` from the first one it matches (the store gone for a while).
        ``times`` limits how many requests it hits (None: until :meth:`clear`)."""
        with self._lock:
            self.rules.append({"kind": kind, "method": method, "path": path, "times": times, "status": status,
                               "code": code, "seconds": seconds})

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self._down_until = 0.0

    def _match(self, method: str, path: str) -> dict | None:
        with self._lock:
            if time.monotonic() < self._down_until:
                self.hits.append((method, path, "outage"))
                return {"kind": "drop"}
            for rule in self.rules:
                if rule["kind"] == "outage" and rule["method"] in (None, method) and rule["path"] in path \
                        and rule["times"] != 0:
                    rule["times"] = 0  # once
                    self._down_until = time.monotonic() + rule["seconds"]
                    self.hits.append((method, path, "outage"))
                    return {"kind": "drop"}
            for rule in self.rules:
                if rule["kind"] == "outage":
                    continue
                if (rule["method"] in (None, method)) and rule["path"] in path and rule["times"] != 0:
                    if rule["times"] is not None:
                        rule["times"] -= 1
                    self.hits.append((method, path, rule["kind"]))
                    return rule
        return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
