"""Stage ``ingest``: any supported survey file, and the layers beside it, -> ``OUT/survey.zarr`` (field,
layers on the survey's cells, valid mask, CRS, scalings)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dask

from magpipe.config import RunConfig
from magpipe.errors import DataValidationError, InputError
from magpipe.io import schema as S
from magpipe.io.grids import read_grid
from magpipe.io.layers import Layer, layer_on_grid, resolve_layers
from magpipe.io.location import as_path, remote_errors
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, file_hash, is_complete, open_store, write_store
from magpipe.locking import locks_output

log = logging.getLogger("magpipe")


@locks_output
def run_ingest(out: str | Path, cfg: RunConfig) -> Path:
    """Read ``cfg.inputs.survey`` (and ``cfg.inputs.layers`` onto its cells) into OUT/survey.zarr; skipped
    when its files and options are unchanged.

    Returns
    -------
    The survey store: ``field`` (y, x) float32 in the survey's units (NaN = no data), one float32
    variable per layer, ``valid`` (y, x) uint8 (1 where the field and every layer have data), the CRS,
    and the standardisation of each grid in its attributes.

    Raises
    ------
    InputError
        If no survey is given or it cannot be read (to its end: a truncated file is caught here).
    DataValidationError
        If it is not a usable grid (see :func:`magpipe.io.grids.read_grid`), has no valid cell, or
        all its valid cells hold one value; or a layer cannot be put on its cells (no CRS, no overlap,
        a name given twice, no valid cell there).
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
    layers = resolve_layers(cfg.inputs.layers)
    sources = {}
    for layer in layers:
        with remote_errors(layer.path, kind=InputError):
            sources[layer.name] = {"source": layer.path.name, "band": layer.band, "resampling": layer.resampling,
                                   "source_hash": file_hash(layer.path)}
    # a survey without layers keeps the hash it always had
    h = content_hash("ingest-v1", source_hash, cfg.section_json("ingest"),
                     *([json.dumps(sources, sort_keys=True)] if sources else []))
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
    valid = field.notnull()
    for layer in layers:
        ds[layer.name] = layer_on_grid(layer, field, chunk_px=c.chunk_px)
        ds[layer.name].attrs = {"long_name": f"{layer.path.name}" + (f" band {layer.band}" if layer.band else "")
                                + f" on the survey's cells ({layer.resampling})"}
        valid = valid & ds[layer.name].notnull()
    ds[S.VALID] = valid.astype("uint8")
    ds[S.VALID].attrs = {"long_name": "1 where the survey" + (" and every layer" if layers else "") + " has data"}
    ds.attrs.update({S.SOURCE: survey.name, S.SOURCE_HASH: source_hash, S.SCALING_MEAN: scaling.mean,
                     S.SCALING_STD: scaling.std, S.CHUNK_PX: c.chunk_px,
                     S.CRS_WKT: field.rio.crs.to_wkt() if field.rio.crs else ""})
    if layers:
        ds.attrs.update({S.LAYERS: [layer.name for layer in layers], S.LAYER_SOURCES: sources})
    path = write_store(ds, lay.survey, stage_hash=h, shard_px=c.chunk_px,
                       summary=(lambda tmp: _layer_summary(tmp, layers)) if layers else None)
    log.info("ingest: %s -> %s (%d x %d cells, %.1f%% valid%s)", survey, lay.survey, field.sizes["y"],
             field.sizes["x"], 100 * float(open_store(path)[S.VALID].mean()),
             f"; {len(layers)} layers: {', '.join(layer.name for layer in layers)}" if layers else "")
    return path


def _layer_summary(store: Path, layers: list[Layer]) -> dict:
    """Each layer's robust scaling, read back from the written store, and one line saying what share of
    the survey's cells each layer removed (no data there). Refuses a layer with no valid cell, or a
    stack with no cell where every layer has data."""
    from magpipe.features import fit_robust_scaling

    ds = open_store(store, partial=True)
    scalings = {}
    for layer in layers:
        try:
            s = fit_robust_scaling(ds[layer.name])
        except ValueError:
            raise DataValidationError(f"{layer.path}: layer '{layer.name}' has no valid cell on the survey's "
                                      "cells (all no-data there)") from None
        scalings[layer.name] = [s.mean, s.std, s.clip]
    # one pass over the store counts the field's cells, each layer's losses and the cells left
    field_valid = ds[S.FIELD].notnull()
    counts = dask.compute(field_valid.sum().data, ds[S.VALID].sum().data,
                          *((field_valid & ds[layer.name].isnull()).sum().data for layer in layers))
    n_field, n_valid, lost = int(counts[0]), int(counts[1]), counts[2:]
    removed = [f"{layer.name} {100 * int(k) / max(n_field, 1):.1f} %" for layer, k in zip(layers, lost)]
    if not n_valid:
        raise DataValidationError(f"{layers[0].path.parent}: no cell of the survey has data in every layer "
                                  f"({', '.join(layer.name for layer in layers)})")
    log.info("ingest: share of the survey's cells each layer removed (no data there): %s", ", ".join(removed))
    return {S.LAYER_SCALINGS: scalings}
