"""Classify a window of the survey: classes, confidences and the reconstruction-error anomaly.

A window is a raw (C, H + 2h, W + 2h) stack of the model's input grids carrying a halo of
h = p // 2 plus the smoothing radius (the halo ``map_overlap`` would add); its interior's cells are
classified from dense features, exactly as the per-patch reference would classify them. One pass
of torch operations on one device (:class:`WindowClassifier`): standardisation, one encoder pass
shared by the features and the anomaly, the SVM (:class:`magpipe.decision.Decision`), smoothing and
the vote; on a GPU the tile's features never leave it. The survey-wide output (tiles in parallel,
resumable) is :func:`magpipe.stages.classify.run_classify`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from functools import lru_cache

import numpy as np
import torch

from magpipe.bundle import ModelBundle, bundle_fingerprint, load_bundle
from magpipe.decision import Decision
from magpipe.features import AEFeatures, centred
from magpipe.io.schema import NODATA_CLASS, Layout
from magpipe.io.survey import open_inputs
from magpipe.model import dense_anomaly
from magpipe.patches import read_stack
from magpipe.smoothing import smooth_scores
from magpipe.svm import vote
from magpipe.tiling import Tile

__all__ = ["NODATA_CLASS", "WindowClassifier", "ClassifyTile", "classify_window", "classify_array", "classify_tile",
           "window_masks"]

# cells scored per SVM block: bounds the kernel block (cells x landmarks x 12 bytes) on each device
SVM_BATCH = {"cpu": 2048, "cuda": 262144}


def window_masks(patch_px: int, window: np.ndarray, smooth_px: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Valid cells (every input has data) of a (C, H, W) window carrying a halo of p // 2 + ``smooth_px``,
    and of its interior.

    Returns two bool masks: (H, W) over the whole window and (H - 2h, W - 2h) over its interior, with
    h the whole halo. A cell missing any input counts as no data, since the model sees every channel of it.
    """
    h = patch_px // 2 + smooth_px
    valid = np.isfinite(window).all(0)
    return valid, (valid[h:-h, h:-h] if h else valid)


class WindowClassifier:
    """A bundle made ready to classify windows on one torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    On another device than the CPU the encoder is copied there, so the caller's bundle is left as it was.
    Calling it with a window gives :func:`classify_window`'s arrays; ``timings`` (a dict) collects the
    seconds of each stage (``input``, ``features``, ``svm``, ``smooth``, ``anomaly``, ``output``), the
    device synchronised at each boundary.
    """

    def __init__(self, bundle: ModelBundle, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        if self.device.type != "cpu":
            bundle = dataclasses.replace(bundle, model=copy.deepcopy(bundle.model).to(self.device))
            for part in getattr(bundle.features, "parts", (bundle.features,)):
                if isinstance(part, AEFeatures):  # ``random`` holds an encoder of its own
                    part.model.to(self.device)
        self.bundle = bundle
        self.decision = Decision.of(bundle.svm, self.device)
        channels = bundle.scaling.channels
        self.mean = torch.tensor([s.mean for s in channels], dtype=torch.float64, device=self.device)[:, None, None]
        self.std = torch.tensor([s.std for s in channels], dtype=torch.float64, device=self.device)[:, None, None]
        lo, hi = bundle.scaling.bounds()
        self.clip = (None if np.isinf(hi).all() else
                     tuple(torch.tensor(b, dtype=torch.float64, device=self.device)[:, None, None] for b in (lo, hi)))
        # the default feature set reads the encoder the anomaly needs: one pass serves both
        self.shares_encoder = isinstance(bundle.features, AEFeatures) and bundle.features.model is bundle.model
        self.batch = SVM_BATCH.get(self.device.type, SVM_BATCH["cpu"])
        if self.device.type == "cuda" and torch.backends.cudnn.allow_tf32 and \
                os.environ.get("NVIDIA_TF32_OVERRIDE") != "0":
            _warn_tf32_once()

    def __call__(self, window: np.ndarray, timings: dict[str, float] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with torch.no_grad():
            return self._classify(window, timings)

    def _classify(self, window: np.ndarray, timings: dict[str, float] | None) -> tuple[np.ndarray, ...]:
        b, dev = self.bundle, self.device
        clock = _Clock(dev, timings)
        hp, r = b.features.window_px // 2, b.smooth_px  # the features' halo: half a patch, or wider
        w = torch.from_numpy(np.asarray(window)).to(dev)
        valid = torch.isfinite(w).all(0)
        h = hp + r
        inner = valid[h:-h, h:-h]
        if not inner.any():
            shape = tuple(inner.shape)
            return (np.full(shape, NODATA_CLASS, dtype="int16"), np.full(shape, np.nan, dtype="float32"),
                    np.full(shape, np.nan, dtype="float32"))
        # as StackScaling.apply: float64 standardisation, clipped where a channel is, no data -> 0 (the mean)
        z = (w.double() - self.mean) / self.std
        if self.clip is not None:
            z = torch.clamp(z, *self.clip)
        x = torch.nan_to_num(z, nan=0.0).float()[None]
        del z
        del w
        clock("input")
        acts = b.model.encode(x) if self.shares_encoder else None
        feats = b.features.dense(x, acts) if acts is not None else b.features.dense(x)
        clock("features")
        scores = self.decision.dense(feats, valid[hp:-hp, hp:-hp], batch=self.batch)  # interior + r
        del feats
        clock("svm")
        cls, conf = vote(self.decision.classes, smooth_scores(scores[0], r), smooth_scores(scores[1], r), axis=0)
        del scores
        cls.masked_fill_(~inner, NODATA_CLASS)
        conf.masked_fill_(~inner, float("nan"))
        clock("smooth")
        # the encoder reads half a patch around each cell: a wider halo (wide window statistics) is cut off
        keep, full = 2 * (b.patch_px // 2 + r) + 1, 2 * h + 1
        a = dense_anomaly(b.model, centred(x, keep, halo=full), centred(valid, keep, halo=full)[None, None],
                          b.anomaly_px, code=None if acts is None else acts[-1],
                          rows_per_step=8 if dev.type == "cpu" else 512)
        del acts
        anom = torch.where(inner, a[r:-r, r:-r] if r else a, float("nan"))
        clock("anomaly")
        out = cls.cpu().numpy(), conf.cpu().numpy(), anom.cpu().numpy()
        clock("output")
        return out


@lru_cache(maxsize=1)
def _warn_tf32_once() -> None:
    import logging

    logging.getLogger("magpipe").warning(
        "TF32 is allowed in this process: maps made on the GPU may differ from the CPU's at near-ties; call "
        "magpipe.process.full_fp32() once at its start (magpipe's CLI, flows and Dask workers do)")


class _Clock:
    """Adds the seconds since the last call to ``timings[stage]``; nothing (no synchronisation) without one."""

    def __init__(self, device: torch.device, timings: dict[str, float] | None):
        self.device, self.timings, self.t = device, timings, time.perf_counter()

    def __call__(self, stage: str) -> None:
        if self.timings is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.t
        self.t = now


def classify_window(bundle: ModelBundle, window: np.ndarray, device: str | torch.device = "cpu"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classify the interior of a raw (C, H + 2h, W + 2h) window (NaN = no data), h = ``bundle.halo_px``.

    ``window`` holds the bundle's input grids in their own units (the field in nT), in the order of
    ``bundle.inputs``; cells with no data, or beyond the survey's edge, are NaN. The halo is p // 2 for
    the patches plus the smoothing radius ``bundle.smooth_px`` (:mod:`magpipe.smoothing`), so a tile's
    edge cells are smoothed over the same neighbours as any other. ``device`` is the torch device the
    work runs on (:class:`WindowClassifier`, which a caller classifying many windows should keep).

    Returns
    -------
    class : (H, W) int16, 1..K, 0 = no data.
    confidence : (H, W) float32, (smoothed) calibrated probability of the class.
    anomaly : (H, W) float32, mean squared reconstruction error of the central
        ``anomaly_px`` window, standardised units.
    """
    return WindowClassifier(bundle, device)(window)


def classify_array(bundle: ModelBundle, grids: np.ndarray | list[np.ndarray], device: str | torch.device = "cpu"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single-process reference: the whole grid (one 2-D input, or a list of C) as one window.

    ``grids`` are (ny, nx) raw values (NaN = no data) in the order of ``bundle.inputs``; the result is
    :func:`classify_window`'s for every cell, each (ny, nx). Holds the whole grid's features in memory:
    for tests and small grids.
    """
    arrays = [grids] if isinstance(grids, np.ndarray) and grids.ndim == 2 else list(grids)
    ny, nx = arrays[0].shape
    return classify_window(bundle, read_stack(arrays, 0, ny, 0, nx, bundle.halo_px), device)


def cached_bundle(path: str) -> ModelBundle:
    """Each worker process loads a bundle once, however many tiles it runs, and again when its content
    changes (a model retrained into the same path): the cache is keyed by :func:`bundle_fingerprint`."""
    return _bundle(path, bundle_fingerprint(path))


def cached_classifier(path: str, device: str) -> WindowClassifier:
    """Each worker process readies a bundle on a device once, however many tiles it runs, and again when
    the bundle's content changes (keyed by :func:`bundle_fingerprint`, as :func:`cached_bundle`)."""
    return _classifier(path, device, bundle_fingerprint(path))


@lru_cache(maxsize=4)
def _bundle(path: str, fingerprint: str) -> ModelBundle:
    return load_bundle(path)


@lru_cache(maxsize=4)
def _classifier(path: str, device: str, fingerprint: str) -> WindowClassifier:
    return WindowClassifier(_bundle(path, fingerprint), device)


@dataclasses.dataclass(frozen=True)
class ClassifyTile:
    """The class, confidence and anomaly of a tile of the run in ``run`` with the bundle at ``bundle_path``
    on a torch ``device`` (what a Dask task computes): a :class:`magpipe.tiling.StagedTile`.

    Holds paths, not objects, so the task pickles cheaply; each worker process loads the bundle once
    (:func:`cached_classifier`). ``read`` reads the tile's window with its halo (I/O only, so it can
    overlap another tile's compute); ``compute`` classifies it. A ``tile`` is (y0, y1, x0, x1) in cells
    and each returned array is (y1 - y0, x1 - x0), as :func:`classify_window` describes.
    """

    run: str
    bundle_path: str
    device: str = "cpu"

    def read(self, tile: Tile) -> np.ndarray:
        y0, y1, x0, x1 = tile
        bundle = cached_bundle(self.bundle_path)
        return read_stack(open_inputs(Layout(self.run), bundle.inputs), y0, y1, x0, x1, bundle.halo_px)

    def compute(self, tile: Tile, window: np.ndarray) -> dict[str, np.ndarray]:
        cls, conf, anom = cached_classifier(self.bundle_path, self.device)(window)
        return {"class": cls, "confidence": conf, "anomaly": anom}

    def __call__(self, tile: Tile) -> dict[str, np.ndarray]:
        return self.compute(tile, self.read(tile))


def classify_tile(run: str, bundle_path: str, tile: Tile, device: str = "cpu") -> dict[str, np.ndarray]:
    """:class:`ClassifyTile` of one tile, in one call."""
    return ClassifyTile(run, bundle_path, device)(tile)
