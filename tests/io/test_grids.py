import numpy as np
import pytest
import xarray as xr

from magpipe.errors import InputError
from magpipe.io.grids import read_grid
from magpipe.synthetic import synthetic_survey


@pytest.fixture(scope="module")
def field():
    f, _ = synthetic_survey((40, 50), seed=5)
    return f


def test_geotiff_round_trip_keeps_crs_transform_and_holes(field, tmp_path):
    field.rio.to_raster(tmp_path / "s.tif")
    got = read_grid(tmp_path / "s.tif")
    assert got.dims == ("y", "x") and got.dtype == np.float32
    assert got.rio.crs == field.rio.crs
    assert tuple(got.rio.transform()) == pytest.approx(tuple(field.rio.transform()))
    np.testing.assert_array_equal(np.isnan(got.values), np.isnan(field.values))
    np.testing.assert_allclose(got.values, field.values, equal_nan=True)


def test_netcdf_with_ascending_northing_is_flipped_north_up(field, tmp_path):
    ds = field.rename({"y": "northing", "x": "easting"}).isel(northing=slice(None, None, -1)).to_dataset(name="tmi")
    ds.to_netcdf(tmp_path / "s.nc")
    got = read_grid(tmp_path / "s.nc", crs="EPSG:32633")
    assert float(got.y[0]) > float(got.y[-1])
    np.testing.assert_allclose(got.values, field.values, equal_nan=True)
    assert got.rio.crs.to_epsg() == 32633


def test_zarr_input(field, tmp_path):
    field.to_dataset().to_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False)
    got = read_grid(tmp_path / "s.zarr")
    np.testing.assert_allclose(got.values, field.values, equal_nan=True)
    assert got.rio.crs == field.rio.crs


@pytest.mark.parametrize("sentinel", [-99999.0, 1e30])
def test_sentinel_nodata_becomes_nan(field, tmp_path, sentinel):
    filled = field.fillna(sentinel)
    filled.rio.to_raster(tmp_path / "s.tif")  # no nodata tag in the file: only --nodata can tell
    got = read_grid(tmp_path / "s.tif", nodata=sentinel)
    np.testing.assert_array_equal(np.isnan(got.values), np.isnan(field.values))


def test_multiband_needs_a_band(field, tmp_path):
    stack = xr.concat([field, field * 2], dim="band").assign_coords(band=[1, 2])
    stack.rio.to_raster(tmp_path / "m.tif")
    with pytest.raises(InputError, match="2 bands.*--band"):
        read_grid(tmp_path / "m.tif")
    got = read_grid(tmp_path / "m.tif", band=2)
    np.testing.assert_allclose(got.values, field.values * 2, equal_nan=True, rtol=1e-6)


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.tif: file not found"):
        read_grid(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="bad.tif: not a readable raster"):
        read_grid(bad)
    with pytest.raises(InputError, match="a directory, not a survey file or a Zarr store"):
        read_grid(tmp_path)
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(InputError, match="unknown survey format '.docx'"):
        read_grid(tmp_path / "notes.docx")


def test_line_data_csv_is_gridded_on_read(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-3, -2, 4000), rng.uniform(54, 55, 4000)
    pd.DataFrame({"longitude": lon, "latitude": lat, "total_field_anomaly_nt": 100 * (lon + 2.5)}).to_csv(
        tmp_path / "lines.csv", index=False)
    with pytest.raises(InputError, match="lines.csv: line data needs --spacing and --crs"):
        read_grid(tmp_path / "lines.csv")
    got = read_grid(tmp_path / "lines.csv", spacing=5000, crs="EPSG:27700")
    assert got.rio.crs.to_epsg() == 27700
    assert got.rio.resolution() == pytest.approx((5000, -5000))
    finite = got.values[np.isfinite(got.values)]
    assert finite.size > 50 and finite.min() > -60 and finite.max() < 60
