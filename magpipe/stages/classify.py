"""Stage ``classify``: every valid cell of the survey -> ``OUT/classified.zarr`` (class, confidence, anomaly).

Tiles run in parallel on Dask (or in this process), each reading its window of the inputs
plus a halo of p // 2; the store is resumable tile by tile and complete-or-absent
(:func:`magpipe.tiling.write_tiles`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from magpipe.bundle import verify_bundle
from magpipe.classify import ClassifyTile
from magpipe.config import RunConfig
from magpipe.errors import DataValidationError, DeviceError
from magpipe.inputs import input_stack
from magpipe.io import schema as S
from magpipe.io.location import absolute, as_path
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, open_store
from magpipe.locking import locks_output
from magpipe.tiling import capable_workers, output_template, write_tiles


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
        "confidence": ("float32", np.nan, {"long_name": "calibrated probability that the class is right", "units": "1"}),
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
    check_device(cfg.classify.device, client)  # before the config is saved with it
    cfg.save(lay.config)
    return classify_into(lay, as_path(bundle) if bundle else lay.model, lay.classified, tile_px=cfg.classify.chunk_px,
                         client=client, progress=progress, device=cfg.classify.device,
                         overlap=cfg.classify.overlaps_io())


def classify_into(lay: Layout, bundle_path: Path, dest: Path, *, tile_px: int, client=None,
                  progress: Callable[[int, int], None] | None = None, device: str = "cpu",
                  overlap: bool | None = None) -> Path:
    """Classify the run ``lay``'s survey with the bundle at ``bundle_path`` into the store ``dest``
    (``OUT/classified.zarr`` for the stage; any path for a comparison), resuming a partial one.

    ``tile_px`` is the tile side in cells; ``device`` the torch device of the tiles (``cuda``: with a
    client, only on workers declaring a ``GPU`` resource). A GPU's store is not resumed on the CPU nor
    the reverse: their numbers agree to float rounding, not bit for bit. ``overlap`` reads the next tiles
    while one computes and writes from a pool (:func:`magpipe.tiling.overlapped`; None: on a GPU only); the
    maps are the same either way. Returns ``dest``; raises
    DataValidationError when the survey is smaller than one patch, DeviceError when no GPU is there.
    """
    survey = open_store(lay.survey)
    # checked here, before any tile; the weights load in the workers (2 s of a 9 s 1k-survey run, in the driver)
    meta = verify_bundle(bundle_path)
    input_stack(lay, tuple(meta["inputs"]))  # derived inputs of this survey, written once
    shape = (survey.sizes["y"], survey.sizes["x"])
    if min(shape) < meta["patch_px"]:
        raise DataValidationError(f"{lay.survey}: survey of {shape[0]} x {shape[1]} cells is smaller than the "
                                  f"model's {meta['patch_px']} px patch ({bundle_path})")
    gpu = device != "cpu"
    resources = check_device(device, client)
    h = content_hash("classify-v1", str(survey.attrs.get(S.HASH)), str(meta.get("input_hash")), str(tile_px),
                     str(meta["anomaly_px"]), *(["gpu"] if gpu else []))
    template = output_template(survey, classified_variables(meta["classes"]), tile_px)
    tile_fn = ClassifyTile(absolute(lay.root), absolute(bundle_path), device)
    return write_tiles(dest, template, tile_fn, stage_hash=h, tile_px=tile_px, client=client, progress=progress,
                       name="classify", attrs={S.SOURCE: lay.survey.name, S.CLASSES: meta["classes"]},
                       resources=resources, overlap=gpu if overlap is None else overlap)


def check_device(device: str, client) -> dict[str, float] | None:
    """The Dask resources a tile on ``device`` needs: None on the CPU; ``{"GPU": 1}`` on a GPU, after
    checking that some worker of ``client`` declares a GPU, or without a client that torch sees one here.
    Raises DeviceError otherwise."""
    if device == "cpu":
        return None
    if client is None:
        import torch

        if not torch.cuda.is_available():
            raise DeviceError("classify.device is cuda, but torch sees no CUDA device in this process; "
                              "classify on 'cpu'")
        return None
    if not capable_workers(client, {"GPU": 1}):
        workers = client.scheduler_info().get("workers", {})
        raise DeviceError(f"classify.device is cuda, but no worker of the Dask cluster ({len(workers)} workers) "
                          "declares a GPU resource: start one worker per GPU with `dask worker ADDRESS "
                          "--nthreads 1 --resources GPU=1` (CUDA_VISIBLE_DEVICES=i for the i-th), or classify on 'cpu'")
    return {"GPU": 1}
