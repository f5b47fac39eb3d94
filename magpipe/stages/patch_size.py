"""Stage ``patch size``: with ``patches.patch_px: auto``, the size that validates best -> ``OUT/patch_size.json``.

A fixed patch size is wrong for some targets (thin dikes want small patches, broad units
large ones), so each size of ``patches.auto_sizes`` that fits the survey gets a quick
encoder (at most ``SELECT_PATCHES`` patches, ``SELECT_EPOCHS`` epochs, the run's objective),
and every feature set the deployed choice may make (``svm.candidates`` under ``features:
auto``) is scored by the SVM's blocked CV on the training region, with a gap of one patch
width around each validation block (:func:`magpipe.splits.cv_folds`): without it, large
patches straddling fold boundaries see their validation cells and win. All sizes see the same
training cells: the spatial split of the largest size (its blocks and gap), so no test
block is ever used. Each size is scored by its best set, and the smallest size within one
standard error of the best wins (the one-standard-error rule, as for the feature set): a larger
patch costs more per cell and blurs contacts, so it has to beat a smaller one by more than noise.

The choice is made once, on the deployed (first) split's training region; the report says
so. :func:`magpipe.pipeline.run_all` runs this stage before ``patches``, and the later stages
read the choice back (:func:`magpipe.resolve.resolved_config`), so a run with ``auto`` is a run
with the chosen size, hashes included.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from magpipe.config import RunConfig
from magpipe.errors import DataValidationError
from magpipe.evaluation import best_by_validation, cv_score
from magpipe.inputs import input_stack, model_inputs, training_patches
from magpipe.io import schema as S
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, write_json
from magpipe.io.survey import read_label_grids, survey_attrs, survey_shape
from magpipe.locking import locks_output
from magpipe.resolve import patch_size_record, with_patch_px
from magpipe.selection import fit_candidates
from magpipe.splits import Cells, labelled_split, training_cells
from magpipe.training import fit_autoencoder, second_views

log = logging.getLogger("magpipe")

SELECT_PATCHES = 2000  # training patches of each size's quick encoder
SELECT_EPOCHS = 4  # and its epochs


@locks_output
def run_patch_size(out: str | Path, cfg: RunConfig) -> Path | None:
    """With ``patches.patch_px: auto``, choose the patch size on validation (see the module docstring) into
    ``OUT/patch_size.json`` and return that path; with a fixed size there is nothing to choose: None.

    Skipped when ``patch_size.json`` holds the choice for the same survey, labels and options. Raises
    DataValidationError when the labels cannot be split at the largest size tried, or no size fits.
    """
    lay = Layout(out)
    cfg.save(lay.config)
    if cfg.patches.patch_px != "auto":
        return None
    choose_patch_size(lay, cfg)
    return lay.patch_size


def sizes_for(cfg: RunConfig, shape: tuple[int, int]) -> list[int]:
    """The sizes of ``patches.auto_sizes`` that fit: at most a quarter of the shorter side (room for blocks),
    and deep enough for the encoder (p // 2 >= its layers); the smallest fitting one if none is that small."""
    depth = len(cfg.model.channels)
    usable = [p for p in cfg.patches.auto_sizes if p // 2 >= depth]
    if not usable:
        raise DataValidationError(f"patches.auto_sizes {list(cfg.patches.auto_sizes)}: none is large enough for "
                                  f"{depth} encoder layers (needs >= {2 * depth + 1})")
    fits = [p for p in usable if p <= min(shape) // 4]
    return fits or usable[:1]


def size_scores(lay: Layout, cfg: RunConfig, cells: Cells) -> dict[str, dict]:
    """Validation balanced accuracy (blocked CV on ``cells``: ``cv_balanced_accuracy``, ``cv_se``) of each
    candidate feature set at ``cfg``'s patch size, from a quick encoder of that size."""
    quick = cfg.model.model_copy(update={"epochs": min(cfg.model.epochs, SELECT_EPOCHS)})
    cfg = cfg.model_copy(update={"model": quick, "patches": cfg.patches.model_copy(
        update={"n_patches": min(cfg.patches.n_patches, SELECT_PATCHES)})})
    rows, cols, raw = training_patches(lay, cfg.patches)
    arrays, scaling = input_stack(lay, model_inputs(lay, cfg.patches))
    model = fit_autoencoder(raw, scaling, cfg, views=second_views(arrays, rows, cols, cfg)).model
    # cv_folds at this size: blocks and gap grow with the patch
    return {n: {k: info[k] for k in ("cv_balanced_accuracy", "cv_se")}
            for n, (_, info) in fit_candidates(model, arrays, scaling, cells, cfg).items()}


def choose_patch_size(lay: Layout, cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``patches.patch_px`` chosen on validation (see the module docstring), recorded in
    ``OUT/patch_size.json``; skipped when that file holds the choice for the same survey, labels and options.

    Raises DataValidationError when the labels cannot be split at the largest size tried.
    """
    attrs = survey_attrs(lay.survey)
    h = content_hash("patch-size-v2", str(attrs[S.HASH]), str(attrs.get(S.LABELS_HASH)),
                     *(cfg.section_json(s, model_only=True) for s in ("patches", "model", "svm", "evaluate")))
    done = patch_size_record(lay)
    if done.get("hash") == h:
        log.info("patch size: %d px, chosen before (%s)", done["chosen"], lay.patch_size)
        return with_patch_px(cfg, int(done["chosen"]))
    shape = survey_shape(lay.survey)
    sizes = sizes_for(cfg, shape)
    if min(shape) < min(sizes):
        raise DataValidationError(f"{lay.survey}: survey of {shape[0]} x {shape[1]} cells is smaller than one "
                                  f"{min(sizes)} px patch, the smallest of patches.auto_sizes deep enough for the "
                                  "encoder; a survey needs more cells than that")
    if len(sizes) == 1:  # nothing to choose between: no quick encoder, no CV
        log.info("patch size: %d px, the only size of %s that fits %d x %d cells", sizes[0],
                 list(cfg.patches.auto_sizes), *shape)
        write_json({"hash": h, "chosen": sizes[0], "sizes": sizes, "validation": {}, "validation_se": {},
                    "how": "the only size of patches.auto_sizes that fits the survey", "seconds": 0.0}, lay.patch_size)
        return with_patch_px(cfg, sizes[0])
    t0 = time.perf_counter()
    split, grids = labelled_split(read_label_grids(lay.survey), with_patch_px(cfg, max(sizes)))
    cells = training_cells(split, grids.labels, with_patch_px(cfg, max(sizes)))
    table = {}
    for p in sizes:
        table[p] = size_scores(lay, with_patch_px(cfg, p), cells)
        log.info("patch size %d px: validation %s", p, ", ".join(
            f"{n} {v['cv_balanced_accuracy']:.3f}" for n, v in table[p].items()))
    best = {str(p): max(table[p].values(), key=cv_score) for p in sizes}  # each size by its best set
    chosen = int(best_by_validation(best, [str(p) for p in sorted(sizes)]))
    log.info("patch size: %d px chosen on validation, from %s", chosen, sizes)
    write_json({"hash": h, "chosen": chosen, "sizes": sizes,
                "validation": {str(p): {n: v["cv_balanced_accuracy"] for n, v in t.items()} for p, t in table.items()},
                "validation_se": {str(p): {n: v["cv_se"] for n, v in t.items()} for p, t in table.items()},
                "how": "blocked CV balanced accuracy on the first split's training region, the best feature set of "
                       "each size, the smallest size within one standard error of the best,"
                       f" a quick encoder per size ({SELECT_PATCHES} patches, {SELECT_EPOCHS} epochs)",
                "seconds": time.perf_counter() - t0}, lay.patch_size)
    return with_patch_px(cfg, chosen)

