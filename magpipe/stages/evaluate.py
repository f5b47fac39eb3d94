"""Stage ``evaluate``: the learned features against their controls on spatial holdouts -> ``OUT/report.*``.

Every feature set is scored on the same splits and the same cells: ``ae`` (the trained
encoder), ``raw`` (the paper's baseline), ``stats`` (window statistics, the strong classical
control), ``random`` (the same encoder untrained: what training added), ``ae+stats``, and
``deployed``: the set the map uses, chosen afresh on each split's training region when
``svm.features`` is ``auto``. Metrics are means over ``evaluate.splits`` random spatial splits, with paired
differences; per-class F1, the confusion matrices and the embedding view come from the first
(the deployed model's) split.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import numpy as np

from magpipe.bundle import ModelBundle, load_bundle, read_bundle_meta
from magpipe.cluster import worker_storage_options
from magpipe.config import RunConfig
from magpipe.errors import DataValidationError
from magpipe.evaluation import METRICS, best_by_validation, paired, score, sparse_label_scores, summarise, verdict
from magpipe.explore import embedding_2d, label_next, require_embedding, top_anomalies
from magpipe.features import FeatureSet, cell_features, part_sizes, stat_windows
from magpipe.layer_groups import layer_groups, occluded
from magpipe.io import schema as S
from magpipe.io.location import absolute, storage_scope
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, store_attrs
from magpipe.io.survey import LabelGrids, read_label_grids, survey_attrs
from magpipe.locking import locks_output
from magpipe.splits import cv_folds, holdout_cells, labelled_split, split_config, split_gap_px, training_cells
from magpipe.inputs import input_stack
from magpipe.progress import progress as steps
from magpipe.resolve import patch_size_record, resolved_config
from magpipe.selection import candidates, choose_smoothing
from magpipe.smoothing import block_predictions
from magpipe.svm import fit_svm, predict_with_confidence

log = logging.getLogger("magpipe")

FEATURE_SETS = ("ae", "raw")  # the learned features and the paper's baseline: the report's headline keys
SCORED = ("ae", "raw", "stats", "random", "ae+stats")  # always scored: the encoder and its controls
CLASSICAL = ("raw", "stats")
OTHER_WEIGHT = {"balanced": "prior", "prior": "balanced"}


def evaluation_sets(bundle: ModelBundle, cfg: RunConfig) -> dict[str, FeatureSet]:
    """Every feature set scored: the trained encoder ``ae``, its controls, the candidates of the deployed
    choice and the bundle's own set, all of the bundle's encoder, patch size and inputs."""
    names = dict.fromkeys((*SCORED, *candidates(cfg), bundle.feature_set))
    return {name: bundle.named_features(name) for name in names}


def evaluate_split(cfg: RunConfig, bundle: ModelBundle, arrays: list, grids: LabelGrids, *, deployed: bool) -> dict:
    """Every feature set of :func:`evaluation_sets` on one spatial split (``cfg.evaluate.seed``).

    The deployed split scores the bundle's own SVM for its feature set; every other (set, split) refits
    its SVM on the split's training cells with the same search, so all feature sets are treated alike.
    ``deployed`` is the procedure the map uses, repeated on each split: under ``svm.features: auto``
    the candidate with the best blocked CV on that split's training cells (its test cells unseen).

    ``arrays`` are the C input grids (2-D, y/x) in ``bundle.inputs`` order. Returns the split's
    ``seed``, ``classes``, ``scores`` (every set, ``deployed`` and ``majority``:
    :func:`magpipe.evaluation.score` dicts; ``deployed@prior`` or ``deployed@balanced``: the deployed set
    under the other class weighting, unsmoothed; ``deployed@unsmoothed``: the deployed set without the
    map's smoothing), ``chosen`` (the set ``deployed`` is), ``smooth_px`` (its smoothing radius, chosen
    as the map's is: :func:`magpipe.selection.choose_smoothing`), ``unscored`` (labelled classes with no
    scored test cell on this split: too few training cells, or none held out), ``svm`` search summaries, cell
    counts, ``sparse`` scores (or None), and the deployed set's ``test_features`` (n, F) float32 with their
    ``test_labels`` (n,) for the embedding view.
    Raises DataValidationError when a class falls short on one side of the split.
    """
    labelled = np.flatnonzero(np.bincount(grids.labels.ravel(), minlength=len(grids.classes) + 1)[1:])
    split, grids = labelled_split(grids, cfg, need_test=True)
    train, test = training_cells(split, grids.labels, cfg), holdout_cells(split, grids.labels, cfg)
    scored = set(np.unique(test.y).tolist())
    unscored = [grids.classes[k] for k in labelled if k + 1 not in scored]
    p, K = bundle.patch_px, len(grids.classes)
    sets = evaluation_sets(bundle, cfg)
    parts = {name: part_sizes(fs) for name, fs in sets.items()}
    X_te = cell_features(sets, arrays, bundle.scaling, test.rows, test.cols)
    X_tr = cell_features(sets, arrays, bundle.scaling, train.rows, train.cols)
    log.debug("evaluate: split seed %d, %d training, %d test cells", cfg.evaluate.seed, len(train.y), len(test.y))
    models, infos, folds = {}, {}, cv_folds(train, cfg)
    for name in sets:
        if name == bundle.feature_set and deployed:
            models[name], infos[name] = bundle.svm, bundle.meta.get("svm", {})
        else:
            models[name], infos[name] = fit_svm(X_tr[name], train.y, folds, cfg.svm, parts=parts[name])
    scores = {name: score(test.rows, test.cols, test.y, predict_with_confidence(models[name], X_te[name])[0],
                          patch_px=p, n_classes=K) for name in sets}
    chosen = bundle.feature_set if deployed else best_by_validation(infos, candidates(cfg))
    # the map's smoothing: the bundle's radius, or the same choice made on this split's training cells
    radius = bundle.smooth_px if deployed else \
        choose_smoothing(sets[chosen], arrays, bundle.scaling, train, infos[chosen], cfg,
                         level=logging.DEBUG)[0]
    scores["deployed"] = scores[chosen]
    if radius:
        smoothed = block_predictions(models[chosen], sets[chosen], bundle.scaling, arrays, test.rows, test.cols,
                                     (radius,), block_px=cfg.evaluate.block_patches * p)[radius]
        scores["deployed"] = score(test.rows, test.cols, test.y, smoothed, patch_px=p, n_classes=K)
    # the trade-off of the class weighting: the deployed set under the other one, on the same cells
    other = OTHER_WEIGHT[cfg.svm.class_weight]
    alt, _ = fit_svm(X_tr[chosen], train.y, folds, cfg.svm.model_copy(update={"class_weight": other}),
                     parts=parts[chosen])
    scores[f"deployed@{other}"] = score(test.rows, test.cols, test.y, predict_with_confidence(alt, X_te[chosen])[0],
                                        patch_px=p, n_classes=K)
    scores["deployed@unsmoothed"] = scores[chosen]  # what the smoothing added, on the same cells
    groups = layer_groups(bundle.inputs, cfg.inputs.groups) if cfg.evaluate.layer_ablation else {}
    if len(groups) > 1:  # the deployed set (unsmoothed) with each group of layers held at its mean
        fixed = cfg.svm.model_copy(update={"C": (infos[chosen]["C"],),
                                           "gamma_scale": (infos[chosen]["gamma"] * X_tr[chosen].shape[1],)})
        for group, channels in groups.items():
            hidden = occluded(bundle.scaling, channels)
            tr, te = (cell_features({chosen: sets[chosen]}, arrays, hidden, c.rows, c.cols)[chosen]
                      for c in (train, test))
            model, _ = fit_svm(tr, train.y, folds, fixed, parts=parts[chosen])
            scores[f"without {group}"] = score(test.rows, test.cols, test.y,
                                               predict_with_confidence(model, te)[0], patch_px=p, n_classes=K)
    # the floor any classifier must clear: the most common class of the (unsubsampled) training region
    majority = np.bincount(grids.labels[split.train_rows, split.train_cols]).argmax()
    scores["majority"] = score(test.rows, test.cols, test.y, np.full_like(test.y, majority), patch_px=p, n_classes=K)
    sparse = None
    if cfg.evaluate.sparse_per_class:
        sparse = sparse_label_scores(X_tr, X_te, train.y, train.blocks, (test.rows, test.cols, test.y),
                                     per_class=cfg.evaluate.sparse_per_class, repeats=cfg.evaluate.sparse_repeats,
                                     patch_px=p, n_classes=K, svm_cfg=cfg.svm, seed=cfg.evaluate.seed, parts=parts)
        sparse["draws"]["deployed"] = sparse["draws"][chosen]
    return {"seed": cfg.evaluate.seed, "classes": grids.classes, "scores": scores, "chosen": chosen,
            "smooth_px": int(radius), "unscored": unscored, "svm": infos,
            "n_train": int(len(train.y)), "n_test": int(len(test.y)), "n_test_available": int(split.test_rows.size),
            "sparse": sparse, "test_features": X_te[chosen], "test_labels": test.y}


def score_splits(cfg: RunConfig, bundle: ModelBundle, arrays: list, grids: LabelGrids, *, out: str | None = None,
                 client=None) -> tuple[list[dict], list]:
    """Every evaluation split (the first is the deployed model's); a later split where a class falls
    short on one side is skipped with a warning and listed.

    With a ``client`` (a ``distributed.Client``) each split is a task on its cluster, reading the run in
    ``out`` from its stores (:func:`split_task`): the same results as in this process, split for split.

    Returns the :func:`evaluate_split` results and the skipped splits' ``{"seed", "reason"}``.
    """
    n = cfg.evaluate.splits
    if client is None:
        results = (_split_or_skip(cfg, i, bundle, arrays, grids) for i in range(n))
    else:
        from distributed import as_completed

        conf, storage = cfg.parameters(), worker_storage_options(client)
        futures = [client.submit(split_task, str(out), conf, i, storage, pure=False,
                                 key=f"evaluate-split-{i}-{uuid.uuid4().hex[:8]}") for i in range(n)]
        done: dict[int, dict] = {}

        def in_order():  # each split as soon as it and those before it are done, for the progress line
            nxt = 0
            for fut in as_completed(futures, loop=client.loop):
                done[futures.index(fut)] = fut.result()
                while nxt in done:
                    yield done.pop(nxt)
                    nxt += 1
        results = in_order()
    splits, skipped = [], []
    with steps("evaluate", n, "splits") as step:
        for i, result in enumerate(results):
            if "skipped" in result:
                log.warning("evaluate: split seed %d skipped: %s", cfg.evaluate.seed + i, result["skipped"])
                skipped.append({"seed": cfg.evaluate.seed + i, "reason": result["skipped"]})
                step()
            else:
                splits.append(result)
                step(balanced=result["scores"]["deployed"]["balanced_accuracy"])
    return splits, skipped


def _split_or_skip(cfg: RunConfig, i: int, bundle: ModelBundle, arrays: list, grids: LabelGrids) -> dict:
    """Split ``i`` (0: the deployed model's) scored, or ``{"skipped": reason}`` where a later split cannot be."""
    if i == 0:
        return evaluate_split(cfg, bundle, arrays, grids, deployed=True)
    try:
        return evaluate_split(split_config(cfg, i), bundle, arrays, grids, deployed=False)
    except DataValidationError as exc:
        return {"skipped": str(exc)}


def split_task(out: str, conf: dict, i: int, storage: dict | None = None) -> dict:
    """One split on a Dask worker: the run's model, inputs and labels read from its stores in ``out``
    (``storage``: the driver's storage options, for the workers of its own LocalCluster only)."""
    cfg = RunConfig.model_validate(conf)
    with storage_scope(storage):
        lay = Layout(out)
        bundle = load_bundle(lay.model, patch_px=cfg.patches.patch_px)
        arrays, _ = input_stack(lay, bundle.inputs)
        return _split_or_skip(cfg, i, bundle, arrays, read_label_grids(lay.survey))


def layer_group_table(cfg: RunConfig, bundle: ModelBundle, splits: list[dict]) -> dict:
    """Group -> its inputs, the deployed set's balanced accuracy without them (mean, sd over the splits) and
    the paired difference full stack - without (positive: the group helps); empty for fewer than two groups."""
    groups = layer_groups(bundle.inputs, cfg.inputs.groups)
    runs = [sp["scores"] for sp in splits]
    if len(groups) < 2 or any(f"without {g}" not in r for g in groups for r in runs):
        return {}
    out = {}
    for group, channels in groups.items():
        without = np.array([r[f"without {group}"]["balanced_accuracy"] for r in runs])
        out[group] = {"inputs": [bundle.inputs[c] for c in channels],
                      "balanced_accuracy_without": {"mean": float(without.mean()), "std": float(without.std())},
                      "full_minus_without": paired("deployed@unsmoothed", f"without {group}", "balanced_accuracy",
                                                   runs)}
    return out


def build_report(cfg: RunConfig, bundle: ModelBundle, splits: list[dict], skipped: list, lay: Layout,
                 size: dict | None = None) -> dict:
    """report.json's content: headline means, per-split scores, the first split's details, and what to look at."""
    first, p = splits[0], bundle.patch_px
    classes = first["classes"]
    ae, raw, dep = first["scores"]["ae"], first["scores"]["raw"], first["scores"]["deployed"]
    names = list(first["scores"])
    everything = summarise({name: [sp["scores"][name] for sp in splits] for name in names})
    headline = {key: {n: by_set[n] for n in (*FEATURE_SETS, "majority")} for key, by_set in everything.items()}
    sparse = None
    if cfg.evaluate.sparse_per_class:
        draws = {name: [d for sp in splits for d in sp["sparse"]["draws"][name]]
                 for name in names if name in first["sparse"]["draws"]}
        sparse = {"per_class": cfg.evaluate.sparse_per_class, "repeats": len(draws["ae"]), **summarise(draws)}
    return {
        "classes": classes, "n_train": first["n_train"], "n_test": first["n_test"],
        "n_test_available": first["n_test_available"], "patch_px": p, "layers": bundle.layers,
        **headline,
        "n_splits": len(splits),
        "splits_skipped": skipped,
        "unscored_classes": {c: sum(c in sp["unscored"] for sp in splits)
                             for c in dict.fromkeys(c for sp in splits for c in sp["unscored"])},
        "splits": [{"seed": sp["seed"], "n_train": sp["n_train"], "n_test": sp["n_test"], "unscored": sp["unscored"],
                    **{m: {n: sp["scores"][n][m] for n in names} for m in METRICS}} for sp in splits],
        **controls(everything, [sp["scores"] for sp in splits], deployed(cfg, bundle, splits, size)),
        "layer_groups": layer_group_table(cfg, bundle, splits),
        "f1": {"ae": dict(zip(classes, ae["f1"])), "raw": dict(zip(classes, raw["f1"])),
               "deployed": dict(zip(classes, dep["f1"]))},
        "confusion": {"ae": ae["confusion"], "raw": raw["confusion"], "deployed": dep["confusion"]},
        "n_test_patches": ae["n_patches"],
        "sparse": sparse,
        "svm": first["svm"],
        "training": bundle.meta.get("training", {}),
        "split": {"block_px": cfg.evaluate.block_patches * p, "gap_px": split_gap_px(cfg),
                  "test_fraction": cfg.evaluate.test_fraction, "seed": cfg.evaluate.seed},
        "anomalies": top_anomalies(lay.classified, cfg.evaluate.top_k, patch_px=p),
        "label_next": label_next(lay.classified, cfg.evaluate.top_k, block=cfg.evaluate.block_patches * p),
    }


def deployed(cfg: RunConfig, bundle: ModelBundle, splits: list[dict], size: dict | None = None) -> dict:
    """What the map uses and how each part was chosen: the report's ``deployed``; ``size`` is the patch
    size's selection (:func:`magpipe.resolve.patch_size_record`) when it was chosen."""
    auto = cfg.svm.features == "auto"
    smoothing = bundle.meta.get("selection", {}).get("smoothing", {})
    reach = bundle.meta.get("selection", {}).get("stats_reach", {})
    return {"features": bundle.feature_set, "patch_px": bundle.patch_px, "smooth_px": bundle.smooth_px,
            "stats_reach": bundle.stats_reach, "stats_windows": list(stat_windows(bundle.patch_px, bundle.stats_reach)),
            "objective": bundle.meta.get("training", {}).get("objective", "reconstruct"), "readout": bundle.readout,
            "chosen_by": {"features": "validation: blocked CV on the training region, among "
                          + ", ".join(candidates(cfg)) if auto else "configuration",
                          "patch_px": "validation on the first split's training region, among "
                          + ", ".join(map(str, size["sizes"])) if size else "configuration",
                          "smooth_px": "validation: blocked CV on the training region, among radii "
                          + ", ".join(smoothing["cv"]) if smoothing.get("cv") else "configuration",
                          "stats_reach": "validation: blocked CV of stats on the first split's training region, "
                          "among " + ", ".join(reach["cv"]) if reach.get("cv") else "configuration",
                          "objective": "configuration"},
            "stats_reach_validation": reach.get("cv", {}),
            "validation": bundle.meta.get("selection", {}).get("cv", {}),
            "smoothing_validation": smoothing.get("cv", {}),
            "per_split_smooth_px": [sp["smooth_px"] for sp in splits],
            "patch_size_validation": size["validation"] if size else {},
            "per_split": [sp["chosen"] for sp in splits]}


def controls(summary: dict, runs: list[dict], deployed: dict) -> dict:
    """The report's comparison against controls: ``feature_sets`` (name -> metric -> mean, std),
    ``paired`` differences over the splits, ``deployed`` (what the map uses and how it was chosen) and
    ``headline``, the comparison in words."""
    sets = {n: {m: {"mean": summary[m][n], "std": summary[f"{m}_std"][n]} for m in METRICS}
            for n in summary[METRICS[0]]}
    best = max(CLASSICAL, key=lambda n: summary["balanced_accuracy"][n])
    weighted = next(f"deployed@{w}" for w in OTHER_WEIGHT if f"deployed@{w}" in sets)
    pairs = [("ae", "random"), ("ae", best), ("ae+stats", "stats"), ("deployed", best), ("deployed", weighted),
             ("deployed", "deployed@unsmoothed"), ("ae", "raw")]
    pairs = list(dict.fromkeys(pairs))  # ae against raw once, when raw is the best classical set
    diffs = [paired(a, b, m, runs) for a, b in pairs for m in METRICS]
    bal = {(d["a"], d["b"]): d for d in diffs if d["metric"] == "balanced_accuracy"}
    words = [f"the learned encoder {verdict(bal['ae', 'random'])} its untrained copy "
             f"({_points(bal['ae', 'random'])})",
             f"it {verdict(bal['ae', best])} the best classical features, {best} ({_points(bal['ae', best])})",
             f"ae+stats {verdict(bal['ae+stats', 'stats'])} stats alone ({_points(bal['ae+stats', 'stats'])})",
             f"the deployed features ({deployed['features']}, chosen by {deployed['chosen_by']['features']}) "
             f"{verdict(bal['deployed', best])} {best} ({_points(bal['deployed', best])})"]
    return {"feature_sets": sets, "paired": diffs, "deployed": deployed,
            "headline": "Balanced accuracy, paired over the same splits: " + "; ".join(words) + "."}


def _points(d: dict) -> str:
    return f"{100 * d['mean_diff']:+.1f} ± {100 * d['sd']:.1f} points, ahead on {d['wins']} of {d['n']} splits"


def evaluate_hash(lay: Layout, cfg: RunConfig, meta: dict, size: dict | None) -> str:
    """What a report depends on: the survey and its labels, the bundle (its training inputs and the checksums
    of its files), the classified map (anomalies and where to label next are read from it), the patch-size
    choice, and the options of the stages it repeats. Returns a 32-hex-digit content hash, stored as
    report.json's ``input_hash``."""
    attrs = survey_attrs(lay.survey)
    classified = store_attrs(lay.classified) or {}
    return content_hash("evaluate-v1", str(attrs.get(S.HASH)), str(attrs.get(S.LABELS_HASH)),
                        str(meta.get("input_hash")), json.dumps(meta.get("files"), sort_keys=True),
                        str(classified.get(S.HASH)), json.dumps(size, sort_keys=True),
                        *(cfg.section_json(s) for s in ("patches", "model", "svm", "evaluate")),
                        *([json.dumps(cfg.inputs.groups, sort_keys=True)] if cfg.inputs.groups else []))


def up_to_date_report(lay: Layout, h: str) -> dict | None:
    """The report at ``lay`` when it was made from ``h`` and its markdown and maps are there; else None.
    report.json is written last (:func:`magpipe.report.write_report`), so its presence marks a whole report."""
    try:
        report = json.loads(lay.report.read_text())
    except (OSError, ValueError):
        return None
    files = (lay.report_md, *(lay.figure(n) for n in ("class_map", "confidence", "anomaly", "confusion")))
    if not isinstance(report, dict) or report.get("input_hash") != h or not all(f.exists() for f in files):
        return None
    return report


@locks_output
def run_evaluate(out: str | Path, cfg: RunConfig, *, client=None) -> dict:
    """Score the run's model on spatial holdouts; write report.json, report.md and the figures. With a
    ``client`` the splits run as tasks on its cluster (:func:`score_splits`), with the same results.

    Skipped when report.json was made from the same survey, labels, model, map and options
    (:func:`evaluate_hash`): re-running a finished run recomputes nothing.

    Returns
    -------
    The report (see ``OUT/report.json``): ``pixel_accuracy``, ``patch_accuracy`` and
    ``balanced_accuracy`` map ``ae``, ``raw`` and ``majority`` to their mean over splits.
    """
    from magpipe.report import write_report

    require_embedding(cfg.evaluate.embedding)
    lay = Layout(out)
    cfg.save(lay.config)
    size = patch_size_record(lay) if cfg.patches.patch_px == "auto" else None
    cfg = resolved_config(lay, cfg)
    h = evaluate_hash(lay, cfg, read_bundle_meta(lay.model), size)
    done = up_to_date_report(lay, h)
    if done is not None:
        log.info("evaluate: %s is up to date", lay.report)
        return done
    bundle = load_bundle(lay.model, patch_px=cfg.patches.patch_px)  # the split's blocks are in patch widths
    arrays, _ = input_stack(lay, bundle.inputs)
    splits, skipped = score_splits(cfg, bundle, arrays, read_label_grids(lay.survey), out=absolute(lay.root),
                                   client=client)
    report = build_report(cfg, bundle, splits, skipped, lay, size)
    first = splits[0]
    ty = first["test_labels"]
    view = np.random.default_rng(cfg.evaluate.seed).choice(len(ty), min(len(ty), 3000), replace=False)
    emb, emb_method = embedding_2d(first["test_features"][view], cfg.evaluate.embedding)
    report["embedding"] = {"method": emb_method, "n_cells": len(view)}
    report["input_hash"] = h
    write_report(report, lay, embedding=(emb, ty[view]))
    return report
