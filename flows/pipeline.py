"""The whole survey pipeline as one flow: ingest, labels, patch size, patches, train, classify, evaluate.

    python -m flows.pipeline [SURVEY LABELS OUT [--label-field F]]   # no server needed

With no survey it runs on magpipe's embedded BGS sample of Great Britain.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.states import Completed

from flows._artifacts import publish_report
from flows._common import STAGE_TASK, data_path, layer_paths, load_config, retry_if_transient, run_context, \
    run_name, survey_name, tag_this_run
from flows.classify import classify_survey
from flows.train import train_remote_or_local
from magpipe.cluster import dask_client
from magpipe.config import RunConfig
from magpipe.errors import InputError
from magpipe.explore import require_embedding
from magpipe.io.stores import version
from magpipe.pipeline import run_evaluate, run_ingest, run_labels, run_patch_size, run_patches

IO_RETRIES = {"retries": 2, "retry_delay_seconds": [5, 30], "retry_condition_fn": retry_if_transient}


@task(name="ingest", **STAGE_TASK, **IO_RETRIES)
def ingest(out: str, config: dict) -> str:
    return str(run_ingest(out, RunConfig.model_validate(config)))


@task(name="labels", **STAGE_TASK, **IO_RETRIES)
def labels(out: str, config: dict) -> str:
    return str(run_labels(out, RunConfig.model_validate(config)))


@task(name="patch-size", **STAGE_TASK, **IO_RETRIES)
def patch_size(out: str, config: dict) -> str | None:
    chosen = run_patch_size(out, RunConfig.model_validate(config))
    return None if chosen is None else str(chosen)


@task(name="patches", **STAGE_TASK, **IO_RETRIES)
def patches(out: str, config: dict) -> str:
    return str(run_patches(out, RunConfig.model_validate(config)))


@task(name="evaluate", **STAGE_TASK)
def evaluate(out: str, config: dict, scheduler: str | None = None) -> dict:
    """The report, its pieces as tasks on the run's cluster: ``scheduler`` (else ``runtime.scheduler``), or a
    LocalCluster of ``runtime.workers`` for the stage."""
    cfg = RunConfig.model_validate(config)
    with dask_client(scheduler or cfg.runtime.scheduler, workers=cfg.runtime.workers) as client:
        return run_evaluate(out, cfg, client=client)


def _run_name() -> str:
    from prefect.runtime import flow_run

    return run_name(flow_run.parameters.get("survey") or "britain_tmi_2km")


def pipeline_config(survey: str | None, labels_path: str | None, label_field: str | None, classes: str | None,
                    config: dict[str, Any] | str | None, layers: dict[str, Any] | None = None) -> RunConfig:
    """The run's config with its inputs: the embedded Britain sample (and the demo's options, unless a
    config is given) when no survey is."""
    if isinstance(config, str):
        config = data_path(config, "config")
    if survey is None:
        from magpipe.datasets import britain_sample, demo_config

        sample = britain_sample()
        cfg = demo_config() if config is None else load_config(config)
        return cfg.with_inputs(survey=sample.survey, labels=sample.labels, classes=sample.classes)
    if labels_path is None:
        raise InputError("survey_pipeline needs labels_path for a survey (or neither, for the sample)")
    return load_config(config).with_inputs(survey=survey, labels=labels_path, label_field=label_field,
                                           classes=classes, layers=layers)


@flow(name="survey-pipeline", flow_run_name=_run_name, log_prints=True)
def survey_pipeline(survey: str | None = None, labels_path: str | None = None, out: str = "runs/britain-sample",
                    label_field: str | None = None, classes: str | None = None,
                    config: dict[str, Any] | str | None = None, scheduler: str | None = None,
                    layers: dict[str, Any] | None = None):
    """Classify one survey end to end and publish its report, metrics table and maps.

    Args:
        survey: the survey grid (a GeoTIFF or NetCDF path or URL); None runs the demo on the shipped BGS sample.
        labels_path: mapped units over part of the survey (polygons, or a class raster on its grid).
        out: the run directory (stores, model, report), under the data root.
        label_field: the polygons' attribute that names the unit (labels as polygons only).
        classes: a CSV of class code -> name for labels given as a raster.
        config: the run's options: a dict of config sections, or a YAML/JSON path (docs/configuration.md).
        scheduler: address of a Dask scheduler for classification and evaluation; None starts a LocalCluster.
        layers: further layers of the survey (gamma-ray, terrain, ...): name -> path, as inputs.layers.
    """
    survey, labels_path, classes = (data_path(survey, "survey"), data_path(labels_path, "labels_path"),
                                    data_path(classes, "classes"))
    out = data_path(out, "out")
    cfg = pipeline_config(survey, labels_path, label_field, classes, config, layer_paths(layers))
    require_embedding(cfg.evaluate.embedding)  # the report's last step: refused before the first
    conf = cfg.parameters()  # what the tasks, subflows and the training deployment get: no storage options
    name = survey_name(cfg.inputs.survey)
    run_tags = (name, "magpipe", f"magpipe-{version()}")
    tag_this_run(*run_tags)
    with run_context(cfg), tags(*run_tags):
        ingest(out, conf)
        labels(out, conf)
        patch_size(out, conf)
        patches(out, conf)
        model, where = train_remote_or_local(out, conf)
        classified = classify_survey(out, conf, model=model, scheduler=scheduler, name=name)
        report = evaluate(out, conf, scheduler)
        publish_report(report, out, name)
        get_run_logger().info(report["headline"])
    result = {"out": out, "classified": classified, "model": model, "training": where,
              **{k: report[k] for k in ("pixel_accuracy", "patch_accuracy", "balanced_accuracy")}}
    return Completed(message=f"training ran {where}", data=result)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the survey pipeline locally.")
    ap.add_argument("survey", nargs="?")
    ap.add_argument("labels", nargs="?")
    ap.add_argument("out", nargs="?", default="runs/britain-sample")
    ap.add_argument("--label-field")
    ap.add_argument("--config")
    a = ap.parse_args()
    print(survey_pipeline(a.survey, a.labels, a.out, label_field=a.label_field, config=a.config))
