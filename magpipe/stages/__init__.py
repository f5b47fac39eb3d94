"""The stages of a run, one module each: ``run_<stage>(out, cfg) -> path`` (evaluate returns the report).

Each stage reads its inputs from the run directory (:class:`magpipe.io.schema.Layout`) and
``cfg`` (inputs in ``cfg.inputs``), records ``cfg`` as ``OUT/config.json``, holds the
directory's writer lock, and skips its work when its output carries the content hash of
the same inputs and options. No stage module imports another: what two stages share lives in
the library (:mod:`magpipe.inputs`, :mod:`magpipe.selection`, :mod:`magpipe.resolve`, ...), and
:func:`magpipe.pipeline.run_all` composes them in this order:

==========  ==========================================================
ingest      survey file -> survey.zarr (field, valid, CRS, scaling)
labels      label file -> survey.zarr:labels
patch_size  under patches.patch_px: auto, the size that validates best -> patch_size.json
patches     training patches -> patches.zarr (derived input channels -> inputs.zarr on first use)
train       autoencoder + SVM -> model/
classify    every cell -> classified.zarr (class, confidence, anomaly)
evaluate    spatial holdouts -> report.json, report.md, figures
similar     similarity to a query -> similar.zarr, similar.png, similar.json
==========  ==========================================================
"""

import importlib

# Loaded on first use: a command that fails on its input (a missing file, a bad option) answers in a
# second instead of first importing torch, scikit-learn and Dask for stages it never reaches.
_STAGES = {f"run_{name}": f"magpipe.stages.{name}"
           for name in ("classify", "evaluate", "ingest", "labels", "patch_size", "patches", "similar", "train")}
__all__ = sorted(_STAGES)


def __getattr__(name: str):
    if name in _STAGES:
        return getattr(importlib.import_module(_STAGES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
