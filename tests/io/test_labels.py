import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import Point, box

from magpipe.errors import InputError
from magpipe.io.grids import read_grid
from magpipe.io.labels import read_labels


@pytest.fixture(scope="module")
def survey(tmp_path_factory, request):
    from magpipe.synthetic import synthetic_survey

    f, _ = synthetic_survey((40, 50), hole_fraction=0, seed=2)
    p = tmp_path_factory.mktemp("lab") / "s.tif"
    f.rio.to_raster(p)
    return read_grid(p)


def _cells(survey):
    x, y = survey.x.values, survey.y.values
    return x, y


def test_polygons_in_another_crs_are_reprojected_and_rasterised(survey, tmp_path):
    x, y = _cells(survey)
    left = box(x[0] - 50, y[-1] - 50, x[19] + 50, y[0] + 50)  # columns 0..19
    right = box(x[30] - 50, y[-1] - 50, x[-1] + 50, y[0] + 50)  # columns 30..49
    gdf = gpd.GeoDataFrame({"unit": ["granite", "basalt"]}, geometry=[left, right], crs=survey.rio.crs)
    gdf.to_crs("EPSG:4326").to_file(tmp_path / "units.gpkg")
    codes, names = read_labels(tmp_path / "units.gpkg", survey, label_field="unit")
    assert names == ["basalt", "granite"]
    assert codes.shape == survey.shape
    # reprojection bends the edges slightly: check the cores
    assert np.all(codes[:, 2:18] == 2) and np.all(codes[:, 32:48] == 1)
    assert np.all(codes[:, 22:28] == 0)


def test_sparse_points_burn_one_cell_each(survey, tmp_path):
    x, y = _cells(survey)
    pts = [Point(x[5], y[7]), Point(x[40], y[30]), Point(x[12], y[33])]
    gpd.GeoDataFrame({"cls": [1, 2, 2]}, geometry=pts, crs=survey.rio.crs).to_file(tmp_path / "pts.geojson")
    codes, names = read_labels(tmp_path / "pts.geojson", survey, label_field="cls")
    assert names == ["1", "2"]
    assert (codes > 0).sum() == 3
    assert codes[7, 5] == 1 and codes[30, 40] == 2 and codes[33, 12] == 2


def test_missing_field_and_no_overlap_are_clear_errors(survey, tmp_path):
    x, y = _cells(survey)
    gdf = gpd.GeoDataFrame({"unit": ["a"]}, geometry=[box(x[0], y[-1], x[10], y[0])], crs=survey.rio.crs)
    gdf.to_file(tmp_path / "u.gpkg")
    with pytest.raises(InputError, match="u.gpkg: no field 'SIGLA'.*unit"):
        read_labels(tmp_path / "u.gpkg", survey, label_field="SIGLA")
    far = gpd.GeoDataFrame({"unit": ["a"]}, geometry=[box(0, 0, 1000, 1000)], crs=survey.rio.crs)
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(InputError, match="far.gpkg: labels do not overlap"):
        read_labels(tmp_path / "far.gpkg", survey, label_field="unit")


def test_label_raster_on_a_coarser_grid_is_resampled(survey, tmp_path):
    coarse = survey.coarsen(y=2, x=2).mean()
    lab = (coarse.x > float(coarse.x[12])).astype("int16") + 1
    lab = lab.broadcast_like(coarse).transpose("y", "x").rio.write_crs(survey.rio.crs)
    lab.rio.to_raster(tmp_path / "lab.tif")
    codes, names = read_labels(tmp_path / "lab.tif", survey)
    assert names == ["class_1", "class_2"]
    assert np.all(codes[:, :20] == 1) and np.all(codes[:, 30:] == 2)
