"""Derived channels as autoencoder inputs: written chunk by chunk, and used by every stage."""

import json

import numpy as np
import xarray as xr
import zarr

from magpipe.derived import derived_channels
from magpipe.io.schema import Layout
from magpipe.io.survey import open_inputs
from magpipe.pipeline import run_all, run_ingest
from magpipe.inputs import ensure_inputs
from magpipe.testing import tiny_config


def test_chunked_derived_channels_match_the_whole_grid(survey_files, tmp_path):
    cfg = tiny_config(ingest={"chunk_px": 64}).with_inputs(survey=survey_files["survey"])
    run_ingest(tmp_path, cfg)
    lay = Layout(tmp_path)
    survey = lay.survey
    scaling = ensure_inputs(lay, ("field", "thd", "dz"))
    assert len(scaling.channels) == 3
    field = xr.open_zarr(survey, consolidated=False)["field"].load()
    whole = derived_channels(field, ("thd", "dz"), fill=scaling.channels[0].mean)
    thd, dz = (zarr.open_array(lay.inputs / n)[:] for n in ("thd", "dz"))
    np.testing.assert_array_equal(np.isnan(thd), np.isnan(field.values))
    np.testing.assert_allclose(thd, whole["thd"].values, rtol=1e-4, atol=1e-6)  # local: exact with the overlap
    ok = np.isfinite(dz)
    # FFT: the chunks see 64 cells around them, not the whole grid; close, not equal
    assert np.corrcoef(dz[ok], whole["dz"].values[ok])[0, 1] > 0.95
    mtime = (lay.inputs / "zarr.json").stat().st_mtime_ns
    ensure_inputs(lay, ("thd", "dz"))  # up to date: not rewritten
    assert (lay.inputs / "zarr.json").stat().st_mtime_ns == mtime
    assert [a.shape for a in open_inputs(lay, ("dz", "field"))] == [field.shape, field.shape]


def test_a_run_with_derived_inputs_trains_classifies_and_scores_on_every_channel(survey_files, tmp_path):
    cfg = tiny_config(patches={"inputs": ["field", "dz", "tilt"]}).with_inputs(
        survey=survey_files["survey"], labels=survey_files["labels"])
    report = run_all(tmp_path, cfg)
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["inputs"] == ["field", "dz", "tilt"] and len(meta["scalings"]) == 3
    patches = zarr.open_array(tmp_path / "patches.zarr" / "patch")
    assert patches.shape[1:] == (3, 9, 9)
    ds = xr.open_zarr(tmp_path / "classified.zarr", consolidated=False)
    valid = zarr.open_array(tmp_path / "survey.zarr" / "valid")[:].astype(bool)
    assert np.array_equal(ds["class"].values > 0, valid)
    assert np.isfinite(ds["anomaly"].values[valid]).all()
    assert 0 <= report["balanced_accuracy"]["ae"] <= 1 and report["sparse"] is not None


def test_inputs_that_fit_are_read_into_memory_once_and_others_stay_in_the_store(tmp_path):
    """Evaluation cuts its patches from memory when the grids fit (the same values), else from the store."""
    from magpipe.inputs import in_memory

    grid = zarr.create_array(tmp_path / "g.zarr", shape=(40, 30), chunks=(16, 16), dtype="float32")
    grid[...] = np.arange(1200, dtype="float32").reshape(40, 30)
    held = in_memory([grid, grid], max_bytes=2 * 1200 * 4)
    assert all(isinstance(a, np.ndarray) for a in held)
    np.testing.assert_array_equal(held[1], grid[...])
    assert in_memory([grid, grid], max_bytes=2 * 1200 * 4 - 1)[0] is grid
