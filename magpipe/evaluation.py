"""Honest accuracy: a spatial train/test split and the metrics of the paper.

Labelled cells are grouped into square blocks; a random share of blocks is
held out for testing, and training cells closer than one patch width to any
test block are dropped. No training patch then overlaps a test patch, so a
score cannot come from the test cell's own neighbourhood leaking into training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from magpipe.svm import fit_svm, predict_with_confidence


@dataclass(frozen=True)
class Split:
    """Cell coordinates of the training and test sets, plus each cell's block id (for blocked CV)."""

    train_rows: np.ndarray
    train_cols: np.ndarray
    test_rows: np.ndarray
    test_cols: np.ndarray
    train_blocks: np.ndarray


def spatial_split(
    labels: np.ndarray, valid: np.ndarray, *, block_px: int, gap_px: int, test_fraction: float, seed: int
) -> Split:
    """Split labelled valid cells by blocks of ``block_px``, with a gap of ``gap_px`` between sets.

    Raises ValueError when the labelled area is too small to hold both sets.
    """
    if block_px < gap_px:
        raise ValueError(f"block of {block_px} px must be at least the gap of {gap_px} px")
    rows, cols = np.nonzero((labels > 0) & valid)
    if rows.size == 0:
        raise ValueError("no labelled valid cells")
    by, bx = rows // block_px, cols // block_px
    nbx = int(bx.max()) + 1
    block_id = by * nbx + bx
    blocks = np.unique(block_id)
    if blocks.size < 2:
        raise ValueError(
            f"labelled area spans one {block_px} px block; it needs at least two to hold out a test region"
        )
    rng = np.random.default_rng(seed)
    n_test = min(blocks.size - 1, max(1, int(round(blocks.size * test_fraction))))
    test_blocks = set(rng.choice(blocks, size=n_test, replace=False).tolist())
    is_test = np.isin(block_id, list(test_blocks))
    train = ~is_test & ~near_blocks(rows, cols, test_blocks, block_px=block_px, gap_px=gap_px, nbx=nbx)
    if not train.any() or not is_test.any():
        raise ValueError("the split left no training or no test cells; use smaller blocks or more labels")
    return Split(rows[train], cols[train], rows[is_test], cols[is_test], block_id[train])


def near_blocks(rows: np.ndarray, cols: np.ndarray, blocks, *, block_px: int, gap_px: int, nbx: int) -> np.ndarray:
    """Cells closer than ``gap_px`` (Chebyshev) to any of ``blocks`` (ids by row-major ``nbx`` blocks a row).

    Checking the 9 corners and edges of a cell's gap square finds every block it
    touches, because a block is at least as wide as the gap.
    """
    blocks = list(blocks)
    near = np.zeros(np.shape(rows), dtype=bool)
    for dy in (-gap_px, 0, gap_px):
        for dx in (-gap_px, 0, gap_px):
            ny, nx = (rows + dy) // block_px, (cols + dx) // block_px
            inside = (rows + dy >= 0) & (cols + dx >= 0) & (nx < nbx)
            near |= inside & np.isin(ny * nbx + nx, blocks)
    return near


def blocked_folds(rows: np.ndarray, cols: np.ndarray, *, block_px: int, gap_px: int, k: int, seed: int,
                  nbx: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` spatial folds of cells: (fit, validation) index pairs, validation blocks held out with a gap.

    For choosing between feature sets inside a training region: every training
    cell validates once, so the choice does not hang on one small validation area.
    """
    block_id = (rows // block_px) * nbx + cols // block_px
    blocks = np.unique(block_id)
    fold_of = dict(zip(blocks.tolist(), np.random.default_rng(seed).permutation(blocks.size) % k))
    fold = np.array([fold_of[b] for b in block_id.tolist()])
    out = []
    for f in range(k):
        val = fold == f
        held = blocks[[fold_of[b] == f for b in blocks.tolist()]]
        fit = ~val & ~near_blocks(rows, cols, held, block_px=block_px, gap_px=gap_px, nbx=nbx)
        if val.any() and fit.any():
            out.append((np.flatnonzero(fit), np.flatnonzero(val)))
    return out


def subsample_per_class(y: np.ndarray, max_per_class: int, seed: int) -> np.ndarray:
    """Indices keeping at most ``max_per_class`` of each class, sorted, deterministic."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(idx if idx.size <= max_per_class else rng.choice(idx, max_per_class, replace=False))
    return np.sort(np.concatenate(keep))


def patch_majorities(rows, cols, y_true, y_pred, patch_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Per non-overlapping p x p grid patch: majority true label and majority prediction.

    Ties go to the smaller class code, so the result is deterministic.
    """
    pid = (np.asarray(rows) // patch_px) * (int(np.max(cols)) // patch_px + 1) + np.asarray(cols) // patch_px
    truth, pred = [], []
    for p in np.unique(pid):
        sel = pid == p
        truth.append(np.bincount(y_true[sel]).argmax())
        pred.append(np.bincount(y_pred[sel]).argmax())
    return np.array(truth), np.array(pred)


def score(rows, cols, y_true: np.ndarray, y_pred: np.ndarray, *, patch_px: int, n_classes: int) -> dict:
    """Pixel-wise, patch-wise and balanced accuracy, per-class F1 and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.arange(1, n_classes + 1)
    pt, pp = patch_majorities(rows, cols, y_true, y_pred, patch_px)
    return {
        "pixel_accuracy": float(np.mean(y_true == y_pred)),
        "patch_accuracy": float(np.mean(pt == pp)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "f1": f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0).tolist(),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n_pixels": int(y_true.size),
        "n_patches": int(pt.size),
    }


METRICS = ("pixel_accuracy", "patch_accuracy", "balanced_accuracy")


def sparse_label_scores(train: dict[str, np.ndarray], test: dict[str, np.ndarray], y: np.ndarray,
                        groups: np.ndarray, test_cells: tuple[np.ndarray, np.ndarray, np.ndarray], *,
                        per_class: int, repeats: int, patch_px: int, n_classes: int, svm_cfg, seed: int) -> dict:
    """Score feature sets trained on only ``per_class`` labelled cells per class (the paper's regime).

    Each of ``repeats`` draws picks the same training cells for every feature set
    (so the comparison is paired) and is scored on the full test set; ``draws``
    holds every draw's scores, for :func:`summarise`. One draw of a few dozen
    cells moves accuracy by several points, which a single number would hide.
    """
    trow, tcol, ty = test_cells
    runs: dict[str, list[dict]] = {name: [] for name in train}
    for r in range(repeats):
        pick = subsample_per_class(y, per_class, seed + r)
        for name, X in train.items():
            model, _ = fit_svm(X[pick], y[pick], groups[pick], svm_cfg)
            pred, _ = predict_with_confidence(model, test[name])
            runs[name].append(score(trow, tcol, ty, pred, patch_px=patch_px, n_classes=n_classes))
    return {"per_class": per_class, "repeats": repeats, "draws": runs}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Mean and standard deviation of each headline metric over runs (splits or draws), per feature set."""
    out: dict = {}
    for m in METRICS:
        out[m] = {name: float(np.mean([s[m] for s in r])) for name, r in runs.items()}
        out[f"{m}_std"] = {name: float(np.std([s[m] for s in r])) for name, r in runs.items()}
    return out
