"""Classification throughput of each deployable feature set, against the paper's encoder readout.

On a finished run, for each set: an SVM is fitted on the run's training cells (the run's SVM
options), then whole tiles are classified single-threaded with the library's
``classify_window`` (dense features, SVM, anomaly), exactly what a Dask task does per tile.
Prints cells/s per set and its ratio to the reference, ``ae`` read out as the paper does
(``mean_centre``, unsmoothed: what magpipe deployed before feature sets), measured in the same
process, so the cost of a feature set is a number, not a guess. Every other set is timed with the
bundle's probability smoothing (``smooth_px``), as the map classifies.

Usage::

    python benchmarks/feature_sets.py RUN [--sets ae stats ae+stats] [--tiles 3] [--smooth-px R] [--json F]

(``ae@mean_centre``, the reference, is always timed first.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from magpipe.bundle import load_bundle
from magpipe.classify import classify_window
from magpipe.config import RunConfig
from magpipe.features import cell_features, part_sizes
from magpipe.io.schema import Layout
from magpipe.io.survey import open_inputs, read_label_grids
from magpipe.patches import read_stack
from magpipe.splits import cv_folds, labelled_split, training_cells
from magpipe.resolve import resolved_config
from magpipe.svm import fit_svm
from magpipe.tiling import tiles


REFERENCE = "ae@mean_centre"


def set_rates(run: Path, names: list[str], n_tiles: int, repeats: int, smooth_px: int | None = None) -> dict:
    """Cells/s of ``classify_window`` per feature set on the same tiles, one thread, best of ``repeats``.

    A name ``set@readout`` reads the encoder out another way than the run's bundle does; ``smooth_px``
    replaces the bundle's smoothing radius (the reference is always unsmoothed).
    """
    lay = Layout(run)
    cfg = resolved_config(lay, RunConfig.load(lay.config))
    base = load_bundle(lay.model)
    if smooth_px is not None:
        base = dataclasses.replace(base, smooth_px=smooth_px)
    arrays = open_inputs(lay, base.inputs)
    split, grids = labelled_split(read_label_grids(lay.survey), cfg)
    cells = training_cells(split, grids.labels, cfg)
    grid = tiles(arrays[0].shape, cfg.classify.chunk_px)
    picks = grid[len(grid) // 2 : len(grid) // 2 + n_tiles]
    # the reference classifies as the map did before smoothing (radius 0); every other set as the bundle does;
    # each with the halo its features read (wide window statistics read beyond the patch)
    windows: dict[int, list] = {}
    n_cells = sum((t[1] - t[0]) * (t[3] - t[2]) for t in picks)
    out = {}
    for name in dict.fromkeys([REFERENCE, *names]):
        set_name, _, readout = name.partition("@")
        bundle = dataclasses.replace(base, feature_set=set_name, readout=readout or base.readout,
                                     smooth_px=0 if name == REFERENCE else base.smooth_px)
        fs = bundle.features
        X = cell_features({name: fs}, arrays, base.scaling, cells.rows, cells.cols)[name]
        svm, info = fit_svm(X, cells.y, cv_folds(cells, cfg), cfg.svm, parts=part_sizes(fs))  # as the pipeline's
        bundle = dataclasses.replace(bundle, svm=svm)
        if bundle.halo_px not in windows:  # read before the clock starts
            windows[bundle.halo_px] = [read_stack(arrays, *t, bundle.halo_px) for t in picks]
        best = np.inf
        with threadpool_limits(1):
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    for w in windows[bundle.halo_px]:
                        classify_window(bundle, w)
                    best = min(best, time.perf_counter() - t0)
            finally:
                torch.set_num_threads(threads)
        out[name] = {"n_features": fs.n_features, "smooth_px": bundle.smooth_px, "cells_per_s": n_cells / best,
                     "kernel": info["kernel"],
                     "n_support": info["n_support"]}
        print(f"{name:>16}: {fs.n_features:4d} features, {n_cells / best:10.0f} cells/s (one thread)", flush=True)
    ref = out[REFERENCE]["cells_per_s"]
    for v in out.values():
        v["ratio_to_reference"] = v["cells_per_s"] / ref
    return {"run": run.name, "patch_px": base.patch_px, "tile_px": cfg.classify.chunk_px, "tiles": len(picks),
            "cells": n_cells, "readout": base.readout, "reference": REFERENCE, "machine": platform.machine(),
            "deployed": base.feature_set, "smooth_px": base.smooth_px, "sets": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="output directory of a `magpipe run`")
    ap.add_argument("--sets", nargs="+", default=["ae", "stats", "ae+stats"], help="feature sets to time")
    ap.add_argument("--tiles", type=int, default=3, help="tiles classified per set")
    ap.add_argument("--repeats", type=int, default=3, help="timings per set; the fastest counts")
    ap.add_argument("--smooth-px", type=int, help="smoothing radius of every timed set but the reference "
                    "(default: the run's bundle's)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    result = set_rates(args.run, args.sets, args.tiles, args.repeats, args.smooth_px)
    for name, v in result["sets"].items():
        print(f"{name:>16}: {v['ratio_to_reference']:.2f} x the throughput of {REFERENCE}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
