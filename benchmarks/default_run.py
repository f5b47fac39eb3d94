"""What ``magpipe run`` deploys with its defaults, timed against its own naive method (``run.py``'s ``default``).

``run.py``'s main figure is a tuned configuration (AE features, 31 px, the Nystroem SVM, no smoothing). A user
who runs ``magpipe run`` gets what validation chooses instead: the patch size, the feature set (window
statistics so far), how far they look, the smoothing radius, with the exact SVM. This trains that, on the
benchmark survey's labelled half, and times its classification against the same configuration done
naively: per cell the window its features read, cut and standardised alone, the set's per-patch features,
the deployed SVM's votes; then per cell the mean of the votes of its (2r + 1)^2 window (valid cells) and
the class of that mean, as the map's smoothing defines it; the confidence the same way from the
probabilities. The map also holds an anomaly layer, so the naive method computes it too, per cell: the
autoencoder's reconstruction of the cell's own patch, scored on its central window
(:func:`magpipe.model.patch_anomaly`). The naive method runs on a contiguous central block (its cells'
neighbours are in it, so its votes are computed once, as a per-cell method over a map would), of about
``naive_cells`` cells; its cost per cell is constant.

Two ratios come out. ``ratio_vs_naive`` compares like with like: every layer the map holds, made both ways.
``ratio_vs_naive_classes`` compares magpipe's whole map with the naive classes and confidence alone (the
anomaly left out of the naive side only): the lower bound, and the figure this benchmark reported before
the naive side computed the anomaly.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from magpipe.bundle import load_bundle
from magpipe.config import RunConfig
from magpipe.io.schema import Layout
from magpipe.io.stores import open_array
from magpipe.io.survey import open_inputs
from magpipe.model import patch_anomaly
from magpipe.patches import read_stack
from magpipe.pipeline import run_labels, run_patch_size, run_patches, run_train
from magpipe.svm import best_class, class_scores


def default_config(quick_train: bool, labels: Path, survey: Path, layers: dict[str, str]) -> RunConfig:
    """The defaults, but for a shorter training (as the tuned configuration has) and the evaluation's
    sizes the benchmark survey's strip of labels allows."""
    return RunConfig.load(None, patches={"n_patches": 2000 if quick_train else 6000},
                          model={"epochs": 2 if quick_train else 5},
                          evaluate={"max_test_pixels": 10000, "block_patches": 2}
                          ).with_inputs(survey=survey, labels=labels, layers=layers)


def train_default(root: Path, cfg: RunConfig) -> Path:
    """Train the default configuration in ``root / "default"`` on the survey ingested in ``root``; its model."""
    run = root / "default"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    shutil.copytree(Layout(root).survey, Layout(run).survey)
    for stage in (run_labels, run_patch_size, run_patches, run_train):
        stage(run, cfg)
    return Layout(run).model


def chosen(bundle) -> dict:
    """What validation chose, as the JSON records it."""
    svm = bundle.meta.get("svm", {})
    return {"features": bundle.feature_set, "patch_px": bundle.patch_px, "stats_reach": bundle.stats_reach,
            "smooth_px": bundle.smooth_px, "svm_kernel": svm.get("kernel"), "C": svm.get("C"),
            "gamma": svm.get("gamma"), "n_support": svm.get("n_support"), "n_features": bundle.features.n_features}


class SmoothedNaive:
    """The naive method of a deployed bundle, smoothing and anomaly included, on a central block of
    ``side`` x ``side`` cells of the run in ``root`` (held in memory with its halo before any clock starts)."""

    def __init__(self, bundle, root: Path, side: int):
        arrays = open_inputs(Layout(root), bundle.inputs)
        ny, nx = arrays[0].shape
        side = min(side, ny, nx)
        self.r, self.h = bundle.smooth_px, bundle.features.window_px // 2
        y0, x0 = (ny - side) // 2, (nx - side) // 2
        self.block = (y0, y0 + side, x0, x0 + side)
        r = self.r  # votes are needed a radius beyond the block, features a window beyond those
        self.stack = read_stack(arrays, y0 - r, y0 + side + r, x0 - r, x0 + side + r, self.h)
        self.bundle, self.n, self.side = bundle, side * side, side
        self.rates: list[float] = []
        self.class_rates: list[float] = []
        self.classes: np.ndarray | None = None
        self.mean_votes: np.ndarray | None = None
        self.confidence: np.ndarray | None = None
        self.anomaly: np.ndarray | None = None

    def timed(self, batch: int = 4096) -> float:
        """One naive pass over the block, every layer of the map; its cells/s (``class_rates`` gets the
        cells/s of the classes and confidence alone)."""
        t0 = time.perf_counter()
        self._classes(batch)
        t1 = time.perf_counter()
        self._anomaly(batch)
        t2 = time.perf_counter()
        self.class_rates.append(self.n / (t1 - t0))
        self.rates.append(self.n / (t2 - t0))
        return self.rates[-1]

    def _classes(self, batch: int) -> None:
        """Per cell the window its features read, the features, the SVM's votes and probabilities; then per
        cell the mean of those over its smoothing window's valid cells, the class and its confidence."""
        b, h, r = self.bundle, self.h, self.r
        w = b.features.window_px
        H, W = self.stack.shape[1] - 2 * h, self.stack.shape[2] - 2 * h  # the block and the radius around it
        valid = np.isfinite(self.stack[:, h : h + H, h : h + W]).all(0)
        votes = np.full((H, W, len(b.classes)), np.nan, dtype="float32")
        proba = np.full_like(votes, np.nan)
        rows, cols = np.nonzero(valid)
        windows = np.lib.stride_tricks.sliding_window_view(self.stack, (w, w), axis=(1, 2))
        for b0 in range(0, len(rows), batch):
            rr, cc = rows[b0 : b0 + batch], cols[b0 : b0 + batch]
            x = b.scaling.apply(np.moveaxis(windows[:, rr, cc], 0, 1), axis=1)
            votes[rr, cc], proba[rr, cc] = class_scores(b.svm, b.features.patches(x))
        mean, mean_p = (window_mean(v, valid, r) for v in (votes, proba))
        self.classes, self.confidence = best_class(b.svm, mean.astype("float32"), mean_p.astype("float32"), axis=-1)
        self.mean_votes = mean

    def _anomaly(self, batch: int) -> None:
        """Per cell of the block its own patch (``patch_px``), standardised, through the whole autoencoder:
        the reconstruction error of the patch's central window (NaN where the cell has no data)."""
        b, p = self.bundle, self.bundle.patch_px
        off = self.h + self.r - p // 2  # the stack index of the block's first patch's corner
        sub = self.stack[:, off : off + self.side + p - 1, off : off + self.side + p - 1]
        windows = np.lib.stride_tricks.sliding_window_view(sub, (p, p), axis=(1, 2))  # (C, side, side, p, p)
        valid = np.isfinite(sub[:, p // 2 : p // 2 + self.side, p // 2 : p // 2 + self.side]).all(0)
        rows, cols = np.nonzero(valid)
        out = np.full((self.side, self.side), np.nan, dtype="float32")
        for b0 in range(0, len(rows), batch):
            rr, cc = rows[b0 : b0 + batch], cols[b0 : b0 + batch]
            raw = np.moveaxis(windows[:, rr, cc], 0, 1)  # (n, C, p, p)
            mask = torch.from_numpy(np.isfinite(raw).all(1, keepdims=True))
            x = torch.from_numpy(b.scaling.apply(raw, axis=1))
            out[rr, cc] = patch_anomaly(b.model, x, mask, b.anomaly_px).numpy()
        self.anomaly = out

    def compare(self, classified: Path) -> dict:
        """How many cells of the block magpipe's map classes otherwise (no-data included), how close the
        largest of those came to a tie (the gap between its two highest mean votes), and the largest
        differences of its confidence and anomaly layers from the naive ones (float32 sums in another
        order: about 1e-6 of the values)."""
        y0, y1, x0, x1 = self.block
        ours = open_array(classified, "class")[y0:y1, x0:x1]
        diff = self.classes != ours
        top = np.sort(np.nan_to_num(self.mean_votes[diff], nan=0.0), axis=-1)
        same = ~diff
        conf = open_array(classified, "confidence")[y0:y1, x0:x1]
        anom = open_array(classified, "anomaly")[y0:y1, x0:x1]
        scale = float(np.nanmax(np.abs(self.anomaly))) or 1.0
        return {"naive_cells_per_s_runs": self.rates, "naive_cells_per_s": float(np.median(self.rates)),
                "naive_classes_cells_per_s_runs": self.class_rates,
                "naive_classes_cells_per_s": float(np.median(self.class_rates)),
                "naive_cells": self.n, "mismatched_cells": int(diff.sum()), "identical_to_naive": not diff.any(),
                "max_vote_margin_of_mismatches": float((top[:, -1] - top[:, -2]).max(initial=0)),
                "max_confidence_difference": _max_abs(conf[same], self.confidence[same]),
                "max_anomaly_difference_relative": _max_abs(anom, self.anomaly) / scale}


def window_mean(values: np.ndarray, valid: np.ndarray, r: int) -> np.ndarray:
    """Per interior cell of ``values`` (H, W, K), the mean over the valid cells of its (2r + 1)^2 window, summed
    directly window cell by window cell (no running sums: r^2 work per cell), in float64: (H - 2r, W - 2r, K),
    NaN where the cell itself has no data. Every cell is done at once for each window offset, so the cost is
    the arithmetic's, not the interpreter's."""
    H, W, K = values.shape
    side_y, side_x = H - 2 * r, W - 2 * r
    total = np.zeros((side_y, side_x, K))
    count = np.zeros((side_y, side_x, 1))
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            ok = valid[dy : dy + side_y, dx : dx + side_x, None]
            total += np.where(ok, values[dy : dy + side_y, dx : dx + side_x], 0.0)
            count += ok
    return np.where(valid[r : r + side_y, r : r + side_x, None], total / np.maximum(count, 1), np.nan)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """The largest |a - b| where both hold a number; infinite where only one of them does somewhere."""
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    both = ~np.isnan(a)
    return float(np.abs(a[both].astype("float64") - b[both]).max(initial=0.0))


def quartiles(values: list[float]) -> dict:
    """Median and interquartile range of repeats."""
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(med), "iqr": [float(q1), float(q3)]}


def measure_default(root: Path, size: int, cfg: RunConfig, *, repeats: int, workers: int, tile_px: int,
                    naive_cells: int, classify_timed) -> dict:
    """Train the default configuration on the run in ``root``, then ``repeats`` pairs of (its classification of
    every cell in a fresh process, the naive method on a central block): cells/s of each, the paired ratios'
    median and interquartile range, and whether the classes agree."""
    model = train_default(root, cfg)
    bundle, run = load_bundle(model), root / "default"
    naive = SmoothedNaive(bundle, run, int(np.sqrt(naive_cells)))
    ours = []
    for i in range(repeats):
        seconds, _ = classify_timed(run, model, run / "classified.zarr", workers, tile_px)
        ours.append(size * size / seconds)
        print(f"default, repeat {i + 1}/{repeats}: magpipe {ours[-1]:.0f} cells/s, naive {naive.timed():.0f} "
              f"cells/s (classes alone {naive.class_rates[-1]:.0f}; {naive.n} cells)", flush=True)
    cmp = naive.compare(run / "classified.zarr")
    ratios = [m / n for m, n in zip(ours, naive.rates, strict=True)]
    ratios_classes = [m / n for m, n in zip(ours, naive.class_rates, strict=True)]
    shutil.rmtree(run, ignore_errors=True)
    return {"config": chosen(bundle), "repeats": repeats, "cells_per_s_runs": ours,
            "cells_per_s": float(np.median(ours)), "cells_per_s_quartiles": quartiles(ours), **cmp,
            "ratio_runs": ratios, "ratio_vs_naive": float(np.median(ratios)), "ratio_quartiles": quartiles(ratios),
            "ratio_classes_runs": ratios_classes, "ratio_vs_naive_classes": float(np.median(ratios_classes)),
            "ratio_classes_quartiles": quartiles(ratios_classes)}
