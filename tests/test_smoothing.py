"""Probability smoothing: a NaN-aware window mean, the same in the map (tiles) and in evaluation (blocks)."""

import dataclasses

import numpy as np
import pytest

from magpipe.bundle import load_bundle, save_bundle
from magpipe.classify import NODATA_CLASS, classify_array
from magpipe.features import cell_features
from magpipe.io.schema import Layout
from magpipe.io.survey import open_inputs
from magpipe.smoothing import block_predictions, smooth_proba
from magpipe.svm import predict_with_confidence


def test_smoothing_averages_the_valid_cells_of_each_window():
    rng = np.random.default_rng(0)
    proba = rng.random((3, 12, 14)).astype(np.float32)
    proba[:, rng.random((12, 14)) < 0.25] = np.nan  # no data
    r = 2
    out = smooth_proba(proba, r)
    assert out.shape == (3, 8, 10)
    for i in range(8):
        for j in range(10):
            win = proba[:, i : i + 2 * r + 1, j : j + 2 * r + 1]
            if np.isnan(proba[0, i + r, j + r]):
                assert np.isnan(out[:, i, j]).all()
            else:
                np.testing.assert_allclose(out[:, i, j], np.nanmean(win, axis=(1, 2)), rtol=1e-5)
    assert smooth_proba(proba, 0) is proba


def _smoothed_bundle(trained_run, tmp_path, radius):
    base = load_bundle(trained_run["out"] / "model")
    return load_bundle(save_bundle(dataclasses.replace(base, smooth_px=radius), tmp_path / f"model-{radius}"))


@pytest.mark.parametrize("radius", [0, 3])
def test_evaluation_blocks_classify_as_the_map_does(trained_run, tmp_path, radius):
    """What evaluate scores (cells taken a block at a time) is what the map holds at those cells; at
    radius 0 both are the per-cell prediction."""
    bundle = _smoothed_bundle(trained_run, tmp_path, radius)
    assert bundle.smooth_px == radius and bundle.halo_px == bundle.patch_px // 2 + radius
    arrays = open_inputs(Layout(trained_run["out"]), bundle.inputs)
    field = arrays[0][:]
    cls, conf, _ = classify_array(bundle, field)
    assert np.all((cls == NODATA_CLASS) == ~np.isfinite(field))
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(0, field.shape[0], 300), rng.integers(0, field.shape[1], 300)
    keep = np.isfinite(field[rows, cols])
    rows, cols = rows[keep], cols[keep]
    pred = block_predictions(bundle.svm, bundle.features, bundle.scaling, arrays, rows, cols, (0, radius),
                             block_px=16)
    np.testing.assert_array_equal(pred[radius], cls[rows, cols])
    per_cell, per_cell_conf = predict_with_confidence(
        bundle.svm, cell_features({"f": bundle.features}, arrays, bundle.scaling, rows, cols)["f"])
    np.testing.assert_array_equal(pred[0], per_cell)
    if radius == 0:
        np.testing.assert_allclose(conf[rows, cols], per_cell_conf, atol=1e-4)
    else:  # smoothing changes some calls, and the map's classes agree with its confidence
        assert (pred[radius] != pred[0]).any()
