"""Training objectives and readouts of the encoder, each against its own untrained copy and window statistics.

For every (objective, readout) variant, an encoder is trained on the run's own patches with the
pipeline's code (``fit_autoencoder``, second views from ``second_views``), then scored exactly as
``magpipe evaluate`` scores feature sets (``evaluate_split``): the same spatial splits, the same
cells, an SVM per (set, split) with the same blocked-CV search. Two numbers per variant and split:

- validation: the blocked-CV balanced accuracy of the SVM search on the split's training region
  (what a choice may be made on);
- test: balanced accuracy on the split's held-out blocks (reported, never used to choose).

The default variant is the one with the best mean validation score of ``ae``; the paired test
differences against ``random`` (same variant, untrained) and ``stats`` say whether it earns its place.

Usage (after ``magpipe run ... --out RUN``)::

    python benchmarks/objectives.py RUN [--variants reconstruct:mean_centre masked:mean_std_centre] [--json F]
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

from magpipe.bundle import ModelBundle, load_bundle
from magpipe.config import RunConfig
from magpipe.errors import DataValidationError
from magpipe.evaluation import paired
from magpipe.io import schema as S
from magpipe.io.schema import Layout
from magpipe.io.stores import open_store
from magpipe.io.survey import read_label_grids
from magpipe.model import resolve_layers
from magpipe.splits import split_config
from magpipe.split_scores import evaluate_split
from magpipe.inputs import input_stack
from magpipe.resolve import resolved_config
from magpipe.training import fit_autoencoder, second_views

log = logging.getLogger("magpipe.objectives")
VARIANTS = ("reconstruct:mean_centre", "reconstruct:mean_std_centre", "masked:mean_std_centre",
            "contrastive:mean_std_centre")
SETS = ("ae", "random", "stats", "ae+stats")


def variant_scores(lay: Layout, cfg: RunConfig, objective: str, readout: str, n_splits: int) -> dict:
    """Train one variant's encoder and score its feature sets on ``n_splits`` spatial splits."""
    model_cfg = cfg.model.model_copy(update={"objective": objective, "readout": readout})
    svm_cfg = cfg.svm.model_copy(update={"features": "ae", "candidates": ("ae",)})
    ev_cfg = cfg.evaluate.model_copy(update={"sparse_per_class": 0, "layer_ablation": False})
    cfg = cfg.model_copy(update={"model": model_cfg, "svm": svm_cfg, "evaluate": ev_cfg})
    pds = open_store(lay.patches)
    names = tuple(pds.attrs[S.INPUTS])
    arrays, scaling = input_stack(lay, names)
    t0 = time.perf_counter()
    views = second_views(arrays, pds["row"].values, pds["col"].values, cfg)
    result = fit_autoencoder(pds["patch"].values, scaling, cfg, views=views)
    train_s = time.perf_counter() - t0
    grids = read_label_grids(lay.survey)
    bundle = ModelBundle(result.model, None, resolve_layers(result.model, cfg.model.layers), scaling, grids.classes,
                         cfg.model.anomaly_px, meta={"config": cfg.saved()}, inputs=names, readout=readout,
                         stats_reach=load_bundle(lay.model).stats_reach)  # the run's window statistics
    runs, val = [], {n: [] for n in SETS}
    for i in range(n_splits):
        try:
            sp = evaluate_split(split_config(cfg, i), bundle, arrays, grids, deployed=False)
        except DataValidationError as exc:  # as `magpipe evaluate` does; the same splits fail for every variant
            log.warning("split %d skipped: %s", i, exc)
            continue
        runs.append({n: sp["scores"][n] for n in SETS})
        for n in SETS:
            val[n].append(sp["svm"][n]["cv_balanced_accuracy"])
        log.info("%s/%s split %d: %s", objective, readout, i, {n: round(sp["scores"][n]["balanced_accuracy"], 3)
                                                               for n in SETS})
    return {"objective": objective, "readout": readout, "train_seconds": train_s,
            "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            "validation": {n: float(np.mean(v)) for n, v in val.items()},
            "test": {n: float(np.mean([r[n]["balanced_accuracy"] for r in runs])) for n in SETS},
            "test_std": {n: float(np.std([r[n]["balanced_accuracy"] for r in runs])) for n in SETS},
            "paired": [paired(a, b, "balanced_accuracy", runs) for a, b in (("ae", "random"), ("ae", "stats"),
                                                                            ("ae+stats", "stats"))]}


def table(rows: list[dict], chosen: int) -> str:
    """Markdown: one row per variant, validation and test balanced accuracy and the paired differences."""
    out = ["| objective | readout | val ae | test ae | test random | test stats | test ae+stats | ae - random | "
           "ae - stats | ae+stats - stats |", "|---" * 10 + "|"]
    for i, r in enumerate(rows):
        d = {(p["a"], p["b"]): p for p in r["paired"]}
        diffs = [f"{100 * d[k]['mean_diff']:+.1f} ± {100 * d[k]['sd']:.1f} ({d[k]['wins']}/{d[k]['n']})"
                 for k in (("ae", "random"), ("ae", "stats"), ("ae+stats", "stats"))]
        mark = " (chosen)" if i == chosen else ""
        out.append(f"| {r['objective']}{mark} | {r['readout']} | {r['validation']['ae']:.1%} | "
                   + " | ".join(f"{r['test'][n]:.1%}" for n in SETS) + " | " + " | ".join(diffs) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="output directory of a `magpipe run`")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="objective:readout pairs")
    ap.add_argument("--splits", type=int, default=5, help="spatial splits (default 5)")
    ap.add_argument("--epochs", type=int, help="override model.epochs (train longer)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    lay = Layout(args.run)
    cfg = resolved_config(lay, RunConfig.load(lay.config))
    if args.epochs:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"epochs": args.epochs})})
    rows = []
    for v in args.variants:
        objective, readout = v.split(":")
        rows.append(variant_scores(lay, cfg, objective, readout, args.splits))
    chosen = int(np.argmax([r["validation"]["ae"] for r in rows]))
    print(table(rows, chosen))
    if args.json:
        meta = {"run": args.run.name, "patch_px": cfg.patches.patch_px, "epochs": cfg.model.epochs,
                "n_patches": cfg.patches.n_patches, "splits": args.splits, "machine": platform.machine(),
                "chosen_on_validation": rows[chosen]["objective"] + ":" + rows[chosen]["readout"]}
        args.json.write_text(json.dumps({**meta, "variants": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
