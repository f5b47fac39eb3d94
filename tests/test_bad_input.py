"""The bad-input matrix, as a user meets it: `magpipe <command>` on broken or unusable input.

Each case must exit 2 with exactly one `error:` line naming the file and the problem (no
traceback), and leave nothing at the output path that looks complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from magpipe.io.stores import is_complete
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
    return cases


CASES = ["missing file", "corrupt raster", "truncated raster", "corrupt netcdf", "corrupt zarr", "three dimensions",
         "bands without --band", "complex values", "all no-data", "constant values", "line data without spacing",
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
    r = magpipe("run", survey_files["survey"], "--labels", lab, "--config", config_file, "--out", out)
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
    out, r = _classify_with(trained_run, tmp_path, bundle_copy)
    assert_one_line_error(r, "svm.skops", "untrusted types", "NotAnEstimator")
    assert not is_complete(out / "classified.zarr")


def test_bundle_for_another_patch_size(trained_run, tmp_path, config_file):
    out = tmp_path / "run"
    shutil.copytree(trained_run["out"], out, ignore=shutil.ignore_patterns("classified.zarr", ".magpipe.lock"))
    r = magpipe("evaluate", "--out", out, "--config", config_file, "--patch-size", "11")
    assert_one_line_error(r, "model", "9 px patches, not 11")
