"""patches.patch_px: auto: the size is chosen on validation in the training region, and the run uses it."""

import json

import pytest

from magpipe.errors import DataValidationError
from magpipe.io.schema import Layout
from magpipe.io.stores import open_store
from magpipe.resolve import resolved_config
from magpipe.testing import tiny_config


def test_auto_patch_size_is_chosen_on_validation_and_used_by_every_stage(survey_files, tmp_path):
    from magpipe.evaluation import best_by_validation
    from magpipe.pipeline import (run_classify, run_evaluate, run_ingest, run_labels, run_patch_size, run_patches,
                                  run_train)

    out = tmp_path / "run"
    cfg = tiny_config(patches={"patch_px": "auto", "auto_sizes": [9, 13, 17, 41]}).with_inputs(
        survey=survey_files["survey"], labels=survey_files["labels"])
    run_ingest(out, cfg)
    run_labels(out, cfg)
    with pytest.raises(DataValidationError, match="no patch size chosen yet"):
        resolved_config(Layout(out), cfg)
    with pytest.raises(DataValidationError, match="no patch size chosen yet"):
        run_patches(out, cfg)  # the patch-size stage comes first
    assert run_patch_size(out, cfg) == Layout(out).patch_size
    run_patches(out, cfg)
    choice = json.loads(Layout(out).patch_size.read_text())
    assert choice["sizes"] == [9, 13, 17]  # 41 px does not fit a quarter of the 96-cell side
    best = {}  # each size by its best set; the smallest within one standard error of the best wins
    for p, scores in choice["validation"].items():
        name = max(scores, key=scores.get)
        best[p] = {"cv_balanced_accuracy": scores[name], "cv_se": choice["validation_se"][p][name]}
    assert choice["chosen"] == int(best_by_validation(best, ["9", "13", "17"]))
    assert set(choice["validation"]["9"]) == {"ae", "stats", "ae+stats"}
    assert open_store(Layout(out).patches)["patch"].shape[-1] == choice["chosen"]
    assert resolved_config(Layout(out), cfg).patches.patch_px == choice["chosen"]

    run_train(out, cfg)
    run_classify(out, cfg)
    report = run_evaluate(out, cfg)
    dep = report["deployed"]
    assert dep["patch_px"] == report["patch_px"] == choice["chosen"]
    assert dep["chosen_by"]["patch_px"].startswith("validation") and dep["patch_size_validation"]
    assert "| patch size |" in (out / "report.md").read_text()
    assert json.loads((out / "config.json").read_text())["patches"]["patch_px"] == "auto"  # repeats the choice
    before = Layout(out).patch_size.stat().st_mtime_ns
    run_patch_size(out, cfg)  # same survey, labels and options: not chosen again
    assert Layout(out).patch_size.stat().st_mtime_ns == before
    assert run_patch_size(out, tiny_config(patches={"patch_px": 9})) is None  # a fixed size: nothing to choose


def test_auto_sizes_too_small_for_the_encoder_are_refused(survey_files, tmp_path):
    from magpipe.pipeline import run_ingest, run_labels, run_patch_size

    out = tmp_path / "run"
    cfg = tiny_config(patches={"patch_px": "auto", "auto_sizes": [5, 7]}).with_inputs(
        survey=survey_files["survey"], labels=survey_files["labels"])
    run_ingest(out, cfg)
    run_labels(out, cfg)
    with pytest.raises(DataValidationError, match="auto_sizes"):
        run_patch_size(out, cfg)
