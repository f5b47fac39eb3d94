"""Shared fixtures: small synthetic surveys on disk and one tiny trained run reused by many tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from magpipe.synthetic import synthetic_survey
from magpipe.testing import tiny_config, write_labels_raster

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real surveys); tests that need it skip without it."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found (real survey data is not shipped)")
    return SHARED


@pytest.fixture(scope="session")
def config_file(tmp_path_factory) -> Path:
    """The tiny config as a YAML file, for CLI runs."""
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    return p


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
    cfg = tiny_config().with_inputs(survey=survey_files["survey"], labels=survey_files["labels"])
    run_ingest(out, cfg)
    run_labels(out, cfg)
    run_patches(out, cfg)
    run_train(out, cfg)
    return {"out": out, "cfg": cfg, **survey_files}


@pytest.fixture(scope="session")
def finished_run(trained_run, tmp_path_factory) -> dict:
    """``trained_run`` copied, then classified (in this process) and evaluated: a whole run for the tests that
    only read one. Read-only, like ``trained_run``: a test that changes a run copies it first."""
    import shutil

    from magpipe.pipeline import run_classify, run_evaluate

    out = tmp_path_factory.mktemp("finished") / "run"
    shutil.copytree(trained_run["out"], out, ignore=shutil.ignore_patterns(".magpipe.lock"))
    run_classify(out, trained_run["cfg"])
    report = run_evaluate(out, trained_run["cfg"])
    return {**trained_run, "out": out, "report": report}


@pytest.fixture(scope="session")
def reference_run(survey_files, tmp_path_factory) -> dict:
    """An uninterrupted `magpipe run` in a real process (one evaluation split, no sparse draws): the reference
    that killed-and-resumed runs and runs on a bucket must equal. Read-only: copy it to change it.

    Runs compared bit for bit with it must also be real processes: a test process's own state (torch's
    thread count after other tests, say) can move float results in their last digits."""
    from magpipe.testing import run_cli_process

    d = tmp_path_factory.mktemp("reference")
    cfg = d / "quick.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(evaluate={"splits": 1, "sparse_per_class": 0},
                                              model={"epochs": 6, "patience": 6}).model_dump(mode="json")))
    args = [survey_files["survey"], "--labels", survey_files["labels"], "--config", cfg]
    r = run_cli_process("run", *args, "--out", d / "run", "--serial")  # tiles as a cluster's (tested), no start
    assert r.returncode == 0, r.stderr
    return {"args": args, "config": cfg, "out": d / "run"}


@pytest.fixture(scope="session")
def harness():
    """A temporary Prefect API (SQLite) for flow tests; started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-protocol server on loopback for the session, its credentials in this process's environment
    (as a user would export them); yields that environment for the commands a test starts."""
    pytest.importorskip("moto", reason="object-storage tests need the moto[server] test dependency")
    from magpipe.testing import s3_server

    import fsspec

    s3fs = fsspec.get_filesystem_class("s3")  # its instances are cached per process, endpoint and all
    with s3_server(tmp_path_factory.mktemp("s3") / "moto.log") as env:
        before = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        s3fs.clear_instance_cache()
        try:
            yield env
        finally:
            for k, v in before.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
            s3fs.clear_instance_cache()


@pytest.fixture
def no_s3_environment(s3, monkeypatch):
    """The S3 server's endpoint and credentials taken out of this process's environment for one test, so only
    what a run is given reaches the store; s3fs's cached clients (made with the environment of their time) are
    dropped before and after."""
    import fsspec

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    cached = fsspec.get_filesystem_class("s3")
    cached.clear_instance_cache()
    yield s3
    cached.clear_instance_cache()


@pytest.fixture
def bucket(s3) -> str:
    """A new, empty bucket on the test server: ``s3://<name>``."""
    import uuid

    import fsspec

    name = f"magpipe-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"
