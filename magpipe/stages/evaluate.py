"""Stage ``evaluate``: the learned features against their controls on spatial holdouts -> ``OUT/report.*``.

Every feature set is scored on the same splits and the same cells (:mod:`magpipe.split_scores`).
Metrics are means over ``evaluate.splits`` random spatial splits, with paired differences; per-class F1,
the confusion matrices and the embedding view come from the first (the deployed model's) split. With a
Dask client the splits' pieces run as tasks on its cluster (:func:`score_splits`).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np

from magpipe.bundle import ModelBundle, load_bundle, read_bundle_meta
from magpipe.cluster import worker_storage_options
from magpipe.config import RunConfig
from magpipe.errors import DataValidationError
from magpipe.evaluation import METRICS, paired, summarise, verdict
from magpipe.explore import embedding_2d, label_next, require_embedding, top_anomalies
from magpipe.features import stat_windows
from magpipe.inputs import in_memory, input_stack
from magpipe.io import schema as S
from magpipe.io.location import absolute, storage_scope
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, store_attrs
from magpipe.io.survey import LabelGrids, read_label_grids, survey_attrs
from magpipe.layer_groups import layer_groups
from magpipe.locking import locks_output
from magpipe.progress import progress as steps
from magpipe.resolve import patch_size_record, resolved_config
from magpipe.selection import candidates
from magpipe.splits import split_config, split_gap_px
from magpipe.split_scores import (OTHER_WEIGHT, evaluate_split, evaluation_sets, finish_split, score_set,
                                         split_cells)

log = logging.getLogger("magpipe")

FEATURE_SETS = ("ae", "raw")  # the learned features and the paper's baseline: the report's headline keys
CLASSICAL = ("raw", "stats")


def score_splits(cfg: RunConfig, bundle: ModelBundle, arrays: list, grids: LabelGrids, *, out: str | None = None,
                 client=None, key: str = "") -> tuple[list[dict], list]:
    """Every evaluation split (the first is the deployed model's); a later split where a class falls
    short on one side is skipped with a warning and listed.

    With a ``client`` (a ``distributed.Client``) each (split, feature set) is a task on its cluster, and
    each split's deployed choice a task after them (:mod:`magpipe.split_scores`), reading the run in
    ``out`` from its stores (once per worker: ``key``, the report's input hash, says which run); the splits
    take uneven time, and finer tasks share them out evenly. The results are those of this process,
    split for split.

    Returns the :func:`magpipe.split_scores.evaluate_split` results and the skipped splits'
    ``{"seed", "reason"}``.
    """
    n = cfg.evaluate.splits
    if client is None:
        arrays = in_memory(arrays)
        results = ((i, _split_or_skip(cfg, i, bundle, arrays, grids)) for i in range(n))
    else:
        results = _on_cluster(client, cfg, bundle, str(out), key, n)
    done: dict[int, dict] = {}
    with steps("evaluate", n, "splits") as step:
        for i, result in results:
            done[i] = result
            if "skipped" in result:
                log.warning("evaluate: split seed %d skipped: %s", cfg.evaluate.seed + i, result["skipped"])
                step()
            else:
                step(balanced=result["scores"]["deployed"]["balanced_accuracy"])
    splits = [done[i] for i in range(n) if "skipped" not in done[i]]
    skipped = [{"seed": cfg.evaluate.seed + i, "reason": done[i]["skipped"]} for i in range(n) if "skipped" in done[i]]
    return splits, skipped


def _on_cluster(client, cfg: RunConfig, bundle: ModelBundle, out: str, key: str, n: int):
    """(split index, result) of each split as it is done, from tasks on ``client``'s cluster; the workers
    forget the run's inputs at the end."""
    from distributed import as_completed

    conf, storage, tag = cfg.parameters(), worker_storage_options(client), uuid.uuid4().hex[:8]
    try:
        tails = {}
        for i in range(n):  # split by split (a higher priority first): the deployed split's failure comes first
            sets = [client.submit(set_task, out, conf, i, name, storage, key, pure=False, priority=n - i,
                                  key=f"evaluate-split-{i}-{name}-{tag}") for name in evaluation_sets(bundle, cfg)]
            tails[client.submit(finish_task, out, conf, i, storage, key, *sets, pure=False, priority=n - i,
                                key=f"evaluate-split-{i}-{tag}")] = i
        for fut in as_completed(tails, loop=client.loop):
            yield tails[fut], fut.result()
    finally:
        client.run(forget_run_inputs, key)


def _split_or_skip(cfg: RunConfig, i: int, bundle: ModelBundle, arrays: list, grids: LabelGrids) -> dict:
    """Split ``i`` (0: the deployed model's) scored, or ``{"skipped": reason}`` where a later split cannot be."""
    if i == 0:
        return evaluate_split(cfg, bundle, arrays, grids, deployed=True)
    try:
        return evaluate_split(split_config(cfg, i), bundle, arrays, grids, deployed=False)
    except DataValidationError as exc:
        return {"skipped": str(exc)}


_RUN_INPUTS: OrderedDict[tuple[str, str], tuple] = OrderedDict()  # (out, key) -> (bundle, arrays, grids)
_RUN_INPUTS_LOCK = threading.Lock()
RUNS_HELD = 2  # evaluations whose inputs a worker holds at once (runs sharing a cluster); the oldest goes first


def read_run_inputs(out: str, cfg: RunConfig, storage: dict | None = None) -> tuple:
    """A finished run's model bundle, its input grids held in memory (the survey's stack, in the bundle's
    order) and its label grids, read from the stores in ``out``: what an evaluation split needs."""
    with storage_scope(storage):
        lay = Layout(out)
        bundle = load_bundle(lay.model, patch_px=cfg.patches.patch_px)
        return bundle, in_memory(input_stack(lay, bundle.inputs)[0]), read_label_grids(lay.survey)


def _run_inputs(out: str, cfg: RunConfig, storage: dict | None, key: str) -> tuple:
    """The run's model, input grids and labels, read from its stores in ``out`` once per worker for all the
    tasks of one evaluation (``key``: its input hash), until :func:`forget_run_inputs` or ``RUNS_HELD`` newer
    evaluations on the same worker."""
    with _RUN_INPUTS_LOCK:
        if (out, key) not in _RUN_INPUTS:
            _RUN_INPUTS[out, key] = read_run_inputs(out, cfg, storage)
            while len(_RUN_INPUTS) > RUNS_HELD:
                _RUN_INPUTS.popitem(last=False)
        _RUN_INPUTS.move_to_end((out, key))
        return _RUN_INPUTS[out, key]


def forget_run_inputs(key: str) -> None:
    """Drop the inputs :func:`_run_inputs` holds for evaluation ``key`` (run on every worker at its end)."""
    with _RUN_INPUTS_LOCK:
        for k in [k for k in _RUN_INPUTS if k[1] == key]:
            del _RUN_INPUTS[k]


def _task_split(out: str, conf: dict, i: int, storage: dict | None, key: str):
    """Split ``i``'s config, the run's inputs and the split's cells, or a skip reason (splits after the first)."""
    cfg = RunConfig.model_validate(conf)
    bundle, arrays, grids = _run_inputs(out, cfg, storage, key)
    cfg = split_config(cfg, i) if i else cfg
    try:
        return cfg, bundle, arrays, split_cells(cfg, grids)
    except DataValidationError as exc:
        if i == 0:
            raise
        return cfg, bundle, arrays, str(exc)


def set_task(out: str, conf: dict, i: int, name: str, storage: dict | None, key: str) -> dict:
    """Feature set ``name`` on split ``i``, on a Dask worker (:func:`magpipe.split_scores.score_set`);
    ``storage``: the driver's storage options, for the workers of its own LocalCluster only."""
    cfg, bundle, arrays, cells = _task_split(out, conf, i, storage, key)
    if isinstance(cells, str):
        return {"skipped": cells}
    return score_set(cfg, bundle, arrays, cells, name, deployed=i == 0)


def finish_task(out: str, conf: dict, i: int, storage: dict | None, key: str, *sets: dict) -> dict:
    """Split ``i`` from its feature sets' :func:`set_task` results, on a Dask worker
    (:func:`magpipe.split_scores.finish_split`), or ``{"skipped": reason}``."""
    cfg, bundle, arrays, cells = _task_split(out, conf, i, storage, key)
    if isinstance(cells, str):
        return {"skipped": cells}
    return finish_split(cfg, bundle, arrays, cells, dict(zip(evaluation_sets(bundle, cfg), sets)), deployed=i == 0)


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
                    "kernel": sp["kernel"], "kernel_balanced_accuracy": sp["kernel_scores"],
                    **{m: {n: sp["scores"][n][m] for n in names} for m in METRICS}} for sp in splits],
        **controls(everything, [sp["scores"] for sp in splits], deployed(cfg, bundle, splits, size)),
        "layer_groups": layer_group_table(cfg, bundle, splits),
        "f1": {"ae": dict(zip(classes, ae["f1"])), "raw": dict(zip(classes, raw["f1"])),
               "deployed": dict(zip(classes, dep["f1"]))},
        "confusion": {"ae": ae["confusion"], "raw": raw["confusion"], "deployed": dep["confusion"]},
        "per_class": {c: {"test_cells": int(np.sum(dep["confusion"][k])), "precision": dep["precision"][k],
                          "recall": dep["recall"][k], "f1": dep["f1"][k]} for k, c in enumerate(classes)},
        "calibration": calibration_record(cfg, first),
        "n_test_patches": ae["n_patches"],
        "sparse": sparse,
        "svm": first["svm"],
        "training": bundle.meta.get("training", {}),
        "split": {"block_px": cfg.evaluate.block_patches * p, "gap_px": split_gap_px(cfg),
                  "test_fraction": cfg.evaluate.test_fraction, "seed": cfg.evaluate.seed},
        "anomalies": top_anomalies(lay.classified, cfg.evaluate.top_k, patch_px=p),
        "label_next": label_next(lay.classified, cfg.evaluate.top_k, block=cfg.evaluate.block_patches * p),
    }


def calibration_record(cfg: RunConfig, first: dict) -> dict:
    """report.json's ``calibration``: each feature set's ECE and reliability table on the first split's test
    cells (its SVM calibrated as the map's is; the map's own confidences for ``deployed``, before any
    smoothing), and where the deployed SVM's C sits in the grid searched (``c_at_grid_edge``: "low", "high"
    or None), since a C at the edge of the grid may be the grid's limit rather than the data's choice."""
    C = first["svm"].get(first["chosen"], {}).get("C")
    edge = None if C is None or len(cfg.svm.C) < 2 else "low" if C <= min(cfg.svm.C) else \
        "high" if C >= max(cfg.svm.C) else None
    return {"split_seed": first["seed"], "sets": first.get("calibration", {}), "deployed_C": C,
            "C_grid": list(cfg.svm.C), "c_at_grid_edge": edge}


def deployed(cfg: RunConfig, bundle: ModelBundle, splits: list[dict], size: dict | None = None) -> dict:
    """What the map uses and how each part was chosen: the report's ``deployed``; ``size`` is the patch
    size's selection (:func:`magpipe.resolve.patch_size_record`) when it was chosen."""
    auto = cfg.svm.features == "auto"
    smoothing = bundle.meta.get("selection", {}).get("smoothing", {})
    reach = bundle.meta.get("selection", {}).get("stats_reach", {})
    kernel = bundle.meta.get("selection", {}).get("kernel", {})
    return {"features": bundle.feature_set, "svm_kernel": bundle.meta.get("svm", {}).get("kernel", "exact"),
            "patch_px": bundle.patch_px, "smooth_px": bundle.smooth_px,
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
                          "svm_kernel": "validation: blocked CV on the training region, the low-rank kernel against exact"
                          if kernel.get("cv") else "configuration" if cfg.svm.kernel != "auto" else
                          "cost: the exact SVM keeps no more support vectors than the low-rank kernel has landmarks",
                          "objective": "configuration"},
            "kernel_validation": kernel.get("cv", {}),
            "per_split_kernel": [sp["kernel"] for sp in splits],
            "kernel_test": kernel_test(splits),
            "stats_reach_validation": reach.get("cv", {}),
            "validation": bundle.meta.get("selection", {}).get("cv", {}),
            "smoothing_validation": smoothing.get("cv", {}),
            "per_split_smooth_px": [sp["smooth_px"] for sp in splits],
            "patch_size_validation": size["validation"] if size else {},
            "per_split": [sp["chosen"] for sp in splits]}


def kernel_test(splits: list[dict]) -> dict:
    """Both kernels of the deployed set on the test cells of the splits where the kernel was chosen between
    them: kernel -> mean balanced accuracy (unsmoothed), with ``n`` those splits and ``lowrank_minus_exact``
    the paired difference's mean and sd; empty where no split made the choice."""
    pairs = [sp["kernel_scores"] for sp in splits if {"exact", "lowrank"} <= set(sp.get("kernel_scores", {}))]
    if not pairs:
        return {}
    diff = np.array([k["lowrank"] - k["exact"] for k in pairs])
    return {"n": len(pairs), **{k: float(np.mean([x[k] for x in pairs])) for k in ("exact", "lowrank")},
            "lowrank_minus_exact": {"mean": float(diff.mean()), "sd": float(diff.std()),
                                    "lowrank_ahead": int((diff > 0).sum())}}


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
            "headline": floor_sentence(summary, deployed) + " Balanced accuracy, paired over the same splits: "
            + "; ".join(words) + "."}


def floor_sentence(summary: dict, deployed: dict) -> str:
    """The map against the floor, in words: its balanced and pixel-wise accuracy and those of always answering
    the training region's commonest unit; where the floor is ahead pixel-wise, why and what to change."""
    bal, pix = summary["balanced_accuracy"], summary["pixel_accuracy"]
    words = (f"The map ({deployed['features']} features + SVM) scores {bal['deployed']:.1%} balanced accuracy, "
             f"{pix['deployed']:.1%} pixel-wise; always answering the commonest unit of the training region "
             f"scores {bal['majority']:.1%} and {pix['majority']:.1%}.")
    if pix["majority"] > pix["deployed"] and "deployed@prior" in pix:  # the map weighed the units equally
        words += (" The floor is ahead pixel-wise: the SVM weighs the units equally (`svm.class_weight: balanced`), "
                  "so it gives up cells of the commonest unit to find the rare ones; `prior` favours pixel accuracy "
                  f"({pix['deployed@prior']:.1%} pixel-wise here, \"deployed, prior weights\").")
    return words


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
                                   client=client, key=h)
    report = build_report(cfg, bundle, splits, skipped, lay, size)
    first = splits[0]
    ty = first["test_labels"]
    view = np.random.default_rng(cfg.evaluate.seed).choice(len(ty), min(len(ty), 3000), replace=False)
    emb, emb_method = embedding_2d(first["test_features"][view], cfg.evaluate.embedding)
    report["embedding"] = {"method": emb_method, "n_cells": len(view)}
    report["input_hash"] = h
    write_report(report, lay, embedding=(emb, ty[view]))
    return report
