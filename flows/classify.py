"""Classification as its own flow: tiles in parallel on a Dask cluster, progress in the UI."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows._artifacts import TileProgress
from flows._common import data_path, load_config, out_run_name as _out_run_name, survey_name
from magpipe.cluster import dask_client
from magpipe.pipeline import run_classify


@flow(name="classify-survey", flow_run_name=_out_run_name, log_prints=True)
def classify_survey(out: str, config: dict[str, Any] | str | None = None, model: str | None = None,
                    scheduler: str | None = None, name: str | None = None) -> str:
    """Classify OUT/survey.zarr into OUT/classified.zarr with ``model`` (default OUT/model).

    ``name`` keys the progress artifact (default: the run directory's name). Dask work goes straight to the cluster (``scheduler``, else a LocalCluster); Prefect
    tasks stay on threads, so Dask workers never start Prefect servers of their own.
    """
    out, model = data_path(out, "out"), data_path(model, "model")
    cfg = load_config(data_path(config, "config") if isinstance(config, str) else config)
    progress = TileProgress(name or survey_name(out))
    with dask_client(scheduler or cfg.runtime.scheduler, workers=cfg.runtime.workers) as client:
        get_run_logger().info("Dask cluster: %s", client.dashboard_link or client.scheduler.address)
        return str(run_classify(out, cfg, bundle=model, client=client, progress=progress))


if __name__ == "__main__":
    import sys

    classify_survey(sys.argv[1])
