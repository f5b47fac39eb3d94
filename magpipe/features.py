"""What the classifier sees: standardised inputs and the feature sets computed from them.

A feature set maps standardised patches to one vector per cell, two ways that must agree:

- :meth:`FeatureSet.patches`: (n, C, p, p) patches centred on given cells -> (n, F); the
  reference path, used for the few labelled cells of training and evaluation;
- :meth:`FeatureSet.dense`: a (1, C, H + 2h, W + 2h) window with a halo h = p // 2 ->
  (F, H, W), every interior cell at once; the fast path of classification and similarity.

Feature sets today: :class:`AEFeatures` (the autoencoder's layer-wise activations, the
paper's method) and :class:`RawFeatures` (the standardised patch itself, the paper's
baseline). A new one implements these two methods and ``n_features``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import dask.array as da
import numpy as np
import torch
import xarray as xr

from magpipe.model import PatchAutoencoder, dense_features, patch_features
from magpipe.patches import stack_patches

CELL_BATCH = 512  # patches cut and encoded at a time: bounds memory for any number of cells


@dataclass(frozen=True)
class Scaling:
    """Standardisation of one input grid, fitted once on its valid cells (units of the grid)."""

    mean: float
    std: float


def fit_scaling(grid: xr.DataArray) -> Scaling:
    """Mean and standard deviation of the valid (finite) cells of a grid, computed out of core.

    Raises ValueError when the grid has no valid cell.
    """
    x = grid.data
    valid = ~da.isnan(x)
    n = valid.sum()
    s1 = da.nansum(x.astype("float64"))
    s2 = da.nansum(x.astype("float64") ** 2)
    n, s1, s2 = (float(v) for v in da.compute(n, s1, s2))
    if n == 0:
        raise ValueError("no valid cells")
    mean = s1 / n
    std = max(np.sqrt(max(s2 / n - mean**2, 0.0)), 1e-12)
    return Scaling(mean=mean, std=std)


@dataclass(frozen=True)
class StackScaling:
    """Per-channel standardisation of the input stack (one :class:`Scaling` per input grid)."""

    channels: tuple[Scaling, ...]

    def apply(self, values: np.ndarray, axis: int) -> np.ndarray:
        """Standardise channel by channel along ``axis`` and fill no-data with 0 (the mean).

        Parameters
        ----------
        values : raw values, any shape with ``len(channels)`` entries along ``axis``; NaN = no data.
        axis : the channel axis.

        Returns
        -------
        float32 array of the same shape: model input, with no NaN.
        """
        v = np.asarray(values, dtype="float64")
        shape = [1] * v.ndim
        shape[axis] = len(self.channels)
        mean = np.array([s.mean for s in self.channels]).reshape(shape)
        std = np.array([s.std for s in self.channels]).reshape(shape)
        return np.nan_to_num((v - mean) / std, nan=0.0).astype("float32")


def window_input(scaling: StackScaling, window: np.ndarray) -> torch.Tensor:
    """A raw (C, H, W) window (NaN = no data) as the model's standardised input (1, C, H, W)."""
    return torch.from_numpy(scaling.apply(window, axis=0))[None]


class FeatureSet(Protocol):
    """Features of cells from standardised patches; ``patches`` and ``dense`` agree cell for cell."""

    patch_px: int

    @property
    def n_features(self) -> int: ...

    def patches(self, x: np.ndarray) -> np.ndarray: ...

    def dense(self, x: torch.Tensor) -> np.ndarray: ...


@dataclass(frozen=True)
class AEFeatures:
    """Per-channel mean over the patch and value at its centre of each selected encoder layer."""

    model: PatchAutoencoder
    layers: Sequence[int]

    @property
    def patch_px(self) -> int:
        return self.model.patch_px

    @property
    def n_features(self) -> int:
        return self.model.feature_size(self.layers)

    def patches(self, x: np.ndarray) -> np.ndarray:
        """(n, C, p, p) standardised patches -> (n, F) float32."""
        return patch_features(self.model, torch.from_numpy(x), self.layers).numpy()

    def dense(self, x: torch.Tensor) -> np.ndarray:
        """(1, C, H + 2h, W + 2h) standardised window -> (F, H, W) float32."""
        return dense_features(self.model, x, self.layers).numpy()


@dataclass(frozen=True)
class RawFeatures:
    """The standardised patch itself, flattened channel-major: the paper's baseline."""

    patch_px: int
    in_channels: int

    @property
    def n_features(self) -> int:
        return self.in_channels * self.patch_px**2

    def patches(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)

    def dense(self, x: torch.Tensor) -> np.ndarray:
        p = self.patch_px
        view = np.lib.stride_tricks.sliding_window_view(x[0].numpy(), (p, p), axis=(1, 2))  # (C, H, W, p, p)
        C, H, W = view.shape[:3]
        return np.ascontiguousarray(view.transpose(0, 3, 4, 1, 2)).reshape(C * p * p, H, W)


def cell_features(sets: Mapping[str, FeatureSet], arrays: list, scaling: StackScaling, rows: np.ndarray,
                  cols: np.ndarray, *, batch: int = CELL_BATCH) -> dict[str, np.ndarray]:
    """Features of given cells under every feature set, each patch cut and standardised once.

    Parameters
    ----------
    sets : name -> feature set; all of one patch size.
    arrays : the C input grids (2-D, sliceable: zarr or numpy), in the model's order.
    scaling : their standardisation.
    rows, cols : (n,) cell indices.

    Returns
    -------
    name -> (n, F) float32 features, in the order of the cells.
    """
    sizes = {s.patch_px for s in sets.values()}
    if len(sizes) != 1:
        raise ValueError(f"feature sets of one patch size expected, got {sorted(sizes)}")
    p = sizes.pop()
    out: dict[str, list[np.ndarray]] = {name: [] for name in sets}
    for b0 in range(0, len(rows), batch):
        x = scaling.apply(stack_patches(arrays, rows[b0 : b0 + batch], cols[b0 : b0 + batch], p), axis=1)
        for name, fs in sets.items():
            out[name].append(fs.patches(x))
    return {name: np.concatenate(parts) if parts else np.zeros((0, sets[name].n_features), "float32")
            for name, parts in out.items()}
