"""Helpers for tests and examples: configs small enough for a whole run in seconds, the CLI as a
user runs it, and label rasters of synthetic surveys. The one home of test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr

from magpipe.config import RunConfig


def tiny_config(**sections: dict) -> RunConfig:
    """A complete run on a ~100 x 100 survey in a few seconds on 2 CPU cores."""
    base: dict = {
        "patches": {"patch_px": 9, "n_patches": 1200},
        "model": {"channels": [4, 8, 8, 8], "hidden": 32, "epochs": 3, "batch_size": 64, "anomaly_px": 3},
        "svm": {"max_per_class": 150, "C": [1.0, 10.0], "gamma_scale": [1.0]},
        "evaluate": {"block_patches": 2, "splits": 2, "sparse_per_class": 10, "sparse_repeats": 3},
        "classify": {"chunk_px": 64},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return RunConfig.model_validate(base)


def run_cli(*args, cwd=None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m magpipe ARGS`` in a fresh process, as a user runs it (``env`` adds variables)."""
    return subprocess.run([sys.executable, "-m", "magpipe", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env=None if env is None else {**os.environ, **env})


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """The command failed with exit status 2 and exactly one ``error:`` line holding every needle,
    and no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def write_labels_raster(truth: np.ndarray, like: xr.DataArray, path: Path, *, x_max: int | None = None) -> Path:
    """Labels on the survey grid as a GeoTIFF, optionally only left of column ``x_max`` (a small mapped area)."""
    lab = truth.copy()
    if x_max is not None:
        lab[:, x_max:] = 0
    da = xr.DataArray(lab.astype("int16"), dims=("y", "x"), coords={"y": like.y, "x": like.x})
    da.rio.write_crs(like.rio.crs).rio.write_nodata(0).rio.to_raster(path)
    return path
