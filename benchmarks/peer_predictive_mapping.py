"""The geological survey's own predictive-mapping method beside magpipe's map, on magpipe's splits.

The peer is the public tool the Rondônia sample comes from (``marcosbr/predictive-geology-maps``,
``predmap.py``): each cell classified from its own layer values, no context. As it runs it, here in our
own code:

- per-cell values of every layer; a multi-band layer (Landsat) reduced by PCA, fitted on all the
  survey's valid cells after standardisation, to the components that explain 95 % of its variance;
- at most 150 training cells per class (classes under 40 cells left out), standardised on them;
- SMOTE (imbalanced-learn defaults) on the training cells;
- XGBoost tuned by a random search over predmap's grid (its learning-rate typo "0,95" read as 0.95 and
  the invalid ``subsample`` 0 left out), 5-fold stratified CV on accuracy, as predmap does; 50 draws
  (predmap itself draws 10);
- the class is the argmax of the probabilities.

Beside it, a plain balanced random forest (300 trees) on the same standardised per-cell values: the
strongest per-cell control of the probe behind issue 25.

Both are trained on the training region of each of the run's spatial splits and scored on the very test
cells magpipe's report scored (``magpipe.splits``, the same seeds), so every difference is paired with
the deployed map's score on that split (``report.json``). Variants: every layer of the run, and the
same without the imagery group (``magpipe.layer_groups``).

    python benchmarks/peer_predictive_mapping.py RUN [--variants all no-imagery] [--draws 50] [--json F]

Needs the ``peer`` extra (xgboost-cpu, imbalanced-learn).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from magpipe.config import RunConfig
from magpipe.evaluation import paired, score
from magpipe.io.schema import FIELD, Layout
from magpipe.io.survey import open_inputs, read_label_grids, read_valid, survey_layers
from magpipe.layer_groups import layer_groups
from magpipe.resolve import resolved_config
from magpipe.splits import holdout_cells, labelled_split, split_config

PER_CLASS = 150  # predmap's max_samples_per_class
MIN_CELLS = 40  # predmap's discard_less_than
PCA_VARIANCE = 0.95  # predmap's pca_percent
XGB_GRID = {"booster": ["gbtree", "gblinear", "dart"], "learning_rate": [0.1, 0.2, 0.3, 0.5, 0.6, 0.8, 0.95],
            "max_depth": [2, 3, 6, 10, 20], "min_child_weight": [0, 1, 5, 10, 50],
            "max_delta_step": [0, 1, 5, 10, 50], "subsample": [0.5, 1.0], "sampling_method": ["uniform"]}


def cell_table(lay: Layout, names: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """(ny, nx, F) per-cell features: each single-band input as it is, each multi-band layer (``NAME_1 ..``)
    as the principal components of its standardised bands explaining :data:`PCA_VARIANCE` of their
    variance, fitted on the survey's valid cells (predmap fits on every cell of the raster)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    valid = read_valid(lay.survey)
    arrays = dict(zip(names, (np.asarray(a[:], dtype="float64") for a in open_inputs(lay, names))))
    bands: dict[str, list[str]] = {}
    for n in names:
        base, sep, tail = n.rpartition("_")
        bands.setdefault(base if sep and tail.isdigit() else n, []).append(n)
    cols, labels = [], []
    for base, members in bands.items():
        if len(members) == 1:
            cols.append(arrays[members[0]])
            labels.append(members[0])
            continue
        Z = StandardScaler().fit_transform(np.stack([arrays[m][valid] for m in members], axis=1))
        pca = PCA().fit(Z)
        k = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), PCA_VARIANCE) + 1)
        P = pca.transform(Z)[:, :k]
        for j in range(k):
            grid = np.full(valid.shape, np.nan)
            grid[valid] = P[:, j]
            cols.append(grid)
            labels.append(f"{base}_pc{j + 1}")
    return np.stack(cols, axis=-1), labels


def peer_cells(split, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training cells as predmap draws them: at most :data:`PER_CLASS` per class from the split's training
    region, classes with fewer than :data:`MIN_CELLS` there left out."""
    rng = np.random.default_rng(seed)
    y = labels[split.train_rows, split.train_cols]
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) >= MIN_CELLS:
            keep.append(rng.choice(idx, min(PER_CLASS, len(idx)), replace=False))
    keep = np.sort(np.concatenate(keep))
    return split.train_rows[keep], split.train_cols[keep]


def fit_peer(X: np.ndarray, y: np.ndarray, seed: int, draws: int):
    """predmap's pipeline on training features ``X`` (n, F) and classes ``y``: scaler, SMOTE, searched XGBoost.
    Returns a predict function."""
    from imblearn.over_sampling import SMOTE
    from sklearn.model_selection import RandomizedSearchCV
    from sklearn.preprocessing import LabelEncoder, StandardScaler
    from xgboost import XGBClassifier

    scaler = StandardScaler().fit(X)
    codes = LabelEncoder().fit(y)
    Xs, ys = SMOTE(random_state=seed, k_neighbors=min(5, np.bincount(codes.transform(y)).min() - 1)).fit_resample(
        scaler.transform(X), codes.transform(y))
    search = RandomizedSearchCV(XGBClassifier(eval_metric="mlogloss", random_state=seed, n_jobs=2), XGB_GRID,
                                n_iter=draws, random_state=seed, error_score=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(Xs, ys)
    return lambda Z: codes.inverse_transform(search.best_estimator_.predict_proba(scaler.transform(Z)).argmax(1))


def fit_forest(X: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    rf = RandomForestClassifier(300, class_weight="balanced", n_jobs=2, random_state=seed).fit(scaler.transform(X), y)
    return lambda Z: rf.predict(scaler.transform(Z))


def compare(run: Path, variants: list[str], draws: int) -> dict:
    lay = Layout(run)
    cfg = resolved_config(lay, RunConfig.load(lay.config))
    report = json.loads(lay.report.read_text())
    inputs = (FIELD, *survey_layers(lay.survey))
    groups = layer_groups(inputs, cfg.inputs.groups)
    grids0 = read_label_grids(lay.survey)
    K = len(grids0.classes)
    out = {"run": run.name, "machine": platform.machine(), "draws": draws, "per_class": PER_CLASS,
           "variants": {}, "splits": len(report["splits"])}
    deployed = {sp["seed"]: sp["balanced_accuracy"]["deployed"] for sp in report["splits"]}
    for variant in variants:
        names = tuple(n for c, n in enumerate(inputs)
                      if variant == "all" or c not in groups.get(variant.removeprefix("no-"), []))
        table, columns = cell_table(lay, names)
        rows = []
        for sp in report["splits"]:
            scfg = split_config(cfg, sp["seed"] - cfg.evaluate.seed)
            split, grids = labelled_split(grids0, scfg, need_test=True, warn_unscored=False)
            test = holdout_cells(split, grids.labels, scfg)
            r, c = peer_cells(split, grids.labels, sp["seed"])
            X, y = table[r, c], grids.labels[r, c]
            ok = np.isfinite(X).all(1)
            Xt = np.nan_to_num(table[test.rows, test.cols])
            t0 = time.perf_counter()
            scores = {"peer": score(test.rows, test.cols, test.y, fit_peer(X[ok], y[ok], sp["seed"], draws)(Xt),
                                    patch_px=report["patch_px"], n_classes=K),
                      "forest": score(test.rows, test.cols, test.y, fit_forest(X[ok], y[ok], sp["seed"])(Xt),
                                      patch_px=report["patch_px"], n_classes=K)}
            row = {"seed": sp["seed"], "n_train": int(ok.sum()), "n_test": int(len(test.y)),
                   "seconds": time.perf_counter() - t0,
                   **{k: v["balanced_accuracy"] for k, v in scores.items()}, "deployed": deployed[sp["seed"]]}
            rows.append(row)
            print(f"{variant}: split {sp['seed']}: peer {row['peer']:.3f}  forest {row['forest']:.3f}  "
                  f"magpipe deployed {row['deployed']:.3f}", flush=True)
        runs = [{k: {"balanced_accuracy": row[k]} for k in ("peer", "forest", "deployed")} for row in rows]
        out["variants"][variant] = {
            "inputs": list(names), "features": columns, "per_split": rows,
            **{k: {"mean": float(np.mean([row[k] for row in rows])), "std": float(np.std([row[k] for row in rows]))}
               for k in ("peer", "forest", "deployed")},
            "deployed_minus_peer": paired("deployed", "peer", "balanced_accuracy", runs),
            "deployed_minus_forest": paired("deployed", "forest", "balanced_accuracy", runs)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="output directory of a finished `magpipe run` of a survey stack")
    ap.add_argument("--variants", nargs="+", default=["all", "no-imagery"],
                    help="'all' layers, or 'no-GROUP' without one layer group (magpipe.layer_groups)")
    ap.add_argument("--draws", type=int, default=50, help="random-search draws of XGBoost's hyperparameters")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    try:
        import imblearn  # noqa: F401
        import xgboost  # noqa: F401
    except ImportError:
        print("error: the peer's method needs the `peer` extra: pip install -e '.[peer]'", file=sys.stderr)
        return 2
    result = compare(args.run, args.variants, args.draws)
    for v, r in result["variants"].items():
        d, f = r["deployed_minus_peer"], r["deployed_minus_forest"]
        print(f"{v}: magpipe deployed {r['deployed']['mean']:.3f}, peer {r['peer']['mean']:.3f}, forest "
              f"{r['forest']['mean']:.3f}; deployed - peer {100 * d['mean_diff']:+.1f} ± {100 * d['sd']:.1f} "
              f"({d['wins']}/{d['n']}), deployed - forest {100 * f['mean_diff']:+.1f} ± {100 * f['sd']:.1f} "
              f"({f['wins']}/{f['n']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
