"""Classification throughput per thread on survey stacks of 1, 9 and 14 layers, against the naive per-cell method.

    python benchmarks/stack_rates.py                     # 1, 9 and 14 layers, 1024 x 1024 (about 15 minutes)
    python benchmarks/stack_rates.py --layers 1 3 --size 256 --repeats 2 --json /tmp/r.json

For each layer count a synthetic survey stack (``benchmarks/run.py``'s: the field and N - 1 further layers
on its grid, written as GeoTIFFs) is ingested, labelled on its left half, and an autoencoder is trained
briefly on 11 px patches (the Rondonia stack's patch; throughput does not depend on how well it learnt).
Then for each feature set an SVM is fitted on the run's training cells with the run's options (the exact
RBF kernel) and a tile is classified on one thread by ``classify_window`` (features, SVM, confidence and
the anomaly map: what each Dask task does per tile, the read excluded), unsmoothed, beside the naive method
of the same configuration (per cell: the window its features read cut out and standardised, the features
of that one window, the same SVM; classes only, so the ratio is conservative). The naive classes must
equal magpipe's on every sampled cell but float near-ties (the largest ``run.vote_margins`` among the cells
that differ is reported: the closest one-vs-one vote, in the SVM's decision units). The sets:

- ``stats``: window statistics within the patch; ``stats@wide``: also over 2p - 1 and 3p cells;
- ``ae``: the encoder read out as deployed (``mean_std_centre``); ``ae+stats``;
- ``deployed``: what ``configs/rondonia-stack.yaml`` deploys on the Rondonia stack (``ae`` with probability
  smoothing of radius 4): timed, and paired with the naive ``ae``, which cannot smooth (a per-cell
  method would classify every neighbour of every cell again), so its ratio is again conservative.

Repeats are paired (magpipe's tile, then the naive sample); each figure is the median of the repeats,
with their spread (max - min) / median, and the ratio the median of the paired ratios. Figures go to
stdout and ``benchmarks/results/<date>-<machine>-stack-rates.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (machine_name, naive_classify, paired_ratio, spread, vote_margins, write_labels,  # noqa: E402
                 write_survey)

from magpipe.bundle import load_bundle
from magpipe.classify import WindowClassifier
from magpipe.config import RunConfig
from magpipe.features import cell_features, part_sizes
from magpipe.io.schema import Layout
from magpipe.io.survey import open_inputs, read_label_grids
from magpipe.patches import read_stack
from magpipe.pipeline import run_ingest, run_labels, run_patches, run_train
from magpipe.splits import cv_folds, labelled_split, training_cells
from magpipe.svm import fit_svm
from magpipe.tiling import tiles

SETS = {  # name -> (feature set, window-statistics reach, smoothing radius, the naive method it is paired with)
    "stats": ("stats", "patch", 0, "stats"),
    "stats@wide": ("stats", "wide", 0, "stats@wide"),
    "ae": ("ae", "patch", 0, "ae"),
    "ae+stats": ("ae+stats", "patch", 0, "ae+stats"),
    "deployed": ("ae", "patch", 4, "ae"),
}


def stack_config(n_patches: int, epochs: int) -> RunConfig:
    """11 px patches and a short training; every choice fixed (the sets are timed one by one, not chosen)."""
    return RunConfig.load(None, patches={"patch_px": 11, "n_patches": n_patches}, model={"epochs": epochs},
                          svm={"features": "ae", "smooth_px": 0, "stats_windows": "patch"})


def prepare(root: Path, size: int, n_layers: int, cfg: RunConfig) -> RunConfig:
    """Write, ingest, label, cut and train the synthetic ``n_layers`` stack in ``root``; the run's config."""
    tif = root / "survey.tif"
    _, layers = write_survey(size, tif, n_layers)
    write_labels(size, root / "labels.tif", tif)
    cfg = cfg.with_inputs(survey=tif, labels=root / "labels.tif", layers=layers)
    for stage in (run_ingest, run_labels, run_patches, run_train):
        stage(root, cfg)
    return cfg


def one_thread(fn):
    """``fn()`` on one BLAS and one torch thread, as a Dask task runs."""
    with threadpool_limits(1):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)


def layer_rates(root: Path, cfg: RunConfig, tile_px: int, repeats: int, naive_cells: int) -> dict:
    """Per set: magpipe's and the naive method's cells/s on one thread over one central tile, paired."""
    lay = Layout(root)
    base = load_bundle(lay.model)
    arrays = open_inputs(lay, base.inputs)
    split, grids = labelled_split(read_label_grids(lay.survey), cfg)
    cells = training_cells(split, grids.labels, cfg)
    grid = tiles(arrays[0].shape, tile_px)
    tile = grid[len(grid) // 2]
    n_cells = (tile[1] - tile[0]) * (tile[3] - tile[2])
    fitted: dict[str, tuple] = {}
    out = {}
    for name, (set_name, reach, smooth, naive_of) in SETS.items():
        bundle = dataclasses.replace(base, feature_set=set_name, stats_reach=reach, smooth_px=smooth)
        fs = bundle.features
        if naive_of not in fitted:  # the deployed set reads the encoder as `ae` does: one SVM for both
            X = cell_features({name: fs}, arrays, base.scaling, cells.rows, cells.cols)[name]
            fitted[naive_of] = fit_svm(X, cells.y, cv_folds(cells, cfg), cfg.svm, parts=part_sizes(fs))
        svm, info = fitted[naive_of]
        bundle = dataclasses.replace(bundle, svm=svm)
        naive_bundle = dataclasses.replace(bundle, smooth_px=0)
        window = read_stack(arrays, *tile, bundle.halo_px)  # read before any clock starts
        h = bundle.halo_px - naive_bundle.halo_px  # the naive method reads the window less the smoothing rim
        naive_window = window[:, h : window.shape[1] - h, h : window.shape[2] - h] if h else window
        classifier = WindowClassifier(bundle)
        interior = naive_bundle.features.window_px // 2
        rows, cols = np.nonzero(np.isfinite(naive_window[:, interior:-interior, interior:-interior]).all(0))
        pick = np.sort(np.random.default_rng(0).choice(len(rows), min(naive_cells, len(rows)), replace=False))
        rows, cols = rows[pick], cols[pick]
        ours, naive = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            classes = one_thread(lambda: classifier(window))[0]
            ours.append(n_cells / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            theirs = one_thread(lambda: naive_classify(naive_bundle, naive_window, rows, cols))
            naive.append(len(rows) / (time.perf_counter() - t0))
        # smoothing changes classes: the deployed set's map is checked by its unsmoothed pair, `ae`
        differ = np.nonzero(classes[rows, cols] != theirs)[0] if smooth == 0 else None
        mismatched = None if differ is None else len(differ)
        margin = (None if differ is None else
                  float(vote_margins(naive_bundle, naive_window, rows[differ], cols[differ]).max(initial=0)))
        out[name] = {"features": set_name, "stats_reach": reach, "smooth_px": smooth, "n_features": fs.n_features,
                     "window_px": fs.window_px, "n_support": info["n_support"], "kernel": info["kernel"],
                     "cells_per_s": float(np.median(ours)), "cells_per_s_runs": ours, "spread": spread(ours),
                     "naive_of": naive_of, "naive_cells_per_s": float(np.median(naive)),
                     "naive_cells_per_s_runs": naive, "naive_spread": spread(naive), "naive_cells": len(rows),
                     "mismatched_cells": mismatched,
                     "max_vote_margin_of_mismatches": margin, **paired_ratio(ours, naive)}
        line = (f"{name:>11}: {fs.n_features:5d} features, window {fs.window_px:2d}: {out[name]['cells_per_s']:8.0f} "
                f"cells/s, naive {out[name]['naive_cells_per_s']:6.0f}, ratio {out[name]['ratio']:6.1f}x "
                f"(spread {out[name]['ratio_spread']:.0%})")
        if mismatched is not None:
            line += f", {mismatched} of {len(rows)} sampled cells differ"
            line += f" (near-ties: decision margin <= {margin:.1e})" if mismatched else ""
        print(line, flush=True)
    return {"tile": list(tile), "cells": n_cells, "sets": out}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 9, 14], help="layer counts of the stacks")
    ap.add_argument("--size", type=int, default=1024, help="side of each synthetic survey, cells")
    ap.add_argument("--tile-px", type=int, default=512, help="side of the tile classified")
    ap.add_argument("--repeats", type=int, default=3, help="paired repeats per set")
    ap.add_argument("--naive-cells", type=int, default=20000, help="cells of the tile the naive method classifies")
    ap.add_argument("--n-patches", type=int, default=3000, help="training patches")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs")
    ap.add_argument("--json", type=Path, help="where to write the figures")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="magpipe-stack-rates-"))
    cfg = stack_config(args.n_patches, args.epochs)
    result = {"date": dt.date.today().isoformat(),
              "machine": {"name": machine_name(), "python": platform.python_version(), "torch": torch.__version__},
              "size": args.size, "tile_px": args.tile_px, "patch_px": cfg.patches.patch_px,
              "channels": list(cfg.model.channels), "readout": cfg.model.readout, "svm_kernel": cfg.svm.kernel,
              "repeats": args.repeats, "stacks": {}}
    try:
        for n in args.layers:
            print(f"\n== {n} layer{'s' if n > 1 else ''}, {args.size} x {args.size}", flush=True)
            root = work / f"layers-{n}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            run_cfg = prepare(root, args.size, n, cfg)
            result["stacks"][str(n)] = layer_rates(root, run_cfg, args.tile_px, args.repeats, args.naive_cells)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table(result)
    path = args.json or Path(__file__).parent / "results" / f"{result['date']}-{result['machine']['name']}-stack-rates.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")
    return result


def print_table(result: dict) -> None:
    """Markdown: cells/s per thread of each set at each layer count, with the ratio to its naive method."""
    names = list(SETS)
    print("\n| layers | " + " | ".join(f"{n} cells/s (x naive)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for n, row in result["stacks"].items():
        print(f"| {n} | " + " | ".join(f"{row['sets'][s]['cells_per_s']:,.0f} ({row['sets'][s]['ratio']:.0f}x)"
                                      for s in names) + " |")


if __name__ == "__main__":
    main()
