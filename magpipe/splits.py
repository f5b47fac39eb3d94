"""Honest holdouts: which labelled cells train, which test, and which validate a choice.

Labelled cells are grouped into square blocks; a random share of blocks is held out
for testing, and training cells closer than one patch width to any test block are
dropped. No training patch then overlaps a test patch, so a score cannot come from
the test cell's own neighbourhood leaking into training. Everything here is a pure,
seeded function of the label grid and the config: the same split on every call.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from magpipe.config import RunConfig
from magpipe.errors import DataValidationError
from magpipe.io.survey import LabelGrids

log = logging.getLogger("magpipe")


@dataclass(frozen=True)
class Split:
    """Cell coordinates of the training and test sets, plus each cell's block id (for blocked CV).

    Rows and columns are int64 cell indices of the survey grid, (n_train,) and (n_test,) arrays;
    ``train_blocks`` is (n_train,), ids numbered row-major over the grid of blocks.
    """

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

    Parameters
    ----------
    labels : (y, x) int class codes, 0 = unlabelled.
    valid : (y, x) bool, True where the survey has data.
    block_px : block side in cells; at least ``gap_px``.
    gap_px : least Chebyshev distance (cells) between a training cell and a test block: one patch
        width, so no training patch overlaps a test cell.
    test_fraction : share of the labelled blocks held out (at least one block, never all).
    seed : seed of the draw of test blocks.
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

    ``rows``, ``cols`` are cell indices (any shape); returns a bool mask of their shape.
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

    ``rows``, ``cols`` are (n,) cell indices, ``block_px`` and ``gap_px`` in cells as for
    :func:`spatial_split`, ``nbx`` blocks per block row. Returns up to ``k`` pairs of int64 index
    arrays into the n cells; a fold left with no fit or no validation cell is omitted.
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
    """Indices keeping at most ``max_per_class`` of each class, sorted, deterministic.

    ``y`` is (n,) class codes; returns int64 indices into it, drawn with ``seed``.
    """
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(idx if idx.size <= max_per_class else rng.choice(idx, max_per_class, replace=False))
    return np.sort(np.concatenate(keep))


def labelled_split(grids: LabelGrids, cfg: RunConfig, *, need_test: bool = False, warn_unscored: bool = True
                   ) -> tuple[Split, LabelGrids]:
    """The spatial train/test split of the labelled cells (deterministic from the config).

    A class needs 2 training cells to be learnt. Under ``evaluate.drop_small_classes`` (the default)
    one short of that is left out of training with a warning naming it (the map cannot call it, and
    its test cells are not scored); with ``need_test`` (evaluation) a class with training cells but no
    test cell stays in training and is simply not scored (warned; see :func:`unscored_classes`). With
    the option off, either is refused with a message naming the class. ``warn_unscored=False`` leaves
    that warning to evaluation (training checks the split before it trains; evaluation says it once).

    Returns
    -------
    The :class:`Split` (blocks of ``evaluate.block_patches`` patch widths, a gap of one patch width)
    and the label grids it was made from (without the classes left out).

    Raises
    ------
    DataValidationError
        If the labels cannot be split spatially, fewer than two classes can be learnt, with
        ``need_test`` no class can be scored, or a class is short and the option is off.
    """
    classes, p = grids.classes, cfg.patches.patch_px
    split = _split(grids, cfg)
    short = short_classes(split, grids.labels, len(classes), need_test=need_test)
    if short and cfg.evaluate.drop_small_classes:
        unlearnt = short_classes(split, grids.labels, len(classes), need_test=False)
        while unlearnt:  # a new split without them can leave another class short: until none is
            log.warning("classes %s left out: fewer than 2 labelled training cells after the spatial split "
                        "(blocks of %d px); the map cannot call them", ", ".join(classes[k] for k in unlearnt),
                        cfg.evaluate.block_patches * p)
            grids = grids.replace_labels(np.where(np.isin(grids.labels, [k + 1 for k in unlearnt]), 0,
                                                  grids.labels).astype(grids.labels.dtype))
            split = _split(grids, cfg)
            unlearnt = short_classes(split, grids.labels, len(classes), need_test=False)
        short = []  # classes with training cells but no test cell are kept: learnt, mapped, not scored
    if short:
        n_train, n_test = class_counts(split, grids.labels, len(classes))
        raise DataValidationError(
            f"{grids.source}: after the spatial split (blocks of {cfg.evaluate.block_patches * p} px) too few "
            "labelled cells for class "
            + ", ".join(f"'{classes[k]}' ({n_train[k]} training, {n_test[k]} test cells)" for k in short)
            + "; label more of it, lower evaluate.block_patches, or set evaluate.drop_small_classes")
    n_train, n_test = class_counts(split, grids.labels, len(classes))
    if (n_train >= 2).sum() < 2:
        raise DataValidationError(
            f"{grids.source}: after the spatial split (blocks of {cfg.evaluate.block_patches * p} px) fewer than "
            f"two classes have 2 training cells ({_counts(classes, n_train, n_test)}); label more, or lower "
            "evaluate.block_patches")
    if need_test:
        if not ((n_train >= 2) & (n_test >= 1)).any():
            raise DataValidationError(
                f"{grids.source}: after the spatial split (blocks of {cfg.evaluate.block_patches * p} px) no class "
                f"has both training and test cells ({_counts(classes, n_train, n_test)}); nothing can be scored")
        missing = unscored_classes(split, grids)
        if missing and warn_unscored:
            log.warning("classes %s not scored on split seed %d: no test cells (they are still learnt and mapped)",
                        ", ".join(missing), cfg.evaluate.seed)
    return split, grids


def unscored_classes(split: Split, grids: LabelGrids) -> list[str]:
    """Names of the classes learnt on ``split`` (2 training cells or more) with no test cell there."""
    n_train, n_test = class_counts(split, grids.labels, len(grids.classes))
    return [c for c, a, b in zip(grids.classes, n_train, n_test) if a >= 2 and b == 0]


def _counts(classes: list[str], n_train: np.ndarray, n_test: np.ndarray) -> str:
    return ", ".join(f"{c}: {a} training, {b} test" for c, a, b in zip(classes, n_train, n_test) if a + b)


def split_gap_px(cfg: RunConfig) -> int:
    """The gap (cells) between training cells and held-out blocks, in the split and in the CV folds:
    ``evaluate.gap_patches`` patch widths, rounded up."""
    return int(math.ceil(cfg.evaluate.gap_patches * cfg.patches.patch_px))


def _split(grids: LabelGrids, cfg: RunConfig) -> Split:
    p = cfg.patches.patch_px
    try:
        return spatial_split(grids.labels, grids.valid, block_px=cfg.evaluate.block_patches * p, gap_px=split_gap_px(cfg),
                             test_fraction=cfg.evaluate.test_fraction, seed=cfg.evaluate.seed)
    except ValueError as exc:
        raise DataValidationError(f"{grids.source}: labels cannot be split spatially: {exc}") from None


def class_counts(split: Split, labels: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and test cells of each class (0-based), before subsampling: two (K,) int64 arrays.

    ``labels`` is the (y, x) grid of class codes 1..K the split was made from.
    """
    return (np.bincount(labels[split.train_rows, split.train_cols], minlength=K + 1)[1:],
            np.bincount(labels[split.test_rows, split.test_cols], minlength=K + 1)[1:])


def short_classes(split: Split, labels: np.ndarray, K: int, *, need_test: bool) -> list[int]:
    """Labelled classes (0-based) that cannot be learnt (< 2 training cells) or, with ``need_test``, scored."""
    n_train, n_test = class_counts(split, labels, K)
    return [k for k in range(K) if n_train[k] + n_test[k] > 0 and (n_train[k] < 2 or (need_test and n_test[k] < 1))]


@dataclass(frozen=True)
class Cells:
    """Cells of one role (training or test): coordinates, labels (1..K) and, for training, block ids and
    ``mix``: the share of each class code (index 0 unused) among all the labelled cells of the region they
    were drawn from. Training cells are drawn per class, so they hide how common each unit is where the
    map is used; calibrated confidences need it (:class:`magpipe.svm.VoteWithProbabilities`)."""

    rows: np.ndarray
    cols: np.ndarray
    y: np.ndarray
    blocks: np.ndarray | None = None
    mix: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> "Cells":
        """The cells at ``idx`` (an index array or a bool mask over the cells), of the same region (``mix``)."""
        return Cells(self.rows[idx], self.cols[idx], self.y[idx], None if self.blocks is None else self.blocks[idx],
                     self.mix)


def training_cells(split: Split, labels: np.ndarray, cfg: RunConfig) -> Cells:
    """The SVM's training cells: at most ``svm.max_per_class`` of each class, deterministic.

    ``labels`` is the (y, x) grid of class codes the split was made from. Raises DataValidationError
    when subsampling leaves a class with fewer than 2 cells.
    """
    y = labels[split.train_rows, split.train_cols]
    keep = subsample_per_class(y, cfg.svm.max_per_class, cfg.svm.seed)
    counts = np.bincount(y[keep])
    small = [int(c) for c in np.unique(y) if counts[c] < 2]
    if small:  # (only after subsampling; labelled_split has checked the full counts)
        raise DataValidationError(f"classes {small} have fewer than 2 training cells after subsampling")
    return Cells(split.train_rows[keep], split.train_cols[keep], y[keep], split.train_blocks[keep],
                 np.bincount(y) / y.size)


def cv_folds(cells: Cells, cfg: RunConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """The SVM search's ``svm.cv_folds`` folds of training cells: blocks of ``evaluate.block_patches``
    patch widths, and no fitting cell within the gap (:func:`split_gap_px`) of a validation block, as between training
    and test. Without that gap, patches straddling a fold boundary share cells, which flatters large
    patches and context-rich features, and choices made on the score (feature set, patch size) follow."""
    p = cfg.patches.patch_px
    block = cfg.evaluate.block_patches * p
    nbx = int(cells.cols.max()) // block + 1 if len(cells.cols) else 1
    return blocked_folds(cells.rows, cells.cols, block_px=block, gap_px=split_gap_px(cfg), k=cfg.svm.cv_folds,
                         seed=cfg.svm.seed, nbx=nbx)


def holdout_cells(split: Split, labels: np.ndarray, cfg: RunConfig) -> Cells:
    """The scored test cells: a deterministic subsample of the held-out blocks.

    At most ``evaluate.max_test_pixels`` cells, drawn uniformly (not per class) with ``evaluate.seed``,
    so the scores reflect the classes' share of the test area. ``blocks`` is None.
    """
    rng = np.random.default_rng(cfg.evaluate.seed)
    n_test = split.test_rows.size
    pick = np.sort(rng.choice(n_test, min(n_test, cfg.evaluate.max_test_pixels), replace=False))
    trow, tcol = split.test_rows[pick], split.test_cols[pick]
    return Cells(trow, tcol, labels[trow, tcol])


def split_config(cfg: RunConfig, i: int) -> RunConfig:
    """The config of the i-th evaluation split: the same, with the split seed advanced by i."""
    return cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"seed": cfg.evaluate.seed + i})})
