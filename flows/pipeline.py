"""The whole survey pipeline as one flow: ingest, labels, patches, train, classify, evaluate.

    python -m flows.pipeline [SURVEY LABELS OUT [--label-field F]]   # no server needed

With no survey it runs on magpipe's embedded BGS sample of Great Britain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, tags, task
from prefect.context import TaskRunContext

from flows._artifacts import publish_report
from flows._common import (
    cached,
    data_path,
    load_config,
    retry_unless_bad_input,
    run_name,
    stage_key,
    survey_name,
    tag_this_run,
)
from flows.classify import classify_survey
from flows.train import train_remote_or_local
from magpipe.config import RunConfig
from magpipe.io.stores import is_complete, store_attrs, version
from magpipe.pipeline import Layout, run_evaluate, run_ingest, run_labels, run_patches

IO_RETRIES = {"retries": 2, "retry_delay_seconds": [5, 30], "retry_condition_fn": retry_unless_bad_input,
              "persist_result": True}


def _ingest_key(ctx: TaskRunContext, p: dict) -> str:
    return stage_key("ingest", p["survey"], config=_ingest_conf(p))


def _labels_key(ctx: TaskRunContext, p: dict) -> str:
    return stage_key("labels", p["survey"], p["labels"], p.get("classes"), config=str(p.get("label_field")))


def _ingest_conf(p: dict) -> str:
    return str(p["config"]["ingest"])


def _patches_key(ctx: TaskRunContext, p: dict) -> str:
    return stage_key("patches", p["survey"], config=_ingest_conf(p) + str(p["config"]["patches"]))


@task(name="ingest", cache_key_fn=_ingest_key, **IO_RETRIES)
def ingest(survey: str, out: str, config: dict) -> str:
    return str(run_ingest(survey, out, RunConfig.model_validate(config)))


@task(name="labels", cache_key_fn=_labels_key, **IO_RETRIES)
def labels(survey: str, labels: str, out: str, label_field: str | None, classes: str | None) -> str:
    return str(run_labels(labels, out, label_field=label_field, classes=classes))


@task(name="patches", cache_key_fn=_patches_key, **IO_RETRIES)
def patches(survey: str, out: str, config: dict) -> str:
    return str(run_patches(out, RunConfig.model_validate(config)))


@task(name="evaluate", persist_result=True)
def evaluate(out: str, config: dict) -> dict:
    return run_evaluate(out, RunConfig.model_validate(config))


def _run_name() -> str:
    from prefect.runtime import flow_run

    return run_name(flow_run.parameters.get("survey") or "britain_tmi_2km")


@flow(name="survey-pipeline", flow_run_name=_run_name, log_prints=True)
def survey_pipeline(survey: str | None = None, labels_path: str | None = None, out: str = "runs/britain-sample",
                    label_field: str | None = None, classes: str | None = None,
                    config: dict[str, Any] | str | None = None, scheduler: str | None = None) -> dict:
    """Classify one survey end to end and publish its report, metrics table and maps."""
    survey, labels_path, classes = (data_path(survey, "survey"), data_path(labels_path, "labels_path"),
                                    data_path(classes, "classes"))
    out = data_path(out, "out")
    if isinstance(config, str):
        config = data_path(config, "config")
    if survey is None:
        from magpipe.datasets import britain_sample, demo_config

        sample = britain_sample()
        survey, labels_path, classes = str(sample.survey), str(sample.labels), str(sample.classes)
        cfg = demo_config() if config is None else load_config(config)
    else:
        if labels_path is None:
            raise ValueError("survey_pipeline needs labels_path for a survey (or neither, for the sample)")
        cfg = load_config(config)
    conf = cfg.model_dump(mode="json")
    name = survey_name(survey)
    tag_this_run(name, f"magpipe-{version()}")
    with tags(name, f"magpipe-{version()}"):
        lay = Layout(Path(out))
        cached(ingest, is_complete(lay.survey))(survey, out, conf)
        cached(labels, bool((store_attrs(lay.survey) or {}).get("labels_hash")))(
            survey, labels_path, out, label_field, classes)
        cached(patches, is_complete(lay.patches))(survey, out, conf)
        model = train_remote_or_local(out, conf)
        classified = classify_survey(out, conf, model=model, scheduler=scheduler, name=name)
        report = evaluate(out, conf)
        publish_report(report, out, name)
    return {"out": out, "classified": classified, "model": model,
            **{k: report[k] for k in ("pixel_accuracy", "patch_accuracy", "balanced_accuracy")}}


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
