"""The `magpipe` command end to end, and its answers to bad input, as a user runs it."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from magpipe.evaluation import best_by_validation
from magpipe.io.stores import is_complete
from magpipe.locking import LOCK_NAME
from magpipe.testing import assert_one_line_error, run_cli as magpipe, run_cli_process

LAYOUT = ["survey.zarr", "patches.zarr", "model", "classified.zarr", "report.json", "report.md",
          "class_map.png", "confidence.png", "anomaly.png", "confusion.png", "embedding.png"]


SECRETS = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-aws-value-0451", "PREFECT_API_KEY": "pnu_s3cr3t-prefect-0451"}


def assert_no_secrets(*texts: str, root: Path | None = None) -> None:
    """No credential from the environment in output streams or in any text/metadata file written."""
    files = [f for f in root.rglob("*") if f.is_file() and f.suffix in (".json", ".md", ".yaml", ".txt", ".csv")] \
        if root else []
    assert files or root is None
    for text in [*texts, *(f.read_text(errors="replace") for f in files)]:
        for value in SECRETS.values():
            assert value not in text


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file of a run but its lock: relative path -> (modification time in ns, size in bytes)."""
    return {str(f.relative_to(root)): (f.stat().st_mtime_ns, f.stat().st_size) for f in root.rglob("*")
            if f.is_file() and f.name != LOCK_NAME}


@pytest.mark.slow
def test_run_end_to_end_leaves_the_documented_layout(survey_files, config_file, tmp_path):
    out = tmp_path / "out"
    # a real process: what the terminal shows includes what the Dask workers print
    r = run_cli_process("run", survey_files["survey"], "--labels", survey_files["labels"], "--out", out,
                        "--config", config_file, "--workers", 2, env=SECRETS)
    assert r.returncode == 0, r.stderr
    assert_no_secrets(r.stdout, r.stderr, root=out)
    for name in LAYOUT:
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    for key in ("pixel_accuracy", "patch_accuracy", "balanced_accuracy"):
        assert set(report[key]) == {"ae", "raw", "majority"}
        assert 0 <= report[key]["ae"] <= 1 and 0 <= report[key]["raw"] <= 1
    assert report["n_train"] > 0 and report["n_test"] > 0 and len(report["classes"]) == 3
    # the second split either scored or was skipped for a short class, and said so
    assert report["n_splits"] == len(report["splits"]) == 2 - len(report["splits_skipped"]) >= 1
    seeds = [s["seed"] for s in report["splits"] + report["splits_skipped"]]
    assert sorted(seeds) == [0, 1]
    assert all("too few labelled cells" in s["reason"] for s in report["splits_skipped"])
    assert report["pixel_accuracy"]["ae"] == pytest.approx(
        np.mean([s["pixel_accuracy"]["ae"] for s in report["splits"]]))
    sparse = report["sparse"]
    assert sparse["per_class"] == 10 and sparse["repeats"] == report["n_splits"] * 3
    for key in ("pixel_accuracy", "patch_accuracy", "balanced_accuracy"):
        assert 0 <= sparse[key]["ae"] <= 1 and sparse[f"{key}_std"]["raw"] >= 0
    assert "## Sparse labels" in (out / "report.md").read_text()
    # every control on the same splits, paired, and said in words
    assert set(report["feature_sets"]) == {"deployed", "ae", "raw", "stats", "random", "ae+stats", "majority",
                                           "deployed@prior",  # the other class weighting: the trade-off
                                           "deployed@unsmoothed"}  # what the map's smoothing added
    assert report["feature_sets"]["ae"]["pixel_accuracy"]["mean"] == pytest.approx(report["pixel_accuracy"]["ae"])
    pairs = {(d["a"], d["b"]) for d in report["paired"]}
    assert {("ae", "random"), ("ae+stats", "stats")} <= pairs
    assert all(0 <= d["wins"] <= d["n"] == report["n_splits"] for d in report["paired"])
    assert "untrained copy" in report["headline"] and report["headline"] in r.stdout
    assert len(r.stdout.splitlines()) <= 20 and "report.md" in r.stdout  # one screen; the rest is in report.md
    where = r.stdout.splitlines()[-1]  # the outputs that are there: a fixed patch size writes no patch_size.json
    assert "classified.zarr" in where and "model/" in where and "patch_size.json" not in where, where
    # the whole terminal: stage lines, periodic progress, the summary; no library warnings or Dask chatter
    noise = [x for x in r.stderr.splitlines() if "Warning" in x or "distributed" in x or "DEBUG" in x]
    assert not noise, noise
    assert len(r.stdout.splitlines()) + len(r.stderr.splitlines()) <= 50, r.stderr
    assert set(sparse["balanced_accuracy"]) == {"deployed", "ae", "raw", "stats", "random", "ae+stats"}
    # features: auto chose on validation (blocked CV of the training region), and the map uses that choice
    dep = report["deployed"]
    assert set(dep["validation"]) == {"ae", "stats", "ae+stats"}
    assert dep["features"] == best_by_validation(dep["validation"], ("stats", "ae", "ae+stats"))  # one-SE rule
    assert all(v["cv_se"] >= 0 or np.isnan(v["cv_balanced_accuracy"]) for v in dep["validation"].values())
    # the smoothing radius too, among radii up to a patch width, and each split chose its own
    meta = json.loads((out / "model" / "metadata.json").read_text())
    assert meta["smooth_px"] == dep["smooth_px"] == dep["per_split_smooth_px"][0]
    if dep["smoothing_validation"]:
        radii = list(dep["smoothing_validation"])
        assert dep["smooth_px"] == int(best_by_validation(dep["smoothing_validation"], radii))
        assert max(map(int, radii)) <= report["patch_px"] and "smoothing radius" in (out / "report.md").read_text()
    assert len(dep["per_split_smooth_px"]) == report["n_splits"] and ("deployed", "deployed@unsmoothed") in pairs
    assert json.loads((out / "model" / "metadata.json").read_text())["features"] == dep["features"]
    assert dep["per_split"][0] == dep["features"] and len(dep["per_split"]) == report["n_splits"]
    assert "## What the map uses" in (out / "report.md").read_text()
    assert "deployed features" in report["headline"] and ("deployed", "deployed@prior") in pairs
    assert len(report["anomalies"]) == len(report["label_next"]) == 10
    assert report["anomalies"][0]["anomaly"] >= report["anomalies"][-1]["anomaly"]
    assert "## Strongest anomalies" in (out / "report.md").read_text()
    listed = magpipe("anomalies", "--out", out, "--top", 3)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("\n| ") == 3  # three rows under the header
    assert "pixel-wise" in r.stdout and "AE features" in r.stdout
    # unchanged inputs and config: every stage is skipped, and nothing in the run is written again
    before = _files(out)
    again = magpipe("run", survey_files["survey"], "--labels", survey_files["labels"], "--out", out,
                    "--config", config_file, "--serial")
    assert again.returncode == 0, again.stderr
    for stage in ("ingest", "patches", "train"):
        assert f"{stage}: " in again.stderr and "up to date" in again.stderr
    assert "classified.zarr is up to date" in again.stderr and "report.json is up to date" in again.stderr
    assert _files(out) == before  # report.json, report.md and the figures included
    assert json.loads((out / "report.json").read_text())["headline"] in again.stdout  # the same summary


def test_every_command_has_help():
    for cmd in ("ingest", "labels", "train", "classify", "evaluate", "run", "demo", "export", "anomalies",
                "label-next", "similar"):
        r = magpipe(cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, cmd


def test_flag_help_shows_the_config_default():
    """A flag that sets a config field documents that field's default, read from RunConfig, in every command."""
    import typer.main

    from magpipe.cli import FLAG_FIELDS, app
    from magpipe.config import RunConfig

    defaults = RunConfig().model_dump(mode="json")
    seen = set()
    for cmd in typer.main.get_command(app).commands.values():
        for param in cmd.params:
            flags = [f for f in param.opts if f in FLAG_FIELDS]
            if not flags or "(config: " not in (param.help or ""):  # export's --variable is another option
                # a number in a hand-written help is a default that can go stale
                assert not re.search(r"default:? \d", getattr(param, "help", "") or ""), (cmd.name, param.opts)
                continue
            section, name = FLAG_FIELDS[flags[0]]
            value = defaults[section][name]
            assert f"config: {section}.{name}" in param.help, (cmd.name, flags)
            assert value is None or f"Default: {value}." in param.help, (cmd.name, flags, param.help)
            seen.add(flags[0])
    assert seen == set(FLAG_FIELDS)  # every mapped flag exists on some command
    r = magpipe("train", "--help")
    assert "masked" in r.stdout and f"Default: {defaults['model']['epochs']}" in r.stdout


def test_the_in_process_runner_shows_what_a_terminal_would(tmp_path, monkeypatch):
    """run_cli (in this process) keeps a traceback that escapes a command on stderr, as a process would, so
    "no traceback" checks can fail; and a stage's one-line error is the same as a real process's."""
    from magpipe import cli
    from magpipe.testing import run_cli_process

    def boom(*args, **kwargs):
        raise RuntimeError("a bug deep inside")

    monkeypatch.setattr(cli, "_config", boom)
    r = magpipe("ingest", tmp_path / "x.tif", "--out", tmp_path / "o")
    assert r.returncode == 1 and "Traceback" in r.stderr and "a bug deep inside" in r.stderr
    monkeypatch.undo()
    inproc = magpipe("ingest", tmp_path / "nope.tif", "--out", tmp_path / "o")
    proc = run_cli_process("ingest", tmp_path / "nope.tif", "--out", tmp_path / "o")
    assert (inproc.returncode, inproc.stderr, inproc.stdout) == (proc.returncode, proc.stderr, proc.stdout) \
        and proc.returncode == 2


def test_missing_survey_file(tmp_path, survey_files):
    r = magpipe("run", tmp_path / "nope.tif", "--labels", survey_files["labels"], "--out", tmp_path / "o",
                "--serial")
    assert_one_line_error(r, "nope.tif", "file not found")
    assert not is_complete(tmp_path / "o" / "survey.zarr")


def test_vector_labels_without_the_named_field(tmp_path, survey_files, config_file):
    import geopandas as gpd
    from shapely.geometry import box

    f = survey_files["field"]
    gdf = gpd.GeoDataFrame({"unit": ["a", "b"]}, crs=f.rio.crs, geometry=[
        box(float(f.x[0]), float(f.y[-1]), float(f.x[60]), float(f.y[0])),
        box(float(f.x[61]), float(f.y[-1]), float(f.x[-1]), float(f.y[0]))])
    gdf.to_file(tmp_path / "units.gpkg")
    r = magpipe("run", survey_files["survey"], "--labels", tmp_path / "units.gpkg", "--label-field", "LITH",
                "--out", tmp_path / "o", "--config", config_file, "--serial")
    assert_one_line_error(r, "units.gpkg", "no field 'LITH'")
    assert not (tmp_path / "o" / "report.json").exists()


def test_labels_that_do_not_overlap(tmp_path, survey_files, config_file):
    import geopandas as gpd
    from shapely.geometry import box

    gdf = gpd.GeoDataFrame({"unit": ["a"]}, geometry=[box(0, 0, 10, 10)], crs=survey_files["field"].rio.crs)
    gdf.to_file(tmp_path / "far.geojson")
    r = magpipe("run", survey_files["survey"], "--labels", tmp_path / "far.geojson", "--label-field", "unit",
                "--out", tmp_path / "o", "--config", config_file, "--serial")
    assert_one_line_error(r, "far.geojson", "do not overlap")


def test_output_path_holding_something_else_is_refused(tmp_path, survey_files, config_file):
    (tmp_path / "o" / "survey.zarr").mkdir(parents=True)
    (tmp_path / "o" / "survey.zarr" / "notes.txt").write_text("mine")
    r = magpipe("ingest", survey_files["survey"], "--out", tmp_path / "o")
    assert_one_line_error(r, "survey.zarr", "not a magpipe store")
    assert (tmp_path / "o" / "survey.zarr" / "notes.txt").read_text() == "mine"


def test_debug_shows_the_traceback(tmp_path):
    r = magpipe("--debug", "ingest", tmp_path / "nope.tif", "--out", tmp_path / "o")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_changing_only_the_tile_size_does_not_retrain(trained_run, tmp_path):
    import shutil

    from magpipe.bundle import load_bundle
    from magpipe.pipeline import run_train

    out = shutil.copytree(trained_run["out"], tmp_path / "run", ignore=shutil.ignore_patterns(".magpipe.lock"))
    before = (out / "model" / "metadata.json").stat().st_mtime_ns
    cfg = trained_run["cfg"].model_copy(deep=True)
    cfg.classify.chunk_px = 128
    run_train(out, cfg)
    assert (out / "model" / "metadata.json").stat().st_mtime_ns == before
    assert load_bundle(out / "model").meta["input_hash"] == load_bundle(trained_run["out"] / "model").meta["input_hash"]


@pytest.mark.slow
def test_stage_commands_save_a_config_that_reproduces_the_run(survey_files, config_file, tmp_path):
    """Each stage command records OUT/config.json; `run --config OUT/config.json` repeats the run elsewhere."""
    import zarr

    d, e = tmp_path / "d", tmp_path / "e"
    assert magpipe("ingest", survey_files["survey"], "--out", d, "--config", config_file).returncode == 0
    saved = json.loads((d / "config.json").read_text())
    assert saved["inputs"]["survey"] == str(Path(survey_files["survey"]).resolve())
    assert saved["patches"]["patch_px"] == 9 and "runtime" not in saved  # the tiny config, no runtime settings
    # later stage commands continue the run from its saved config (no --config needed)
    for args in (["labels", survey_files["labels"]], ["train"], ["classify", "--serial"], ["evaluate"]):
        r = magpipe(*args, "--out", d)
        assert r.returncode == 0, (args, r.stderr[-2000:])
    saved = json.loads((d / "config.json").read_text())
    assert saved["inputs"]["labels"] == str(Path(survey_files["labels"]).resolve())
    r = magpipe("run", "--config", d / "config.json", "--out", e, "--serial")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("class", "confidence", "anomaly"):
        np.testing.assert_array_equal(zarr.open_array(d / "classified.zarr" / name)[:],
                                      zarr.open_array(e / "classified.zarr" / name)[:])
    rd, re_ = (json.loads((x / "report.json").read_text()) for x in (d, e))
    for key in ("pixel_accuracy", "patch_accuracy", "balanced_accuracy", "sparse", "splits", "f1", "confusion"):
        assert rd[key] == re_[key], key


def test_run_without_inputs_says_what_is_missing(tmp_path):
    r = magpipe("run", "--out", tmp_path / "o")
    assert_one_line_error(r, "no inputs.survey and no inputs.labels")
