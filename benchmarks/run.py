"""magpipe at scale, against the naive per-patch method, on this machine.

    python benchmarks/run.py                 # 1k, 4k and 16k surveys (about an hour on 2 cores)
    python benchmarks/run.py --quick         # one 3k survey, classified 3 times (about 10 minutes)
    python benchmarks/run.py --sizes 512 --naive-max 512 --json /tmp/b.json
    python benchmarks/run.py --layers 9 --sizes 1024 16384 --efficiency-size 1024 --naive-max 0   # a 9-layer stack

For each size a synthetic survey (float32, no-data holes) is written as a tiled
GeoTIFF block by block, then measured: ingest to Zarr (MB/s of the GeoTIFF),
single-thread stage rates on a few tiles (dense features, SVM, anomaly), and
end-to-end classification of every cell on a LocalCluster (pixels/s). Ingest and
classification each run in a fresh process, as `magpipe ingest` / `magpipe classify`
would, and the peak resident memory of that whole process tree (driver, Dask
scheduler, nannies, workers) is sampled every 0.1 s. The model is trained once,
on the smallest survey's labelled strip, and reused for the others, as in a
backfill. The naive reference is the paper's method done directly: one p x p
patch cut per pixel in numpy, a forward pass per batch of patches, the same
classifier, one process; its classes must equal magpipe's. Its cost per cell is constant, so on
surveys larger than ``--naive-max`` it runs on a random sample of ``--naive-cells`` valid cells (of a central
block of ``NAIVE_BLOCK_PX`` a side, which it holds in memory). With ``--layers N`` each survey is a stack of N
layers (the field and N - 1 more on its grid, ingested as ``--layer`` files), and every stage, the naive
reference's included, reads all of them.
Classification is repeated ``--repeats`` times (fresh processes), each run followed by a run of the
naive reference; rates are medians, with the spread (max - min) / median, and the ratio is the median
of the paired ratios (each magpipe run over the naive run beside it), with their spread.

Figures go to stdout and to ``benchmarks/results/<date>-<machine>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import xarray as xr
import zarr
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_run import default_config, measure_default  # noqa: E402  (beside this script)
from roofline import machine_ceilings, print_roofline, roofline, stage_work  # noqa: E402

from magpipe.bundle import load_bundle
from magpipe.classify import NODATA_CLASS, WindowClassifier
from magpipe.config import RunConfig
from magpipe.evaluation import score
from magpipe.features import cell_features
from magpipe.io.schema import Layout
from magpipe.io.stores import open_array
from magpipe.io.survey import open_inputs, read_label_grids
from magpipe.patches import read_stack
from magpipe.pipeline import run_labels, run_patches, run_train
from magpipe.splits import cv_folds, holdout_cells, labelled_split, training_cells
from magpipe.svm import fit_svm, predict_with_confidence
from magpipe.synthetic import synthetic_block, synthetic_large, synthetic_large_layers
from magpipe.tiling import tiles

GIB = 2**30
TARGETS = {"ratio_vs_naive": 100.0, "ratio_spread": 0.15, "peak_rss_gib_16k": 3.0, "parallel_efficiency": 0.8}


class PeakRSS:
    """Peak of the summed resident memory of a process tree, sampled every ``every_s``.

    ``root=None`` and ``include_root=False``: the descendants of this process only, so the
    benchmark's own memory (training state, naive maps) is not counted against magpipe.
    """

    def __init__(self, every_s: float = 0.1, include_root: bool = True):
        self.every_s, self.peak, self.include_root = every_s, 0, include_root
        self._stop = threading.Event()

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in ([me] if self.include_root else []) + me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        return self.peak / GIB


def benchmark_config(quick_train: bool) -> RunConfig:
    """31 px patches (fixed, not chosen), 4 layers, 512 px tiles, a short training and the Nystroem SVM.

    The features are the autoencoder's and the map unsmoothed, fixed rather than chosen on validation:
    the ratio is the paper's method (AE features, one SVM decision per cell) against itself done
    naively, class for class. Left to ``auto``, validation on this synthetic survey picks window
    statistics and a smoothing radius of 1, whose naive form costs a tenth as much per cell and whose
    map the unsmoothed naive method cannot reproduce."""
    return RunConfig.load(None, patches={"patch_px": 31, "n_patches": 2000 if quick_train else 6000},
                          model={"epochs": 2 if quick_train else 5},
                          svm={"kernel": "nystroem", "C": [1.0, 10.0], "gamma_scale": [0.3, 1.0], "features": "ae",
                               "smooth_px": 0},
                          evaluate={"max_test_pixels": 10000, "block_patches": 2})


def write_survey(size: int, path: Path, n_layers: int = 1) -> tuple[float, dict[str, str]]:
    """Synthetic size x size survey as a tiled float32 GeoTIFF, written window by window, and with
    ``n_layers`` > 1 its further layers as one band-interleaved GeoTIFF beside it (``layers.tif``).

    Returns the seconds taken and ``inputs.layers`` for them ({"extra": path}: layers extra_1 .. extra_n).
    """
    t0 = time.perf_counter()
    grids = [(synthetic_large((size, size), chunk_px=1024), path)]
    if n_layers > 1:
        grids.append((synthetic_large_layers((size, size), n_layers - 1, chunk_px=1024), path.with_name("layers.tif")))
    for da, out in grids:
        da.rio.write_nodata(np.nan, encoded=False, inplace=True)
        da.rio.to_raster(out, tiled=True, blockxsize=512, blockysize=512, lock=threading.Lock(), driver="GTiff",
                         BIGTIFF="IF_SAFER", INTERLEAVE="BAND")
    return time.perf_counter() - t0, ({"extra": str(grids[1][1])} if n_layers > 1 else {})


def write_labels(size: int, path: Path, like: Path) -> None:
    """Labels on the left half of the survey (one mapped area), 0 elsewhere."""
    import rioxarray

    _, truth = synthetic_block(0, size, 0, size)
    truth[:, size // 2 :] = 0
    ref = rioxarray.open_rasterio(like).squeeze("band", drop=True)
    lab = xr.DataArray(truth, dims=("y", "x"), coords={"y": ref.y, "x": ref.x}).rio.write_crs(ref.rio.crs)
    lab.rio.write_nodata(0, inplace=True)
    lab.rio.to_raster(path)


def train(root: Path, survey_tif: Path, size: int, cfg: RunConfig, layers: dict[str, str]) -> dict:
    """Label, cut patches and train on the smallest (ingested) survey; compare exact and Nystroem SVMs."""
    labels_tif = root / "labels.tif"
    write_labels(size, labels_tif, survey_tif)
    cfg = cfg.with_inputs(survey=survey_tif, labels=labels_tif, layers=layers)
    run_labels(root, cfg)
    run_patches(root, cfg)
    run_train(root, cfg)
    lay = Layout(root)
    bundle = load_bundle(lay.model)
    tmeta = bundle.meta["training"]
    epochs = len(tmeta["history"])
    out = {"n_patches": tmeta["n_patches"], "epochs": epochs, "seconds": tmeta["seconds"],
           "patches_per_s": tmeta["n_patches"] * (1 - cfg.model.val_fraction) * epochs / tmeta["seconds"],
           "device": tmeta["device"], "svm": {}}
    # exact RBF SVC against its Nystroem approximation, same features, same spatial holdout
    split, grids = labelled_split(read_label_grids(lay.survey), cfg)
    train, test = training_cells(split, grids.labels, cfg), holdout_cells(split, grids.labels, cfg)
    arrays = open_inputs(lay, bundle.inputs)
    Xtr = cell_features({"ae": bundle.features}, arrays, bundle.scaling, train.rows, train.cols)["ae"]
    Xte = cell_features({"ae": bundle.features}, arrays, bundle.scaling, test.rows, test.cols)["ae"]
    for kernel in ("exact", "nystroem"):
        svm, info = fit_svm(Xtr, train.y, cv_folds(train, cfg), cfg.svm.model_copy(update={"kernel": kernel}))
        with threadpool_limits(1):
            t0 = time.perf_counter()
            pred, _ = predict_with_confidence(svm, Xte)
            rate = len(Xte) / (time.perf_counter() - t0)
        s = score(test.rows, test.cols, test.y, pred, patch_px=bundle.patch_px, n_classes=len(bundle.classes))
        out["svm"][kernel] = {"pixel_accuracy": s["pixel_accuracy"], "balanced_accuracy": s["balanced_accuracy"],
                              "pixels_per_s_one_thread": rate, "n_support": info["n_support"]}
    return out


def stage_rates(root: Path, bundle, tile_px: int, n_tiles: int = 2, device: str = "cpu") -> dict:
    """Single-thread rates of each per-tile stage of :class:`magpipe.classify.WindowClassifier` (its own
    timings), on n tiles of the run's survey after one warm-up tile: cells of the tiles per second of each stage."""
    arrays = open_inputs(Layout(root), bundle.inputs)
    grid = tiles(arrays[0].shape, tile_px)
    picks = grid[len(grid) // 2 : len(grid) // 2 + n_tiles]
    picks = picks[:1] + picks  # the first, untimed: a warm-up
    classifier = WindowClassifier(bundle, device)
    t: dict[str, float] = {}
    cells = 0
    with threadpool_limits(1):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for i, (y0, y1, x0, x1) in enumerate(picks):
                window = read_stack(arrays, y0, y1, x0, x1, bundle.halo_px)
                classifier(window, timings=t if i else {})
                cells += (y1 - y0) * (x1 - x0) if i else 0
        finally:
            torch.set_num_threads(threads)
    rates = {f"{k}_pixels_per_s": cells / v for k, v in t.items()}
    rates["tile_pixels_per_s"] = cells / sum(t.values())
    return rates


_INGEST = """
import json, sys, time
from magpipe.config import RunConfig
from magpipe.pipeline import run_ingest
from magpipe.process import configure_process
configure_process()  # as the CLI does
t0 = time.perf_counter()
run_ingest(sys.argv[2], RunConfig().with_inputs(survey=sys.argv[1], layers=json.loads(sys.argv[3])))
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""

_CLASSIFY = """
import json, sys, time
from magpipe.classify import cached_bundle
from magpipe.cluster import dask_client
from magpipe.io.schema import Layout
from magpipe.process import configure_process
from magpipe.stages.classify import classify_into
configure_process()  # as the CLI does
from magpipe.io.location import as_path
run, bundle, out, workers, tile_px = sys.argv[1:6]
with dask_client(None, workers=int(workers)) as client:
    client.run(cached_bundle, bundle)  # warm workers, as in a long backfill
    t0 = time.perf_counter()
    classify_into(Layout(run), as_path(bundle), as_path(out), tile_px=int(tile_px), client=client)
    print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def timed_process(script: str, *args) -> tuple[float, float]:
    """Seconds (as the script times its stage) and peak RSS in GiB of a fresh process running a stage,
    as `magpipe ingest` / `magpipe classify` would: its whole tree (driver, scheduler, nannies, workers)."""
    with PeakRSS(include_root=False) as mem:
        r = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"stage failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])["seconds"], mem.gib


def classify_timed(run: Path | str, bundle_path: Path | str, out: Path | str, workers: int, tile_px: int
                   ) -> tuple[float, float]:
    """Seconds and peak tree RSS (GiB) of classifying every cell of the run in ``run`` on a fresh
    LocalCluster of ``workers`` (paths or URLs)."""
    if not str(out).startswith("s3://"):
        shutil.rmtree(out, ignore_errors=True)
    return timed_process(_CLASSIFY, run, bundle_path, out, workers, tile_px)


def loopback_bytes() -> int:
    """Bytes sent over the loopback interface so far (each byte once): the traffic to a server on this machine."""
    counters = psutil.net_io_counters(pernic=True)
    return sum(c.bytes_sent for name, c in counters.items() if name == "lo" or name.startswith("lo"))


def object_storage(root: Path, bundle_path: Path, workers: int, tile_px: int, local: dict) -> dict:
    """The same classification with the run and its outputs in a bucket of an S3-protocol server on
    loopback (moto in server mode, started here): cells/s against the local run's, and the bytes that
    crossed to and from the server per cell (loopback bytes of this run less those of the local run,
    which are the Dask cluster's own)."""
    import fsspec

    from magpipe.testing import s3_server

    cells = int(np.prod(open_array(Layout(root).survey, "field").shape))
    cached = fsspec.get_filesystem_class("s3")  # instances are cached per process, with their endpoint
    with s3_server(root / "s3.log") as env:
        before = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        cached.clear_instance_cache()
        try:
            fs = fsspec.filesystem("s3")
            fs.mkdir("bench")
            fs.put(str(Layout(root).survey), "bench/run/survey.zarr", recursive=True)
            fs.put(str(bundle_path), "bench/run/model", recursive=True)
            lo0 = loopback_bytes()
            seconds, peak = classify_timed("s3://bench/run", "s3://bench/run/model", "s3://bench/run/classified.zarr",
                                           workers, tile_px)
            moved = loopback_bytes() - lo0 - local["loopback_bytes"]
            same = bool((xr.open_zarr("s3://bench/run/classified.zarr", consolidated=False)["class"].values
                         == open_array(root / "classified.zarr", "class")[:]).all())
        finally:
            for k, v in before.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
            cached.clear_instance_cache()
    return {"server": "moto (S3 protocol, Python, loopback)", "cells": cells, "classify_s": seconds,
            "pixels_per_s": cells / seconds, "local_pixels_per_s": cells / local["seconds"],
            "ratio_to_local": local["seconds"] / seconds, "bytes_moved": moved, "bytes_per_cell": moved / cells,
            "peak_rss_gib": peak, "identical_to_local": same}


NAIVE_BLOCK_PX = 4096  # on larger surveys the naive method holds this central block in memory and samples it


def naive_patches(bundle, stack: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The cut: a standardised copy (n, C, w, w) of the window each cell's features read (w =
    ``bundle.features.window_px``), from ``stack`` (C, H + 2h, W + 2h), h = w // 2, at interior cells."""
    w = bundle.features.window_px
    windows = np.lib.stride_tricks.sliding_window_view(stack, (w, w), axis=(1, 2))  # (C, H, W, w, w), a view
    return bundle.scaling.apply(np.moveaxis(windows[:, rows, cols], 0, 1), axis=1)


def naive_classify(bundle, stack: np.ndarray, rows: np.ndarray, cols: np.ndarray, batch: int = 4096) -> np.ndarray:
    """The paper's method, done directly: per cell a window of every input, its features, the classifier.

    ``stack`` is the inputs (C, H + 2h, W + 2h) with the halo h the features read; returns the (n,) classes
    of interior cells (rows, cols)."""
    out = np.full(len(rows), NODATA_CLASS, dtype="int16")
    for b0 in range(0, len(rows), batch):
        x = naive_patches(bundle, stack, rows[b0 : b0 + batch], cols[b0 : b0 + batch])
        out[b0 : b0 + batch], _ = predict_with_confidence(bundle.svm, bundle.features.patches(x))
    return out


class NaiveReference:
    """The naive method's timings on one run's survey: over every valid cell, or a seeded random sample
    of ``sample`` valid cells of a central block of at most ``NAIVE_BLOCK_PX`` a side (its cost per cell
    is constant), one timed pass per :meth:`timed` call so the benchmark can interleave them with
    magpipe's runs. Its inputs are read into memory before any clock starts."""

    def __init__(self, bundle, root: Path, sample: int | None):
        arrays = open_inputs(Layout(root), bundle.inputs)
        ny, nx = arrays[0].shape
        by, bx = (ny, nx) if sample is None else (min(ny, NAIVE_BLOCK_PX), min(nx, NAIVE_BLOCK_PX))
        y0, x0 = (ny - by) // 2, (nx - bx) // 2
        self.block = (y0, y0 + by, x0, x0 + bx)
        h = bundle.features.window_px // 2
        self.bundle, self.stack = bundle, read_stack(arrays, *self.block, h)
        self.valid = np.isfinite(self.stack[:, h : h + by, h : h + bx]).all(0)
        rows, cols = np.nonzero(self.valid)
        if sample is not None:
            pick = np.sort(np.random.default_rng(0).choice(len(rows), min(sample, len(rows)), replace=False))
            rows, cols = rows[pick], cols[pick]
        self.cells, self.n, self.sampled = (rows, cols), len(rows), sample is not None
        self.rates: list[float] = []
        self.classes: np.ndarray | None = None

    def timed(self) -> float:
        """One naive pass; its cells/s."""
        t0 = time.perf_counter()
        self.classes = naive_classify(self.bundle, self.stack, *self.cells)
        self.rates.append(self.n / (time.perf_counter() - t0))
        return self.rates[-1]

    def compare(self, classified: Path) -> dict:
        """The rates, and how many cells magpipe's map in ``classified`` classes otherwise (over every cell
        of the survey when the naive method ran on all of them, no-data included), with the largest
        :func:`vote_margins` among them (float-order differences flip near-ties)."""
        y0, y1, x0, x1 = self.block
        ours = open_array(classified, "class")[y0:y1, x0:x1]
        rows, cols = self.cells
        diff = np.nonzero(self.classes != ours[rows, cols])[0]
        nodata_differs = 0 if self.sampled else int((ours[~self.valid] != NODATA_CLASS).sum())
        margins = vote_margins(self.bundle, self.stack, rows[diff], cols[diff])
        return {"naive_pixels_per_s": float(np.median(self.rates)), "naive_pixels_per_s_runs": self.rates,
                "naive_spread": spread(self.rates), "naive_cells": self.n, "naive_sampled": self.sampled,
                "mismatched_cells": int(len(diff)) + nodata_differs,
                "identical_to_naive": bool(len(diff) + nodata_differs == 0),
                "max_vote_margin_of_mismatches": float(margins.max(initial=0))}


def paired_ratio(magpipe: list[float], naive: list[float]) -> dict:
    """magpipe's cells/s over the naive method's, repeat by repeat (each pair run back to back).

    The ratio reported is the median of those paired ratios and its spread their spread: a slow spell
    of the machine slows both runs of a pair, and is not the method's. ``ratio_spread_bound`` is the
    cruder bound that ignores the pairing, the sum of the two series' own spreads."""
    ratios = [m / n for m, n in zip(magpipe, naive, strict=True)]
    return {"ratio": float(np.median(ratios)), "ratio_runs": ratios, "ratio_spread": spread(ratios),
            "ratio_of_medians": float(np.median(magpipe) / np.median(naive)),
            "ratio_spread_bound": spread(magpipe) + spread(naive)}


def spread(values: list[float]) -> float:
    """(max - min) / median: how far repeats of one measurement disagree."""
    return float((max(values) - min(values)) / np.median(values)) if values else 0.0


def vote_margins(bundle, stack: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """How close each given cell's class is to flipping, in the SVM's own decision units: for an SVC (whose
    class is a vote of the pairs) the smaller of its smallest |one-vs-one decision value| (a pair about to
    change its vote) and the gap between its two largest one-vs-rest values (votes tied, broken by the summed
    confidences: a cycle of pairs flips on a tiny change of those); for the Nystroem LinearSVC the gap between
    the two largest one-vs-rest decisions. Float summation order (a dense pass against a per-cell one) flips
    only cells whose margin is near 0."""
    import copy

    from magpipe.svm import decision_matrix

    if len(rows) == 0:
        return np.zeros(0)
    X = bundle.features.patches(naive_patches(bundle, stack, rows, cols))
    est = getattr(bundle.svm, "estimator_", bundle.svm)
    name, clf = est.steps[-1]
    if getattr(clf, "decision_function_shape", None) is not None:  # SVC: one vote per pair of classes
        ovo = copy.deepcopy(est).set_params(**{f"{name}__decision_function_shape": "ovo"}).decision_function(X)
        pair = np.abs(ovo).reshape(len(X), -1).min(axis=1)
    else:
        pair = np.full(len(X), np.inf)
    top = np.sort(decision_matrix(est.decision_function(X)), axis=1)
    return np.minimum(pair, top[:, -1] - top[:, -2])


def zarr_study(field: np.ndarray, root: Path) -> list[dict]:
    """Size and write/read speed of a grid under candidate shard, chunk and compression settings."""
    from zarr.codecs import BloscCodec, ZstdCodec

    options = [("shard 512, chunk 256, zstd", 512, 256, [ZstdCodec(level=0)]),
               ("shard 512, chunk 256, none", 512, 256, None),
               ("shard 512, chunk 256, blosc-lz4 shuffle", 512, 256, [BloscCodec(cname="lz4", shuffle="shuffle")]),
               ("shard 1024, chunk 512, zstd", 1024, 512, [ZstdCodec(level=0)]),
               ("no shards, chunk 512, zstd", None, 512, [ZstdCodec(level=0)])]
    rng = np.random.default_rng(0)
    out = []
    for name, shard, chunk, comp in options:
        path = root / "study.zarr"
        shutil.rmtree(path, ignore_errors=True)
        kw = {"compressors": comp} if comp is not None else {"compressors": None}
        t0 = time.perf_counter()
        arr = zarr.create_array(path, shape=field.shape, dtype="float32", chunks=(chunk, chunk),
                                shards=(shard, shard) if shard else None, fill_value=np.nan, **kw)
        arr[:] = field
        write_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        n_files = sum(1 for f in path.rglob("*") if f.is_file())
        t0 = time.perf_counter()
        win = min(542, *field.shape)  # what a classify task reads: one tile plus its halo
        for _ in range(20):
            y0, x0 = rng.integers(0, min(field.shape) - win + 1, 2)
            arr[y0 : y0 + win, x0 : x0 + win]
        read_ms = (time.perf_counter() - t0) / 20 * 1e3
        out.append({"layout": name, "size_mb": size / 1e6, "files": n_files, "write_mb_per_s":
                    field.nbytes / 1e6 / write_s, "tile_read_ms": read_ms})
    shutil.rmtree(root / "study.zarr", ignore_errors=True)
    return out


def machine_name() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()}cpu-{cpu}".replace(" ", "_").lower()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="survey sides in cells (default 1024 4096 16384; with --quick 3072)")
    ap.add_argument("--quick", action="store_true",
                    help="only the smallest size (3072 unless --sizes), shorter training, 3 repeats")
    ap.add_argument("--repeats", type=int, default=None,
                    help="classifications (and naive timings) per size whose median is reported (default 1; 3 with --quick)")
    ap.add_argument("--naive-cells", type=int, default=50_000,
                    help="cells the naive reference classifies on sizes above --naive-max (0: none)")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster workers (one thread each)")
    ap.add_argument("--layers", type=int, default=1,
                    help="layers of the survey stack: the field and N - 1 further layers on its grid (default 1)")
    ap.add_argument("--naive-max", type=int, default=1024, help="largest side the naive reference runs on")
    ap.add_argument("--efficiency-size", type=int, default=4096,
                    help="size classified with 1 worker too, for parallel efficiency (the largest run if absent)")
    ap.add_argument("--default-repeats", type=int, default=5,
                    help="paired repeats of the default configuration against its naive method, on the smallest "
                         "survey (0: skip; see benchmarks/default_run.py)")
    ap.add_argument("--json", type=Path, default=None, help="where to write the figures")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--object-storage", action="store_true",
                    help="also classify the --efficiency-size survey from and into a bucket of a local S3-protocol "
                         "server (needs moto[server]): cells/s and bytes moved per cell against local disk")
    args = ap.parse_args(argv)
    sizes = sorted(args.sizes or ([3072] if args.quick else [1024, 4096, 16384]))
    sizes = sizes[:1] if args.quick else sizes
    repeats = args.repeats or (3 if args.quick else 1)
    cfg = benchmark_config(args.quick)
    tile_px = cfg.classify.chunk_px
    eff_size = args.efficiency_size if args.efficiency_size in sizes else sizes[-1]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="magpipe-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"date": dt.date.today().isoformat(), "machine": {
        "name": machine_name(), "cpus": os.cpu_count(), "memory_gib": psutil.virtual_memory().total / GIB,
        "python": platform.python_version(), "torch": torch.__version__},
        "config": {"patch_px": cfg.patches.patch_px, "channels": list(cfg.model.channels), "tile_px": tile_px,
                   "features": cfg.svm.features, "smooth_px": cfg.svm.smooth_px, "svm_kernel": cfg.svm.kernel,
                   "n_components": cfg.svm.n_components, "workers": args.workers, "layers": args.layers},
        "targets": TARGETS, "sizes": []}
    bundle_path = None
    try:
        for size in sizes:
            print(f"\n== {size} x {size} ({size * size / 1e6:.1f} M cells)", flush=True)
            root = work / f"s{size}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            tif = root / "survey.tif"
            gen_s, layers = write_survey(size, tif, args.layers)
            mb = sum(Path(f).stat().st_size for f in [tif, *layers.values()]) / 1e6
            ingest_s, ingest_peak = timed_process(_INGEST, tif, root, json.dumps(layers))
            print(f"generated {mb:.0f} MB in {gen_s:.0f} s; ingest {mb / ingest_s:.1f} MB/s "
                  f"(peak {ingest_peak:.2f} GiB)", flush=True)
            row = {"size": size, "cells": size * size, "geotiff_mb": mb, "ingest_mb_per_s": mb / ingest_s,
                   "ingest_peak_rss_gib": ingest_peak, "workers": args.workers}
            if bundle_path is None:
                result["training"] = train(root, tif, size, cfg, layers)
                bundle_path = Layout(root).model
                tr = result["training"]
                print(f"training: {tr['patches_per_s']:.0f} patches/s ({tr['device']}); SVM exact vs Nystroem: "
                      + ", ".join(f"{k} {v['pixel_accuracy']:.3f} acc {v['pixels_per_s_one_thread']:.0f} px/s"
                                  for k, v in tr["svm"].items()), flush=True)
            bundle = load_bundle(bundle_path)
            survey = Layout(root).survey
            valid = open_array(survey, "valid")
            row["valid_fraction"] = float(np.mean([valid[t[0]:t[1], t[2]:t[3]].mean()
                                                   for t in tiles(valid.shape, 2048)]))
            row.update(stage_rates(root, bundle, tile_px))
            if "ceilings" not in result:
                result["ceilings"] = machine_ceilings("cpu", n_features=bundle.features.n_features)
            row["roofline"] = roofline(row, stage_work(bundle, tile_px), result["ceilings"])
            print_roofline(row["roofline"], result["ceilings"], "one CPU thread")
            # magpipe and the naive method take turns, so each pair of runs sees the machine in the same state
            naive = (NaiveReference(bundle, root, None if size <= args.naive_max else args.naive_cells)
                     if size <= args.naive_max or args.naive_cells > 0 else None)
            runs = []
            for i in range(repeats):
                lo0 = loopback_bytes()
                runs.append(classify_timed(root, bundle_path, root / "classified.zarr", args.workers, tile_px)
                            + (loopback_bytes() - lo0,))
                line = f"repeat {i + 1}/{repeats}: magpipe {size * size / runs[-1][0]:.0f} px/s"
                if naive is not None:
                    line += f", naive {naive.timed():.0f} px/s ({naive.n} cells)"
                print(line, flush=True)
            seconds, peak = float(np.median([r[0] for r in runs])), max(r[1] for r in runs)
            local = {"seconds": seconds, "loopback_bytes": float(np.median([r[2] for r in runs]))}
            rates = [size * size / r[0] for r in runs]
            row.update({"classify_s": seconds, "magpipe_pixels_per_s": float(np.median(rates)),
                        "magpipe_pixels_per_s_runs": rates, "magpipe_spread": spread(rates),
                        "peak_rss_gib": max(peak, row["ingest_peak_rss_gib"]), "classify_peak_rss_gib": peak})
            print(f"classify: {seconds:.0f} s, {row['magpipe_pixels_per_s']:.0f} px/s with {args.workers} workers, "
                  f"peak {peak:.2f} GiB; features {row['features_pixels_per_s']:.0f}, svm "
                  f"{row['svm_pixels_per_s']:.0f}, anomaly {row['anomaly_pixels_per_s']:.0f} px/s per thread",
                  flush=True)
            row["naive_pixels_per_s"] = None
            if naive is not None:
                row.update(naive.compare(root / "classified.zarr"))
                row.update(paired_ratio(rates, naive.rates))
                print(f"naive: {row['naive_cells']} cells{' (a sample)' if row['naive_sampled'] else ''}, "
                      f"{row['naive_pixels_per_s']:.0f} px/s (spread {row['naive_spread']:.0%}); magpipe "
                      f"{row['magpipe_pixels_per_s']:.0f} px/s (spread {row['magpipe_spread']:.0%}); ratio "
                      f"{row['ratio']:.1f}x (runs {', '.join(f'{r:.1f}' for r in row['ratio_runs'])}, spread "
                      f"{row['ratio_spread']:.0%}); {row['mismatched_cells']} cells differ"
                      + (f" (near-ties: decision margin <= {row['max_vote_margin_of_mismatches']:.1e})"
                         if row["mismatched_cells"] else ""), flush=True)
            if size == eff_size and args.workers > 1:
                s1, _ = classify_timed(root, bundle_path, root / "classified-1.zarr", 1, tile_px)
                shutil.rmtree(root / "classified-1.zarr", ignore_errors=True)
                eff = s1 / (args.workers * seconds)
                result["parallel_efficiency"] = {"size": size, "one_worker_pixels_per_s": size * size / s1,
                                                 "workers": args.workers, "pixels_per_s": size * size / seconds,
                                                 "efficiency": eff}
                print(f"1 worker: {size * size / s1:.0f} px/s -> parallel efficiency {eff:.0%}", flush=True)
                result["zarr_study"] = zarr_study(open_array(survey, "field")[:2048, :2048], root)
            if args.object_storage and size == eff_size:
                result["object_storage"] = o = object_storage(root, bundle_path, args.workers, tile_px, local)
                print(f"object storage ({o['server']}): {o['pixels_per_s']:.0f} px/s against {o['local_pixels_per_s']:.0f} "
                      f"on local disk ({o['ratio_to_local']:.2f}x), {o['bytes_per_cell']:.1f} bytes moved per cell, "
                      f"map {'identical' if o['identical_to_local'] else 'DIFFERENT'}", flush=True)
            if args.default_repeats and "default" not in result:  # the smallest survey: its labels are there
                dcfg = default_config(args.quick, root / "labels.tif", tif, layers)
                result["default"] = d = measure_default(
                    root, size, dcfg, repeats=args.default_repeats, workers=args.workers, tile_px=tile_px,
                    naive_cells=args.naive_cells or 50_000, classify_timed=classify_timed)
                print(f"default configuration ({', '.join(f'{k} {v}' for k, v in d['config'].items())}): "
                      f"{d['cells_per_s']:.0f} cells/s, naive {d['naive_cells_per_s']:.0f}, ratio "
                      f"{d['ratio_vs_naive']:.1f}x (IQR {d['ratio_quartiles']['iqr'][0]:.1f} to "
                      f"{d['ratio_quartiles']['iqr'][1]:.1f}), {d['ratio_vs_naive_classes']:.1f}x against the naive "
                      f"classes alone; {d['mismatched_cells']} of {d['naive_cells']} cells differ, confidence by "
                      f"{d['max_confidence_difference']:.1e} at most, anomaly by "
                      f"{d['max_anomaly_difference_relative']:.1e} of its largest", flush=True)
            result["sizes"].append(row)
            for f in [tif, *layers.values()]:
                Path(f).unlink(missing_ok=True)
            shutil.rmtree(root / "classified.zarr", ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    both = [r for r in result["sizes"] if r["naive_pixels_per_s"]]
    result["ratio_vs_naive"] = both[-1]["ratio"] if both else None
    result["ratio_size"] = both[-1]["size"] if both else None
    if both:
        result["ratio_spread"] = both[-1]["ratio_spread"]
        result["ratio_spread_bound"] = both[-1]["ratio_spread_bound"]
    result["repeats"] = repeats
    rates = [r["magpipe_pixels_per_s"] for r in result["sizes"]]
    result["linearity"] = {"min_over_max_pixels_per_s": min(rates) / max(rates)}
    path = args.json or Path(__file__).parent / "results" / f"{result['date']}-{result['machine']['name']}{stack_suffix(args.layers)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print_summary(result)
    print(f"\nwrote {path}")
    return result


def stack_suffix(layers: int) -> str:
    """What names a stack's results file apart from one grid's."""
    return f"-{layers}-layers" if layers > 1 else ""


def print_summary(r: dict) -> None:
    print("\n| size | magpipe px/s | naive px/s | ratio | peak GiB | ingest MB/s | features px/s/thread "
          "| svm px/s/thread |")
    print("|---|---|---|---|---|---|---|---|")
    for s in r["sizes"]:
        naive = s["naive_pixels_per_s"]
        ratio = f"{s['ratio']:.1f}x" if naive else "-"
        print(f"| {s['size']}^2 | {s['magpipe_pixels_per_s']:.0f} | {f'{naive:.0f}' if naive else '-'} | {ratio} "
              f"| {s['peak_rss_gib']:.2f} | {s['ingest_mb_per_s']:.1f} | {s['features_pixels_per_s']:.0f} "
              f"| {s['svm_pixels_per_s']:.0f} |")
    if r.get("ratio_vs_naive"):
        print(f"ratio_vs_naive {r['ratio_vs_naive']:.1f} (target >= {TARGETS['ratio_vs_naive']:.0f}) at "
              f"{r['ratio_size']}^2, spread {r['ratio_spread']:.0%} over {r['repeats']} paired repeats "
              f"(target < {TARGETS['ratio_spread']:.0%}; unpaired bound {r['ratio_spread_bound']:.0%})")
    if "parallel_efficiency" in r:
        print(f"parallel efficiency {r['parallel_efficiency']['efficiency']:.0%} (target >= 80%)")
    print(f"pixels/s min/max across sizes {r['linearity']['min_over_max_pixels_per_s']:.2f} (1.0 = linear)")


if __name__ == "__main__":
    main()
