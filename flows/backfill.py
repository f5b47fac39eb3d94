"""Apply an existing model bundle to many surveys, one subflow each, a few at a time.

Resumable: a survey whose classified.zarr is complete is skipped, and one that was
interrupted resumes from its finished tiles, so a re-run after a crash ends with
exactly the maps an uninterrupted run would have made.

    python -m flows.backfill MODEL OUT_ROOT SURVEY_OR_GLOB [...]
"""

from __future__ import annotations

from typing import Any

from prefect import flow, tags, task
from prefect.futures import wait

from flows._common import data_path, layer_paths, load_config, retry_if_transient, run_context, run_name, \
    survey_name, tag_this_run
from flows.classify import classify_survey
from magpipe.bundle import verify_bundle
from magpipe.errors import InputError
from magpipe.io.location import as_path, expand
from magpipe.io.manifest import is_delivery, read_manifest
from magpipe.io.schema import Layout
from magpipe.io.stores import is_complete, version
from magpipe.pipeline import run_ingest


def expand_surveys(surveys: list[str] | str) -> list[str]:
    """A list of paths and/or globs -> sorted unique existing paths."""
    items = [surveys] if isinstance(surveys, str) else list(surveys)
    return sorted({match for item in items for match in expand(item)})


@flow(name="backfill-survey", flow_run_name=lambda: run_name(_param("survey")), log_prints=True)
def backfill_survey(survey: str, model: str, out: str, config: dict[str, Any] | str | None = None,
                    scheduler: str | None = None, layers: dict[str, Any] | None = None) -> str:
    """Ingest one survey and classify it with ``model``.

    Args:
        survey: the survey: a grid file, or a folder with a manifest (survey.yaml) naming its layers.
        model: the model bundle directory to classify with (its inputs must be the survey's).
        out: the run directory, under the data root.
        config: the run's options: a dict of config sections, or a YAML/JSON path.
        scheduler: address of a Dask scheduler; None starts a LocalCluster.
        layers: further layers of a survey given as a file: name -> path, as inputs.layers.
    """
    survey, model, out = data_path(survey, "survey"), data_path(model, "model"), data_path(out, "out")
    cfg = load_config(_config_path(config))
    with run_context(cfg):
        if is_delivery(survey):
            delivery = read_manifest(survey)
            survey, layers = delivery.survey, delivery.layers
        cfg = cfg.with_inputs(survey=survey, layers=layer_paths(layers))
        tag_this_run(survey_name(survey), f"model-{_model_name(model)}", "magpipe", f"magpipe-{version()}")
        run_ingest(out, cfg)
        return classify_survey(out, cfg.parameters(), model=model, scheduler=scheduler, name=survey_name(survey))


def _config_path(config: dict[str, Any] | str | None) -> dict[str, Any] | str | None:
    """A flow's ``config`` parameter with a path confined like every path parameter (:func:`data_path`)."""
    return data_path(config, "config") if isinstance(config, str) else config


def _model_name(model: str) -> str:
    """The name a bundle is tagged with: its run's directory for ``RUN/model``, else its own."""
    parts = str(model).rstrip("/").split("/")
    return parts[-2] if parts[-1] == "model" and len(parts) > 1 else parts[-1]


def _param(name: str) -> str:
    from prefect.runtime import flow_run

    return str(flow_run.parameters.get(name, "survey"))


@task(name="backfill-one", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def backfill_one(survey: str, model: str, out: str, config: dict | str | None, scheduler: str | None) -> str:
    return backfill_survey(survey, model, out, config, scheduler)


@flow(name="backfill", log_prints=True)
def backfill(surveys: list[str] | str, model: str, out_root: str = "runs/backfill",
             config: dict[str, Any] | str | None = None, max_concurrent: int = 2, scheduler: str | None = None) -> dict:
    """Classify every survey in ``surveys`` into OUT_ROOT/<survey name>/.

    Args:
        surveys: survey paths or globs (files, or folders with a manifest).
        model: the model bundle directory to classify with.
        out_root: where each survey's run directory goes (OUT_ROOT/<survey name>).
        config: options for every survey: a dict of config sections, or a path each survey's subflow reads
            again (storage options included).
        max_concurrent: surveys classified at once.
        scheduler: address of a Dask scheduler; None starts a LocalCluster.
    """
    model, out_root = data_path(model, "model"), data_path(out_root, "out_root")
    with run_context(load_config(_config_path(config))):
        return _backfill(surveys, model, out_root, config, max_concurrent, scheduler)


def _backfill(surveys: list[str] | str, model: str, out_root: str, config: dict[str, Any] | str | None,
              max_concurrent: int, scheduler: str | None) -> dict:
    patterns = [surveys] if isinstance(surveys, str) else list(surveys)
    paths = [data_path(p, "surveys") for p in expand_surveys([data_path(p, "surveys") for p in patterns])]
    if not paths:
        raise InputError(f"no survey matches {surveys!r}")
    verify_bundle(model)  # a damaged bundle fails the backfill before any survey is ingested
    done, results = {}, {}
    with tags("backfill", f"model-{str(model).rstrip('/').rsplit('/', 1)[-1]}", "magpipe", f"magpipe-{version()}"):
        todo = []
        for p in paths:
            out = str(as_path(out_root) / survey_name(p))
            if is_complete(Layout(out).classified):
                done[p] = out  # nothing to do; a re-run after a crash lands here for finished surveys
            else:
                todo.append((p, out))
        for i in range(0, len(todo), max(1, max_concurrent)):
            batch = todo[i : i + max(1, max_concurrent)]
            futures = [backfill_one.submit(p, model, out, config, scheduler) for p, out in batch]
            wait(futures)
            for (p, _), fut in zip(batch, futures):
                results[p] = fut.result()
    return {"classified": results, "already_done": done}


if __name__ == "__main__":
    import sys

    print(backfill(sys.argv[3:], sys.argv[1], sys.argv[2]))
