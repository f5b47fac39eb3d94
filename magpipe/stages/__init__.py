"""The stages of a run, one module each: ``run_<stage>(out, cfg) -> path`` (evaluate returns the report).

Each stage reads its inputs from the run directory (:class:`magpipe.io.schema.Layout`) and
``cfg`` (inputs in ``cfg.inputs``), records ``cfg`` as ``OUT/config.json``, holds the
directory's writer lock, and skips its work when its output carries the content hash of
the same inputs and options.

==========  ==========================================================
ingest      survey file -> survey.zarr (field, valid, CRS, scaling)
labels      label file -> survey.zarr:labels
inputs      derived channels -> inputs.zarr (called by the stages that read inputs)
patch_size  under patches.patch_px: auto, the size that validates best -> patch_size.json (run by patches)
patches     training patches -> patches.zarr
train       autoencoder + SVM -> model/
classify    every cell -> classified.zarr (class, confidence, anomaly)
evaluate    spatial holdouts -> report.json, report.md, figures
similar     similarity to a query -> similar.zarr, similar.png, similar.json
==========  ==========================================================
"""

from magpipe.stages.classify import run_classify
from magpipe.stages.evaluate import run_evaluate
from magpipe.stages.ingest import run_ingest
from magpipe.stages.labels import run_labels
from magpipe.stages.patches import run_patches
from magpipe.stages.similar import run_similar
from magpipe.stages.train import run_train

__all__ = ["run_classify", "run_evaluate", "run_ingest", "run_labels", "run_patches", "run_similar", "run_train"]
