"""The real thing: deploy/local.sh starts `prefect server start`, pools, deployments and process
workers; the survey-pipeline deployment runs on a tiny survey (training through the
train-autoencoder deployment on the gpu pool); then the stack is stopped and every process it
started must be gone. The run's config is a file holding a secret storage option: the secret must be nowhere in
the server's database, the stack's logs or the run's outputs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flows._common import survey_name
from magpipe.io.stores import is_complete, version
from magpipe.testing import files_holding, tiny_config

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

RUN = """
import json, sys, time
from prefect.deployments import run_deployment
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter,
                                            LogFilterFlowRunId)
params = json.loads(sys.argv[1])
run = run_deployment("survey-pipeline/survey-pipeline", parameters=params, timeout=600, poll_interval=2)
with get_client(sync_client=True) as client:
    arts = {a.key: a.data for a in client.read_artifacts() if a.key}
    runs = client.read_flow_runs()
    parent = client.read_flow_run(run.id)
    children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])))
    # the runs' processes ship their logs in batches after the state is set: wait for the last line
    for _ in range(60):
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[parent.id, *(r.id for r in children)])))
        if any("Balanced accuracy, paired" in x.message for x in logs):
            break
        time.sleep(1)
    subflows = {client.read_flow(r.flow_id).name: r.tags for r in children}
print(json.dumps({"state": run.state.name, "message": run.state.message, "artifacts": sorted(arts),
                  "report": arts.get("survey-report"), "tags": parent.tags, "subflows": subflows,
                  "logs": [f"{x.name}: {x.message}" for x in logs],
                  "flows": sorted({str(r.flow_id) + ':' + r.state.name for r in runs if r.state})}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_local_stack_runs_the_pipeline_deployment(survey_files, tmp_path):
    port = _free_port()
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_PORT": str(port), "PREFECT_HOME": str(home), "PREFECT": str(BIN / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_WORKER_QUERY_SECONDS": "1"}  # workers poll every second, not 10: runs start at once
    env.pop("PREFECT_API_URL", None)
    # a shell started with SIGINT ignored (a background job of a non-interactive shell, as CI may run
    # pytest) cannot trap it: give the stack the default disposition, as a terminal's Ctrl-C would find
    default_int = "import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); " \
                  "os.execvp('bash', ['bash', 'deploy/local.sh'])"
    stack = subprocess.Popen([sys.executable, "-c", default_int], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    started: list[psutil.Process] = []
    try:
        lines = []
        deadline = time.time() + 240
        while time.time() < deadline:
            line = stack.stdout.readline()
            if not line and stack.poll() is not None:
                break
            lines.append(line)
            if line.startswith("Prefect dashboard:"):
                break
        assert any(x.startswith("Prefect dashboard:") for x in lines), "".join(lines)
        for _ in range(40):  # the workers are forked just before the URL is printed
            started = psutil.Process(stack.pid).children(recursive=True)
            if len([p for p in started if "worker" in " ".join(p.cmdline())]) == 2:
                break
            time.sleep(0.25)
        assert len([p for p in started if "worker" in " ".join(p.cmdline())]) == 2

        secret = f"sentinel-{os.urandom(8).hex()}"  # an option of a store this run never opens
        conf = tiny_config(evaluate={"splits": 1, "sparse_per_class": 0}).model_dump(mode="json")
        conf["runtime"]["storage_options"] = {"s3": {"secret": secret}}
        (tmp_path / "private").mkdir()
        (tmp_path / "private" / "run.json").write_text(json.dumps(conf))
        params = {"survey": str(survey_files["survey"]), "labels_path": str(survey_files["labels"]),
                  "out": str(tmp_path / "out"), "config": str(tmp_path / "private" / "run.json")}
        client_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        r = subprocess.run([sys.executable, "-c", RUN, json.dumps(params)], cwd=REPO, env=client_env,
                           capture_output=True, text=True, timeout=700)
        assert r.returncode == 0, r.stderr[-3000:]
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["state"] == "Completed", (result, (home / "worker-cpu.log").read_text()[-3000:])
        assert is_complete(tmp_path / "out" / "classified.zarr")
        for key in ("survey-report", "survey-class-metrics", "survey-classify-progress", "survey-class-map"):
            assert key in result["artifacts"]
        assert "train-autoencoder" in (home / "worker-gpu.log").read_text()  # training ran on the gpu pool
        # what the dashboard shows of the run: the whole report, the library's lines, the tags
        sections = [x for x in (tmp_path / "out" / "report.md").read_text().splitlines() if x.startswith("## ")]
        assert len(sections) >= 5 and all(f"\n{x}\n" in result["report"] for x in sections), sections
        assert ".png)" not in result["report"] and "data:image/png;base64," in result["report"]
        logs = "\n".join(result["logs"])
        assert "magpipe: train: features" in logs or "magpipe: train: validation could not score" in logs, logs
        assert "magpipe: train: autoencoder trained on cpu" in logs  # from the gpu pool's worker process
        assert "Balanced accuracy, paired over the same splits" in logs, logs
        assert {"train-autoencoder", "classify-survey"} <= set(result["subflows"]), result["subflows"]
        assert {"gpu", "trained-on-cpu"} <= set(result["subflows"]["train-autoencoder"])  # sent to gpu, ran on cpu
        survey_tag = survey_name(params["survey"])
        for tags in [result["tags"], *result["subflows"].values()]:
            assert {survey_tag, "magpipe", f"magpipe-{version()}"} <= set(tags), result
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            stack.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    said = stack.stdout.read()
    assert "local stack stopped" in said and "killed" not in said, said  # every service stopped on SIGTERM
    assert files_holding(str(tmp_path / "out"), home / "prefect.db"), "the scan must see the runs' parameters"
    assert files_holding(secret, home, tmp_path / "out") == []
