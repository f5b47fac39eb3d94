"""Shared fixtures: small synthetic surveys on disk and one tiny trained run reused by many tests."""

from __future__ import annotations

from pathlib import Path

import os

import numpy as np
import pytest
import xarray as xr

from magpipe.testing import tiny_config
from magpipe.synthetic import synthetic_survey

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_labels_raster(truth: np.ndarray, like: xr.DataArray, path: Path, *, x_max: int | None = None) -> Path:
    """Labels on the survey grid, optionally only left of column ``x_max`` (a small mapped area)."""
    lab = truth.copy()
    if x_max is not None:
        lab[:, x_max:] = 0
    da = xr.DataArray(lab.astype("int16"), dims=("y", "x"), coords={"y": like.y, "x": like.x})
    da.rio.write_crs(like.rio.crs).rio.write_nodata(0).rio.to_raster(path)
    return path


@pytest.fixture(scope="session")
def survey_files(tmp_path_factory) -> dict:
    """A 96 x 128 synthetic survey (GeoTIFF, NaN holes) with labels on its left 80 columns."""
    d = tmp_path_factory.mktemp("survey")
    field, truth = synthetic_survey((96, 128), n_units=3, seed=3)
    field.rio.to_raster(d / "survey.tif")
    write_labels_raster(truth, field, d / "labels.tif", x_max=80)
    return {"survey": d / "survey.tif", "labels": d / "labels.tif", "field": field, "truth": truth, "dir": d}


@pytest.fixture(scope="session")
def trained_run(survey_files, tmp_path_factory) -> dict:
    """ingest + labels + patches + train once, for the tests of later stages."""
    from magpipe.pipeline import run_ingest, run_labels, run_patches, run_train

    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config()
    run_ingest(survey_files["survey"], out, cfg)
    run_labels(survey_files["labels"], out)
    run_patches(out, cfg)
    run_train(out, cfg)
    return {"out": out, "cfg": cfg, **survey_files}


@pytest.fixture(scope="session")
def harness():
    """A temporary Prefect API (SQLite) for flow tests; started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
