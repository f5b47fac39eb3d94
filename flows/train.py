"""Training as its own flow, so a deployment can send it to the GPU work pool."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows._common import load_config, out_run_name as _out_run_name, run_context, survey_name, tag_this_run
from magpipe.bundle import read_bundle_meta
from magpipe.errors import OrchestrationError
from magpipe.io.schema import Layout
from magpipe.io.stores import version
from magpipe.pipeline import run_train

DEPLOYMENT = "train-autoencoder/train-autoencoder"


@flow(name="train-autoencoder", flow_run_name=_out_run_name, log_prints=True, persist_result=True)
def train_autoencoder(out: str, config: dict[str, Any] | str | None = None) -> str:
    """Train the autoencoder and SVM of the run in ``out`` (patches and labels already there).

    Args:
        out: the run directory holding survey.zarr and patches.zarr, under the data root.
        config: the run's options: a dict of config sections, or a YAML/JSON path (model.*, svm.*).
    """
    log = get_run_logger()
    cfg = load_config(config)
    if cfg.inputs.survey:
        tag_this_run(survey_name(cfg.inputs.survey), "magpipe", f"magpipe-{version()}")

    def epoch(row: dict) -> None:
        log.info("epoch %d: train %.4f, val %.4f", row["epoch"], row["train_loss"], row["val_loss"])

    with run_context(cfg):
        model = run_train(out, cfg, progress=epoch)
    # where training ran, beside the deployment's pool tag ("gpu" says where it was sent, not what it found)
    device = read_bundle_meta(model).get("training", {}).get("device", "unknown")
    tag_this_run(f"trained-on-{str(device).split(':')[0]}")
    return str(model)


def train_remote_or_local(out: str, config: dict[str, Any]) -> tuple[str, str]:
    """Train through the deployment (the GPU pool) when it exists, else in this process.

    Returns the model path and where it was trained ("on the <deployment> deployment" or
    "locally: ..."). Only a missing deployment falls back to local training, and says so in
    the log; any other failure to reach the API fails the run rather than silently becoming
    hours of CPU work.
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(DEPLOYMENT)
    except ObjectNotFound:
        where = f"locally: no deployment {DEPLOYMENT} (the GPU pool's) on this Prefect API"
        get_run_logger().warning("training %s", where)
        return train_autoencoder(out, config), where
    run = run_deployment(DEPLOYMENT, parameters={"out": out, "config": config}, timeout=None)
    if not run.state or not run.state.is_completed():
        raise OrchestrationError(f"training deployment run {run.name} ended "
                                 f"{run.state.name if run.state else 'unknown'}: "
                                 f"{run.state.message if run.state else ''}")
    return str(Layout(out).model), f"on the {DEPLOYMENT} deployment"  # the run wrote it there


if __name__ == "__main__":
    import sys

    train_autoencoder(sys.argv[1])
