"""Survey stacks: layers beside the magnetic grid, put on the survey's cells at ingest and read by every stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from rasterio.enums import Resampling
from rasterio.warp import reproject
from scipy.ndimage import gaussian_filter

from magpipe.config import RunConfig
from magpipe.errors import ConfigError
from magpipe.io.schema import Layout
from magpipe.io.stores import store_attrs
from magpipe.pipeline import run_all, run_ingest
from magpipe.testing import assert_one_line_error, run_cli as magpipe, synthetic_stack, tiny_config, write_layer


def _smooth(shape, seed: int) -> np.ndarray:
    return gaussian_filter(np.random.default_rng(seed).normal(size=shape), 4) * 50 + 100


def _stored(out, name: str) -> np.ndarray:
    return zarr.open_array(Layout(out).survey / name)[:]


@pytest.mark.parametrize("crs,cell", [("EPSG:4326", 0.002), ("EPSG:32633", 37.0)],
                         ids=["geographic, coarser", "same CRS, finer and offset"])
def test_a_layer_on_another_crs_and_resolution_lands_on_the_right_cells(survey_files, tmp_path, crs, cell):
    """Chunk by chunk (64-cell chunks of a 96 x 128 survey) it is rasterio's warp of the whole file, to GDAL's
    own precision and far closer than the same warp one cell off. (GDAL approximates the transformation to
    0.125 source cells over each window it warps, and widens the bilinear kernel of a finer layer by the
    ratio of those windows, so the values of a rough layer differ by a small fraction of its range.)"""
    field = survey_files["field"]
    t = field.rio.transform()
    left, bottom, right, top = field.rio.bounds()
    if crs == "EPSG:4326":
        from rasterio.warp import transform_bounds

        left, bottom, right, top = transform_bounds(field.rio.crs, crs, left, bottom, right, top)
    left, top = left - 7.3 * cell, top + 5.1 * cell  # a margin, and cell edges that match nothing
    shape = (int((top - bottom) / cell) + 12, int((right - left) / cell) + 12)
    values = gaussian_filter(np.random.default_rng(1).normal(size=shape), 1.0) * 50 + 100
    path = write_layer(tmp_path / "k.tif", values, crs=crs, left=left, top=top, cell=cell)
    cfg = tiny_config(ingest={"chunk_px": 64}).with_inputs(survey=survey_files["survey"], layers={"K": str(path)})
    run_ingest(tmp_path / "out", cfg)
    expected = np.full(field.shape, np.nan, "float32")
    reproject(values.astype("float32"), expected, src_transform=rasterio.transform.from_origin(left, top, cell, cell),
              src_crs=crs, dst_transform=t, dst_crs=field.rio.crs, resampling=Resampling.bilinear,
              src_nodata=np.nan, dst_nodata=np.nan)
    got = _stored(tmp_path / "out", "K")
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(got, expected, atol=0.01 * np.ptp(values))
    err = np.abs(got - expected).mean()
    assert err < 1e-3 * np.ptp(values)
    assert np.abs(got[:, 1:] - expected[:, :-1]).mean() > 20 * err  # one cell off is far outside it
    assert np.abs(got[1:] - expected[:-1]).mean() > 20 * err
    valid = _stored(tmp_path / "out", "valid").astype(bool)
    np.testing.assert_array_equal(valid, np.isfinite(field.values))


def test_layers_on_the_survey_grid_are_taken_as_they_are_and_every_band_becomes_awrite_layer(survey_files, tmp_path):
    field = survey_files["field"]
    left, _, _, top = field.rio.bounds()
    cell = float(field.rio.resolution()[0])
    bands = np.stack([_smooth(field.shape, s) for s in (2, 3)])
    bands[1, :10, :10] = -9999  # no data in one band: those cells leave the valid mask
    multi = write_layer(tmp_path / "ls.tif", bands, crs=str(field.rio.crs), left=left, top=top, cell=cell, nodata=-9999)
    cfg = tiny_config().with_inputs(survey=survey_files["survey"], layers={"LS": str(multi)})
    run_ingest(tmp_path / "out", cfg)
    attrs = store_attrs(Layout(tmp_path / "out").survey)
    assert attrs["layers"] == ["LS_1", "LS_2"]
    assert set(attrs["layer_scalings"]) == {"LS_1", "LS_2"}
    np.testing.assert_array_equal(_stored(tmp_path / "out", "LS_1"), bands[0].astype("float32"))
    valid = _stored(tmp_path / "out", "valid").astype(bool)
    assert not valid[:10, :10].any()
    np.testing.assert_array_equal(valid[10:, 10:], np.isfinite(field.values)[10:, 10:])
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["inputs"]["layers"]
    assert saved["LS"]["path"] == str(multi)


def test_a_changed_layer_file_makes_ingest_run_again(survey_files, tmp_path):
    field = survey_files["field"]
    left, _, _, top = field.rio.bounds()
    cell = float(field.rio.resolution()[0])
    path = write_layer(tmp_path / "k.tif", _smooth(field.shape, 4), crs=str(field.rio.crs), left=left, top=top, cell=cell)
    cfg = tiny_config().with_inputs(survey=survey_files["survey"], layers={"K": str(path)})
    out = tmp_path / "out"
    run_ingest(out, cfg)
    first = store_attrs(Layout(out).survey)["magpipe_hash"]
    run_ingest(out, cfg)
    assert store_attrs(Layout(out).survey)["magpipe_hash"] == first
    write_layer(path, _smooth(field.shape, 5), crs=str(field.rio.crs), left=left, top=top, cell=cell)
    run_ingest(out, cfg)
    assert store_attrs(Layout(out).survey)["magpipe_hash"] != first
    np.testing.assert_allclose(_stored(out, "K"), _smooth(field.shape, 5).astype("float32"))


@pytest.mark.slow
def test_a_stack_whose_classes_live_in_one_layer_is_classified_from_it(tmp_path):
    s = synthetic_stack(tmp_path, carrier="beta")
    # two thirds of the features are noise here: the SVM needs its usual search (gamma, C) and labels
    svm = {"features": "stats", "max_per_class": 400, "gamma_scale": [0.1, 0.3, 1.0], "C": [1.0, 10.0, 100.0]}
    cfg = tiny_config(svm=svm, evaluate={"sparse_per_class": 0}).with_inputs(
        survey=s["survey"], labels=s["labels"], layers=s["layers"])
    report = run_all(tmp_path / "out", cfg)
    meta = json.loads((tmp_path / "out" / "model" / "metadata.json").read_text())
    assert meta["inputs"] == ["field", "alpha", "beta"]
    assert [sc.get("clip") for sc in meta["scalings"]] == [None, 10.0, 10.0]
    assert report["feature_sets"]["deployed"]["balanced_accuracy"]["mean"] >= 0.9
    groups = report["layer_groups"]
    assert set(groups) == {"magnetic", "alpha", "beta"}
    costs = {g: row["full_minus_without"]["mean_diff"] for g, row in groups.items()}
    assert max(costs, key=costs.get) == "beta" and costs["beta"] > 0.2  # without it the map guesses
    assert "What each layer group adds" in (tmp_path / "out" / "report.md").read_text()
    ds = xr.open_zarr(tmp_path / "out" / "classified.zarr", consolidated=False)
    valid = _stored(tmp_path / "out", "valid").astype(bool)
    assert np.array_equal(ds["class"].values > 0, valid)


def test_the_layer_option_and_config_names(tmp_path):
    cfg = RunConfig.load(None).with_inputs(layers={"K": "k.tif#2", "SRTM": {"path": "dem.tif",
                                                                            "resampling": "cubic"}})
    assert cfg.inputs.layers["K"].band == 2 and cfg.inputs.layers["SRTM"].resampling == "cubic"
    for bad, needle in (({"dz": "x.tif"}, "taken"), ({"1K": "x.tif"}, "letters"),
                        ({"K": {"path": "x.tif", "resampling": "spline"}}, "resampling")):
        with pytest.raises(ConfigError, match=needle):
            RunConfig.load(None).with_inputs(layers=bad)


@pytest.fixture(scope="module")
def layer_cases(survey_files, tmp_path_factory) -> dict:
    """name -> (--layer values, expected fragments of the error line)."""
    d = tmp_path_factory.mktemp("bad-layers")
    field = survey_files["field"]
    left, bottom, right, top = field.rio.bounds()
    cell = float(field.rio.resolution()[0])
    crs = str(field.rio.crs)
    far = write_layer(d / "far.tif", _smooth((20, 20), 1), crs=crs, left=right + 1e5, top=top, cell=cell)
    nocrs = write_layer(d / "nocrs.tif", _smooth((30, 30), 1), crs=None, left=left, top=top, cell=cell * 2)
    bands = write_layer(d / "two.tif", np.stack([_smooth(field.shape, 1)] * 2), crs=crs, left=left, top=top, cell=cell)
    empty = write_layer(d / "empty.tif", np.full(field.shape, -1.0), crs=crs, left=left, top=top, cell=cell, nodata=-1)
    ok = write_layer(d / "ok.tif", _smooth(field.shape, 2), crs=crs, left=left, top=top, cell=cell)
    return {
        "no '='": ([str(ok)], ["--layer", "NAME=PATH"]),
        "no overlap": ([f"K={far}"], ["far.tif", "'K'", "does not overlap the survey"]),
        "no CRS": ([f"K={nocrs}"], ["nocrs.tif", "'K'", "no CRS"]),
        "band out of range": ([f"K={bands}#3"], ["two.tif", "'K'", "band 3 out of range 1..2"]),
        "one name twice": ([f"K={ok}", f"K={bands}"], ["'K'", "given twice"]),
        "a band's name taken": ([f"LS={bands}", f"LS_1={ok}"], ["'LS_1'", "given twice"]),
        "a derived channel's name": ([f"tilt={ok}"], ["'tilt'", "taken"]),
        "no valid cell": ([f"K={empty}"], ["empty.tif", "'K'", "no valid cell"]),
        "missing file": ([f"K={d / 'nope.tif'}"], ["nope.tif", "'K'", "file not found"]),
    }


@pytest.mark.parametrize("case", ["no '='", "no overlap", "no CRS", "band out of range", "one name twice",
                                  "a band's name taken", "a derived channel's name", "no valid cell", "missing file"])
def test_unusable_layers_are_refused_in_one_line(survey_files, layer_cases, tmp_path, case):
    layers, needles = layer_cases[case]
    out = tmp_path / "out"
    r = magpipe("ingest", survey_files["survey"], "--out", out, *[a for v in layers for a in ("--layer", v)])
    assert_one_line_error(r, *needles)
    assert not (out / "survey.zarr").exists() and not (out / "survey.zarr.partial").exists()


def test_a_model_of_a_stack_refuses_a_survey_without_one_of_its_layers(tmp_path):
    s = synthetic_stack(tmp_path, carrier="alpha")
    cfg = tiny_config(svm={"features": "stats"}, evaluate={"splits": 1, "sparse_per_class": 0}).with_inputs(
        survey=s["survey"], labels=s["labels"], layers=s["layers"])
    from magpipe.pipeline import run_labels, run_patches, run_train

    run_ingest(tmp_path / "a", cfg)
    run_labels(tmp_path / "a", cfg)
    run_patches(tmp_path / "a", cfg)
    run_train(tmp_path / "a", cfg)
    other = tmp_path / "b"
    assert magpipe("ingest", s["survey"], "--out", other, "--layer", f"alpha={s['layers']['alpha']}").returncode == 0
    r = magpipe("classify", "--out", other, "--model", tmp_path / "a" / "model", "--serial")
    assert_one_line_error(r, "survey.zarr", "'beta'")
    assert not (other / "classified.zarr").exists()


def test_the_patch_size_is_chosen_on_validation_from_the_whole_stack(tmp_path):
    """The encoder's receptive field (``patches.patch_px: auto``) is chosen from quick encoders of the
    stack: the classes live in one layer, so a choice made from the field alone would validate near chance."""
    from magpipe.pipeline import run_labels, run_patch_size, run_patches, run_train

    s = synthetic_stack(tmp_path, carrier="alpha")
    svm = {"max_per_class": 400, "gamma_scale": [0.1, 0.3, 1.0], "C": [1.0, 10.0, 100.0]}
    cfg = tiny_config(patches={"patch_px": "auto", "auto_sizes": [9, 13]}, svm=svm).with_inputs(
        survey=s["survey"], labels=s["labels"], layers=s["layers"])
    out = tmp_path / "out"
    for stage in (run_ingest, run_labels, run_patch_size, run_patches, run_train):
        stage(out, cfg)
    choice = json.loads(Layout(out).patch_size.read_text())
    assert choice["sizes"] == [9, 13] and choice["chosen"] in (9, 13)
    assert max(choice["validation"][str(choice["chosen"])].values()) >= 0.7  # 3 classes: chance is 1/3
    meta = json.loads((out / "model" / "metadata.json").read_text())
    assert meta["inputs"] == ["field", "alpha", "beta"] and meta["patch_px"] == choice["chosen"]


def test_layers_are_grouped_by_their_names_unless_told():
    from magpipe.layer_groups import layer_groups

    inputs = ("field", "dz", "K", "eTh", "ThK", "SRTM", "Landsat_1", "Landsat_2", "slag")
    assert layer_groups(inputs) == {"magnetic": [0, 1], "radiometric": [2, 3, 4], "terrain": [5],
                                    "imagery": [6, 7], "slag": [8]}
    assert layer_groups(inputs, {"waste": ["slag", "SRTM"], "optical": ["Landsat"]}) == {
        "magnetic": [0, 1], "radiometric": [2, 3, 4], "waste": [5, 8], "optical": [6, 7]}
