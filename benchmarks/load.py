"""Many runs at once on one shared Prefect server and one Dask cluster: 8 flow runs of 4 surveys.

    python benchmarks/load.py                          # 4 surveys of 1024 x 1024 (about 5 minutes on 2 cores)
    python benchmarks/load.py --size 256 --json /tmp/load.json

A model is trained once, in this process, on a labelled synthetic survey (the test suite's tiny options,
512 px tiles). Four further synthetic surveys are then classified with it by the ``backfill-survey`` flow
(ingest, then classification tiles on the cluster) against one Prefect server (Prefect's test server: the
real API over SQLite, in its own process) and one external Dask cluster (``dask scheduler`` and ``dask worker``
started as programs: 2 worker processes of 1 thread):

1. **sequentially**, one run after another: the baseline time and the reference maps;
2. **8 runs at once** (threads of this process, as a worker serving several flow runs), each survey twice
   into the same output: each pair serialises on the output's writer lock (flows wait for it,
   ``flows._common.LOCK_WAIT_S``), and the second of a pair finds the output complete and skips it.

Checks: every run completes; each map (class, confidence, anomaly) equals its sequential run byte for byte;
nothing is orphaned (no ``.partial`` store, every output's lock free, no task or data left on the
cluster's scheduler). Reported: wall time of each phase and their ratio, and the peak resident memory of
this process (the flows), of the cluster's processes and of the Prefect server, sampled every 0.2 s
(sums over each group's processes). Figures go to stdout and
``benchmarks/results/<date>-<machine>-load.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # flows/
from run import machine_name  # noqa: E402

from magpipe.io.schema import Layout  # noqa: E402
from magpipe.locking import LOCK_NAME  # noqa: E402
from magpipe.testing import external_cluster, tiny_config, write_labels_raster  # noqa: E402

MAPS = ("class", "confidence", "anomaly")


class MemorySampler(threading.Thread):
    """Peak RSS (bytes) of this process and of its child processes grouped by what they are, every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = {"flows": 0, "cluster": 0, "server": 0}
        self._stop = threading.Event()

    def sample(self) -> None:
        me = psutil.Process()
        totals = {"flows": me.memory_info().rss, "cluster": 0, "server": 0}
        for child in me.children(recursive=True):
            try:
                cmd, rss = " ".join(child.cmdline()), child.memory_info().rss
            except psutil.Error:
                continue
            group = "cluster" if "dask" in cmd or "distributed" in cmd else "server" if "prefect" in cmd or \
                "uvicorn" in cmd else "flows"
            totals[group] += rss
        for k, v in totals.items():
            self.peak[k] = max(self.peak[k], v)

    def run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def reset(self) -> dict[str, float]:
        """The peaks so far in GiB; sampling starts again from zero."""
        self.sample()
        out = {k: v / 2**30 for k, v in self.peak.items()}
        self.peak = dict.fromkeys(self.peak, 0)
        return out

    def stop(self) -> None:
        self._stop.set()


def write_surveys(root: Path, size: int, n: int) -> tuple[Path, Path, list[Path]]:
    """A labelled training survey (labels on its left half) and ``n`` further surveys, as GeoTIFFs."""
    from magpipe.synthetic import synthetic_survey

    root.mkdir(parents=True, exist_ok=True)
    field, truth = synthetic_survey((size, size), n_units=3, seed=100)
    field.rio.to_raster(root / "train.tif")
    write_labels_raster(truth, field, root / "train.labels.tif", x_max=size // 2)
    surveys = []
    for i in range(n):
        grid, _ = synthetic_survey((size, size), n_units=3, seed=i)
        grid.rio.to_raster(root / f"area{i}.tif")
        surveys.append(root / f"area{i}.tif")
    return root / "train.tif", root / "train.labels.tif", surveys


def read_maps(out: Path) -> dict[str, np.ndarray]:
    import xarray as xr

    ds = xr.open_zarr(Layout(out).classified, consolidated=False)
    return {n: ds[n].values for n in MAPS}


def lock_is_free(out: Path) -> bool:
    path = out / LOCK_NAME
    if not path.exists():
        return True
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def run_load(work: Path, surveys: list[Path], model: Path, conf: dict, address: str, runs: int,
             memory: MemorySampler | None = None) -> dict:
    """The two phases against the Prefect API of this process's settings and the cluster at ``address``."""
    from distributed import Client

    from flows.backfill import backfill_survey
    from flows._common import survey_name

    def one(survey: Path, out: Path):
        return backfill_survey(str(survey), str(model), str(out), config=conf, scheduler=address, return_state=True)

    t0 = time.perf_counter()
    for s in surveys:
        state = one(s, work / "sequential" / survey_name(s))
        assert state.is_completed(), state.message
    sequential_s = time.perf_counter() - t0
    peaks = {"sequential": memory.reset()} if memory else {}

    states: list = [None] * runs
    pairs = [(surveys[i % len(surveys)], work / "concurrent" / survey_name(surveys[i % len(surveys)]))
             for i in range(runs)]

    def go(i: int) -> None:
        states[i] = one(*pairs[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(runs)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    concurrent_s = time.perf_counter() - t0
    if memory:
        peaks["concurrent"] = memory.reset()

    completed = [bool(s is not None and s.is_completed()) for s in states]
    identical = {}
    for s in surveys:
        name = survey_name(s)
        a, b = read_maps(work / "sequential" / name), read_maps(work / "concurrent" / name)
        identical[name] = all(np.array_equal(a[n], b[n], equal_nan=True) for n in MAPS)
    outs = sorted({out for _, out in pairs})
    partial = sorted(str(p.relative_to(work)) for out in outs for p in out.rglob("*.partial"))
    with Client(address, set_as_default=False) as client:
        left = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
    return {
        "runs": runs, "surveys": len(surveys),
        "sequential_s": sequential_s, "concurrent_s": concurrent_s, "concurrent_over_sequential": concurrent_s
        / sequential_s, "peak_rss_gib": peaks,
        "all_completed": all(completed), "maps_identical_to_sequential": identical,
        "partial_stores_left": partial, "locks_held_after": [str(o.name) for o in outs if not lock_is_free(o)],
        "scheduler_tasks_left": left,
        "states": [s.name if s is not None else "none" for s in states],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024, help="side of each survey, cells")
    ap.add_argument("--runs", type=int, default=8, help="flow runs submitted at once (each survey runs/4 times)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from prefect.testing.utilities import prefect_test_harness

    from magpipe.pipeline import run_all
    from magpipe.process import configure_process

    configure_process()
    conf = tiny_config(classify={"chunk_px": 512}, evaluate={"splits": 1, "sparse_per_class": 0})
    with tempfile.TemporaryDirectory(prefix="magpipe-load-") as tmp:
        work = Path(tmp)
        train, labels, surveys = write_surveys(work / "data", args.size, 4)
        t0 = time.perf_counter()
        run_all(work / "trained", conf.with_inputs(survey=train, labels=labels))
        train_s = time.perf_counter() - t0
        (work / "cluster").mkdir()
        memory = MemorySampler()
        with external_cluster(work / "cluster") as address, prefect_test_harness(server_startup_timeout=120):
            from distributed import Client

            with Client(address, set_as_default=False) as client:
                client.wait_for_workers(2, timeout=120)
            memory.start()
            try:
                result = run_load(work, surveys, Layout(work / "trained").model, conf.parameters(), address, args.runs,
                                  memory)
            finally:
                memory.stop()
    result = {"date": dt.date.today().isoformat(), "machine": machine_name(), "size": args.size,
              "cells_per_survey": args.size**2, "train_s": train_s, "cluster": "dask scheduler + 2 dask worker "
              "processes of 1 thread", "server": "prefect test server (SQLite)", **result}
    print(json.dumps(result, indent=2))
    path = args.json or Path(__file__).parent / "results" / f"{result['date']}-{machine_name()}-load.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["all_completed"] and all(result["maps_identical_to_sequential"].values()) and not \
        result["partial_stores_left"] and not result["locks_held_after"] and result["scheduler_tasks_left"] == 0
    print(f"{args.runs} runs of {len(result['maps_identical_to_sequential'])} surveys of {args.size}^2: "
          f"{result['concurrent_s']:.1f} s at once vs {result['sequential_s']:.1f} s one by one "
          f"({result['concurrent_over_sequential']:.2f}x); peak RSS {result['peak_rss_gib']['concurrent']}; "
          f"checks {'passed' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
