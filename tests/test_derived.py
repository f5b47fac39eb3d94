"""Derived magnetic channels: known derivatives of analytic fields, holes kept, any axis order."""

import numpy as np
import pytest
import xarray as xr

from magpipe.derived import CHANNELS, derived_channels


def _grid(values, y, x):
    return xr.DataArray(values.astype("float32"), dims=("y", "x"), coords={"y": y, "x": x})


def test_horizontal_derivatives_of_a_plane_whatever_the_axis_order():
    y, x = np.arange(0.0, 3000, 100)[::-1], np.arange(0.0, 4000, 100)  # north-up: y descending
    yy, xx = np.meshgrid(y, x, indexing="ij")
    out = derived_channels(_grid(0.03 * xx - 0.04 * yy, y, x), ("thd",))
    np.testing.assert_allclose(out["thd"].values[2:-2, 2:-2], 0.05, rtol=1e-4)
    assert out["thd"].dims == ("y", "x") and np.array_equal(out["y"], y)


def test_vertical_derivative_of_a_harmonic_field_and_the_analytic_signal():
    # f = cos(k x) e^{-k z} (sources below): at z = 0, df/dz upward = -k f, |grad| = k
    n, dx = 256, 50.0
    k = 2 * np.pi / (16 * dx)
    y, x = np.arange(n) * dx, np.arange(n) * dx
    f = np.cos(k * x)[None, :].repeat(n, 0)
    out = derived_channels(_grid(f, y, x), CHANNELS)
    core = (slice(64, -64), slice(64, -64))
    np.testing.assert_allclose(out["dz"].values[core], (-k * f)[core], atol=0.05 * k)
    np.testing.assert_allclose(out["asa"].values[core], k, rtol=0.06)
    tilt = out["tilt"].values
    assert np.nanmax(np.abs(tilt)) <= np.pi / 2 + 1e-6


def test_holes_stay_holes_in_every_channel():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 50))
    f[10:15, 20:30] = np.nan
    out = derived_channels(_grid(f, np.arange(40.0), np.arange(50.0)))
    for name in CHANNELS:
        v = out[name].values
        assert np.array_equal(np.isnan(v), np.isnan(f)), name


def test_unknown_channel_is_refused():
    with pytest.raises(ValueError, match="unknown derived channels"):
        derived_channels(_grid(np.zeros((8, 8)), np.arange(8.0), np.arange(8.0)), ("rtp",))
