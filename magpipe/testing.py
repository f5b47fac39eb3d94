"""Helpers for tests and examples: configs small enough for a whole run in seconds."""

from __future__ import annotations

from magpipe.config import RunConfig


def tiny_config(**sections: dict) -> RunConfig:
    """A complete run on a ~100 x 100 survey in a few seconds on 2 CPU cores."""
    base: dict = {
        "patches": {"patch_px": 9, "n_patches": 1200},
        "model": {"channels": [4, 8, 8, 8], "hidden": 32, "epochs": 3, "batch_size": 64},
        "svm": {"max_per_class": 150, "C": [1.0, 10.0], "gamma_scale": [1.0]},
        "evaluate": {"block_patches": 2, "splits": 2, "sparse_per_class": 10, "sparse_repeats": 3},
        "classify": {"chunk_px": 64, "anomaly_px": 3},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return RunConfig.model_validate(base)
