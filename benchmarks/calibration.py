"""Does a confidence of 0.7 mean "right 7 times in 10"? The map's confidence against the way it was computed
before, on every spatial split of a finished run.

For each split of the run's evaluation (``evaluate.splits`` seeds) the deployed feature set's SVM is fitted
on the split's training cells with the run's search, then its confidence on the split's test cells is
calibrated four ways and scored by expected calibration error (:func:`magpipe.metrics.calibration`):

- ``one-vs-rest``: the method before 2026-12-07 (one Platt sigmoid per class, fitted one class against
  the rest on 3 stratified folds' decisions, normalised to sum to 1), rebuilt here as the baseline;
- ``top-label, stratified``: a sigmoid per voted class (:func:`magpipe.svm.top_label_sigmoids`) on the
  same stratified folds, cells weighted alike;
- ``top-label, spatial``: on the search's spatially blocked folds (:func:`magpipe.splits.cv_folds`), where
  two or more of them hold every class on their fitting side (else on the stratified folds, as magpipe
  does; each split's ``calibration_folds`` says which);
- ``top-label, spatial, weighted``: also weighted to the training region's class mix, what magpipe does
  (:class:`magpipe.svm.VoteWithProbabilities`, :func:`magpipe.svm.calibrated`).

Reported paired over the splits: mean, sd, and wins of each against the baseline; every split in the JSON.

    python benchmarks/calibration.py OUT [--json FILE]   # OUT: a folder `magpipe run` or `demo` wrote
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from magpipe.config import RunConfig
from magpipe.features import cell_features, part_sizes
from magpipe.io.schema import Layout
from magpipe.metrics import calibration
from magpipe.process import configure_process
from magpipe.resolve import resolved_config
from magpipe.split_scores import split_cells
from magpipe.splits import cv_folds, split_config
from magpipe.stages.evaluate import read_run_inputs
from magpipe.svm import calibrated, fit_svm, out_of_fold_decisions, prior_weights, top_label_sigmoids

METHODS = ("one-vs-rest", "top-label, stratified", "top-label, spatial", "top-label, spatial, weighted")


def one_vs_rest(d: np.ndarray, y: np.ndarray, classes: np.ndarray, d_test: np.ndarray) -> np.ndarray:
    """The baseline: each class's sigmoid fitted against the rest on every out-of-fold cell, normalised;
    the probabilities (n, K) of ``d_test``."""
    p = np.column_stack([LogisticRegression(C=1e4).fit(d[:, k : k + 1], (y == c).astype(int))
                         .predict_proba(d_test[:, k : k + 1])[:, 1] for k, c in enumerate(classes)])
    return p / p.sum(axis=1, keepdims=True)


def top_label(d, y, classes, w, d_test) -> np.ndarray:
    slope, intercept = top_label_sigmoids(d, y, classes, w)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-(d_test * slope + intercept)))


def split_ece(cfg: RunConfig, bundle, arrays, grids) -> dict:
    """Each method's ECE (and the accuracy) on one split's test cells."""
    cells = split_cells(cfg, grids)
    train, test, name = cells.train, cells.test, bundle.feature_set
    fs = bundle.named_features(name)
    X_tr = cell_features({name: fs}, arrays, bundle.scaling, train.rows, train.cols)[name]
    X_te = cell_features({name: fs}, arrays, bundle.scaling, test.rows, test.cols)[name]
    folds = cv_folds(train, cfg)
    svm, info = fit_svm(X_tr, train.y, folds, cfg.svm, parts=part_sizes(fs), calibrate=False)
    model = calibrated(svm, train.y, folds, train.mix).fit(X_tr, train.y)  # what magpipe deploys
    # the spatial folds, where two or more hold every class on their fitting side; else stratified ones
    spatial = isinstance(model.folds, list)
    d_te = model.decision_function(X_te)
    vote = d_te.argmax(axis=1)
    right = model.classes_[vote] == test.y
    stratified = list(StratifiedKFold(3).split(X_tr, train.y))
    d_s, y_s = out_of_fold_decisions(svm, X_tr, train.y, stratified)
    d_b, y_b = out_of_fold_decisions(svm, X_tr, train.y, model.folds)
    proba = {
        "one-vs-rest": one_vs_rest(d_s, y_s, model.classes_, d_te),
        "top-label, stratified": top_label(d_s, y_s, model.classes_, np.ones(len(y_s)), d_te),
        "top-label, spatial": top_label(d_b, y_b, model.classes_, np.ones(len(y_b)), d_te),
        "top-label, spatial, weighted": top_label(d_b, y_b, model.classes_,
                                                  prior_weights(train.y, y_b, train.mix), d_te),
    }
    conf = {m: p[np.arange(len(vote)), vote] for m, p in proba.items()}
    assert np.allclose(conf["top-label, spatial, weighted"], model.proba_from_decision(d_te).max(axis=1))
    ece = {m: calibration(right, c)["ece"] for m, c in conf.items()}
    return {"seed": cfg.evaluate.seed, "feature_set": name, "kernel": info["kernel"], "C": info["C"],
            "calibration_folds": "spatial" if spatial else f"{model.folds} stratified",
            "accuracy": float(right.mean()), "ece": ece}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a finished run's folder (its config.json and model/)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    configure_process()
    lay = Layout(args.out)
    cfg = resolved_config(lay, RunConfig.load(lay.config))  # patch_px: auto as the run chose it
    bundle, arrays, grids = read_run_inputs(str(args.out), cfg)
    splits = []
    for i in range(cfg.evaluate.splits):
        splits.append(split_ece(split_config(cfg, i), bundle, arrays, grids))
        print(f"split {splits[-1]['seed']}: accuracy {splits[-1]['accuracy']:.3f}, ECE "
              + ", ".join(f"{m} {v:.3f}" for m, v in splits[-1]["ece"].items()), flush=True)
    base = np.array([s["ece"]["one-vs-rest"] for s in splits])
    summary = {}
    for m in METHODS:
        v = np.array([s["ece"][m] for s in splits])
        summary[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                      "wins_vs_one_vs_rest": int((v < base).sum()), "n": len(v)}
        print(f"{m:30s} ECE {100 * v.mean():5.1f} ± {100 * summary[m]['sd']:4.1f} points, lower than one-vs-rest "
              f"on {summary[m]['wins_vs_one_vs_rest']} of {len(v)} splits")
    result = {"run": args.out.name, "feature_set": bundle.feature_set, "summary": summary, "splits": splits,
              "machine": f"{platform.machine()}, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d")}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
