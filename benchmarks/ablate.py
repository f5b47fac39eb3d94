"""Ablations of the autoencoder features on a labelled magpipe run, chosen on validation only.

What it varies (each against raw pixels of the same patch size and input channels):
- patch size (one autoencoder per size);
- which encoder layers become features (the same autoencoder, no retraining);
- multi-scale: the features of autoencoders of two or three patch sizes, concatenated;
- derived magnetic channels as extra inputs (``magpipe.derived``: vertical derivative,
  total horizontal derivative, tilt angle, analytic signal amplitude).

Preprocessing is the pipeline's own (inputs.zarr, its scalings, its patch sampler and
training). Honesty: the run's own spatial split holds out the test blocks. Variants are
ranked by validation balanced accuracy: the pipeline's spatially blocked cross-validation
of the training cells (``magpipe.splits.cv_folds``), each fold's blocks held out with the
same gap as the test blocks. Only then is every variant refitted on the whole training region and
scored once on the test blocks, so the test table is reported, never used to choose.
Every variant sees the same cells: the report's split seeds (averaged over ``--splits``
of them), with the blocks and gaps of the largest patch size tried. The "sparse" columns are the report's sparse-label setting
(``magpipe.evaluation.sparse_label_scores``): the test SVM refitted on 30 labelled cells
per class (the paper's regime), C and gamma fixed, over a few random draws.

Usage (after ``magpipe run ... --out RUN``)::

    python benchmarks/ablate.py RUN [--patch-sizes 15 31 45] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

from magpipe.config import RunConfig
from magpipe.evaluation import METRICS, score, sparse_label_scores
from magpipe.features import AEFeatures, RawFeatures, cell_features
from magpipe.io.schema import Layout
from magpipe.io.survey import read_label_grids, survey_attrs
from magpipe.splits import Cells, cv_folds, holdout_cells, labelled_split, split_config, training_cells
from magpipe.inputs import input_stack, training_patches
from magpipe.resolve import resolved_config, with_patch_px
from magpipe.training import fit_autoencoder
from magpipe.svm import fit_svm, predict_with_confidence

log = logging.getLogger("magpipe.ablate")
SPARSE_PER_CLASS = 30
DERIVED_SETS = ("field,tilt", "field,dz,thd,tilt,asa")


class Variant:
    """Features of one (patch size, input channels) choice: its trained autoencoder and raw pixels.

    Everything goes through the pipeline's own code: the run's inputs.zarr and scalings
    (``input_stack``), its patch sampler (``training_patches``), its training (``fit_autoencoder``)
    and its feature sets (``cell_features``), so a choice made here is a choice for ``magpipe run``.
    """

    def __init__(self, lay: Layout, names: list[str], p: int, cfg: RunConfig):
        t0 = time.perf_counter()
        cfg = cfg.model_copy(update={"patches": cfg.patches.model_copy(update={"patch_px": p, "inputs": tuple(names)})})
        self.arrays, self.scaling = input_stack(lay, tuple(names))
        _, _, raw = training_patches(lay, cfg.patches)
        self.model = fit_autoencoder(raw, self.scaling, cfg).model.cpu().eval()
        self.sets = {"ae": AEFeatures(self.model, range(self.model.n_layers), cfg.model.readout),
                     "raw": RawFeatures(p, len(names))}
        self.p = p
        self.train_s = time.perf_counter() - t0
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def features(self, cells: Cells, layers: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """AE features (selected layers) and raw pixels of cells."""
        key = id(cells)
        if key not in self._cache:
            self._cache[key] = cell_features(self.sets, self.arrays, self.scaling, cells.rows, cells.cols)
        ae, raw = self._cache[key]["ae"], self._cache[key]["raw"]
        sizes = [self.model.layer_feature_size(k, self.sets["ae"].readout) for k in range(self.model.n_layers)]
        starts = np.cumsum([0] + sizes)
        cols = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in layers])
        return ae[:, cols], raw


def fit_score(Xtr, train: Cells, Xte, test: Cells, cfg: RunConfig, p: int, K: int) -> dict:
    """The SVM of ``Xtr`` searched as the pipeline's (blocked CV with a gap: ``cfg``'s folds), scored on ``Xte``."""
    model, _ = fit_svm(Xtr, train.y, cv_folds(train, cfg), cfg.svm)
    pred, _ = predict_with_confidence(model, Xte)
    s = score(test.rows, test.cols, test.y, pred, patch_px=p, n_classes=K)
    return {m: s[m] for m in METRICS}


def splits(run: Path, cfg: RunConfig, grids) -> tuple[Cells, Cells, list, list[str]]:
    """Training and test cells of the report's split (``cfg.evaluate.seed``), and the validation folds of the
    training cells, all made by the pipeline's own functions (:mod:`magpipe.splits`) at ``cfg``'s patch size:
    pass the largest size tried, so blocks and gaps suit every variant."""
    split, grids = labelled_split(grids, cfg, need_test=True)  # drops classes like the report
    train, test = training_cells(split, grids.labels, cfg), holdout_cells(split, grids.labels, cfg)
    folds = [(f, v) for f, v in cv_folds(train, cfg) if np.unique(train.y[f]).size > 1]  # an SVM needs two classes
    if not folds:
        raise SystemExit(f"{run}: no validation fold leaves two classes to fit; label more, or use smaller blocks")
    return train, test, folds, grids.classes


def _matrix(parts, cells: Cells, kind: str) -> np.ndarray:
    feats = [v.features(cells, layers) for v, layers in parts]
    return np.concatenate([f[0 if kind == "ae" else 1] for f in feats], axis=1)


def evaluate(variants: dict, split_sets: list[tuple[Cells, Cells, Cells, Cells]], cfg: RunConfig, K: int,
             sparse_draws: int) -> list[dict]:
    """Validation, test and sparse-label test scores of every feature set, averaged over outer splits.

    ``variants``: name -> ([(variant, layers)], kind); kind 'ae' or 'raw'.
    """
    rows = []
    for name, (parts, kind) in variants.items():
        p = max(v.p for v, _ in parts)
        acc: dict[str, list[dict]] = {"val": [], "test": [], "sparse": []}
        for s, (train, test, folds) in enumerate(split_sets):
            Xtr, Xte = _matrix(parts, train, kind), _matrix(parts, test, kind)
            fold_scores = [fit_score(Xtr[f], train.take(f), Xtr[v], train.take(v), cfg, p, K) for f, v in folds]
            acc["val"].append({m: float(np.mean([x[m] for x in fold_scores])) for m in METRICS})
            acc["test"].append(fit_score(Xtr, train, Xte, test, cfg, p, K))
            # the report's sparse-label setting: the same draws for every variant, the SVM fixed (not searched)
            sparse = sparse_label_scores({name: Xtr}, {name: Xte}, train.y, train.blocks,
                                         (test.rows, test.cols, test.y), per_class=SPARSE_PER_CLASS,
                                         repeats=sparse_draws, patch_px=p, n_classes=K, svm_cfg=cfg.svm,
                                         seed=100 * s)
            acc["sparse"] += [{m: x[m] for m in METRICS} for x in sparse["draws"][name]]
        row = {"name": name, "kind": kind, "n_features": int(Xtr.shape[1])}
        for tag, scores in acc.items():
            row[tag] = {m: float(np.mean([x[m] for x in scores])) for m in METRICS}
            row[tag + "_std"] = {m: float(np.std([x[m] for x in scores])) for m in METRICS}
        log.info("%-34s val bal %.3f | test pix %.3f patch %.3f bal %.3f | sparse pix %.3f patch %.3f", name,
                 row["val"]["balanced_accuracy"], row["test"]["pixel_accuracy"], row["test"]["patch_accuracy"],
                 row["test"]["balanced_accuracy"], row["sparse"]["pixel_accuracy"], row["sparse"]["patch_accuracy"])
        rows.append(row)
    return rows


def table(rows: list[dict], chosen: str) -> str:
    lines = ["| features | n features | val balanced | test pixel | test patch | test balanced | "
             "sparse pixel | sparse patch | sparse balanced |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " **(chosen)**" if r["name"] == chosen else ""
        cells = [r[t][m] for t, m in (("val", "balanced_accuracy"), ("test", "pixel_accuracy"),
                                      ("test", "patch_accuracy"), ("test", "balanced_accuracy"),
                                      ("sparse", "pixel_accuracy"), ("sparse", "patch_accuracy"),
                                      ("sparse", "balanced_accuracy"))]
        lines.append(f"| {r['name']}{mark} | {r['n_features']} | " + " | ".join(f"{c:.1%}" for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="output directory of a `magpipe run` (survey.zarr with labels)")
    ap.add_argument("--config", type=Path, help="run config (default: RUN/config.json)")
    ap.add_argument("--patch-sizes", type=int, nargs="+", help="patch sizes (default: p/2, p, 3p/2 of the config's p)")
    ap.add_argument("--derived", nargs="*", default=list(DERIVED_SETS),
                    help="channel sets for derived inputs at the config's patch size, e.g. field,tilt")
    ap.add_argument("--splits", type=int, default=3, help="outer spatial splits averaged (default 3)")
    ap.add_argument("--sparse-draws", type=int, default=3,
                    help=f"draws of {SPARSE_PER_CLASS} training cells per class, per split (default 3)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = resolved_config(Layout(args.run), RunConfig.load(args.config or args.run / "config.json"))
    p0 = cfg.patches.patch_px
    smallest = 2 * len(cfg.model.channels) + 1  # one 3x3 conv per layer must fit
    sizes = sorted(set(args.patch_sizes or [max(smallest, (p0 // 2) | 1), p0, (3 * p0 // 2) | 1]))
    if p0 not in sizes:
        raise SystemExit(f"--patch-sizes must include the config's patch size {p0}")
    t0 = time.perf_counter()
    lay = Layout(args.run)
    split_sets, grids = [], read_label_grids(lay.survey)
    for i in range(args.splits):  # blocks and gaps of the largest size: every variant sees the same cells
        train, test, folds, classes = splits(args.run, with_patch_px(split_config(cfg, i), max(sizes)), grids)
        log.info("split %d: train %d, test %d cells; %d validation folds of the training cells", i, len(train.y),
                 len(test.y), len(folds))
        split_sets.append((train, test, folds))
    K = len(classes)
    names = sorted({c for s in args.derived for c in s.split(",")} | {"field"})
    input_stack(lay, tuple(names))  # every derived channel written once, into the run's inputs.zarr

    by_size = {p: Variant(lay, ["field"], p, cfg) for p in sizes}
    base = by_size[p0]
    n_layers = base.model.n_layers
    allL = list(range(n_layers))
    variants: dict = {}
    for p, v in by_size.items():
        variants[f"AE p{p}"] = ([(v, allL)], "ae")
        variants[f"raw p{p}"] = ([(v, allL)], "raw")
    for k in range(n_layers):
        variants[f"AE p{p0} layer {k}"] = ([(base, [k])], "ae")
    variants[f"AE p{p0} layers {n_layers - 2}-{n_layers - 1}"] = ([(base, allL[-2:])], "ae")
    if len(sizes) > 1:
        variants["AE multi-scale " + "+".join(map(str, sizes))] = ([(by_size[p], allL) for p in sizes], "ae")
        if sizes[0] != p0 and len(sizes) > 2:  # the smallest with the run's own size (not a size with itself)
            variants[f"AE multi-scale {sizes[0]}+{p0}"] = ([(by_size[sizes[0]], allL), (base, allL)], "ae")
    for s in args.derived:
        v = Variant(lay, s.split(","), p0, cfg)
        variants[f"AE p{p0} [{s}]"] = ([(v, allL)], "ae")
        variants[f"raw p{p0} [{s}]"] = ([(v, allL)], "raw")

    rows = evaluate(variants, split_sets, cfg, K, args.sparse_draws)
    ae_rows = [r for r in rows if r["kind"] == "ae"]
    chosen = max(ae_rows, key=lambda r: r["val"]["balanced_accuracy"])["name"]
    chosen_raw = max((r for r in rows if r["kind"] == "raw"), key=lambda r: r["val"]["balanced_accuracy"])["name"]
    print(table(rows, chosen))
    print(f"\nchosen on validation: AE '{chosen}', raw '{chosen_raw}'")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "run": str(args.run), "survey": str(survey_attrs(lay.survey).get("source")),
            "classes": classes, "config": cfg.model_dump(mode="json", exclude={"inputs", "runtime"}), "patch_sizes": sizes,
            "cells": [{"train": len(a.y), "test": len(b.y), "validation_folds": len(c)} for a, b, c in split_sets],
            "splits": args.splits, "sparse_per_class": SPARSE_PER_CLASS, "sparse_draws": args.sparse_draws,
            "preprocessing": "the pipeline's: inputs.zarr (chunked derived channels) and its scalings",
            "selection": f"highest validation balanced accuracy: {cfg.svm.cv_folds}-fold spatially blocked CV of "
                         "the training cells (magpipe.splits.cv_folds at the largest patch size: gap as between "
                         "training and test), mean over splits; test scores reported, never used to choose",
            "chosen": {"ae": chosen, "raw": chosen_raw}, "rows": rows,
            "train_seconds": {f"p{p}": v.train_s for p, v in by_size.items()},
            "seconds": time.perf_counter() - t0, "machine": platform.platform(), "python": sys.version.split()[0],
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
