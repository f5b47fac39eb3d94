"""The grids the model reads from a run, derived channels written once per survey, and training
patches cut from them.

The model reads ``patches.inputs`` (``field`` and any of ``magpipe.derived.CHANNELS``, computed from
the magnetic field only) followed by every layer of the survey's stack (:func:`model_inputs`).
Derived channels are computed into ``OUT/inputs.zarr``, chunk by chunk with an overlap of
:data:`DEPTH_PX` cells on the survey's fixed chunk grid, so memory stays flat whatever the
survey size and every cell's value is the same whichever tile later reads it.
"""

from __future__ import annotations

import logging

import dask
import dask.array as da
import numpy as np
import xarray as xr

from magpipe.config import PatchConfig
from magpipe.derived import CHANNELS, derived_channels
from magpipe.errors import DataValidationError, InputError
from magpipe.features import Scaling, StackScaling, fit_scaling
from magpipe.io import schema as S
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, is_complete, open_array, open_store, store_attrs, write_store
from magpipe.io.survey import open_inputs, read_valid, require_layers, survey_attrs, survey_layers, survey_shape
from magpipe.patches import sample_centres, stack_patches
from magpipe.tiling import tiles

log = logging.getLogger("magpipe")

DEPTH_PX = 64  # overlap each chunk's FFT sees beyond its edges


def model_inputs(lay: Layout, c: PatchConfig) -> tuple[str, ...]:
    """The grids a new model reads, in channel order: ``c.inputs``, then the survey's layers."""
    return tuple(c.inputs) + survey_layers(lay.survey)


def input_stack(lay: Layout, names: tuple[str, ...]) -> tuple[list, StackScaling]:
    """The run's input grids ``names`` (derived ones written on first use) and their scalings.

    Returns
    -------
    arrays : C 2-D arrays (y, x), lazily read, in the order of ``names``.
    scaling : their standardisation.
    """
    try:
        scaling = ensure_inputs(lay, tuple(names))
    except ImportError as exc:
        raise InputError(f"{lay.survey}: inputs {list(names)}: {exc}") from None
    return open_inputs(lay, tuple(names)), scaling


IN_MEMORY_BYTES = 256 * 2**20  # input grids up to this size, all channels together, are read into memory once


def in_memory(arrays: list, max_bytes: int = IN_MEMORY_BYTES) -> list:
    """The input grids as numpy arrays when together they hold at most ``max_bytes``, else as they are (read
    lazily). Evaluation cuts tens of thousands of patches, each window a store read when the grids stay
    in the store; a survey that fits in memory is read once instead. The values are the same either way."""
    if sum(a.size * np.dtype(a.dtype).itemsize for a in arrays) > max_bytes:
        return arrays
    return [np.asarray(a[...]) for a in arrays]


def ensure_inputs(lay: Layout, names: tuple[str, ...]) -> StackScaling:
    """Write the derived channels among ``names`` into inputs.zarr (if not up to date); their scalings.

    Returns one :class:`~magpipe.features.Scaling` per name, in order, each in its channel's units;
    the field's and the layers' are the ones fitted at ingest.
    """
    require_layers(lay.survey, names)
    attrs = survey_attrs(lay.survey)
    scalings = {S.FIELD: Scaling(attrs[S.SCALING_MEAN], attrs[S.SCALING_STD])}
    scalings.update({n: Scaling(*v) for n, v in attrs.get(S.LAYER_SCALINGS, {}).items()})
    derived = sorted(n for n in names if n in CHANNELS and n != S.FIELD)
    if derived:
        if not _holds(lay, str(attrs[S.HASH]), derived):
            _write_derived(lay, derived, scalings[S.FIELD].mean, int(attrs.get(S.CHUNK_PX, 1024)),
                           str(attrs[S.HASH]))
        saved = (store_attrs(lay.inputs) or {})[S.SCALINGS]
        scalings.update({n: Scaling(*saved[n]) for n in derived})
    return StackScaling(tuple(scalings[n] for n in names))


def _holds(lay: Layout, survey_hash: str, derived: list[str]) -> bool:
    """inputs.zarr is complete, made from this survey with this overlap, and holds every channel asked for
    (it may hold more: a run of fewer channels reuses it)."""
    attrs = store_attrs(lay.inputs) or {}
    return (is_complete(lay.inputs) and attrs.get(S.SURVEY_HASH) == survey_hash
            and attrs.get(S.DEPTH_PX) == DEPTH_PX and set(derived) <= set(attrs.get(S.CHANNELS, [])))


def _write_derived(lay: Layout, derived: list[str], fill: float, chunk: int, survey_hash: str) -> None:
    """One task per chunk of the survey's fixed grid computes every channel; each channel's array
    takes its slice of that task's result, so the filters run once per chunk."""
    field = open_store(lay.survey)[S.FIELD]
    dy = float(abs(field.y[1] - field.y[0])) if field.sizes["y"] > 1 else 1.0
    dx = float(abs(field.x[1] - field.x[0])) if field.sizes["x"] > 1 else 1.0
    stacks = {t: dask.delayed(_derived_chunk)(str(lay.survey), t, tuple(derived), dy, dx, fill)
              for t in tiles(field.shape, chunk)}
    y_edges = sorted({t[0] for t in stacks})
    ds = xr.Dataset(coords={k: v for k, v in field.coords.items()})
    for c, name in enumerate(derived):
        rows = [[da.from_delayed(stacks[t][c], shape=(t[1] - t[0], t[3] - t[2]), dtype="float32")
                 for t in stacks if t[0] == y0] for y0 in y_edges]
        ds[name] = xr.DataArray(da.block(rows), dims=field.dims, coords=field.coords, name=name)
    ds.attrs.update({S.CHANNELS: derived, S.DEPTH_PX: DEPTH_PX, S.SURVEY_HASH: survey_hash})
    log.info("inputs: derived channels %s -> %s", ", ".join(derived), lay.inputs)
    h = content_hash("inputs-v1", survey_hash, ",".join(derived), str(DEPTH_PX))
    write_store(ds, lay.inputs, stage_hash=h, shard_px=chunk, summary=lambda tmp: _scalings(tmp, derived))


def _derived_chunk(survey: str, tile: tuple[int, int, int, int], names: tuple[str, ...], dy: float, dx: float,
                   fill: float) -> np.ndarray:
    """All derived channels of one chunk, (C, h, w), filtered with up to DEPTH_PX cells around it.

    The window is clipped at the survey's edges (never padded), so edge chunks filter what the whole
    grid would; one filter pass serves every channel (tilt and asa reuse dz and the gradients).
    """
    y0, y1, x0, x1 = tile
    field = open_array(survey, S.FIELD)
    ny, nx = field.shape
    ry0, ry1, rx0, rx1 = max(0, y0 - DEPTH_PX), min(ny, y1 + DEPTH_PX), max(0, x0 - DEPTH_PX), min(nx, x1 + DEPTH_PX)
    block = np.asarray(field[ry0:ry1, rx0:rx1], dtype="float64")
    if not np.isfinite(block).any():
        return np.full((len(names), y1 - y0, x1 - x0), np.nan, dtype="float32")
    h, w = block.shape
    grid = xr.DataArray(block, dims=("y", "x"), coords={"y": np.arange(h) * dy, "x": np.arange(w) * dx})
    ds = derived_channels(grid, names, fill=fill)
    return np.stack([ds[n].values for n in names])[:, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]


def _scalings(store, names: list[str]) -> dict:
    """Mean and std of each written channel, read back from the store (no second filter pass)."""
    ds = open_store(store, partial=True)
    out = {}
    for n in names:
        s = fit_scaling(ds[n])
        out[n] = [s.mean, max(s.std, 1e-12)]
    return {S.SCALINGS: out}


def training_patches(lay: Layout, c: PatchConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (rows, cols) and raw patches (n, C, p, p) of the model's inputs (:func:`model_inputs`), sampled from
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
    arrays, _ = input_stack(lay, model_inputs(lay, c))
    return rows, cols, stack_patches(arrays, rows, cols, c.patch_px)
