"""Stage ``classify``: every valid cell of the survey -> ``OUT/classified.zarr`` (class, confidence, anomaly).

Tiles run in parallel on Dask (or in this process), each reading its window of the inputs
plus a halo of p // 2; the store is resumable tile by tile and complete-or-absent
(:func:`magpipe.tiling.write_tiles`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from magpipe.bundle import verify_bundle
from magpipe.classify import classify_tile
from magpipe.config import RunConfig
from magpipe.errors import DataValidationError
from magpipe.io import schema as S
from magpipe.io.location import absolute, as_path
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, open_store
from magpipe.locking import locks_output
from magpipe.stages.inputs import input_stack
from magpipe.tiling import output_template, write_tiles


def classified_variables(classes: list[str]) -> dict[str, tuple[str, float, dict]]:
    """The variables of classified.zarr: name -> (dtype, fill value, attrs).

    ``class`` int16 (0 = no data, code k named ``classes[k - 1]``, also as CF flag attributes so GIS
    tools can label it), ``confidence`` float32 probability of the class (0..1, NaN = no data),
    ``anomaly`` float32 reconstruction error in squared standardised units (NaN = no data).
    """
    return {
        "class": ("int16", S.NODATA_CLASS, {"long_name": "class code (see flag_values / flag_meanings)",
                                            "nodata": S.NODATA_CLASS,
                                            "flag_values": list(range(1, len(classes) + 1)),
                                            "flag_meanings": " ".join(c.replace(" ", "_") for c in classes)}),
        "confidence": ("float32", np.nan, {"long_name": "probability of the predicted class", "units": "1"}),
        "anomaly": ("float32", np.nan, {"long_name": "autoencoder reconstruction error (MSE, standardised units)"}),
    }


@locks_output
def run_classify(out: str | Path, cfg: RunConfig, *, bundle: str | Path | None = None, client=None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Classify OUT/survey.zarr with ``bundle`` (default OUT/model) into OUT/classified.zarr.

    Parameters
    ----------
    out : the run directory.
    cfg : the run config; ``classify.chunk_px`` is the tile side in cells.
    bundle : a model bundle directory other than the run's own.
    client : a ``distributed.Client`` whose workers run the tiles, or None for this process.
    progress : called with (tiles done, tiles in all) as tiles finish.

    Returns
    -------
    ``OUT/classified.zarr``: ``class``, ``confidence`` and ``anomaly`` (y, x) on the survey's grid
    (see :func:`classified_variables`).
    """
    lay = Layout(out)
    cfg.save(lay.config)
    return classify_into(lay, as_path(bundle) if bundle else lay.model, lay.classified, tile_px=cfg.classify.chunk_px,
                         client=client, progress=progress)


def classify_into(lay: Layout, bundle_path: Path, dest: Path, *, tile_px: int, client=None,
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """Classify the run ``lay``'s survey with the bundle at ``bundle_path`` into the store ``dest``
    (``OUT/classified.zarr`` for the stage; any path for a comparison), resuming a partial one.

    ``tile_px`` is the tile side in cells. Returns ``dest``; raises DataValidationError when the
    survey is smaller than one patch.
    """
    survey = open_store(lay.survey)
    # checked here, before any tile; the weights load in the workers (2 s of a 9 s 1k-survey run, in the driver)
    meta = verify_bundle(bundle_path)
    input_stack(lay, tuple(meta["inputs"]))  # derived inputs of this survey, written once
    shape = (survey.sizes["y"], survey.sizes["x"])
    if min(shape) < meta["patch_px"]:
        raise DataValidationError(f"{lay.survey}: survey of {shape[0]} x {shape[1]} cells is smaller than the "
                                  f"model's {meta['patch_px']} px patch ({bundle_path})")
    h = content_hash("classify-v1", str(survey.attrs.get(S.HASH)), str(meta.get("input_hash")), str(tile_px),
                     str(meta["anomaly_px"]))
    template = output_template(survey, classified_variables(meta["classes"]), tile_px)
    tile_fn = functools.partial(classify_tile, absolute(lay.root), absolute(bundle_path))
    return write_tiles(dest, template, tile_fn, stage_hash=h, tile_px=tile_px, client=client, progress=progress,
                       name="classify", attrs={S.SOURCE: lay.survey.name, S.CLASSES: meta["classes"]})
