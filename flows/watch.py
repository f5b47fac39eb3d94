"""For the scheduled deployment: process the surveys in a landing folder that have no finished output.

A survey with a labels file beside it (``<name>.labels.gpkg``, ``.geojson`` or ``.tif``) runs the
full pipeline; any other is classified with the existing ``model`` (a backfill). A survey delivered as a
folder of layers carries a manifest (``survey.yaml``: the survey file, its layers, optionally its labels;
see :mod:`magpipe.io.manifest`); a bad manifest fails the run in one line naming it.

    python -m flows.watch LANDING OUT_ROOT [MODEL]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows._common import data_path, load_config, run_context, survey_name
from flows.backfill import _config_path, backfill
from flows.pipeline import survey_pipeline
from magpipe.errors import InputError
from magpipe.io.location import as_path, is_url
from magpipe.io.manifest import is_delivery, read_manifest
from magpipe.io.schema import Layout
from magpipe.io.stores import is_complete

LABEL_SUFFIXES = (".labels.gpkg", ".labels.geojson", ".labels.tif")


def pending_surveys(landing: str | Path, out_root: str | Path, pattern: str) -> list[Path]:
    """Surveys in ``landing`` matching ``pattern`` whose OUT_ROOT/<name>/classified.zarr is not complete.

    Raises InputError when ``landing`` is a local path that is not a folder: a watch of a mistyped or unmounted
    landing would otherwise report "0 new surveys" every time it runs. (An object-store prefix exists only
    once something is under it, so an empty one is not an error.)"""
    root = as_path(landing)
    if not is_url(landing) and not root.is_dir():
        raise InputError(f"{landing}: landing folder not found")
    found = sorted({*(p for p in root.glob(pattern) if ".labels." not in p.name),
                    *(p for p in root.iterdir() if is_delivery(p))}, key=str)
    return [p for p in found if not is_complete(Layout(as_path(out_root) / survey_name(p)).classified)]


def labels_for(survey: Path) -> Path | None:
    name = survey_name(survey)
    return next((survey.with_name(name + s) for s in LABEL_SUFFIXES if survey.with_name(name + s).exists()), None)


@flow(name="watch-landing", log_prints=True)
def watch_landing(landing: str, out_root: str = "runs/landing", model: str | None = None, pattern: str = "*.tif",
                  label_field: str | None = None, config: dict[str, Any] | str | None = None) -> list[str]:
    """Run the pipeline or a backfill on every new survey in ``landing``; returns what it processed.

    Args:
        landing: the folder (or object-store prefix) new surveys land in; a survey is a grid file or a folder
            with a manifest, labelled when <name>.labels.gpkg (.geojson, .tif) sits beside it.
        out_root: where each survey's run directory goes (OUT_ROOT/<survey name>).
        model: the model bundle that classifies surveys landing without labels (a backfill).
        pattern: the glob of survey files in the landing folder.
        label_field: the polygons' attribute that names the unit.
        config: options for every survey: a dict of config sections, or a path each subflow reads again.
    """
    landing, out_root, model = data_path(landing, "landing"), data_path(out_root, "out_root"), data_path(model, "model")
    config = _config_path(config)
    with run_context(load_config(config)):
        return _watch(landing, out_root, model, pattern, label_field, config)


def _watch(landing: str, out_root: str, model: str | None, pattern: str, label_field: str | None,
           config: dict[str, Any] | str | None) -> list[str]:
    log = get_run_logger()
    todo = pending_surveys(landing, out_root, pattern)
    log.info("%d new survey(s) in %s", len(todo), landing)
    unlabelled = []
    for s in todo:
        if is_delivery(s):
            d = read_manifest(s)  # a bad manifest fails here, before any work, naming it
            if d.labels is not None:
                survey_pipeline(d.survey, d.labels, str(as_path(out_root) / survey_name(s)),
                                label_field=d.label_field or label_field, classes=d.classes, config=config,
                                layers=d.layers)
            else:
                unlabelled.append(str(s))
            continue
        lab = labels_for(s)
        if lab is not None:
            survey_pipeline(str(s), str(lab), str(as_path(out_root) / survey_name(s)), label_field=label_field,
                            config=config)
        else:
            unlabelled.append(str(s))
    if unlabelled:
        if model is None:
            raise InputError(f"{len(unlabelled)} survey(s) have no labels and no model was given: {unlabelled}")
        backfill(unlabelled, model, out_root, config=config)
    return [str(s) for s in todo]


if __name__ == "__main__":
    import sys

    print(watch_landing(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
