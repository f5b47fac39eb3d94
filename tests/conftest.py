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
def bucket(s3) -> str:
    """A new, empty bucket on the test server: ``s3://<name>``."""
    import uuid

    import fsspec

    name = f"magpipe-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"
