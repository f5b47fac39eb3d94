"""Stage ``ingest``: any supported survey file -> ``OUT/survey.zarr`` (field, valid mask, CRS, scaling)."""

from __future__ import annotations

import logging
from pathlib import Path

from magpipe.config import RunConfig
from magpipe.errors import DataValidationError, InputError
from magpipe.io import schema as S
from magpipe.io.grids import read_grid
from magpipe.io.location import as_path, remote_errors
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, file_hash, is_complete, write_store
from magpipe.locking import locks_output

log = logging.getLogger("magpipe")


@locks_output
def run_ingest(out: str | Path, cfg: RunConfig) -> Path:
    """Read ``cfg.inputs.survey`` into OUT/survey.zarr; skipped when its file and options are unchanged.

    Returns
    -------
    The survey store: ``field`` (y, x) float32 in the survey's units (NaN = no data), ``valid``
    (y, x) uint8, the CRS, and the field's standardisation in its attributes.

    Raises
    ------
    InputError
        If no survey is given or it cannot be read (to its end: a truncated file is caught here).
    DataValidationError
        If it is not a usable grid (see :func:`magpipe.io.grids.read_grid`), has no valid cell, or
        all its valid cells hold one value.
    """
    lay = Layout(out)
    if cfg.inputs.survey is None:
        raise InputError("no survey given (inputs.survey)")
    survey = as_path(cfg.inputs.survey)
    cfg.save(lay.config)
    with remote_errors(survey, kind=InputError):
        if not survey.exists():
            raise InputError(f"{survey}: file not found")
        source_hash = file_hash(survey)  # the survey is read for its hash once per stage
    h = content_hash("ingest-v1", source_hash, cfg.section_json("ingest"))
    if is_complete(lay.survey, h):
        log.info("ingest: %s is up to date", lay.survey)
        return lay.survey
    c = cfg.ingest
    field = read_grid(survey, nodata=c.nodata, band=c.band, variable=c.variable, spacing=c.spacing, crs=c.crs,
                      chunk_px=c.chunk_px)
    from magpipe.features import fit_scaling  # torch: imported once the input is known to be readable

    try:  # reads every cell once, before anything is written: a file cut short fails here
        scaling = fit_scaling(field)
    except ValueError:
        raise DataValidationError(f"{survey}: has no valid cells (all no-data)") from None
    except (OSError, RuntimeError) as exc:  # rasterio's read errors are OSErrors, netCDF's RuntimeErrors
        raise InputError(f"{survey}: cannot be read to its end ({str(exc).splitlines()[0][:120]}); the file "
                         "may be truncated or corrupt") from None
    if scaling.std < 1e-9:
        raise DataValidationError(f"{survey}: every valid cell has the same value; nothing to learn")
    ds = field.to_dataset()
    ds[S.VALID] = field.notnull().astype("uint8")
    ds[S.VALID].attrs = {"long_name": "1 where the survey has data"}
    ds.attrs.update({S.SOURCE: survey.name, S.SOURCE_HASH: source_hash, S.SCALING_MEAN: scaling.mean,
                     S.SCALING_STD: scaling.std, S.CHUNK_PX: c.chunk_px,
                     S.CRS_WKT: field.rio.crs.to_wkt() if field.rio.crs else ""})
    log.info("ingest: %s -> %s (%d x %d cells, %.1f%% valid)", survey, lay.survey, field.sizes["y"],
             field.sizes["x"], 100 * float(ds[S.VALID].mean()))
    return write_store(ds, lay.survey, stage_hash=h, shard_px=c.chunk_px)
