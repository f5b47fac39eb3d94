"""The grids the autoencoder reads: the survey field and, when configured, derived channels.

``patches.inputs`` names them (``field`` and any of ``magpipe.derived.CHANNELS``). Derived
channels are computed once per survey into ``OUT/inputs.zarr``, chunk by chunk with an
overlap of :data:`DEPTH_PX` cells on the survey's fixed chunk grid, so memory stays flat
whatever the survey size and every cell's value is the same whichever tile later reads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from magpipe.derived import derived_channels
from magpipe.io.stores import HASH, content_hash, is_complete, open_store, write_store
from magpipe.patches import Scaling, fit_scaling, tiles

log = logging.getLogger("magpipe")

DEPTH_PX = 64  # overlap each chunk's FFT sees beyond its edges
FIELD = "field"


@dataclass(frozen=True)
class StackScaling:
    """Per-channel standardisation of the input stack (one :class:`Scaling` per channel)."""

    channels: tuple[Scaling, ...]

    def apply(self, values: np.ndarray, axis: int) -> np.ndarray:
        """Standardise channel by channel along ``axis`` and fill no-data with 0: model input, float32."""
        v = np.asarray(values, dtype="float64")
        shape = [1] * v.ndim
        shape[axis] = len(self.channels)
        mean = np.array([s.mean for s in self.channels]).reshape(shape)
        std = np.array([s.std for s in self.channels]).reshape(shape)
        return np.nan_to_num((v - mean) / std, nan=0.0).astype("float32")


def inputs_store(survey_store: str | Path) -> Path:
    """Where a survey store's derived channels live: ``inputs.zarr`` beside it."""
    return Path(survey_store).with_name("inputs.zarr")


def _derived_chunk(field_path: str, tile: tuple[int, int, int, int], names: tuple[str, ...], dy: float, dx: float,
                   fill: float) -> np.ndarray:
    """All derived channels of one chunk, (C, h, w), filtered with up to DEPTH_PX cells around it.

    The window is clipped at the survey's edges (never padded), so edge chunks filter what the whole
    grid would; one filter pass serves every channel (tilt and asa reuse dz and the gradients).
    """
    y0, y1, x0, x1 = tile
    field = zarr.open_array(field_path, mode="r")
    ny, nx = field.shape
    ry0, ry1, rx0, rx1 = max(0, y0 - DEPTH_PX), min(ny, y1 + DEPTH_PX), max(0, x0 - DEPTH_PX), min(nx, x1 + DEPTH_PX)
    block = np.asarray(field[ry0:ry1, rx0:rx1], dtype="float64")
    if not np.isfinite(block).any():
        return np.full((len(names), y1 - y0, x1 - x0), np.nan, dtype="float32")
    h, w = block.shape
    grid = xr.DataArray(block, dims=("y", "x"), coords={"y": np.arange(h) * dy, "x": np.arange(w) * dx})
    ds = derived_channels(grid, names, fill=fill)
    return np.stack([ds[n].values for n in names])[:, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]


def _scalings(store: Path, names: list[str]) -> dict:
    """Mean and std of each written channel, read back from the store (no second filter pass)."""
    ds = xr.open_zarr(store, consolidated=False)
    out = {}
    for n in names:
        s = fit_scaling(ds[n])
        out[n] = [s.mean, max(s.std, 1e-12)]
    return {"scalings": out}


def ensure_inputs(survey_store: str | Path, names: tuple[str, ...]) -> StackScaling:
    """Write the derived channels among ``names`` into inputs.zarr (if not up to date); their scalings."""
    survey_store = Path(survey_store)
    group = zarr.open_group(survey_store, mode="r")
    attrs = dict(group.attrs)
    field_scaling = Scaling(attrs["scaling_mean"], attrs["scaling_std"])
    derived = sorted(n for n in names if n != FIELD)
    if not derived:
        return StackScaling(tuple(field_scaling for _ in names))
    store = inputs_store(survey_store)
    h = content_hash("inputs-v1", str(attrs[HASH]), ",".join(derived), str(DEPTH_PX))
    if not is_complete(store, h):
        field = xr.open_zarr(survey_store, consolidated=False)["field"]
        chunk = int(attrs.get("chunk_px", 1024))
        dy = float(abs(field.y[1] - field.y[0])) if field.sizes["y"] > 1 else 1.0
        dx = float(abs(field.x[1] - field.x[0])) if field.sizes["x"] > 1 else 1.0
        # one task per chunk of the survey's fixed grid computes every channel; each channel's array
        # takes its slice of that task's result, so the filters run once per chunk
        stacks = {t: dask.delayed(_derived_chunk)(str(survey_store / FIELD), t, tuple(derived), dy, dx,
                                                  field_scaling.mean)
                  for t in tiles(field.shape, chunk)}
        y_edges = sorted({t[0] for t in stacks})
        ds = xr.Dataset(coords={k: v for k, v in field.coords.items()})
        for c, name in enumerate(derived):
            rows = [[da.from_delayed(stacks[t][c], shape=(t[1] - t[0], t[3] - t[2]), dtype="float32")
                     for t in stacks if t[0] == y0] for y0 in y_edges]
            ds[name] = xr.DataArray(da.block(rows), dims=field.dims, coords=field.coords, name=name)
        ds.attrs.update({"channels": derived, "depth_px": DEPTH_PX})
        log.info("inputs: derived channels %s -> %s", ", ".join(derived), store)
        write_store(ds, store, stage_hash=h, shard_px=chunk, summary=lambda tmp: _scalings(tmp, derived))
    saved = dict(zarr.open_group(store, mode="r").attrs)["scalings"]
    return StackScaling(tuple(field_scaling if n == FIELD else Scaling(*saved[n]) for n in names))


def input_arrays(survey_store: str | Path, names: tuple[str, ...]) -> list:
    """The 2-D arrays of the input channels, in order (derived ones need :func:`ensure_inputs` first)."""
    survey_store = Path(survey_store)
    if any(n != FIELD for n in names):
        open_store(inputs_store(survey_store))  # refuses an incomplete store
    return [zarr.open_array(survey_store / FIELD if n == FIELD else inputs_store(survey_store) / n, mode="r")
            for n in names]
