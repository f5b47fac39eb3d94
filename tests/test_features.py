"""Feature sets: the dense tile path equals the per-cell path for every set, and scaling is one function."""

import numpy as np
import pytest

from magpipe.bundle import load_bundle
from magpipe.features import RawFeatures, StackScaling, Scaling, cell_features, window_input
from magpipe.io.schema import Layout
from magpipe.io.survey import open_inputs
from magpipe.patches import read_stack


@pytest.fixture(scope="module")
def bundle(trained_run):
    return load_bundle(Layout(trained_run["out"]).model)


def test_dense_features_equal_per_cell_features_for_every_set(trained_run, bundle):
    arrays = open_inputs(Layout(trained_run["out"]), bundle.inputs)
    p = bundle.patch_px
    sets = {"ae": bundle.features, "raw": RawFeatures(p, len(bundle.inputs))}
    y0, y1, x0, x1 = 10, 40, 70, 110  # a window crossing the survey's labelled edge and holes
    x = window_input(bundle.scaling, read_stack(arrays, y0, y1, x0, x1, p // 2))
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(y0, y1, 50), rng.integers(x0, x1, 50)
    per_cell = cell_features(sets, arrays, bundle.scaling, rows, cols, batch=17)
    for name, fs in sets.items():
        dense = fs.dense(x)
        assert dense.shape == (fs.n_features, y1 - y0, x1 - x0), name
        np.testing.assert_allclose(dense[:, rows - y0, cols - x0].T, per_cell[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def test_cell_features_refuse_sets_of_different_patch_sizes(trained_run, bundle):
    arrays = open_inputs(Layout(trained_run["out"]), bundle.inputs)
    with pytest.raises(ValueError, match="one patch size"):
        cell_features({"a": RawFeatures(9, 1), "b": RawFeatures(11, 1)}, arrays, bundle.scaling,
                      np.array([5]), np.array([5]))


def test_stack_scaling_standardises_each_channel_and_fills_no_data_with_zero():
    s = StackScaling((Scaling(10.0, 2.0), Scaling(-1.0, 0.5)))
    v = np.array([[[12.0, np.nan]], [[-1.0, 0.0]]])  # (C=2, 1, 2)
    np.testing.assert_array_equal(s.apply(v, axis=0), np.array([[[1.0, 0.0]], [[0.0, 2.0]]], dtype="float32"))
