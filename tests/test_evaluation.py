import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magpipe.evaluation import patch_majorities, score
from magpipe.splits import spatial_split, subsample_per_class


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), gap=st.integers(3, 9), mult=st.integers(1, 3))
def test_no_training_cell_within_a_patch_width_of_a_test_cell(seed, gap, mult):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=(60, 70)).astype("int16")
    valid = rng.uniform(size=labels.shape) > 0.05
    try:
        split = spatial_split(labels, valid, block_px=gap * mult, gap_px=gap, test_fraction=0.3, seed=seed)
    except ValueError as exc:  # with blocks no larger than the gap, the gap can swallow all training cells
        assert "no training or no test cells" in str(exc) and mult == 1
        return
    tr = np.stack([split.train_rows, split.train_cols], 1)
    te = np.stack([split.test_rows, split.test_cols], 1)
    cheb = np.abs(tr[:, None, :] - te[None, :, :]).max(-1)
    assert cheb.min() >= gap
    assert np.all(labels[split.train_rows, split.train_cols] > 0)
    assert np.all(valid[split.test_rows, split.test_cols])


def test_split_needs_two_blocks():
    labels = np.zeros((20, 20), "int16")
    labels[2:5, 2:5] = 1
    with pytest.raises(ValueError, match="one"):
        spatial_split(labels, labels > 0, block_px=10, gap_px=5, test_fraction=0.3, seed=0)


def test_metrics_arithmetic():
    rows = np.array([0, 0, 1, 1, 0, 0, 5, 5])
    cols = np.array([0, 1, 0, 1, 4, 5, 0, 1])
    true = np.array([1, 1, 1, 2, 2, 2, 2, 2])
    pred = np.array([1, 1, 2, 2, 1, 1, 2, 2])
    s = score(rows, cols, true, pred, patch_px=4, n_classes=2)
    assert s["pixel_accuracy"] == pytest.approx(5 / 8)
    # patches: (0,0)->true 1 (3 of 4) pred 1 (tie 2:2 -> smaller code 1): right; (0,1)->2 vs 1: wrong; (1,0)->2 vs 2
    assert s["n_patches"] == 3
    assert s["patch_accuracy"] == pytest.approx(2 / 3)
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 5) / 2)
    assert s["confusion"] == [[2, 1], [2, 3]]
    assert s["f1"][0] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))


def test_patch_majority_ties_go_to_smaller_code():
    t, p = patch_majorities(np.array([0, 0]), np.array([0, 1]), np.array([2, 3]), np.array([3, 2]), 4)
    assert t.tolist() == [2] and p.tolist() == [2]


def test_subsample_per_class_caps_and_is_deterministic():
    y = np.array([1] * 50 + [2] * 5)
    a = subsample_per_class(y, 10, seed=1)
    assert np.bincount(y[a]).tolist() == [0, 10, 5]
    np.testing.assert_array_equal(a, subsample_per_class(y, 10, seed=1))


def test_sparse_label_scores_pair_draws_and_rank_informative_features():
    from magpipe.config import SVMConfig
    from magpipe.evaluation import sparse_label_scores, summarise

    rng = np.random.default_rng(0)
    n_tr, n_te = 400, 300
    y, ty = rng.integers(1, 4, n_tr), rng.integers(1, 4, n_te)
    good = lambda lab: np.eye(4)[lab][:, 1:] * 3 + rng.normal(size=(len(lab), 3))  # noqa: E731
    noise = lambda lab: rng.normal(size=(len(lab), 3))  # noqa: E731
    rows, cols = np.divmod(np.arange(n_te), 20)
    out = sparse_label_scores({"ae": good(y), "raw": noise(y)}, {"ae": good(ty), "raw": noise(ty)}, y,
                              np.arange(n_tr) % 6, (rows, cols, ty), per_class=8, repeats=4, patch_px=3,
                              n_classes=3, svm_cfg=SVMConfig(C=(1.0,), gamma_scale=(1.0,)), seed=0)
    assert out["per_class"] == 8 and out["repeats"] == 4 and len(out["draws"]["raw"]) == 4
    out = summarise(out["draws"])
    assert out["balanced_accuracy"]["ae"] > 0.8 > 0.5 > out["balanced_accuracy"]["raw"]
    assert out["pixel_accuracy_std"]["ae"] >= 0 and set(out["patch_accuracy"]) == {"ae", "raw"}


def test_blocked_folds_validate_every_cell_once_and_keep_the_gap():
    from magpipe.splits import blocked_folds

    rows, cols = np.divmod(np.arange(60 * 80), 80)
    folds = blocked_folds(rows, cols, block_px=10, gap_px=4, k=3, seed=0, nbx=8)
    assert len(folds) == 3
    seen = np.concatenate([v for _, v in folds])
    assert np.array_equal(np.sort(seen), np.arange(rows.size))
    for fit, val in folds:
        assert not np.intersect1d(fit, val).size
        d = np.maximum(np.abs(rows[fit][:, None] - rows[val][None]), np.abs(cols[fit][:, None] - cols[val][None]))
        assert d.min() >= 4


def test_paired_differences_and_their_verdict():
    from magpipe.evaluation import paired, verdict

    runs = [{"a": {"m": 0.60}, "b": {"m": 0.50}}, {"a": {"m": 0.55}, "b": {"m": 0.50}},
            {"a": {"m": 0.50}, "b": {"m": 0.52}}]
    d = paired("a", "b", "m", runs)
    assert d["wins"] == 2 and d["n"] == 3
    assert d["mean_diff"] == pytest.approx((0.10 + 0.05 - 0.02) / 3)
    assert verdict(d) == "did not clearly beat"  # 2 of 3 is not 80 %
    assert verdict(paired("a", "b", "m", runs[:2])) == "beat"
    assert verdict(paired("b", "a", "m", runs[:2])) == "lost to"
    assert verdict({"mean_diff": 0.005, "wins": 5, "n": 5}) == "did not clearly beat"  # under a point


def test_choice_on_validation_takes_the_simplest_within_one_standard_error_of_the_best():
    from magpipe.evaluation import best_by_validation

    table = {"ae": {"cv_balanced_accuracy": 0.4}, "stats": {"cv_balanced_accuracy": 0.5},
             "ae+stats": {"cv_balanced_accuracy": 0.5}, "raw": {"cv_balanced_accuracy": float("nan")}}
    assert best_by_validation(table, ["ae", "stats", "ae+stats"]) == "stats"
    assert best_by_validation(table, ["ae+stats", "stats"]) == "ae+stats"
    assert best_by_validation(table, ["raw", "ae"]) == "ae"  # an unsearched (NaN) score never wins
    assert best_by_validation({"raw": table["raw"]}, ["raw"]) == "raw"
    noisy = {"stats": {"cv_balanced_accuracy": 0.47, "cv_se": 0.01},
             "ae": {"cv_balanced_accuracy": 0.48, "cv_se": 0.02}, "ae+stats": {"cv_balanced_accuracy": 0.45}}
    assert best_by_validation(noisy, ["stats", "ae", "ae+stats"]) == "stats"  # 0.47 >= 0.48 - 0.02
    assert best_by_validation(noisy, ["ae+stats", "stats", "ae"]) == "stats"  # 0.45 is not within 0.02 of 0.48
    noisy["ae"]["cv_se"] = 0.005
    assert best_by_validation(noisy, ["stats", "ae", "ae+stats"]) == "ae"  # a lead beyond the noise wins


def test_svm_search_folds_keep_a_patch_width_between_fitting_and_validation_cells():
    from magpipe.config import RunConfig
    from magpipe.splits import Cells, cv_folds

    cfg = RunConfig.model_validate({"patches": {"patch_px": 7}, "evaluate": {"block_patches": 2},
                                    "svm": {"cv_folds": 3}})
    rows, cols = np.mgrid[0:60, 0:60]
    cells = Cells(rows.ravel(), cols.ravel(), np.ones(3600, dtype=int))
    folds = cv_folds(cells, cfg)
    assert len(folds) == 3
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == list(range(3600))  # each cell validates once
    for fit, val in folds:
        d = np.maximum(np.abs(cells.rows[fit][:, None] - cells.rows[val][None]),
                       np.abs(cells.cols[fit][:, None] - cells.cols[val][None]))
        assert d.min() > 7  # no fitting patch centre within one patch width of a validation cell


def test_evaluate_is_skipped_when_nothing_changed_and_runs_again_when_its_inputs_do(trained_run, tmp_path):
    """Like every stage: the same model, map and options leave report.json and the figures untouched; another
    split count scores again."""
    import shutil

    from magpipe.io.schema import Layout
    from magpipe.pipeline import run_classify, run_evaluate, run_train

    out = tmp_path / "run"
    shutil.copytree(trained_run["out"], out, ignore=shutil.ignore_patterns(".magpipe.lock"))
    cfg = trained_run["cfg"].model_copy(deep=True)
    cfg.evaluate.splits, cfg.evaluate.sparse_per_class = 1, 0
    for stage in (run_train, run_classify):
        stage(out, cfg)
    first = run_evaluate(out, cfg)
    lay = Layout(out)
    written = {f: f.stat().st_mtime_ns for f in (lay.report, lay.report_md, lay.figure("class_map"))}
    again = run_evaluate(out, cfg)
    assert {f: f.stat().st_mtime_ns for f in written} == written
    assert again["balanced_accuracy"] == first["balanced_accuracy"] and again["input_hash"] == first["input_hash"]
    lay.report_md.unlink()  # a report missing a part is made again
    run_evaluate(out, cfg)
    assert lay.report_md.exists() and lay.report.stat().st_mtime_ns != written[lay.report]
    cfg.evaluate.splits = 2
    for stage in (run_train, run_classify):
        stage(out, cfg)
    assert run_evaluate(out, cfg)["n_splits"] + len(run_evaluate(out, cfg)["splits_skipped"]) == 2


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> dict:
    """A whole run (2 splits, no sparse draws) of a survey labelled all over, with 10 landmarks for the low-rank
    kernel (so ``kernel: auto`` has a choice to make). The session's survey, labelled on its left part, leaves
    too few training cells for blocked CV to score anything."""
    from magpipe.pipeline import run_all
    from magpipe.synthetic import synthetic_survey
    from magpipe.testing import tiny_config, write_labels_raster

    d = tmp_path_factory.mktemp("labelled")
    field, truth = synthetic_survey((96, 128), n_units=3, seed=3)
    field.rio.to_raster(d / "survey.tif")
    write_labels_raster(truth, field, d / "labels.tif")
    cfg = tiny_config(evaluate={"splits": 2, "sparse_per_class": 0}, svm={"kernel": "auto", "n_components": 10})
    report = run_all(d / "run", cfg.with_inputs(survey=d / "survey.tif", labels=d / "labels.tif"))
    return {"out": d / "run", "report": report}


def test_the_kernel_choice_is_made_in_training_repeated_on_every_split_and_both_kernels_are_reported(labelled_run):
    """svm.kernel auto, with fewer landmarks than the exact SVM's support vectors: the map's SVM is the kernel
    validation chose, each split makes the choice afresh on its own training cells, and the report scores
    both kernels on every split's test cells, the chosen one being the deployed (unsmoothed) score."""
    import json

    from magpipe.evaluation import best_by_validation
    from magpipe.io.schema import Layout

    out, report = labelled_run["out"], labelled_run["report"]
    meta = json.loads((Layout(out).model / "metadata.json").read_text())
    table = meta["selection"]["kernel"]["cv"]
    assert set(table) == {"lowrank", "exact"} and table["exact"]["n_support"] > 10
    assert meta["svm"]["kernel"] == best_by_validation(table, ["lowrank", "exact"]) == report["deployed"]["svm_kernel"]
    assert report["deployed"]["kernel_validation"] == table and "SVM kernel" in Layout(out).report_md.read_text()
    splits = report["splits"]
    assert [sp["kernel"] for sp in splits] == report["deployed"]["per_split_kernel"]
    assert splits[0]["kernel"] == meta["svm"]["kernel"] and len(splits) == 2
    for sp in splits:
        assert set(sp["kernel_balanced_accuracy"]) == {"lowrank", "exact"}
        assert sp["kernel_balanced_accuracy"][sp["kernel"]] == sp["balanced_accuracy"]["deployed@unsmoothed"]
    test = report["deployed"]["kernel_test"]
    assert test["n"] == 2 and test["exact"] == np.mean([sp["kernel_balanced_accuracy"]["exact"] for sp in splits])


def test_the_reports_per_class_table_and_confusion_are_the_maps(labelled_run):
    """report.md's per-class scores and confusion matrix are the deployed set's (report.json's ``per_class`` and
    ``confusion.deployed``), and agree with each other: recall = diagonal / row, precision = diagonal / column."""
    from magpipe.io.schema import Layout

    report = labelled_run["report"]
    text = Layout(labelled_run["out"]).report_md.read_text()
    section = text.split("## Per-class scores of the map")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| class | ", "| mapped unit | "))]
    classes = report["classes"]
    per_class, confusion = rows[:len(classes)], rows[len(classes):]
    cm = np.array(report["confusion"]["deployed"])
    for k, (row, c) in enumerate(zip(per_class, classes)):
        p = report["per_class"][c]
        assert row == [c, str(p["test_cells"]), f"{p['precision']:.2f}", f"{p['recall']:.2f}", f"{p['f1']:.2f}",
                       f"{report['f1']['ae'][c]:.2f}", f"{report['f1']['raw'][c]:.2f}"]
        assert p["test_cells"] == cm[k].sum() and p["recall"] == pytest.approx(cm[k, k] / cm[k].sum())
        assert p["precision"] == pytest.approx(cm[k, k] / max(cm[:, k].sum(), 1))
        assert p["f1"] == report["f1"]["deployed"][c]
    assert [[int(v) for v in row[1:]] for row in confusion] == cm.tolist()
    assert [r[0] for r in confusion] == [f"{k} {c}" for k, c in enumerate(classes, start=1)]
    assert cm.sum() == report["n_test"]


def test_the_gap_in_patch_widths_holds_in_the_split_and_the_cv_folds(survey_files):
    """evaluate.gap_patches widens the gap of both, for features that read beyond the patch."""
    from magpipe.io.survey import LabelGrids
    from magpipe.splits import cv_folds, labelled_split, split_gap_px, training_cells
    from magpipe.testing import tiny_config

    truth = survey_files["truth"]
    grids = LabelGrids(truth, np.isfinite(survey_files["field"].values), ["a", "b", "c"], survey_files["survey"])
    gaps = {}
    for g in (1.0, 1.6):
        cfg = tiny_config(evaluate={"gap_patches": g, "block_patches": 3})
        gap = split_gap_px(cfg)
        split, kept = labelled_split(grids, cfg, need_test=True)
        tr = np.stack([split.train_rows, split.train_cols], 1)
        te = np.stack([split.test_rows, split.test_cols], 1)
        assert np.abs(tr[:, None, :] - te[None, :, :]).max(-1).min() >= gap
        cells = training_cells(split, kept.labels, cfg)
        for fit, val in cv_folds(cells, cfg):
            d = np.maximum(np.abs(cells.rows[fit][:, None] - cells.rows[val][None]),
                           np.abs(cells.cols[fit][:, None] - cells.cols[val][None]))
            assert d.min() >= gap
        gaps[g] = (gap, len(split.train_rows), len(split.test_rows))
    assert gaps[1.0][0] == 9 and gaps[1.6][0] == 15  # ceil(1.6 * 9)
    assert gaps[1.6][1] < gaps[1.0][1] and gaps[1.6][2] == gaps[1.0][2]  # the same test cells, fewer training ones


@pytest.mark.slow
def test_evaluation_on_a_cluster_gives_the_serial_report(finished_run, tmp_path):
    """The splits' pieces as tasks on a LocalCluster, each worker reading the run from its stores, score exactly
    what they score in this process: every figure of report.json is the same. The workers hold nothing of
    the run afterwards."""
    import json
    import shutil

    from magpipe.cluster import dask_client
    from magpipe.pipeline import run_evaluate
    from magpipe.stages import evaluate
    from magpipe.testing import json_leaves

    out = tmp_path / "run"
    shutil.copytree(finished_run["out"], out, ignore=shutil.ignore_patterns(".magpipe.lock", "report.json"))
    from distributed import get_task_stream

    with dask_client(None, workers=2) as client, get_task_stream(client) as stream:
        parallel = run_evaluate(out, finished_run["cfg"], client=client)
        held = client.run(lambda: len(evaluate._RUN_INPUTS))
    assert held and set(held.values()) == {0}
    tasks = {t["key"] for t in stream.data if str(t["key"]).startswith("evaluate-split-")}
    n_sets = len(finished_run["report"]["feature_sets"]) - 4  # less deployed, its variants and the majority
    assert len(tasks) == parallel["n_splits"] * (n_sets + 1)  # one per (split, feature set), one per split after

    serial = json_leaves(json.loads((finished_run["out"] / "report.json").read_text()))
    got = json_leaves(json.loads((out / "report.json").read_text()))
    assert serial.keys() == got.keys()
    assert {k for k in serial if serial[k] != got[k]} == set()
    assert parallel["balanced_accuracy"] == finished_run["report"]["balanced_accuracy"]


def test_a_worker_holds_the_inputs_of_a_bounded_number_of_evaluations(trained_run):
    """Evaluations sharing a cluster each read their run once per worker; a worker holds at most RUNS_HELD of
    them (the oldest goes first) and none after each says it is done."""
    from magpipe.stages import evaluate

    out, cfg = str(trained_run["out"]), trained_run["cfg"]
    first = evaluate._run_inputs(out, cfg, None, "a")
    assert evaluate._run_inputs(out, cfg, None, "a") is first  # read once
    for key in ("b", "c"):
        evaluate._run_inputs(out, cfg, None, key)
    assert [k for _, k in evaluate._RUN_INPUTS] == ["b", "c"] and evaluate.RUNS_HELD == 2
    for key in ("b", "c"):
        evaluate.forget_run_inputs(key)
    assert not evaluate._RUN_INPUTS


def test_the_maps_are_drawn_in_the_surveys_crs_with_a_scale_bar(labelled_run):
    """The report's maps are placed in the survey's CRS (extent = the grid's cell edges, axes named after the
    CRS and its unit), with a round scale bar."""
    import rioxarray  # noqa: F401
    from pyproj import CRS

    from magpipe.io.schema import Layout
    from magpipe.io.stores import open_store
    from magpipe.report import MapGrid, scale_length

    lay = Layout(labelled_run["out"])
    grid, ds = MapGrid.of(lay.classified), open_store(lay.classified)
    left, top = ds.rio.transform() * (0, 0)
    right, bottom = ds.rio.transform() * (ds.sizes["x"], ds.sizes["y"])
    assert grid.extent == pytest.approx((left, right, bottom, top))
    assert grid.crs_name == CRS.from_user_input(ds.rio.crs.to_wkt()).name and grid.unit == "metre"
    assert [scale_length(t) for t in (7.0, 2600.0, 49_000.0, 100.0)] == [5.0, 2000.0, 20_000.0, 100.0]
    assert all(lay.figure(n).stat().st_size > 10_000 for n in ("class_map", "confidence", "anomaly", "confusion"))


def test_calibration_error_is_the_mean_gap_between_confidence_and_accuracy():
    from magpipe.metrics import calibration

    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, 200_000)
    assert calibration(rng.uniform(size=conf.size) < conf, conf)["ece"] < 0.01  # right as often as it says
    over = calibration(np.arange(1000) % 2 == 0, np.full(1000, 0.9))  # says 90 %, right half the time
    assert over["ece"] == pytest.approx(0.4) and over["bins"] == [
        {"lo": 0.9, "hi": 1.0, "n": 1000, "confidence": pytest.approx(0.9), "accuracy": 0.5}]
    assert calibration(np.ones(3, bool), np.array([np.nan, 1.0, 1.0]))["n"] == 2  # no-data cells left out


def test_the_report_says_what_a_confidence_means(labelled_run):
    """report.json's calibration: every scored set's ECE on the first split's test cells, the map's own, a
    reliability table whose cells add up, and a word when the map's C sits at the edge of the grid searched."""
    from magpipe.io.schema import Layout

    report = labelled_run["report"]
    cal = report["calibration"]
    assert {"ae", "raw", "stats", "random", "ae+stats", "deployed"} <= set(cal["sets"])
    for c in cal["sets"].values():
        assert 0 <= c["ece"] <= 1 and c["n"] == report["n_test"] == sum(b["n"] for b in c["bins"])
        assert c["ece"] == pytest.approx(sum(b["n"] * abs(b["accuracy"] - b["confidence"]) for b in c["bins"]) / c["n"])
    assert cal["sets"]["deployed"] == cal["sets"][report["deployed"]["features"]]
    text = Layout(labelled_run["out"]).report_md.read_text()
    assert "## Calibration" in text and f"| {100 * cal['sets']['deployed']['ece']:.1f} |" in text
    assert cal["C_grid"] == [1.0, 10.0] and cal["c_at_grid_edge"] == {1.0: "low", 10.0: "high"}[cal["deployed_C"]]
    assert ("the best C may lie beyond the grid" in text) == (cal["c_at_grid_edge"] is not None)


def test_the_headline_puts_the_map_against_the_majority_floor(labelled_run):
    """The report's words start with the map's accuracy against always answering the commonest unit, and say
    why and what to change where the floor is ahead pixel-wise."""
    from magpipe.stages.evaluate import floor_sentence

    report, fs = labelled_run["report"], labelled_run["report"]["feature_sets"]
    dep, floor = fs["deployed"], fs["majority"]
    assert report["headline"].startswith(
        f"The map ({report['deployed']['features']} features + SVM) scores {dep['balanced_accuracy']['mean']:.1%} "
        f"balanced accuracy, {dep['pixel_accuracy']['mean']:.1%} pixel-wise; always answering the commonest unit of "
        f"the training region scores {floor['balanced_accuracy']['mean']:.1%} and {floor['pixel_accuracy']['mean']:.1%}.")
    summary = {"balanced_accuracy": {"deployed": 0.45, "majority": 0.25},
               "pixel_accuracy": {"deployed": 0.65, "majority": 0.78, "deployed@prior": 0.70}}
    assert "The floor is ahead pixel-wise" in floor_sentence(summary, {"features": "stats"})
    assert "70.0% pixel-wise here" in floor_sentence(summary, {"features": "stats"})
    summary["pixel_accuracy"]["deployed"] = 0.80
    assert "ahead" not in floor_sentence(summary, {"features": "stats"})
