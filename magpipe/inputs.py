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

import numpy as np
import xarray as xr
import zarr

from magpipe.derived import derived_channels
from magpipe.io.stores import HASH, content_hash, is_complete, open_store, write_store
from magpipe.patches import Scaling, fit_scaling

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


def _derived_block(block: np.ndarray, channel: str, dy: float, dx: float, fill: float) -> np.ndarray:
    if not np.isfinite(block).any():
        return np.full(block.shape, np.nan, dtype="float32")
    ny, nx = block.shape
    grid = xr.DataArray(block, dims=("y", "x"), coords={"y": np.arange(ny) * dy, "x": np.arange(nx) * dx})
    return derived_channels(grid, (channel,), fill=fill)[channel].values


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
        survey = xr.open_zarr(survey_store, consolidated=False)
        field = survey["field"]
        chunk = int(attrs.get("chunk_px", 1024))
        data = field.data.rechunk(chunk)
        dy = float(abs(field.y[1] - field.y[0])) if field.sizes["y"] > 1 else 1.0
        dx = float(abs(field.x[1] - field.x[0])) if field.sizes["x"] > 1 else 1.0
        ds = xr.Dataset(coords={k: v for k, v in field.coords.items()})
        scalings = {}
        for name in derived:
            # no padding beyond the survey's edges: edge chunks filter what the whole grid would
            arr = data.map_overlap(_derived_block, depth=DEPTH_PX, boundary="none", trim=True, dtype="float32",
                                   meta=np.array((), dtype="float32"), channel=name, dy=dy, dx=dx,
                                   fill=field_scaling.mean)
            da = xr.DataArray(arr, dims=field.dims, coords=field.coords, name=name)
            s = fit_scaling(da)
            scalings[name] = [s.mean, max(s.std, 1e-12)]
            ds[name] = da
        ds.attrs.update({"channels": derived, "scalings": scalings, "depth_px": DEPTH_PX})
        log.info("inputs: derived channels %s -> %s", ", ".join(derived), store)
        write_store(ds, store, stage_hash=h, shard_px=chunk)
    saved = dict(zarr.open_group(store, mode="r").attrs)["scalings"]
    return StackScaling(tuple(field_scaling if n == FIELD else Scaling(*saved[n]) for n in names))


def input_arrays(survey_store: str | Path, names: tuple[str, ...]) -> list:
    """The 2-D arrays of the input channels, in order (derived ones need :func:`ensure_inputs` first)."""
    survey_store = Path(survey_store)
    if any(n != FIELD for n in names):
        open_store(inputs_store(survey_store))  # refuses an incomplete store
    return [zarr.open_array(survey_store / FIELD if n == FIELD else inputs_store(survey_store) / n, mode="r")
            for n in names]
