"""Classification as its own flow: tiles in parallel on a Dask cluster, progress in the UI."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows._artifacts import TileProgress
from flows._common import data_path, load_config, out_run_name as _out_run_name, run_context, survey_name, \
    tag_this_run
from magpipe.cluster import dask_client
from magpipe.io.stores import version
from magpipe.pipeline import run_classify


@flow(name="classify-survey", flow_run_name=_out_run_name, log_prints=True)
def classify_survey(out: str, config: dict[str, Any] | str | None = None, model: str | None = None,
                    scheduler: str | None = None, name: str | None = None) -> str:
    """Classify OUT/survey.zarr into OUT/classified.zarr with ``model`` (default OUT/model).

    Dask work goes straight to the cluster (``scheduler``, else a LocalCluster); Prefect tasks stay on
    threads, so Dask workers never start Prefect servers of their own.

    Args:
        out: the run directory holding survey.zarr (ingested), under the data root.
        config: the run's options: a dict of config sections, or a YAML/JSON path (classify.chunk_px, classify.device).
        model: a model bundle directory other than OUT/model (a backfill's).
        scheduler: address of a Dask scheduler; None starts a LocalCluster.
        name: the survey name that keys the progress artifact (default: the run directory's name).
    """
    out, model = data_path(out, "out"), data_path(model, "model")
    cfg = load_config(data_path(config, "config") if isinstance(config, str) else config)
    progress = TileProgress(name or survey_name(out))
    tag_this_run(survey_name(cfg.inputs.survey or out), "magpipe", f"magpipe-{version()}")
    address = scheduler or cfg.runtime.scheduler
    with run_context(cfg), \
            dask_client(address, workers=cfg.runtime.workers, gpu=cfg.classify.device != "cpu") as client:
        if address:  # a cluster that outlives the run: its dashboard is worth a link
            get_run_logger().info("Dask cluster: %s (dashboard %s)", address, client.dashboard_link)
        else:  # a LocalCluster gone with the run: no link that would soon be dead
            get_run_logger().info("Dask: a LocalCluster of %d workers for this run", cfg.runtime.workers)
        return str(run_classify(out, cfg, bundle=model, client=client, progress=progress))


if __name__ == "__main__":
    import sys

    classify_survey(sys.argv[1])
