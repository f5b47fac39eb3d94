"""What every flow shares: process setup, config handling, retry rules, run names.

Flows keep no cache of their own: every stage skips itself when its output carries the
content hash of the same inputs and options (the library's one cache), so a task that finds
its stage up to date completes at once without recomputing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from magpipe.config import RunConfig
from magpipe.errors import ConfigError, InputError, is_transient
from magpipe.io.location import is_url, storage_scope
from magpipe.locking import waiting_for_locks
from magpipe.process import SharedChange, configure_process
from prefect.cache_policies import NO_CACHE

# Prefect tasks of the stages: no Prefect cache (the library's content hashes decide), results in memory
STAGE_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


def load_config(config: dict[str, Any] | str | None) -> RunConfig:
    """A flow's one config parameter: a dict of sections, a YAML/JSON path, or None for defaults.

    Storage options (secrets, often) are refused in a dict: Prefect stores a flow's parameters in its
    database and shows them in the UI. They belong in a config file the flow reads, or in the workers'
    environment; the flow gives them to its own work with :func:`magpipe.io.location.storage_scope`
    and passes :meth:`RunConfig.parameters` on. Also makes the process-wide settings
    (:func:`magpipe.process.configure_process`): every flow starts here.
    """
    configure_process()
    if config is None:
        return RunConfig()
    if isinstance(config, dict):  # (a config path is checked by the flow against the data root)
        if isinstance(config.get("runtime"), dict) and config["runtime"].get("storage_options"):
            raise ConfigError("flow parameter 'config': runtime.storage_options would be stored with the run's "
                              "parameters in Prefect's database; give them in a config file (config: PATH) or "
                              "in the workers' environment")
        try:
            return RunConfig.model_validate(config)
        except Exception as exc:  # pydantic's error, one line
            raise ConfigError(f"flow parameter 'config': {str(exc).splitlines()[0]}") from None
    return RunConfig.load(config)


# How long a flow run waits for an output another run is writing (a command is refused at once): runs of
# one survey started together, by a schedule and a backfill say, then run one after the other.
LOCK_WAIT_S = 6 * 3600.0


@contextlib.contextmanager
def run_context(cfg: RunConfig) -> Iterator[None]:
    """What a flow's work runs inside: the run's storage options, for this process only (never passed on),
    waiting up to :data:`LOCK_WAIT_S` for an output that another run holds, and the library's log lines in
    the run's logs (:func:`library_logs_in_runs`)."""
    with storage_scope(cfg.runtime.storage_options), waiting_for_locks(LOCK_WAIT_S), library_logs_in_runs():
        yield


def _attach_library_logs() -> tuple:
    from prefect.logging.handlers import APILogHandler

    lib = logging.getLogger("magpipe")
    handler = APILogHandler()
    handler.addFilter(_in_a_run)
    lib.addHandler(handler)
    saved = handler, lib.level
    if lib.getEffectiveLevel() > logging.INFO:
        lib.setLevel(logging.INFO)
    return saved


def _detach_library_logs(saved: tuple) -> None:
    handler, level = saved
    lib = logging.getLogger("magpipe")
    lib.removeHandler(handler)
    lib.setLevel(level)


# The ``magpipe`` logger's lines (each choice made on validation, warnings such as units left out, progress) go
# to the logs of the Prefect run they are written in, as long as any run's work is inside the block: Prefect's
# API log handler on the library's logger, at INFO where it was quieter (what
# ``PREFECT_LOGGING_EXTRA_LOGGERS=magpipe`` would do for the whole process). One handler serves the runs of a
# process at once; the last to leave removes it and puts the level back. A line written outside any run (a
# thread of its own) is left out rather than warned about.
library_logs_in_runs = SharedChange(_attach_library_logs, _detach_library_logs)


def _in_a_run(record: logging.LogRecord) -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


DATA_ROOT_ENV = "MAGPIPE_DATA_ROOT"


def data_path(value: str | None, param: str) -> str | None:
    """A path parameter of a flow, confined to ``$MAGPIPE_DATA_ROOT`` when that is set.

    Deployments take paths from whoever can start a run; with a data root they can
    name nothing else on the worker's disk. Relative paths are taken inside the root;
    symlinks and '..' are resolved before the check.
    """
    if value is None:
        return None
    root = os.environ.get(DATA_ROOT_ENV)
    if not root:
        return str(value)
    if is_url(root) or is_url(value):  # a bucket prefix as the root: plain key prefixes, no '..'
        prefix = root.rstrip("/") + "/"
        full = str(value) if is_url(value) else prefix + str(value).lstrip("/")
        if ".." in full.split("/") or not full.startswith(prefix):
            raise InputError(f"flow parameter '{param}': {value} is outside the data root {root} (${DATA_ROOT_ENV})")
        return full
    base = Path(root).resolve()
    p = Path(value).expanduser()
    full = (p if p.is_absolute() else base / p).resolve()
    if not full.is_relative_to(base):
        raise InputError(f"flow parameter '{param}': {value} is outside the data root {root} (${DATA_ROOT_ENV})")
    return str(full)


def survey_name(survey: str | Path) -> str:
    """'britain_tmi_2km' from '.../britain_tmi_2km.tif' (also for '.csv.xz' and stores)."""
    name = str(survey).rstrip("/").rsplit("/", 1)[-1]
    for _ in range(2):
        name = name.rsplit(".", 1)[0] if "." in name else name
    return name


def run_name(survey: str | Path) -> str:
    return f"{survey_name(survey)}-{datetime.now(timezone.utc):%Y%m%d-%H%M}"


def out_run_name() -> str:
    """Run name of a stage flow, '<survey>-<date>': its parent's name where it runs under a pipeline of the same
    survey (one name, one start minute, for all of a run's work in the UI), else made from its ``name``
    parameter, else the survey its ``config`` names, else its ``out`` directory."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    survey = params.get("name") or config_survey(params.get("config")) or params.get("out", "run")
    parent = _parent_run_name()
    return parent if parent and parent.startswith(f"{survey_name(survey)}-") else run_name(survey)


def _parent_run_name() -> str | None:
    """The name of the flow run this one runs under (a subflow, or a deployment run started from a flow), if any."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    parent = flow_run.parent_flow_run_id
    if not parent:
        return None
    with get_client(sync_client=True) as client:
        return client.read_flow_run(parent).name


def layer_paths(layers: dict[str, Any] | None) -> dict[str, Any] | None:
    """A flow's ``layers`` parameter (name -> path, or {path, band, resampling}) with each path confined
    like every other path parameter (:func:`data_path`)."""
    if not layers:
        return None
    return {name: data_path(v, f"layers.{name}") if isinstance(v, str) else {**v, "path": data_path(v.get("path"),
            f"layers.{name}")} for name, v in layers.items()}


def config_survey(config) -> str | None:
    """The survey a flow's ``config`` parameter (a dict, as flows pass it) names, if any."""
    inputs = config.get("inputs") if isinstance(config, dict) else None
    return inputs.get("survey") if isinstance(inputs, dict) else None


def tag_this_run(*new_tags: str) -> None:
    """Add tags to the running flow run itself (``with tags()`` only reaches runs it creates)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        client.update_flow_run(run.id, tags=sorted(set(run.tags) | set(new_tags)))


def retry_if_transient(task, task_run, state) -> bool:
    """Retry only failures a retry may cure (a store or network that did not answer, a lost Dask worker:
    :func:`magpipe.errors.is_transient`); never bad input, bad config, a refused or lost lock, or a bug."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False
