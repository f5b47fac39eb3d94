"""Tests for reading and gridding line survey data, and the shipped Britain sample."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rioxarray
import verde  # noqa: F401  (slow first import: paid at collection, not by one test)
from affine import Affine

from magpipe.datasets import britain_sample, read_class_table
from magpipe.errors import InputError
from magpipe.io.lines import grid_line_data, read_line_data

SPACING = 1000.0
# A projected area in British National Grid, away from the origin.
X0, Y0, SIZE = 300_000.0, 500_000.0, 60_000.0


def smooth_field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Anomaly with wavelengths (>= 30 km) long compared to the grid spacing."""
    return 200.0 * np.sin((x - X0) / 8_000.0) * np.cos((y - Y0) / 6_000.0) + 0.002 * (x - X0)


@pytest.fixture
def points() -> pd.DataFrame:
    rng = np.random.default_rng(42)
    x = X0 + rng.uniform(0, SIZE, 20_000)
    y = Y0 + rng.uniform(0, SIZE, 20_000)
    # Leave a 20 km square hole with no data, to check masking.
    keep = ~((x > X0 + 20_000) & (x < X0 + 40_000) & (y > Y0 + 20_000) & (y < Y0 + 40_000))
    return pd.DataFrame({"x": x[keep], "y": y[keep], "value": smooth_field(x[keep], y[keep])})


def test_grid_reproduces_smooth_field(points: pd.DataFrame) -> None:
    grid = grid_line_data(points, spacing=SPACING, crs="EPSG:27700")
    xx, yy = np.meshgrid(grid.x.to_numpy(), grid.y.to_numpy())
    # Away from the survey edges and the hole, where interpolation has data all round.
    inner = (np.abs(xx - X0 - SIZE / 2) < SIZE / 2 - 3_000) & (
        np.abs(yy - Y0 - SIZE / 2) < SIZE / 2 - 3_000
    )
    near_hole = (np.abs(xx - X0 - 30_000) < 13_000) & (np.abs(yy - Y0 - 30_000) < 13_000)
    cells = inner & ~near_hole
    assert np.isfinite(grid.to_numpy()[cells]).all()
    error = grid.to_numpy()[cells] - smooth_field(xx[cells], yy[cells])
    assert np.sqrt(np.mean(error**2)) < 2.5  # field amplitude is 200 nT
    assert np.abs(error).max() < 15.0


def test_grid_masks_cells_far_from_data(points: pd.DataFrame) -> None:
    grid = grid_line_data(points, spacing=SPACING, crs="EPSG:27700", maxdist=2_000.0)
    hole_centre = grid.sel(x=X0 + 30_000, y=Y0 + 30_000, method="nearest")
    assert np.isnan(hole_centre)
    near_data = grid.sel(x=X0 + 10_000, y=Y0 + 10_000, method="nearest")
    assert np.isfinite(near_data)


def test_grid_layout_matches_geotiff_conventions(points: pd.DataFrame) -> None:
    grid = grid_line_data(points, spacing=SPACING, crs="EPSG:27700")
    assert grid.name == "field"
    assert grid.dims == ("y", "x")
    assert grid.dtype == np.float32
    assert grid.attrs["units"] == "nT"
    assert np.all(np.diff(grid.y) < 0) and np.all(np.diff(grid.x) > 0)
    assert grid.rio.crs.to_epsg() == 27700
    transform = grid.rio.transform()
    assert transform == grid.rio.transform(recalc=True)
    west, north = float(grid.x[0]) - SPACING / 2, float(grid.y[0]) + SPACING / 2
    assert transform == Affine(SPACING, 0.0, west, 0.0, -SPACING, north)
    assert west % SPACING == 0 and north % SPACING == 0
    assert grid_line_data(points, spacing=SPACING, crs="EPSG:27700").identical(grid)


def test_geographic_input_is_projected(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lon = rng.uniform(-3.0, -2.0, 4_000)
    lat = rng.uniform(54.0, 54.5, 4_000)
    path = tmp_path / "survey.csv.gz"
    table = pd.DataFrame({"Longitude": lon, "Latitude": lat, "alt": 300.0, "TMI": lat * 10})
    with gzip.open(path, "wt") as stream:
        table.to_csv(stream, index=False)

    df = read_line_data(path)
    assert list(df.columns) == ["x", "y", "value"]
    assert df.attrs["geographic"] is True
    np.testing.assert_allclose(df["value"], lat * 10)

    grid = grid_line_data(df, spacing=2_000.0, crs="EPSG:27700")
    assert grid.rio.crs.to_epsg() == 27700
    assert 330_000 < float(grid.x.mean()) < 400_000  # BNG easting of 2.5 W
    assert 480_000 < float(grid.y.mean()) < 540_000


def test_read_xyz_without_header_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "lines.xyz"
    path.write_text("/ Geosoft-style comment\n1 2 3.5\n4 5 *\nLine 10\n7 8 9\n")
    df = read_line_data(path)
    assert df.to_numpy().tolist() == [[1.0, 2.0, 3.5], [7.0, 8.0, 9.0]]
    assert df.attrs["geographic"] is False


def test_missing_column_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    path.write_text("easting,northing,mag\n1,2,3\n")
    with pytest.raises(InputError, match="points.csv.*'tmi' not found"):
        read_line_data(path, value_col="tmi")
    with pytest.raises(InputError, match="nothing_here.csv: file not found"):
        read_line_data(tmp_path / "nothing_here.csv")


def test_shipped_britain_sample() -> None:
    sample = britain_sample()
    survey = rioxarray.open_rasterio(sample.survey).squeeze("band", drop=True)
    labels = rioxarray.open_rasterio(sample.labels).squeeze("band", drop=True)
    assert survey.rio.crs.to_epsg() == 27700 and labels.rio.crs.to_epsg() == 27700
    assert survey.shape == labels.shape
    assert survey.rio.transform() == labels.rio.transform()
    assert labels.dtype == np.uint8

    field = survey.to_numpy()
    assert np.isnan(field).any() and np.isfinite(field).mean() > 0.4
    assert 10 < np.nanstd(field) < 1_000 and np.nanmax(np.abs(field)) < 5_000

    codes = read_class_table(sample.classes)
    present = set(np.unique(labels.to_numpy())) - {0}
    assert len(present) >= 4 and present <= set(codes)
    assert not (labels.to_numpy()[np.isnan(field)]).any()
    assert "© UKRI" in sample.attribution
