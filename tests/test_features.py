"""Feature sets: the dense tile path equals the per-cell path for every set, and scaling is one function."""

import numpy as np
import pytest
import torch

from magpipe.bundle import load_bundle
from magpipe.features import (
    ConcatFeatures,
    RawFeatures,
    Scaling,
    StackScaling,
    StatsFeatures,
    cell_features,
    feature_set,
    stat_windows,
    untrained_encoder,
    window_input,
)
from magpipe.io.schema import Layout
from magpipe.io.survey import open_inputs
from magpipe.patches import read_stack


@pytest.fixture(scope="module")
def bundle(trained_run):
    return load_bundle(Layout(trained_run["out"]).model)


@pytest.mark.parametrize("readout,reach", [("mean_centre", "patch"), ("mean_std_centre", "patch"),
                                           ("mean_std_centre", "wide")])
def test_dense_features_equal_per_cell_features_for_every_set(trained_run, bundle, readout, reach):
    """Wide window statistics read beyond the patch; in a concatenation each part reads its own window."""
    arrays = open_inputs(Layout(trained_run["out"]), bundle.inputs)
    names = ["ae", "raw", "stats", "random", "ae+stats", "random+stats+raw"]
    sets = {n: feature_set(n, bundle.model, bundle.layers, readout=readout, seed=0, stats_reach=reach)
            for n in names}
    assert (sets["stats"].window_px > bundle.patch_px) == (reach == "wide")
    y0, y1, x0, x1 = 10, 40, 70, 110  # a window crossing the survey's labelled edge and holes
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(y0, y1, 50), rng.integers(x0, x1, 50)
    per_cell = cell_features(sets, arrays, bundle.scaling, rows, cols, batch=17)
    for name, fs in sets.items():
        x = window_input(bundle.scaling, read_stack(arrays, y0, y1, x0, x1, fs.window_px // 2))
        dense = fs.dense(x).numpy()
        assert dense.shape == (fs.n_features, y1 - y0, x1 - x0), name
        np.testing.assert_allclose(dense[:, rows - y0, cols - x0].T, per_cell[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def test_named_sets_are_what_their_names_say(bundle):
    p, C = bundle.patch_px, len(bundle.inputs)
    assert isinstance(feature_set("stats", bundle.model, bundle.layers), StatsFeatures)
    both = feature_set("ae+stats", bundle.model, bundle.layers, readout=bundle.readout)
    assert isinstance(both, ConcatFeatures) and both.n_features == \
        bundle.named_features("ae").n_features + StatsFeatures(p, C).n_features
    rnd = feature_set("random", bundle.model, bundle.layers, seed=0).model
    assert all(torch.equal(a, b) for a, b in zip(rnd.parameters(), untrained_encoder(bundle.model, 0).parameters()))
    for bad in ("auto", "ae+ae", "pca"):
        with pytest.raises(ValueError):
            feature_set(bad, bundle.model, bundle.layers)


def test_cell_features_of_sets_of_different_windows_are_each_their_own(trained_run, bundle):
    arrays = open_inputs(Layout(trained_run["out"]), bundle.inputs)
    rows, cols = np.array([5, 30, 60]), np.array([5, 40, 100])
    both = cell_features({"a": RawFeatures(9, 1), "b": RawFeatures(11, 1)}, arrays, bundle.scaling, rows, cols)
    for name, fs in (("a", RawFeatures(9, 1)), ("b", RawFeatures(11, 1))):
        np.testing.assert_array_equal(both[name], cell_features({name: fs}, arrays, bundle.scaling, rows, cols)[name])
    assert both["a"].shape == (3, 81) and both["b"].shape == (3, 121)


def test_stack_scaling_standardises_each_channel_and_fills_no_data_with_zero():
    s = StackScaling((Scaling(10.0, 2.0), Scaling(-1.0, 0.5)))
    v = np.array([[[12.0, np.nan]], [[-1.0, 0.0]]])  # (C=2, 1, 2)
    np.testing.assert_array_equal(s.apply(v, axis=0), np.array([[[1.0, 0.0]], [[0.0, 2.0]]], dtype="float32"))


def test_stats_windows_fit_the_patch_and_count_21_features_for_one_channel():
    assert stat_windows(31) == (3, 5, 7, 11) and stat_windows(9) == (3, 5, 7) and stat_windows(5) == (3,)
    assert StatsFeatures(31, 1).n_features == 21 and StatsFeatures(31, 2).n_features == 42
    assert stat_windows(11, "wide") == (3, 5, 7, 9, 21, 33) and StatsFeatures(11, 1, "wide").window_px == 35
    with pytest.raises(ValueError, match="reach"):
        stat_windows(11, "far")


def test_stats_of_a_known_patch():
    x = np.zeros((1, 1, 9, 9), dtype="float32")
    x[0, 0] = np.arange(9)[None, :]  # a ramp along x: gradient magnitude 1 everywhere inside
    f = StatsFeatures(9, 1).patches(x)[0]
    assert f[0] == 4  # centre value
    mean, std, mx, mn, grad = f[1:6]  # the 3 x 3 window: columns 3, 4, 5
    assert (mean, mx, mn, grad) == (4, 5, 3, 1) and std == pytest.approx(np.sqrt(2 / 3))


def test_the_untrained_control_is_the_encoder_training_started_from(trained_run):
    import torch

    from magpipe.training import train_autoencoder

    cfg = trained_run["cfg"].model.model_copy(update={"epochs": 1})
    trained = load_bundle(Layout(trained_run["out"]).model).model
    state = torch.random.get_rng_state()
    a, b = untrained_encoder(trained, cfg.seed), untrained_encoder(trained, cfg.seed)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is kept
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    # one epoch of training from seed cfg.seed starts at exactly these weights and moves them
    x = np.random.default_rng(0).normal(size=(64, 1, 9, 9)).astype("float32")
    zero = train_autoencoder(x, np.ones_like(x, dtype=bool), cfg.model_copy(update={"learning_rate": 1e-12}),
                             device="cpu").model
    assert all(torch.allclose(pa, pz, atol=1e-6) for pa, pz in zip(a.parameters(), zero.parameters()))
    assert any(not torch.allclose(pa, pt) for pa, pt in zip(a.parameters(), trained.parameters()))
