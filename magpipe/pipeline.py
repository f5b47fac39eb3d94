"""A whole run: the stages of :mod:`magpipe.stages` in order. This module only composes them.

Each stage skips itself when its output carries the content hash of the same inputs and
options, so re-running a finished run is cheap and changing one option recomputes only
what depends on it. Paths of a run: :class:`magpipe.io.schema.Layout`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

from magpipe.config import RunConfig
from magpipe.explore import require_embedding
from magpipe.io.schema import Layout
from magpipe.io.stores import check_output_path
from magpipe.locking import locks_output
from magpipe import stages

__all__ = ["Layout", "run_all", "run_classify", "run_evaluate", "run_ingest", "run_labels", "run_patch_size",
           "run_patches", "run_similar", "run_train"]


def __getattr__(name: str):
    """The stage functions, each imported on first use (see :mod:`magpipe.stages`)."""
    if name in stages.__all__:
        return getattr(stages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@locks_output
def run_all(out: str | Path, cfg: RunConfig, *, client=None,
            cluster: Callable[[], ContextManager] | None = None) -> dict:
    """Every stage of a run of ``cfg.inputs`` into ``out``, in order; returns the report.

    ``client`` (a ``distributed.Client``) runs the classification tiles and the evaluation's splits; None
    runs them here. Or ``cluster``, a function returning a context manager that yields a client: it is
    entered only for classification and evaluation, so bad input fails before a cluster starts and the
    cluster's workers hold no memory while the model trains.
    """
    check_output_path(Layout(out).survey)
    require_embedding(cfg.evaluate.embedding)  # the report's last step: refused now, not after the training
    stages.run_ingest(out, cfg)
    stages.run_labels(out, cfg)
    stages.run_patch_size(out, cfg)
    stages.run_patches(out, cfg)
    stages.run_train(out, cfg)
    with cluster() if cluster is not None else contextlib.nullcontext(client) as tiles_client:
        stages.run_classify(out, cfg, client=tiles_client)
        return stages.run_evaluate(out, cfg, client=tiles_client)
