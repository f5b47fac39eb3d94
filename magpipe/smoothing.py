"""Spatial smoothing of the SVM's class scores: their mean over a (2r + 1)^2 window, no-data left out.

The class is that of the mean vote (the SVM's decision values), the confidence the mean calibrated
probability of that class (:func:`magpipe.svm.class_scores`): the window's mean confidence of the cells
voting that class, a cell voting another counting 0.

Map units are tens of cells across, while the SVM's errors are mostly single cells and small
specks, so a probability averaged over a few neighbours is often the better guess. How far to
average is a trade: a larger window also erodes thin units and shifts contacts. The radius is
therefore chosen on validation inside the training region (:func:`radius_scores`, used by
:func:`magpipe.selection.choose_smoothing`), never on test
blocks, and radius 0 is plain per-cell classification.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from magpipe.decision import Decision
from magpipe.evaluation import balanced_accuracy
from magpipe.features import FeatureSet, StackScaling, window_input
from magpipe.model import box_sum64
from magpipe.patches import read_stack
from magpipe.svm import best_class


def smooth_proba(proba: np.ndarray, radius: int) -> np.ndarray:
    """Mean of each class's score (vote or probability) over the valid cells of every cell's (2r + 1)^2 window.

    ``proba`` is (K, H + 2r, W + 2r) float32 with NaN at no-data cells: the interior and a halo of
    ``radius`` cells (beyond the survey's edge is no data). Returns the interior, (K, H, W) float32,
    NaN where the centre cell is no data. Radius 0 returns ``proba`` itself. (:func:`smooth_scores` on arrays.)
    """
    return proba if radius == 0 else smooth_scores(torch.from_numpy(proba), radius).numpy()


def smooth_scores(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`smooth_proba` of a tensor, on its device (float64 window sums)."""
    if radius == 0:
        return scores
    size = 2 * radius + 1
    valid = torch.isfinite(scores[0])
    sums = box_sum64(torch.where(valid, scores, 0.0)[None], size)[0]
    counts = box_sum64(valid.double()[None, None], size)[0, 0]
    out = (sums / counts.clamp(min=1.0)).float()
    out[:, ~valid[radius:-radius, radius:-radius]] = float("nan")
    return out


def window_scores(svm, features: FeatureSet, scaling: StackScaling, window: np.ndarray) -> np.ndarray:
    """Votes and probabilities (2, K, H, W) of every valid cell of a raw (C, H + 2h, W + 2h) window with
    halo h = ``features.window_px // 2`` (NaN = no data; NaN out), from the dense features of ``features`` scored by
    :class:`magpipe.decision.Decision`: the arithmetic of the map's own tiles, on the CPU."""
    h = features.window_px // 2
    valid = np.isfinite(window).all(0)
    cells = valid[h:-h, h:-h] if h else valid
    if not cells.any():
        return np.full((2, len(svm.classes_), *cells.shape), np.nan, dtype=np.float32)
    return Decision.of(svm).dense(features.dense(window_input(scaling, window)), torch.from_numpy(cells)).numpy()


def block_predictions(svm, features: FeatureSet, scaling: StackScaling, arrays: list, rows: np.ndarray,
                      cols: np.ndarray, radii: Sequence[int], *, block_px: int) -> dict[int, np.ndarray]:
    """The class of each cell (rows, cols) after smoothing at each radius: radius -> (n,) class codes.

    Cells are taken a ``block_px`` square at a time (the spatial blocks of the split, so a block's
    window holds most of its neighbours' cells too); each block is classified densely with a halo of
    the largest radius, exactly as the map would be. Memory stays at one block's window.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    r_max, h = max(radii), features.window_px // 2
    out = {r: np.zeros(len(rows), dtype=np.int16) for r in radii}
    block = (rows // block_px) * (int(cols.max(initial=0)) // block_px + 1) + cols // block_px
    for b in np.unique(block):
        idx = np.flatnonzero(block == b)
        y0, x0 = rows[idx].min(), cols[idx].min()
        y1, x1 = rows[idx].max() + 1, cols[idx].max() + 1
        votes = window_scores(svm, features, scaling, read_stack(arrays, y0 - r_max, y1 + r_max, x0 - r_max,
                                                                  x1 + r_max, h))[0]
        for r in radii:
            cut = r_max - r
            sm = smooth_proba(votes[:, cut : votes.shape[1] - cut, cut : votes.shape[2] - cut], r)
            at = sm[:, rows[idx] - y0, cols[idx] - x0]
            out[r][idx] = best_class(svm, at, at, axis=0)[0]  # the class of the mean vote
    return out


def radius_scores(fit_model, features: FeatureSet, scaling: StackScaling, arrays: list, cells, folds: list,
                  radii: Sequence[int], *, block_px: int) -> dict[str, dict]:
    """Blocked-CV balanced accuracy of each smoothing radius: radius (str) -> ``cv_balanced_accuracy``
    and ``cv_se`` over ``folds`` ((fit, validation) index pairs of ``cells``, with a gap between).

    ``fit_model(idx)`` fits the classifier on ``cells`` ``idx`` (the search's own C and gamma); every
    radius is scored on the same fold models, so the comparison is paired.
    """
    per_fold = {r: [] for r in radii}
    for fit, val in folds:
        if np.unique(cells.y[fit]).size < 2 or len(val) == 0:
            continue
        pred = block_predictions(fit_model(fit), features, scaling, arrays, cells.rows[val], cells.cols[val], radii,
                                 block_px=block_px)
        for r in radii:
            per_fold[r].append(balanced_accuracy(cells.y[val], pred[r]))
    return {str(r): {"cv_balanced_accuracy": float(np.mean(s)) if s else float("nan"),
                     "cv_se": float(np.std(s) / np.sqrt(len(s))) if s else float("nan")}
            for r, s in per_fold.items()}
