"""Training as its own flow, so a deployment can send it to the GPU work pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows._common import load_config, out_run_name as _out_run_name
from magpipe.pipeline import Layout, run_train

DEPLOYMENT = "train-autoencoder/train-autoencoder"


@flow(name="train-autoencoder", flow_run_name=_out_run_name, log_prints=True, persist_result=True)
def train_autoencoder(out: str, config: dict[str, Any] | str | None = None) -> str:
    """Train the autoencoder and SVM of the run in ``out`` (patches and labels already there)."""
    log = get_run_logger()
    cfg = load_config(config)

    def epoch(row: dict) -> None:
        log.info("epoch %d: train %.4f, val %.4f", row["epoch"], row["train_loss"], row["val_loss"])

    model = run_train(out, cfg, progress=epoch)
    return str(model)


def train_remote_or_local(out: str, config: dict[str, Any] | str | None) -> str:
    """Run training through its deployment (the GPU pool) when one exists, else in this process."""
    from prefect.deployments import run_deployment

    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(DEPLOYMENT)
    except Exception:
        return train_autoencoder(out, config)
    run = run_deployment(DEPLOYMENT, parameters={"out": out, "config": config}, timeout=None)
    if not run.state or not run.state.is_completed():
        raise RuntimeError(f"training deployment run {run.name} ended {run.state.name if run.state else 'unknown'}: "
                           f"{run.state.message if run.state else ''}")
    return str(Layout(Path(out)).model)  # the run wrote it there; its result need not be persisted


if __name__ == "__main__":
    import sys

    train_autoencoder(sys.argv[1])
