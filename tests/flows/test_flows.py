"""Flows under prefect_test_harness: states, caching, artifacts, backfill resumption."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from magpipe.io.stores import is_complete
from magpipe.synthetic import synthetic_survey
from magpipe.testing import tiny_config

REPO = Path(__file__).resolve().parents[2]


def _artifacts(keys_prefix: str) -> dict:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts()
    return {a.key: a for a in arts if a.key and a.key.startswith(keys_prefix)}


def _task_states(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def _written(out: Path) -> dict[str, int]:
    """Modification times of the files that mark each stage's output as written."""
    files = ["survey.zarr/zarr.json", "survey.zarr/labels/zarr.json", "patches.zarr/zarr.json",
             "model/metadata.json", "classified.zarr/zarr.json", "report.json", "report.md", "config.json"]
    return {f: (out / f).stat().st_mtime_ns for f in files}


@pytest.mark.slow
def test_pipeline_flow_completes_publishes_artifacts_and_reruns_nothing(harness, survey_files, tmp_path, monkeypatch):
    import datetime as dt

    from flows import _common
    from flows.pipeline import survey_pipeline

    class Clock(dt.datetime):  # a minute passes at every call: subflows start in later minutes than the pipeline
        calls = 0

        @classmethod
        def now(cls, tz=None):
            cls.calls += 1
            return dt.datetime(2026, 12, 7, 10, 0, tzinfo=tz) + dt.timedelta(minutes=cls.calls)

    monkeypatch.setattr(_common, "datetime", Clock)

    conf = tiny_config(evaluate={"splits": 1, "sparse_per_class": 0}).model_dump(mode="json")
    args = (str(survey_files["survey"]), str(survey_files["labels"]), str(tmp_path / "out"))
    state = survey_pipeline(*args, config=conf, return_state=True)
    assert state.is_completed(), state.message
    # no GPU-pool deployment on this API: trained here, and the run says so
    assert "training ran locally" in state.message and "train-autoencoder/train-autoencoder" in state.message
    result = state.result()
    assert result["training"].startswith("locally")
    from prefect.client.orchestration import get_client

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(state.state_details.flow_run_id)
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])))
        flows = {client.read_flow(r.flow_id).name: r for r in children}
    run_tags = parent.tags
    assert "survey" in run_tags and any(t.startswith("magpipe-") for t in run_tags)
    # every run of the pipeline, subflows included, is tagged and named after the survey, as in the UI
    assert {"train-autoencoder", "classify-survey"} <= set(flows), sorted(flows)
    assert "trained-on-cpu" in flows["train-autoencoder"].tags  # where training ran, not only where it was sent
    for sub in flows.values():
        assert {"survey", "magpipe"} <= set(sub.tags) and any(t.startswith("magpipe-") for t in sub.tags), \
            (sub.name, sub.tags)
        assert sub.name == parent.name and parent.name.startswith("survey-"), (sub.name, parent.name)
    assert is_complete(tmp_path / "out" / "classified.zarr")
    assert set(result["pixel_accuracy"]) == {"ae", "raw", "majority"}
    arts = _artifacts("survey-")
    for key in ("survey-report", "survey-class-metrics", "survey-classify-progress", "survey-class-map",
                "survey-confidence", "survey-anomaly"):
        assert key in arts, sorted(arts)
    assert arts["survey-classify-progress"].data == 100.0
    # the library's lines are in the runs' logs: the choices made on validation, the device, the headline
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the log worker sends what it holds
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[parent.id, *(r.id for r in flows.values())])))
    text = "\n".join(f"{x.name}: {x.message}" for x in logs)
    assert "magpipe: train: features" in text or "magpipe: train: validation could not score" in text, text
    assert "magpipe: train: autoencoder trained on cpu" in text and result["training"].startswith("locally")
    assert "Balanced accuracy, paired over the same splits" in text
    assert "AE features" in arts["survey-report"].data and "data:image/png;base64," in arts["survey-report"].data
    # the dashboard's report is the whole report: every section of report.md, no figure left as a file name
    sections = [x for x in (tmp_path / "out" / "report.md").read_text().splitlines() if x.startswith("## ")]
    assert len(sections) >= 5 and all(f"\n{x}\n" in arts["survey-report"].data for x in sections), sections
    assert ".png)" not in arts["survey-report"].data

    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["inputs"]["survey"] == str(Path(args[0]).resolve()) and "runtime" not in saved

    before = _written(tmp_path / "out")
    again = survey_pipeline(*args, config=conf, return_state=True)
    assert again.is_completed()
    assert set(_task_states(again.state_details.flow_run_id).values()) == {"Completed"}
    assert _written(tmp_path / "out") == before  # the library's content hashes skipped every stage


def test_bad_input_fails_the_run_with_a_one_line_reason(harness, survey_files, tmp_path):
    from flows.pipeline import survey_pipeline

    state = survey_pipeline(str(tmp_path / "missing.tif"), str(survey_files["labels"]), str(tmp_path / "o"),
                            config=tiny_config().model_dump(mode="json"), return_state=True)
    assert state.is_failed()
    assert "missing.tif: file not found" in state.message and "\n" not in state.message


def test_flow_refuses_paths_outside_the_data_root(harness, trained_run, tmp_path, monkeypatch):
    from flows.classify import classify_survey

    monkeypatch.setenv("MAGPIPE_DATA_ROOT", str(tmp_path / "data"))
    state = classify_survey(str(trained_run["out"]), return_state=True)
    assert state.is_failed()
    assert "flow parameter 'out'" in state.message and "outside the data root" in state.message
    assert not (trained_run["out"] / "classified.zarr.partial").exists()


def test_backfill_refuses_a_changed_bundle_before_any_survey(harness, trained_run, tmp_path):
    import shutil

    from flows.backfill import backfill

    model = tmp_path / "model"
    shutil.copytree(trained_run["out"] / "model", model)
    weights = bytearray((model / "autoencoder.pt").read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (model / "autoencoder.pt").write_bytes(bytes(weights))
    state = backfill([str(trained_run["survey"])], str(model), str(tmp_path / "bf"), return_state=True)
    assert state.is_failed()
    assert "autoencoder.pt: checksum differs" in state.message and "\n" not in state.message
    assert not (tmp_path / "bf").exists()  # no survey was ingested


def _surveys(tmp_path, n=2, shape=(160, 192)):
    paths = []
    for i in range(n):
        field, _ = synthetic_survey(shape, seed=10 + i)
        p = tmp_path / f"area{i}.tif"
        field.rio.to_raster(p)
        paths.append(p)
    return paths


def _maps(root: Path, names) -> list:
    return [zarr.open_group(root / n / "classified.zarr", mode="r")["class"][:] for n in names]


@pytest.mark.slow
def test_backfill_killed_midway_resumes_to_the_uninterrupted_result(harness, trained_run, tmp_path):
    from flows.backfill import backfill

    surveys = _surveys(tmp_path)
    model = str(trained_run["out"] / "model")
    # one worker per survey's LocalCluster: two surveys classify at once on this machine's two cores
    conf = tiny_config(classify={"chunk_px": 32}, runtime={"workers": 1}).model_dump(mode="json")
    reference = backfill([str(p) for p in surveys], model, str(tmp_path / "ref"), config=conf)
    assert len(reference["classified"]) == 2

    out_root = tmp_path / "killed"
    # the killed process reports to the test's Prefect server (its own process group: the kill spares it), as
    # a worker reports to a long-lived server
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": PREFECT_API_URL.value()}
    code = ("import json, sys; from flows.backfill import backfill; "
            "backfill(sys.argv[3:], sys.argv[1], sys.argv[2], config=json.loads(sys.argv[0]))")
    import json

    proc = subprocess.Popen([sys.executable, "-c", code.replace("sys.argv[0]", repr(json.dumps(conf))), model,
                             str(out_root), *map(str, surveys)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "killed.log").open("w"))
    deadline = time.time() + 300
    killed = False
    while time.time() < deadline and proc.poll() is None:
        done = list(out_root.glob("*/classified.zarr.partial/tile_done"))
        if done and zarr.open_array(done[0], mode="r")[:].sum() >= 2:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole tree: flow process, Dask workers, its server
            killed = True
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed, f"the backfill ended ({proc.returncode}) before it could be killed: " + \
        (tmp_path / "killed.log").read_text()[-3000:]
    assert not all(is_complete(out_root / p.stem / "classified.zarr") for p in surveys)

    resumed = backfill([str(p) for p in surveys], model, str(out_root), config=conf)
    assert len(resumed["classified"]) + len(resumed["already_done"]) == 2
    for a, b in zip(_maps(tmp_path / "ref", ["area0", "area1"]), _maps(out_root, ["area0", "area1"])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_backfill_over_a_bucket_prefix_with_a_model_on_the_bucket(harness, trained_run, bucket, s3, tmp_path,
                                                                  request):
    """Surveys landing in a bucket, the model in the bucket, the maps into the bucket: what the local
    backfill makes, with nothing on the local disk. The bucket's endpoint and credentials come only from the
    config file the flow is given (the environment names a dead endpoint): they reach every subflow and the
    run's Dask workers, and the secret is nowhere in Prefect's database or in what the run wrote."""
    import fsspec
    import yaml

    from flows.backfill import backfill
    from magpipe.testing import files_holding, prefect_database_files

    fs = fsspec.filesystem("s3")
    surveys = _surveys(tmp_path)
    for p in surveys:
        fs.put_file(str(p), f"{bucket.removeprefix('s3://')}/landing/{p.name}")
    fs.put(str(trained_run["out"] / "model"), f"{bucket.removeprefix('s3://')}/models/m", recursive=True)
    conf = tiny_config(runtime={"workers": 1}).model_dump(mode="json")  # two surveys at once on two cores
    reference = backfill([str(p) for p in surveys], str(trained_run["out"] / "model"), str(tmp_path / "ref"),
                         config=conf)
    secret = s3["AWS_SECRET_ACCESS_KEY"]  # the server checks it: only a run that has it completes
    store = {"endpoint_url": s3["AWS_ENDPOINT_URL"], "key": s3["AWS_ACCESS_KEY_ID"], "secret": secret}
    config_file = tmp_path / "private" / "bucket.yaml"
    config_file.parent.mkdir()
    config_file.write_text(yaml.safe_dump({**conf, "runtime": {"workers": 1, "storage_options": {"s3": store}}}))
    request.getfixturevalue("no_s3_environment")  # from here on, the config file is all the run has
    result = backfill(f"{bucket}/landing/area*.tif", f"{bucket}/models/m", f"{bucket}/backfill",
                      config=str(config_file))
    assert sorted(result["classified"]) == [f"{bucket}/landing/area0.tif", f"{bucket}/landing/area1.tif"]
    assert len(reference["classified"]) == 2
    for name in ("area0", "area1"):
        remote = zarr.open_group(f"{bucket}/backfill/{name}/classified.zarr", mode="r", storage_options=store)
        assert remote.attrs["magpipe_complete"]
        np.testing.assert_array_equal(remote["class"][:], _maps(tmp_path / "ref", [name])[0])

    database = prefect_database_files()
    assert files_holding(bucket, *database), "the scan must see the runs' parameters"
    assert files_holding(secret, *database) == []
    written = tmp_path / "written"
    fsspec.filesystem("s3", **store).get(f"{bucket.removeprefix('s3://')}/backfill", str(written), recursive=True)
    assert files_holding("magpipe_complete", written) and files_holding(secret, written, tmp_path / "ref") == []


def test_a_flow_refuses_storage_options_given_as_a_parameter(harness, tmp_path):
    """Prefect stores a flow's parameters: storage options in a ``config`` dict are refused in one line."""
    from flows.classify import classify_survey

    conf = {"runtime": {"storage_options": {"s3": {"secret": "x"}}}}
    state = classify_survey(str(tmp_path / "out"), config=conf, return_state=True)
    assert state.is_failed() and "runtime.storage_options would be stored" in state.message
    assert "config: PATH" in state.message and "\n" not in state.message


@pytest.mark.slow
def test_the_landing_watch_runs_a_survey_delivered_as_a_folder_of_layers(harness, tmp_path):
    """A folder with a manifest is one survey: its layers are ingested with it; a bad manifest fails in one line."""
    import yaml

    from flows.watch import watch_landing
    from magpipe.testing import synthetic_stack

    landing = tmp_path / "landing"
    delivery = landing / "rondo"
    delivery.mkdir(parents=True)
    s = synthetic_stack(delivery, carrier="beta")
    (delivery / "survey.yaml").write_text(yaml.safe_dump({
        "survey": "field.tif", "labels": "labels.tif", "layers": {n: f"{n}.tif" for n in s["layers"]}}))
    config = tiny_config(svm={"features": "stats"}, evaluate={"splits": 1, "sparse_per_class": 0}).model_dump(
        mode="json")
    done = watch_landing(str(landing), str(tmp_path / "out"), config=config)
    assert done == [str(delivery)]
    out = tmp_path / "out" / "rondo"
    assert is_complete(out / "classified.zarr")
    assert json.loads((out / "model" / "metadata.json").read_text())["inputs"] == ["field", "alpha", "beta"]
    (landing / "broken").mkdir()
    (landing / "broken" / "survey.yaml").write_text("survey: nowhere.tif\n")
    state = watch_landing(str(landing), str(tmp_path / "out"), config=config, return_state=True)
    assert state.is_failed() and "survey.yaml: survey 'nowhere.tif' is not in" in state.message
    assert "\n" not in state.message
    state = watch_landing(str(tmp_path / "no-such-landing"), str(tmp_path / "out"), config=config, return_state=True)
    assert state.is_failed() and "no-such-landing: landing folder not found" in state.message, state.message


def test_every_flow_parameter_is_described_where_the_ui_shows_it():
    """Prefect reads a parameter's description from the flow docstring's Args section into the deployment's
    schema, which the UI shows beside the field to fill in."""
    from prefect.utilities.callables import parameter_schema

    from flows.backfill import backfill, backfill_survey
    from flows.classify import classify_survey
    from flows.pipeline import survey_pipeline
    from flows.train import train_autoencoder
    from flows.watch import watch_landing

    for f in (survey_pipeline, classify_survey, train_autoencoder, backfill, backfill_survey, watch_landing):
        props = parameter_schema(f.fn).model_dump()["properties"]
        assert props and all(p.get("description") for p in props.values()), (f.name, props)
