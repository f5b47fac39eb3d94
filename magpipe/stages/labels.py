"""Stage ``labels``: a label raster or vector file -> ``OUT/survey.zarr:labels`` on the survey's grid."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from magpipe.config import RunConfig
from magpipe.errors import DataValidationError, InputError
from magpipe.io import schema as S
from magpipe.io.labels import read_labels
from magpipe.io.location import as_path, remote_errors
from magpipe.io.schema import Layout
from magpipe.io.stores import content_hash, file_hash, open_store
from magpipe.io.survey import survey_attrs, write_labels
from magpipe.locking import locks_output

log = logging.getLogger("magpipe")


@locks_output
def run_labels(out: str | Path, cfg: RunConfig) -> Path:
    """Rasterise ``cfg.inputs.labels`` onto the survey's cells; skipped when labels and survey are unchanged.

    Returns
    -------
    The survey store, now with ``labels`` (y, x) int16 (0 = unlabelled, k = ``classes[k - 1]``).

    Raises
    ------
    InputError
        If no label file is given, or it cannot be read or placed (see :func:`magpipe.io.labels.read_labels`).
    DataValidationError
        If fewer than two classes have labelled cells on the survey.
    """
    lay, c = Layout(out), cfg.inputs
    if c.labels is None:
        raise InputError("no labels given (inputs.labels)")
    labels = as_path(c.labels)
    cfg.save(lay.config)
    with remote_errors(labels, kind=InputError):
        if not labels.exists():
            raise InputError(f"{labels}: file not found")
        labels_hash = file_hash(labels)
    attrs = survey_attrs(lay.survey)
    h = content_hash("labels-v1", attrs.get(S.HASH, ""), labels_hash, str(c.label_field), str(c.classes))
    if attrs.get(S.LABELS_HASH) == h:
        log.info("labels: up to date")
        return lay.survey
    codes, names = read_labels(labels, open_store(lay.survey)[S.FIELD], label_field=c.label_field, classes=c.classes)
    counts = np.bincount(codes.ravel(), minlength=len(names) + 1)[1:]
    present = [n for n, k in zip(names, counts) if k]
    if len(present) < 2:  # checked now, not after the autoencoder has trained
        raise DataValidationError(f"{labels}: labels hold {len(present)} class{'es' if len(present) != 1 else ''} "
                                  f"on the survey's cells ({', '.join(present) or 'none'}); a classifier needs "
                                  "labelled cells of at least two")
    write_labels(lay.survey, codes, names, source=labels.name, labels_hash=h)
    log.info("labels: %s -> %d classes, %s", labels, len(names),
             ", ".join(f"{n}: {c}" for n, c in zip(names, counts)))
    return lay.survey
