"""magpipe: classify magnetic survey grids with autoencoder features and an SVM.

The stages are plain functions of (inputs, output directory, config); see
:mod:`magpipe.pipeline`. Nothing here imports Prefect: flows live in ``flows/``.
"""

from importlib.metadata import PackageNotFoundError, version

from magpipe.config import RunConfig
from magpipe.errors import ConfigError, DataValidationError, InputError, MagpipeError, StorageError
from magpipe.pipeline import (
    Layout,
    run_all,
    run_classify,
    run_evaluate,
    run_ingest,
    run_labels,
    run_patches,
    run_train,
)

try:
    __version__ = version("magpipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "ConfigError",
    "DataValidationError",
    "InputError",
    "Layout",
    "MagpipeError",
    "RunConfig",
    "StorageError",
    "run_all",
    "run_classify",
    "run_evaluate",
    "run_ingest",
    "run_labels",
    "run_patches",
    "run_train",
    "__version__",
]
