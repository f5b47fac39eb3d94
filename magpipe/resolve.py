"""What earlier stages of a run chose, read back by the later ones.

With ``patches.patch_px: auto`` the patch-size stage writes its choice to ``OUT/patch_size.json``
(:mod:`magpipe.stages.patch_size`); every later stage works with the chosen size through
:func:`resolved_config`, so a run with ``auto`` is a run with that size, content hashes included.
"""

from __future__ import annotations

import json

from magpipe.config import RunConfig
from magpipe.errors import DataValidationError
from magpipe.io.schema import Layout


def with_patch_px(cfg: RunConfig, patch_px: int) -> RunConfig:
    """``cfg`` with another patch size (px)."""
    return cfg.model_copy(update={"patches": cfg.patches.model_copy(update={"patch_px": patch_px})})


def patch_size_record(lay: Layout) -> dict:
    """``OUT/patch_size.json``, the choice of ``patches.patch_px: auto`` and its validation table; {} if none."""
    try:
        record = json.loads(lay.patch_size.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def resolved_config(lay: Layout, cfg: RunConfig) -> RunConfig:
    """``cfg`` with a concrete patch size: as given, or under ``auto`` the size the patch-size stage chose
    (``OUT/patch_size.json``). Raises DataValidationError when ``auto`` has not been resolved yet."""
    if cfg.patches.patch_px != "auto":
        return cfg
    try:
        chosen = int(patch_size_record(lay)["chosen"])
    except (KeyError, TypeError, ValueError):
        raise DataValidationError(f"{lay.patch_size}: no patch size chosen yet for patches.patch_px: auto; "
                                  "run the patch-size stage (magpipe train) first") from None
    return with_patch_px(cfg, chosen)
