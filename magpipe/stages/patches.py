"""Stage ``patches``: sample training patches from valid areas -> ``OUT/patches.zarr``."""

from __future__ import annotations

import logging
from pathlib import Path

import xarray as xr

from magpipe.config import RunConfig
from magpipe.inputs import model_inputs, training_patches
from magpipe.io import schema as S
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, is_complete, open_store, write_store
from magpipe.io.survey import survey_attrs
from magpipe.locking import locks_output
from magpipe.resolve import resolved_config

log = logging.getLogger("magpipe")


@locks_output
def run_patches(out: str | Path, cfg: RunConfig) -> Path:
    """Cut ``patches.n_patches`` raw patches centred on valid cells; skipped when survey and options are unchanged.

    Returns
    -------
    The patches store: ``patch`` (n, C, p, p) float32 raw values of the C inputs (NaN = no data),
    and each patch's centre as ``row``, ``col`` (cells) and ``x``, ``y`` (survey CRS).

    With ``patches.patch_px: auto`` the patch-size stage chooses the size first
    (:func:`magpipe.stages.patch_size.run_patch_size`); this stage reads its choice.

    Raises
    ------
    DataValidationError
        If the survey is smaller than one patch, no cell's patch is valid enough, or ``auto`` has no
        chosen size yet.
    """
    lay = Layout(out)
    cfg.save(lay.config)
    cfg = resolved_config(lay, cfg)
    c = cfg.patches
    attrs = survey_attrs(lay.survey)
    h = content_hash("patches-v1", attrs[S.HASH], cfg.section_json("patches"))
    if is_complete(lay.patches, h):
        log.info("patches: %s is up to date", lay.patches)
        return lay.patches
    survey = open_store(lay.survey)
    rows, cols, raw = training_patches(lay, c)
    names = model_inputs(lay, c)
    ds = xr.Dataset(
        {"patch": (("patch", "channel", "py", "px"), raw,
                   {"long_name": f"raw values of {', '.join(names)}, NaN = no data"}),
         "row": ("patch", rows.astype("int64")), "col": ("patch", cols.astype("int64")),
         "x": ("patch", survey.x.values[cols]), "y": ("patch", survey.y.values[rows])},
        attrs={S.PATCH_PX: c.patch_px, S.SURVEY_HASH: attrs[S.HASH], S.INPUTS: list(names)},
    )
    log.info("patches: %d patches of %d px -> %s", len(rows), c.patch_px, lay.patches)
    enc = {"patch": {"chunks": (min(len(rows), 4096), *raw.shape[1:])}}
    return write_store(ds, lay.patches, stage_hash=h, encoding=enc)
