"""magpipe: classify magnetic survey grids with autoencoder features and an SVM.

The stages are plain functions of (output directory, config); see
:mod:`magpipe.stages`, composed by :func:`magpipe.pipeline.run_all`. Nothing here imports Prefect: flows live in ``flows/``.
Names are imported on first use, so ``import magpipe.model`` stays light (torch only).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("magpipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "RunConfig": "magpipe.config",
    "MagpipeError": "magpipe.errors",
    "ConfigError": "magpipe.errors",
    "InputError": "magpipe.errors",
    "DataValidationError": "magpipe.errors",
    "StorageError": "magpipe.errors",
    "Layout": "magpipe.io.schema",
    "run_all": "magpipe.pipeline",
    "run_ingest": "magpipe.pipeline",
    "run_labels": "magpipe.pipeline",
    "run_patch_size": "magpipe.pipeline",
    "run_patches": "magpipe.pipeline",
    "run_train": "magpipe.pipeline",
    "run_classify": "magpipe.pipeline",
    "run_evaluate": "magpipe.pipeline",
    "run_similar": "magpipe.pipeline",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'magpipe' has no attribute {name!r}")
