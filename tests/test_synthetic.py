"""Block-wise synthetic surveys: any window alone equals the same window of the whole."""

import numpy as np

from magpipe.synthetic import synthetic_block, synthetic_large, synthetic_large_layers


def test_blocks_are_seamless_and_dask_assembly_equals_one_block():
    whole, truth = synthetic_block(0, 300, 0, 400, seed=3)
    part, part_truth = synthetic_block(120, 250, 77, 301, seed=3)
    np.testing.assert_array_equal(part, whole[120:250, 77:301])
    np.testing.assert_array_equal(part_truth, truth[120:250, 77:301])
    da = synthetic_large((300, 400), chunk_px=128, seed=3)
    np.testing.assert_array_equal(da.values, whole)
    assert da.rio.crs is not None and da.x[1] > da.x[0] and da.y[1] < da.y[0]


def test_units_differ_and_holes_are_about_the_asked_fraction():
    field, truth = synthetic_block(0, 1024, 0, 1024, hole_fraction=0.03)
    assert set(np.unique(truth)) == {1, 2, 3, 4}
    assert 0.01 < np.isnan(field).mean() < 0.08
    means = [np.nanmean(field[truth == u]) for u in (1, 2, 3, 4)]
    assert np.all(np.diff(means) > 50)  # each unit has its own level
    assert not np.array_equal(field, synthetic_block(0, 1024, 0, 1024, seed=1)[0])


def test_stack_layers_carry_the_units_share_the_holes_and_join_seamlessly():
    field, truth = synthetic_block(0, 300, 0, 400, seed=3)
    layers = synthetic_large_layers((300, 400), 3, chunk_px=128, seed=3)
    assert layers.dims == ("band", "y", "x") and list(layers.band.values) == [1, 2, 3]
    whole = layers.values
    np.testing.assert_array_equal(whole, synthetic_large_layers((300, 400), 3, chunk_px=400, seed=3).values)
    np.testing.assert_array_equal(np.isnan(whole), np.broadcast_to(np.isnan(field), whole.shape))
    for layer in whole:  # each layer tells the units apart, and no two layers are copies
        means = [np.nanmean(layer[truth == u]) for u in (1, 2, 3, 4)]
        assert np.all(np.diff(means) > 0.1)
    ok = np.isfinite(field)
    assert np.corrcoef(whole[0][ok], whole[1][ok])[0, 1] < 0.999
