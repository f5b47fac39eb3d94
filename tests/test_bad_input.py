"""The bad-input matrix, as a user meets it: `magpipe <command>` on broken or unusable input.

Each case must exit 2 with exactly one `error:` line naming the file and the problem (no
traceback), and leave nothing at the output path that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from magpipe.io.stores import file_hash, is_complete
from magpipe.testing import assert_one_line_error, run_cli as magpipe, write_labels_raster


def _tif(da: xr.DataArray, path: Path, **kw) -> Path:
    da.rio.to_raster(path, **kw)
    return path


def _assert_nothing_complete(out: Path) -> None:
    for name in ("survey.zarr", "patches.zarr", "classified.zarr"):
        assert not is_complete(out / name), name
    assert not (out / "model" / "metadata.json").exists()


def _ingest_cases(d: Path, field: xr.DataArray) -> dict[str, tuple[Path, list[str], list[str]]]:
    """name -> (file, extra CLI args, expected fragments of the error line)."""
    cases: dict[str, tuple[Path, list[str], list[str]]] = {}
    cases["missing file"] = (d / "nope.tif", [], ["nope.tif", "file not found"])
    for suffix, kind in ((".tif", "raster"), (".nc", "netcdf")):
        bad = d / f"corrupt{suffix}"
        bad.write_bytes(b"\x00garbage, not a survey" * 50)
        cases[f"corrupt {kind}"] = (bad, [], [bad.name, f"not a readable {kind}"])
    bad_zarr = d / "corrupt.zarr"
    bad_zarr.mkdir()
    (bad_zarr / "zarr.json").write_text("{ this is not json")
    cases["corrupt zarr"] = (bad_zarr, [], ["corrupt.zarr", "not a readable zarr"])
    cube = xr.DataArray(np.zeros((3, *field.shape), "float32"), dims=("time", "y", "x"),
                        coords={"y": field.y, "x": field.x}, name="tmi")
    cube.to_dataset().to_netcdf(d / "cube.nc")
    cases["three dimensions"] = (d / "cube.nc", [], ["cube.nc", "dims ('time', 'y', 'x')"])
    bands = xr.concat([field, field + 1, field + 2], dim="band").assign_coords(band=[1, 2, 3])
    cases["bands without --band"] = (_tif(bands, d / "bands.tif"), [], ["bands.tif", "3 bands", "--band"])
    cplx = xr.DataArray(field.values.astype("complex64"), dims=("y", "x"), coords={"y": field.y, "x": field.x},
                        name="tmi")
    cplx.to_dataset().to_zarr(d / "complex.zarr", zarr_format=3, consolidated=False)
    cases["complex values"] = (d / "complex.zarr", [], ["complex.zarr", "complex64", "real numbers"])
    cases["all no-data"] = (_tif(field * np.nan, d / "empty.tif"), [], ["empty.tif", "no valid cells"])
    flat = field.fillna(0) * 0 + 7
    cases["constant values"] = (_tif(flat, d / "flat.tif"), [], ["flat.tif", "same value"])
    cases["line data without spacing"] = (d / "lines.csv", [], ["lines.csv", "--spacing"])
    (d / "lines.csv").write_text("x,y,tmi\n0,0,1\n10,0,2\n")
    whole = _tif(field, d / "whole.tif").read_bytes()
    (d / "truncated.tif").write_bytes(whole[: int(len(whole) * 0.6)])  # a download cut short
    cases["truncated raster"] = (d / "truncated.tif", [], ["truncated.tif", "cannot be read to its end",
                                                           "truncated"])
    cases["unknown format"] = (d / "survey.jpgx", [], ["survey.jpgx", "unknown survey format"])
    (d / "survey.jpgx").write_text("x")
    (d / "zero.tif").write_bytes(b"")
    cases["empty file"] = (d / "zero.tif", [], ["zero.tif", "empty file (0 bytes)"])
    (d / "folder").mkdir()
    cases["a directory"] = (d / "folder", [], ["folder", "a directory, not a survey file or a Zarr store"])
    gridding = ["--spacing", "10", "--crs", "EPSG:27700"]
    (d / "words.csv").write_text("x,y,tmi\n0,0,high\n10,0,low\n")
    cases["line data of words"] = (d / "words.csv", gridding, ["words.csv", "no numeric rows"])
    (d / "nocoords.csv").write_text("a,b\n1,2\n")
    cases["line data without coordinates"] = (d / "nocoords.csv", gridding, ["nocoords.csv", "no x column"])
    return cases


CASES = ["missing file", "empty file", "a directory", "corrupt raster", "truncated raster", "corrupt netcdf",
         "corrupt zarr", "three dimensions", "bands without --band", "complex values", "all no-data",
         "constant values", "line data without spacing", "line data of words", "line data without coordinates",
         "unknown format"]


@pytest.fixture(scope="module")
def ingest_cases(survey_files, tmp_path_factory):
    return _ingest_cases(tmp_path_factory.mktemp("bad"), survey_files["field"])


@pytest.mark.parametrize("case", CASES)
def test_unusable_survey_is_refused_in_one_line(ingest_cases, tmp_path, case):
    path, extra, needles = ingest_cases[case]
    out = tmp_path / "out"
    r = magpipe("ingest", path, "--out", out, *extra)
    assert_one_line_error(r, *needles)
    _assert_nothing_complete(out)


def test_integer_survey_with_file_nodata_is_read_as_float(survey_files, tmp_path):
    """Integer grids are common (nT rounded, -32768 for no data): accepted, nodata masked."""
    field = survey_files["field"]
    ints = field.fillna(-32768).round().astype("int16").rio.write_nodata(-32768)
    path = _tif(ints, tmp_path / "int16.tif")
    r = magpipe("ingest", path, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    stored = xr.open_zarr(tmp_path / "out" / "survey.zarr", consolidated=False)["field"].values
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(stored), np.isnan(field.values))


def _labelled_run(survey_files, tmp_path, labels: np.ndarray, *, field=None) -> Path:
    field = survey_files["field"] if field is None else field
    out = tmp_path / "out"
    lab = write_labels_raster(labels, field, tmp_path / "labels.tif")
    survey = _tif(field, tmp_path / "survey.tif")
    assert magpipe("ingest", survey, "--out", out).returncode == 0
    r = magpipe("labels", lab, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_survey_smaller_than_a_patch(survey_files, tmp_path, config_file):
    small = survey_files["field"][:7, :40]
    two_classes = np.broadcast_to(np.where(np.arange(40) < 20, 1, 2), (7, 40))
    out = _labelled_run(survey_files, tmp_path, two_classes, field=small)
    r = magpipe("train", "--out", out, "--config", config_file)
    assert_one_line_error(r, "survey.zarr", "7 x 40 cells", "smaller than one 9 px patch")
    assert not (out / "model" / "metadata.json").exists()


def _one_cell_of_class_3(truth: np.ndarray) -> np.ndarray:
    truth = truth.copy()
    truth[:, 80:] = 0
    rows, cols = np.nonzero(truth == 3)
    truth[truth == 3] = 1
    truth[rows[0], cols[0]] = 3  # one cell of class 3: it can be trained or tested, not both
    return truth


def test_class_with_too_few_cells_names_the_class_when_asked_to_refuse(survey_files, tmp_path, config_file):
    out = _labelled_run(survey_files, tmp_path, _one_cell_of_class_3(survey_files["truth"]))
    strict = tmp_path / "strict.yaml"
    strict.write_text(config_file.read_text().replace(
        "drop_small_classes: true", "drop_small_classes: false"))
    assert "drop_small_classes: false" in strict.read_text()
    r = magpipe("train", "--out", out, "--config", strict)
    assert_one_line_error(r, "survey.zarr", "too few labelled cells for class 'class_3'")
    assert not (out / "model" / "metadata.json").exists()


def test_a_class_that_cannot_be_scored_is_left_out_and_the_run_finishes(survey_files, tmp_path, config_file):
    """By default a run finishes what it can: the short class is named in a warning and in the report."""
    lab = write_labels_raster(_one_cell_of_class_3(survey_files["truth"]), survey_files["field"],
                              tmp_path / "labels.tif")
    out = tmp_path / "run"
    r = magpipe("run", survey_files["survey"], "--labels", lab, "--config", config_file, "--out", out, "--serial")
    assert r.returncode == 0, r.stderr
    assert "class_3" in r.stderr and "left out" in r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["unscored_classes"] == {"class_3": report["n_splits"]}
    assert all(sp["unscored"] == ["class_3"] for sp in report["splits"])
    assert "**Not scored**" in (out / "report.md").read_text() and is_complete(out / "classified.zarr")


def test_labels_that_leave_nothing_to_score_are_refused_before_training(survey_files, tmp_path, config_file):
    truth = np.zeros_like(survey_files["truth"])
    truth[:8, :8], truth[-8:, -8:] = 1, 2  # two small patches: each falls on one side of the split only
    lab = write_labels_raster(truth, survey_files["field"], tmp_path / "labels.tif")
    out = tmp_path / "run"
    r = magpipe("run", survey_files["survey"], "--labels", lab, "--config", config_file, "--out", out)
    assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stderr
    assert "survey.zarr" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "model").exists() and not list(out.glob("train-*.ckpt"))  # nothing trained


def test_labels_of_a_single_class_are_refused_before_training(survey_files, tmp_path):
    out = tmp_path / "out"
    assert magpipe("ingest", survey_files["survey"], "--out", out).returncode == 0
    lab = write_labels_raster(np.where(survey_files["truth"] > 0, 2, 0), survey_files["field"], tmp_path / "one.tif")
    r = magpipe("labels", lab, "--out", out)
    assert_one_line_error(r, "one.tif", "labels hold 1 class", "at least two")
    run = magpipe("run", survey_files["survey"], "--labels", lab, "--out", tmp_path / "run")
    assert_one_line_error(run, "one.tif", "labels hold 1 class")
    assert not (tmp_path / "run" / "patches.zarr").exists()  # refused before any patch is cut or model trained


def test_label_codes_missing_from_the_class_table(survey_files, tmp_path):
    out = tmp_path / "out"
    assert magpipe("ingest", survey_files["survey"], "--out", out).returncode == 0
    table = tmp_path / "classes.csv"
    table.write_text("code,name\n1,granite\n2,basalt\n")  # the labels also hold code 3
    lab = write_labels_raster(survey_files["truth"], survey_files["field"], tmp_path / "lab.tif")
    r = magpipe("labels", lab, "--out", out, "--classes", table)
    assert_one_line_error(r, "lab.tif", "[3]", "classes.csv")


@pytest.fixture()
def bundle_copy(trained_run, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(trained_run["out"] / "model", dst)
    return dst


def _classify_with(trained_run, tmp_path, bundle: Path):
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    shutil.copytree(trained_run["out"] / "survey.zarr", out / "survey.zarr", dirs_exist_ok=True)
    return out, magpipe("classify", "--out", out, "--model", bundle, "--serial")


def test_bundle_of_another_format_version(trained_run, tmp_path, bundle_copy):
    meta = json.loads((bundle_copy / "metadata.json").read_text())
    (bundle_copy / "metadata.json").write_text(json.dumps({**meta, "format": 99}))
    out, r = _classify_with(trained_run, tmp_path, bundle_copy)
    assert_one_line_error(r, str(bundle_copy), "bundle format 99")
    assert not is_complete(out / "classified.zarr")


def test_bundle_with_a_pickle_is_refused(trained_run, tmp_path, bundle_copy):
    (bundle_copy / "svm.pkl").write_bytes(b"\x80\x04K\x01.")
    out, r = _classify_with(trained_run, tmp_path, bundle_copy)
    assert_one_line_error(r, "pickle")
    assert not is_complete(out / "classified.zarr")


@pytest.mark.parametrize("radius", [-1, "wide", 1.5])
def test_bundle_with_a_bad_smoothing_radius(trained_run, tmp_path, bundle_copy, radius):
    meta = json.loads((bundle_copy / "metadata.json").read_text())
    (bundle_copy / "metadata.json").write_text(json.dumps({**meta, "smooth_px": radius}))
    out, r = _classify_with(trained_run, tmp_path, bundle_copy)
    assert_one_line_error(r, "metadata.json", "smooth_px must be a whole number of cells")
    assert not is_complete(out / "classified.zarr")


def test_bundle_naming_an_unknown_feature_set(trained_run, tmp_path, bundle_copy):
    meta = json.loads((bundle_copy / "metadata.json").read_text())
    (bundle_copy / "metadata.json").write_text(json.dumps({**meta, "features": "ae+pca"}))
    out, r = _classify_with(trained_run, tmp_path, bundle_copy)
    assert_one_line_error(r, "metadata.json", "unknown feature set 'ae+pca'")
    assert not is_complete(out / "classified.zarr")


@pytest.mark.parametrize("flag,value,message", [("--features", "ae+ae", "unknown feature set 'ae+ae'"),
                                                ("--objective", "jigsaw", "model.objective")])
def test_unknown_feature_set_or_objective_on_the_command_line(survey_files, tmp_path, flag, value, message):
    r = magpipe("run", survey_files["survey"], "--labels", survey_files["labels"], "--out", tmp_path / "o",
                flag, value)
    assert_one_line_error(r, message)
    assert not (tmp_path / "o").exists()


class NotAnEstimator:
    """A type skops must not instantiate from a file."""


def test_bundle_holding_untrusted_types_is_refused(trained_run, tmp_path, bundle_copy):
    import skops.io as sio

    sio.dump({"svm": NotAnEstimator()}, bundle_copy / "svm.skops")
    meta = json.loads((bundle_copy / "metadata.json").read_text())  # a crafted bundle: its checksums match
    meta["files"]["svm.skops"] = file_hash(bundle_copy / "svm.skops")
    (bundle_copy / "metadata.json").write_text(json.dumps(meta))
    out, r = _classify_with(trained_run, tmp_path, bundle_copy)
    assert_one_line_error(r, "svm.skops", "untrusted types", "NotAnEstimator")
    assert not is_complete(out / "classified.zarr")


def test_bundle_for_another_patch_size(trained_run, tmp_path, config_file):
    out = tmp_path / "run"
    shutil.copytree(trained_run["out"], out, ignore=shutil.ignore_patterns("classified.zarr", ".magpipe.lock"))
    r = magpipe("evaluate", "--out", out, "--config", config_file, "--patch-size", "11")
    assert_one_line_error(r, "model", "9 px patches, not 11")


# --- labels: `magpipe labels` on an ingested survey -------------------------------------------------------


def _label_cases(d: Path, field: xr.DataArray, truth: np.ndarray) -> dict[str, tuple[Path, list[str], list[str]]]:
    import geopandas as gpd
    from shapely.geometry import box

    x0, x1, y0, y1 = (float(v) for v in (field.x[0], field.x[-1], field.y[-1], field.y[0]))
    halves = [box(x0, y0, (x0 + x1) / 2, y1), box((x0 + x1) / 2, y0, x1, y1)]
    cases: dict[str, tuple[Path, list[str], list[str]]] = {}
    (d / "empty.tif").write_bytes(b"")
    cases["empty file"] = (d / "empty.tif", [], ["empty.tif", "empty file (0 bytes)"])
    (d / "corrupt.tif").write_bytes(b"\x00not a raster" * 40)
    cases["corrupt raster"] = (d / "corrupt.tif", [], ["corrupt.tif", "not a readable label raster"])
    write_labels_raster(np.zeros_like(truth), field, d / "nodata.tif")
    cases["all no-data"] = (d / "nodata.tif", [], ["nodata.tif", "holds no labelled cells"])
    xr.DataArray(truth.astype("int16"), dims=("y", "x")).rio.to_raster(d / "nocrs.tif")  # pixel grid, no CRS
    cases["raster without CRS"] = (d / "nocrs.tif", [], ["nocrs.tif", "no CRS and is not on the survey grid"])
    gpd.GeoDataFrame({"unit": [None, None]}, geometry=halves, crs=field.rio.crs).to_file(d / "nulls.gpkg")
    cases["all null classes"] = (d / "nulls.gpkg", ["--label-field", "unit"],
                                 ["nulls.gpkg", "no features with a geometry and a 'unit' value"])
    gpd.GeoDataFrame({"unit": []}, geometry=[], crs=field.rio.crs).to_file(d / "none.geojson")
    cases["no features"] = (d / "none.geojson", ["--label-field", "unit"], ["none.geojson", "holds no features"])
    gpd.GeoDataFrame({"unit": ["a", "b"]}, geometry=halves, crs=None).to_file(d / "nocrs.gpkg")
    cases["polygons without CRS"] = (d / "nocrs.gpkg", ["--label-field", "unit"], ["nocrs.gpkg", "has no CRS"])
    gpd.GeoDataFrame({"unit": ["a", "b"]}, geometry=halves, crs=field.rio.crs).to_file(d / "units.gpkg")
    cases["polygons without --label-field"] = (d / "units.gpkg", [], ["units.gpkg", "need --label-field",
                                                                         "unit"])
    gpd.GeoDataFrame({"unit": ["a"]}, geometry=[box(0, 0, 10, 10)], crs=field.rio.crs).to_file(d / "far.geojson")
    cases["off the survey"] = (d / "far.geojson", ["--label-field", "unit"], ["far.geojson", "do not overlap"])
    return cases


LABEL_CASES = ["empty file", "corrupt raster", "all no-data", "raster without CRS", "all null classes", "no features",
               "polygons without CRS", "polygons without --label-field", "off the survey"]


@pytest.fixture(scope="module")
def ingested(survey_files, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("labels")
    out = d / "ingested"
    assert magpipe("ingest", survey_files["survey"], "--out", out).returncode == 0
    return {"out": out, "cases": _label_cases(d, survey_files["field"], survey_files["truth"])}


@pytest.mark.parametrize("case", LABEL_CASES)
def test_unusable_labels_are_refused_in_one_line(ingested, tmp_path, case):
    path, extra, needles = ingested["cases"][case]
    out = tmp_path / "out"
    shutil.copytree(ingested["out"], out)
    before = (out / "survey.zarr" / "zarr.json").read_bytes()
    r = magpipe("labels", path, "--out", out, *extra)
    assert_one_line_error(r, *needles)
    assert (out / "survey.zarr" / "zarr.json").read_bytes() == before  # the survey store holds no labels
    assert not (out / "patches.zarr").exists()


# --- configuration and options: refused before anything is read or written ------------------------------

CONFIG_CASES = {
    "malformed YAML": ("patches: [9, 15\n", ["not valid YAML at line 2"]),
    "a list, not a mapping": ("- patches\n- model\n", ["config must be a mapping of sections, not a list"]),
    "a section that is a value": ("patches: 9\n", ["section 'patches' must be a mapping of options, not int 9"]),
    "an unknown option": ("patches:\n  patch_size: 9\n", ["patches.patch_size: unknown option", "patch_px"]),
    "an unknown section": ("patchez:\n  patch_px: 9\n", ["patchez: unknown option", "patches"]),
    "a value of the wrong type": ("patches:\n  patch_px: big\n", ["patches.patch_px", "valid integer", "'big'"]),
    "a value out of range": ("model:\n  epochs: 0\n", ["model.epochs", "greater than or equal to 1", "got 0"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_unusable_config_files_are_refused_before_any_work(survey_files, tmp_path, case):
    text, needles = CONFIG_CASES[case]
    cfg = tmp_path / "magpipe.yaml"
    cfg.write_text(text)
    r = magpipe("run", survey_files["survey"], "--labels", survey_files["labels"], "--config", cfg,
                "--out", tmp_path / "o")
    assert_one_line_error(r, "magpipe.yaml", *needles)
    assert not (tmp_path / "o").exists()


def test_a_config_file_that_is_missing(survey_files, tmp_path):
    r = magpipe("run", survey_files["survey"], "--labels", survey_files["labels"], "--config", tmp_path / "no.yaml",
                "--out", tmp_path / "o")
    assert_one_line_error(r, "no.yaml", "cannot read config (No such file or directory)")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags,needles", [
    (["--patch-size", "10"], ["patches.patch_px", "must be odd", "got 10"]),
    (["--patch-size", "3"], ["patches.patch_px", "at least 5", "got 3"]),
    (["--patch-size", "big"], ["patches.patch_px", "valid integer", "'big'"]),  # a size or auto
    (["--workers", "0"], ["runtime.workers", "greater than or equal to 1"]),
    (["--n-patches", "-5"], ["patches.n_patches"]),
])
def test_option_values_out_of_range(survey_files, tmp_path, flags, needles):
    r = magpipe("run", survey_files["survey"], "--labels", survey_files["labels"], "--out", tmp_path / "o", *flags)
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "o").exists()


def test_a_patch_size_larger_than_the_survey_is_refused_before_training(survey_files, tmp_path, config_file):
    out = tmp_path / "o"
    r = magpipe("run", survey_files["survey"], "--labels", survey_files["labels"], "--config", config_file,
                "--out", out, "--patch-size", "201")
    assert_one_line_error(r, "survey.zarr", "96 x 128 cells is smaller than one 201 px patch")
    assert not (out / "patches.zarr").exists() and not (out / "model").exists()


def test_a_survey_too_small_for_any_automatic_patch_size(survey_files, tmp_path):
    small = survey_files["field"][:8, :40]
    labels = np.broadcast_to(np.where(np.arange(40) < 20, 1, 2), (8, 40))
    out = _labelled_run(survey_files, tmp_path, labels, field=small)
    r = magpipe("train", "--out", out)  # patches.patch_px: auto
    assert_one_line_error(r, "survey.zarr", "8 x 40 cells is smaller than one 9 px patch", "auto_sizes")
    assert not (out / "patches.zarr").exists() and not (out / "patch_size.json").exists()


# --- output paths ----------------------------------------------------------------------------------------


def test_an_output_path_that_is_a_file(survey_files, tmp_path):
    (tmp_path / "o").write_text("my notes")
    r = magpipe("ingest", survey_files["survey"], "--out", tmp_path / "o")
    assert_one_line_error(r, "cannot use as an output directory")
    assert (tmp_path / "o").read_text() == "my notes"


@contextlib.contextmanager
def _mounted_tmpfs(where: Path, options: str):
    """A small tmpfs at ``where`` (root only, and only where mounting is allowed; skips otherwise)."""
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or r.returncode})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_output(survey_files, tmp_path):
    if os.geteuid() != 0:  # permissions stop anyone but root
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        ctx = contextlib.nullcontext(ro)
    else:  # root writes through permissions: a read-only file system stops it
        ctx = _mounted_tmpfs(tmp_path / "ro", "ro,size=1m")
    with ctx as ro:
        r = magpipe("ingest", survey_files["survey"], "--out", ro)
        assert_one_line_error(r, "ro", "cannot use as an output directory")
        assert not list(ro.iterdir())


def test_an_output_disk_that_fills_up(survey_files, tmp_path):
    """ENOSPC for real: a 16 KiB tmpfs holds the config but not the survey store."""
    with _mounted_tmpfs(tmp_path / "full", "size=16k") as full:
        out = full / "run"
        r = magpipe("ingest", survey_files["survey"], "--out", out)
        assert_one_line_error(r, "survey.zarr", "No space left on device")
        assert not is_complete(out / "survey.zarr")


# --- model bundles that were changed or cut short: refused by checksum, never loaded ---------------------


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,name,needles", [
    (_flip_a_byte, "svm.skops", ["svm.skops", "checksum differs"]),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "autoencoder.pt",
     ["autoencoder.pt", "checksum differs", "cut short"]),
    (lambda p: p.unlink(), "svm.skops", ["svm.skops", "missing from the bundle"]),
    (lambda p: p.write_text("{ not json"), "metadata.json", ["metadata.json", "corrupt metadata"]),
    (lambda p: p.unlink(), "metadata.json", ["not a magpipe model bundle"]),
])
def test_a_damaged_bundle_is_refused_by_classify(trained_run, tmp_path, bundle_copy, damage, name, needles):
    damage(bundle_copy / name)
    out, r = _classify_with(trained_run, tmp_path, bundle_copy)
    assert_one_line_error(r, *needles)
    assert not is_complete(out / "classified.zarr") and not (out / "classified.zarr.partial").exists()



def test_a_bundle_from_before_the_checksums_still_loads(trained_run, bundle_copy):
    """Not bad input: bundles saved before ``files`` was recorded are checked for presence only."""
    from magpipe.bundle import load_bundle

    meta = json.loads((bundle_copy / "metadata.json").read_text())
    del meta["files"]
    (bundle_copy / "metadata.json").write_text(json.dumps(meta))
    assert load_bundle(bundle_copy).classes == load_bundle(trained_run["out"] / "model").classes
