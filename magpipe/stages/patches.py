"""Stage ``patches``: sample training patches from valid areas -> ``OUT/patches.zarr``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import xarray as xr

from magpipe.config import PatchConfig, RunConfig
from magpipe.errors import DataValidationError
from magpipe.io import schema as S
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, is_complete, open_store, write_store
from magpipe.io.survey import read_valid, survey_attrs, survey_shape
from magpipe.locking import locks_output
from magpipe.patches import sample_centres, stack_patches
from magpipe.stages.inputs import input_stack

log = logging.getLogger("magpipe")


@locks_output
def run_patches(out: str | Path, cfg: RunConfig) -> Path:
    """Cut ``patches.n_patches`` raw patches centred on valid cells; skipped when survey and options are unchanged.

    Returns
    -------
    The patches store: ``patch`` (n, C, p, p) float32 raw values of the C inputs (NaN = no data),
    and each patch's centre as ``row``, ``col`` (cells) and ``x``, ``y`` (survey CRS).

    With ``patches.patch_px: auto`` the size is chosen first (:mod:`magpipe.stages.patch_size`).

    Raises
    ------
    DataValidationError
        If the survey is smaller than one patch, or no cell's patch is valid enough.
    """
    lay = Layout(out)
    cfg.save(lay.config)
    if cfg.patches.patch_px == "auto":
        from magpipe.stages.patch_size import choose_patch_size  # it trains encoders: loaded only when asked

        cfg = choose_patch_size(lay, cfg)
    c = cfg.patches
    attrs = survey_attrs(lay.survey)
    h = content_hash("patches-v1", attrs[S.HASH], cfg.section_json("patches"))
    if is_complete(lay.patches, h):
        log.info("patches: %s is up to date", lay.patches)
        return lay.patches
    survey = open_store(lay.survey)
    rows, cols, raw = training_patches(lay, c)
    ds = xr.Dataset(
        {"patch": (("patch", "channel", "py", "px"), raw,
                   {"long_name": f"raw values of {', '.join(c.inputs)}, NaN = no data"}),
         "row": ("patch", rows.astype("int64")), "col": ("patch", cols.astype("int64")),
         "x": ("patch", survey.x.values[cols]), "y": ("patch", survey.y.values[rows])},
        attrs={S.PATCH_PX: c.patch_px, S.SURVEY_HASH: attrs[S.HASH], S.INPUTS: list(c.inputs)},
    )
    log.info("patches: %d patches of %d px -> %s", len(rows), c.patch_px, lay.patches)
    enc = {"patch": {"chunks": (min(len(rows), 4096), *raw.shape[1:])}}
    return write_store(ds, lay.patches, stage_hash=h, encoding=enc)


def with_patch_px(cfg: RunConfig, patch_px: int) -> RunConfig:
    """``cfg`` with another patch size."""
    return cfg.model_copy(update={"patches": cfg.patches.model_copy(update={"patch_px": patch_px})})


def patch_size_record(lay: Layout) -> dict:
    """``OUT/patch_size.json``, the choice of ``patches.patch_px: auto`` and its validation table; {} if none."""
    try:
        record = json.loads(lay.patch_size.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def resolved_config(lay: Layout, cfg: RunConfig) -> RunConfig:
    """``cfg`` with a concrete patch size: as given, or under ``auto`` the size the patches stage chose
    (``OUT/patch_size.json``). Raises DataValidationError when ``auto`` has not been resolved yet."""
    if cfg.patches.patch_px != "auto":
        return cfg
    try:
        chosen = int(patch_size_record(lay)["chosen"])
    except (KeyError, TypeError, ValueError):
        raise DataValidationError(f"{lay.patch_size}: no patch size chosen yet for patches.patch_px: auto; "
                                  "run the patches stage (magpipe train) first") from None
    return with_patch_px(cfg, chosen)


def training_patches(lay: Layout, c: PatchConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (rows, cols) and raw patches (n, C, p, p) of the run's inputs ``c.inputs``, sampled from
    cells whose patch is at least ``c.min_valid_fraction`` valid; deterministic for ``c.seed``.

    Rows and columns are (n,) int64, the patches float32 in each input's units, NaN = no data.
    Raises DataValidationError when the survey is smaller than a patch or no centre qualifies.
    """
    ny, nx = survey_shape(lay.survey)
    if min(ny, nx) < c.patch_px:
        raise DataValidationError(
            f"{lay.survey}: survey of {ny} x {nx} cells is smaller than one {c.patch_px} px patch; "
            "use a smaller --patch-size"
        )
    try:
        rows, cols = sample_centres(read_valid(lay.survey), patch_px=c.patch_px, n=c.n_patches,
                                    min_valid_fraction=c.min_valid_fraction, seed=c.seed)
    except ValueError as exc:
        raise DataValidationError(f"{lay.survey}: {exc}") from None
    arrays, _ = input_stack(lay, c.inputs)
    return rows, cols, stack_patches(arrays, rows, cols, c.patch_px)
