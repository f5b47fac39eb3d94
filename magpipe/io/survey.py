"""Typed access to a run's ``survey.zarr``: its scaling, label grids and labels variable.

Stages read the survey through these functions rather than by attribute name, so the
schema (:mod:`magpipe.io.schema`) has one reader and one writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magpipe.derived import CHANNELS
from magpipe.errors import InputError
from magpipe.io import schema as S
from magpipe.io.location import as_path
from magpipe.io.schema import Layout
from magpipe.io.stores import add_variable, open_array, require_complete, store_attrs, update_attrs


@dataclass(frozen=True)
class LabelGrids:
    """The survey's labels (int16, 0 = unlabelled), valid mask and class names, read once for any
    number of splits.

    ``labels`` is (y, x) int16, codes 1..K, code k named ``classes[k - 1]``; ``valid`` (y, x) bool,
    True where the survey has data.
    """

    labels: np.ndarray
    valid: np.ndarray
    classes: list[str]
    source: Path  # the survey store, named in errors

    def replace_labels(self, labels: np.ndarray) -> "LabelGrids":
        """The same grids with ``labels`` ((y, x) codes) in place of these, e.g. with a class dropped."""
        return LabelGrids(labels, self.valid, self.classes, self.source)


def survey_attrs(path: str | Path) -> dict:
    """Attributes of a complete survey store."""
    return store_attrs(require_complete(path)) or {}


def survey_shape(path: str | Path) -> tuple[int, int]:
    """(ny, nx) cells of the survey's grid, from its metadata (no data is read)."""
    return tuple(open_array(path, S.FIELD).shape)


def read_valid(path: str | Path) -> np.ndarray:
    """The survey's valid mask (bool, y/x), read whole."""
    return open_array(require_complete(path), S.VALID)[:].astype(bool)


def read_label_grids(path: str | Path) -> LabelGrids:
    """The survey's labels, valid mask and class names, read whole.

    Raises StorageError for a missing or incomplete store, InputError when no labels were added.
    """
    path = require_complete(path)
    attrs = store_attrs(path) or {}
    if S.LABELS_HASH not in attrs:
        raise InputError(f"{path}: has no labels; run `magpipe labels` first")
    return LabelGrids(open_array(path, S.LABELS)[:], open_array(path, S.VALID)[:].astype(bool),
                      list(attrs[S.CLASSES]), as_path(path))


def write_labels(path: str | Path, codes: np.ndarray, classes: list[str], *, source: str, labels_hash: str) -> None:
    """Put the label grid (int16 codes, 0 = unlabelled) into the survey store with its class names.

    ``codes`` is (y, x) on the survey's grid, code k named ``classes[k - 1]``; ``source`` (the label
    file's name) and ``labels_hash`` are recorded so the labels stage can tell when they are current.
    """
    add_variable(path, S.LABELS, codes.astype("int16"), like=S.FIELD,
                 attrs={"long_name": "class code, 0 = unlabelled"})
    update_attrs(path, {S.CLASSES: classes, S.LABELS_SOURCE: source, S.LABELS_HASH: labels_hash})


def survey_layers(path: str | Path) -> tuple[str, ...]:
    """Names of the layers the survey store holds beside its field (none for a one-grid survey)."""
    return tuple(survey_attrs(path).get(S.LAYERS, ()))


def require_layers(path: str | Path, names: tuple[str, ...]) -> None:
    """Raise InputError naming each of ``names`` that is neither a channel of the field nor a layer the
    survey store holds (a model of a stack applied to a survey without one of its layers)."""
    layers = survey_layers(path)
    missing = [n for n in names if n not in layers and n not in CHANNELS]
    if missing:
        raise InputError(f"{path}: has no layer {', '.join(repr(n) for n in missing)} (the model reads "
                         f"{', '.join(names)}; the survey holds {', '.join((S.FIELD, *layers))}); ingest the "
                         "survey with the same layers")


def open_inputs(layout: Layout, names: tuple[str, ...]) -> list:
    """The 2-D arrays of the model's input grids, in order: ``field`` and the stack's layers from
    survey.zarr, derived channels from inputs.zarr (which must be complete: see :mod:`magpipe.inputs`).

    Each is a (y, x) float32 Zarr array in its own units (NaN = no data), read only where sliced.
    Raises InputError naming a layer the survey does not hold.
    """
    require_layers(layout.survey, names)
    if any(n in CHANNELS and n != S.FIELD for n in names):
        require_complete(layout.inputs)
    return [open_array(layout.inputs, n) if n in CHANNELS and n != S.FIELD
            else open_array(layout.survey, n) for n in names]
