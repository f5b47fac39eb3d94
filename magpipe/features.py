"""What the classifier sees: standardised inputs and the feature sets computed from them.

A feature set maps standardised patches to one vector per cell, two ways that must agree:

- :meth:`FeatureSet.patches`: (n, C, p, p) patches centred on given cells -> (n, F); the
  reference path, used for the few labelled cells of training and evaluation;
- :meth:`FeatureSet.dense`: a (1, C, H + 2h, W + 2h) window tensor with a halo h = p // 2 ->
  (F, H, W) tensor on the same device, every interior cell at once; the fast path of
  classification and similarity, on the CPU or a GPU.

Feature sets:

- :class:`AEFeatures`: the autoencoder's layer-wise activations (the paper's method); with the
  same architecture untrained (:func:`untrained_encoder`) it is the control that says whether
  training helped;
- :class:`RawFeatures`: the standardised patch itself (the paper's baseline);
- :class:`StatsFeatures`: local statistics of each input over nested windows, the strong
  classical baseline;
- :class:`ConcatFeatures`: several sets side by side (``ae+stats``).

A new one implements ``patches``, ``dense`` and ``n_features``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import dask.array as da
import numpy as np
import torch
import xarray as xr
from torch.nn import functional as F

from magpipe.config import check_feature_name
from magpipe.model import PatchAutoencoder, box_mean, dense_features, patch_features, seeded_autoencoder
from magpipe.patches import stack_patches

CELL_BATCH = 512  # patches cut and encoded at a time: bounds memory for any number of cells


LAYER_CLIP = 10.0  # standardised values of a stack's layers are clipped to +- this (robust units)
ROBUST_SAMPLE = 4_000_000  # cells read (on a regular stride) to fit a layer's robust scaling


@dataclass(frozen=True)
class Scaling:
    """Standardisation of one input grid, fitted once on its valid cells (units of the grid):
    ``(value - mean) / std``, then clipped to +- ``clip`` where set (a stack's layers)."""

    mean: float
    std: float
    clip: float | None = None


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


def fit_robust_scaling(grid: xr.DataArray, *, clip: float = LAYER_CLIP, max_cells: int = ROBUST_SAMPLE) -> Scaling:
    """A layer's scaling robust to heavy tails (ratio layers such as eTh/K): the median as centre and the
    interquartile range / 1.349 as scale (the standard deviation, for normal data), with standardised
    values clipped to +- ``clip``. Fitted on the valid cells of a regular subsample of at most about
    ``max_cells`` cells, so memory stays flat whatever the grid's size.

    Falls back to the standard deviation where the quartiles coincide (a layer mostly of one value).
    Raises ValueError when the grid has no valid cell.
    """
    ny, nx = grid.shape
    step = max(1, math.ceil(math.sqrt(ny * nx / max_cells)))
    sample = np.asarray(grid[::step, ::step].values, dtype="float64")
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise ValueError("no valid cells")
    q25, median, q75 = np.percentile(sample, [25, 50, 75])
    scale = (q75 - q25) / 1.349
    if scale <= 1e-12 * max(1.0, abs(median)):
        scale = float(sample.std())
    return Scaling(mean=float(median), std=max(float(scale), 1e-12), clip=clip)


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
        z = (v - mean) / std
        if any(s.clip is not None for s in self.channels):
            lo, hi = self.bounds()
            z = np.clip(z, lo.reshape(shape), hi.reshape(shape))
        return np.nan_to_num(z, nan=0.0).astype("float32")

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(C,) lower and upper bounds of each standardised channel (+-inf where it is not clipped)."""
        hi = np.array([np.inf if s.clip is None else s.clip for s in self.channels])
        return -hi, hi


def window_input(scaling: StackScaling, window: np.ndarray) -> torch.Tensor:
    """A raw (C, H, W) window (NaN = no data) as the model's standardised input (1, C, H, W)."""
    return torch.from_numpy(scaling.apply(window, axis=0))[None]


class FeatureSet(Protocol):
    """Features of cells from standardised patches; ``patches`` and ``dense`` agree cell for cell."""

    patch_px: int

    @property
    def window_px(self) -> int: ...  # side of the window a cell's features read (odd; the patch for most sets)

    @property
    def n_features(self) -> int: ...

    def patches(self, x: np.ndarray) -> np.ndarray: ...

    def dense(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class AEFeatures:
    """The selected encoder layers' activations, read out per channel (``readout``: the mean over
    the patch and the value at its centre, and with ``mean_std_centre`` the standard deviation)."""

    model: PatchAutoencoder
    layers: Sequence[int]
    readout: str = "mean_centre"

    @property
    def patch_px(self) -> int:
        return self.model.patch_px

    @property
    def window_px(self) -> int:
        return self.model.patch_px

    @property
    def n_features(self) -> int:
        return self.model.feature_size(self.layers, self.readout)

    def patches(self, x: np.ndarray) -> np.ndarray:
        """(n, C, p, p) standardised patches -> (n, F) float32."""
        return patch_features(self.model, torch.from_numpy(x), self.layers, self.readout).numpy()

    def dense(self, x: torch.Tensor, acts: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(1, C, H + 2h, W + 2h) standardised window -> (F, H, W) float32, on its device; ``acts`` are
        ``self.model.encode(x)`` when the caller has them already."""
        return dense_features(self.model, x, self.layers, self.readout, acts=acts)


@dataclass(frozen=True)
class RawFeatures:
    """The standardised patch itself, flattened channel-major: the paper's baseline."""

    patch_px: int
    in_channels: int

    @property
    def window_px(self) -> int:
        return self.patch_px

    @property
    def n_features(self) -> int:
        return self.in_channels * self.patch_px**2

    def patches(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        p, (C, Hh, Wh) = self.patch_px, x.shape[1:]
        return F.unfold(x.float(), p)[0].view(C * p * p, Hh - p + 1, Wh - p + 1)  # channel-major, like patches


STAT_WINDOWS = (3, 5, 7, 11)  # nested window sides (cells), capped by the patch size
STATS = ("mean", "std", "max", "min", "gradient")  # per window; plus the centre value, once
REACHES = ("patch", "wide")  # how far window statistics look: within the patch, or up to 3 patch widths


def stat_windows(patch_px: int, reach: str = "patch") -> tuple[int, ...]:
    """The window sides used at a patch size: odd, at most p - 2 (the gradient needs a neighbour); with
    ``reach='wide'`` also 2p - 1 and 3p, context as wide as a geological unit often is (the windows then
    reach beyond the patch: :func:`stats_features` gives the set the wider window it needs)."""
    cap = patch_px - 2 if patch_px % 2 else patch_px - 3
    windows = {min(w, cap) for w in STAT_WINDOWS if cap >= 3}
    if reach == "wide":
        p = patch_px if patch_px % 2 else patch_px - 1
        windows |= {2 * p - 1, 3 * p}
    elif reach != "patch":
        raise ValueError(f"unknown reach {reach!r}: use one of {list(REACHES)}")
    return tuple(sorted(windows))


@dataclass(frozen=True)
class StatsFeatures:
    """Per input channel: the centre value, then mean, standard deviation, max, min and mean gradient
    magnitude over each window of :func:`stat_windows` centred on the cell (standardised units;
    no-data counts as 0, the mean, as it does for the model).

    Cheap and strong: the classical control any learned feature set must beat.
    """

    patch_px: int
    in_channels: int
    reach: str = "patch"

    @property
    def windows(self) -> tuple[int, ...]:
        return stat_windows(self.patch_px, self.reach)

    @property
    def window_px(self) -> int:
        """Side of the window the features of a cell read: the patch, or the widest window plus the rim the
        gradient needs (odd)."""
        return max(self.patch_px, max(self.windows) + 2)

    @property
    def n_features(self) -> int:
        return self.in_channels * (1 + len(STATS) * len(self.windows))

    def patches(self, x: np.ndarray) -> np.ndarray:
        """(n, C, p, p) standardised patches -> (n, F) float32: the reference, window by window in numpy."""
        x = np.asarray(x, dtype="float32")
        n, C, p, _ = x.shape
        h = p // 2
        g = np.zeros_like(x)  # central-difference gradient magnitude, defined inside the patch's rim
        g[:, :, 1:-1, 1:-1] = np.hypot((x[:, :, 2:, 1:-1] - x[:, :, :-2, 1:-1]) / 2,
                                       (x[:, :, 1:-1, 2:] - x[:, :, 1:-1, :-2]) / 2)
        cols = []
        for c in range(C):
            cols.append(x[:, c, h, h])
            for w in self.windows:
                r = w // 2
                win = x[:, c, h - r : h + r + 1, h - r : h + r + 1].reshape(n, -1)
                gw = g[:, c, h - r : h + r + 1, h - r : h + r + 1].reshape(n, -1)
                cols += [win.mean(1), win.std(1), win.max(1), win.min(1), gw.mean(1)]
        return np.stack(cols, axis=1).astype("float32")

    @torch.no_grad()
    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C, H + 2h, W + 2h) standardised window, h = ``window_px // 2`` -> (F, H, W) float32, by box
        filters and pooling."""
        h = self.window_px // 2
        H, W = x.shape[-2] - 2 * h, x.shape[-1] - 2 * h
        x = x.float()
        grad = torch.hypot((x[..., 2:, 1:-1] - x[..., :-2, 1:-1]) / 2, (x[..., 1:-1, 2:] - x[..., 1:-1, :-2]) / 2)
        maps = []
        for c in range(x.shape[1]):
            xc, gc = x[:, c : c + 1], grad[:, c : c + 1]
            maps.append(xc[..., h : h + H, h : h + W])
            for w in self.windows:
                o = h - w // 2  # where a w-window map's first cell sits in the halo'd window
                crop = (..., slice(o, o + H), slice(o, o + W))
                mean = box_mean(xc, w)[crop]
                var = (box_mean(xc * xc, w)[crop] - mean * mean).clamp(min=0)
                gmean = box_mean(gc, w)[..., o - 1 : o - 1 + H, o - 1 : o - 1 + W]
                maps += [mean, var.sqrt(), _box_max(xc, w)[crop], -_box_max(-xc, w)[crop], gmean]
        return torch.cat(maps, dim=1)[0]


def _box_max(x: torch.Tensor, w: int) -> torch.Tensor:
    """Max over every w x w window (valid positions) as two 1-D max pools: 2w comparisons per cell, not w^2."""
    return F.max_pool2d(F.max_pool2d(x, (w, 1), stride=1), (1, w), stride=1)


@dataclass(frozen=True)
class ConcatFeatures:
    """Several feature sets of one patch size side by side (e.g. ``ae+stats``)."""

    parts: tuple

    @property
    def patch_px(self) -> int:
        return self.parts[0].patch_px

    @property
    def window_px(self) -> int:
        return max(p.window_px for p in self.parts)

    @property
    def n_features(self) -> int:
        return sum(p.n_features for p in self.parts)

    def patches(self, x: np.ndarray) -> np.ndarray:
        """(n, C, w, w) patches, w = ``window_px``: each part reads its own centred window."""
        return np.concatenate([p.patches(centred(x, p.window_px)) for p in self.parts], axis=1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C, H + 2h, W + 2h), h = ``window_px // 2``: each part reads the halo it needs."""
        return torch.cat([p.dense(centred(x, p.window_px, halo=self.window_px)) for p in self.parts], dim=0)


def centred(x, window_px: int, *, halo: int | None = None):
    """The centre of patches (..., w, w) cut to ``window_px``; with ``halo`` (the window side ``x`` was cut
    for), the (..., H + 2h, W + 2h) window cut to the halo of ``window_px``. Either way a crop, not a copy."""
    d = ((x.shape[-1] if halo is None else halo) - window_px) // 2
    return x[..., d : x.shape[-2] - d, d : x.shape[-1] - d] if d > 0 else x


def part_sizes(fs: FeatureSet) -> tuple[int, ...]:
    """Feature counts of a set's parts in column order (one part unless concatenated): what the SVM
    weights equally (:class:`magpipe.svm.PartScaler`)."""
    return tuple(p.n_features for p in fs.parts) if isinstance(fs, ConcatFeatures) else (fs.n_features,)


def untrained_encoder(model: PatchAutoencoder, seed: int) -> PatchAutoencoder:
    """The same architecture with the weights training started from (:func:`magpipe.model.seeded_autoencoder`
    of ``seed``, as in :func:`magpipe.training.train_autoencoder`): the control that isolates what training added."""
    return seeded_autoencoder(seed, model.patch_px, [c.out_channels for c in model.encoder],
                              model.decoder[0].out_features, in_channels=model.in_channels).eval()


def feature_set(name: str, model: PatchAutoencoder, layers: Sequence[int], *, readout: str = "mean_centre",
                seed: int = 0, stats_reach: str = "patch") -> FeatureSet:
    """The feature set called ``name`` (see :func:`magpipe.config.check_feature_name`), of ``model``'s patch size and inputs.

    ``ae`` reads ``model`` out; ``random`` is the same architecture with the weights training started
    from (``seed``); ``stats`` and ``raw`` use the model only for its patch size and input channels
    (``stats`` looks as far as ``stats_reach``: see :func:`stat_windows`).
    """
    if check_feature_name(name) == "auto":
        raise ValueError("'auto' names a choice, not a feature set; the train stage resolves it")
    p, C = model.patch_px, model.in_channels
    parts = []
    for part in name.split("+"):
        if part == "ae":
            parts.append(AEFeatures(model, tuple(layers), readout))
        elif part == "random":
            parts.append(AEFeatures(untrained_encoder(model, seed), tuple(layers), readout))
        elif part == "stats":
            parts.append(StatsFeatures(p, C, stats_reach))
        else:
            parts.append(RawFeatures(p, C))
    return parts[0] if len(parts) == 1 else ConcatFeatures(tuple(parts))


def cell_features(sets: Mapping[str, FeatureSet], arrays: list, scaling: StackScaling, rows: np.ndarray,
                  cols: np.ndarray, *, batch: int = CELL_BATCH) -> dict[str, np.ndarray]:
    """Features of given cells under every feature set, each patch cut and standardised once.

    Parameters
    ----------
    sets : name -> feature set (any windows: patches are cut at the widest, each set reads its centre).
    arrays : the C input grids (2-D, sliceable: zarr or numpy), in the model's order.
    scaling : their standardisation.
    rows, cols : (n,) cell indices.

    Returns
    -------
    name -> (n, F) float32 features, in the order of the cells.
    """
    p = max(s.window_px for s in sets.values())  # cut once at the widest window, each set reads its centre
    out: dict[str, list[np.ndarray]] = {name: [] for name in sets}
    for b0 in range(0, len(rows), batch):
        x = scaling.apply(stack_patches(arrays, rows[b0 : b0 + batch], cols[b0 : b0 + batch], p), axis=1)
        for name, fs in sets.items():
            out[name].append(fs.patches(centred(x, fs.window_px)))
    return {name: np.concatenate(parts) if parts else np.zeros((0, sets[name].n_features), "float32")
            for name, parts in out.items()}
