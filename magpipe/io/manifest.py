"""A survey delivered as a folder of layers: the small manifest that says which file is which.

A survey that lands as a folder (the magnetic grid, the gamma-ray channels, a DEM ...) carries a
``survey.yaml`` naming them, paths relative to the folder::

    survey: mag_tmi.tif            # the reference grid and the magnetic layer
    layers:                        # optional: name -> file (FILE#BAND for one band) or {path, band, resampling}
      K: gamma_k.tif
      eTh: gamma_th.tif
      SRTM: {path: dem.tif, resampling: bilinear}
    labels: geology.gpkg           # optional: without labels the survey is classified with an existing model
    label_field: UNIT              # for vector labels

The landing watch (``flows/watch.py``) reads it with :func:`read_manifest`; anything wrong is one line
naming the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from magpipe.config import parse_layers
from magpipe.errors import ConfigError, InputError
from magpipe.io.location import as_path, remote_errors

MANIFEST = "survey.yaml"
KEYS = ("survey", "layers", "labels", "label_field", "classes")


@dataclass(frozen=True)
class Delivery:
    """What a survey folder holds: the inputs of a run (paths resolved against the folder)."""

    folder: Path
    survey: str
    layers: dict | None
    labels: str | None
    label_field: str | None
    classes: str | None

    def inputs(self) -> dict:
        """The keyword arguments of :meth:`magpipe.config.RunConfig.with_inputs`."""
        return {"survey": self.survey, "layers": self.layers, "labels": self.labels,
                "label_field": self.label_field, "classes": self.classes}


def is_delivery(path: str | Path) -> bool:
    """True for a folder holding a survey manifest."""
    p = as_path(path)
    with remote_errors(p, kind=InputError):
        return p.is_dir() and (p / MANIFEST).exists()


def read_manifest(folder: str | Path) -> Delivery:
    """The survey folder's manifest, its files checked to exist.

    Raises InputError naming the manifest for unreadable YAML, a missing or unknown key, a file that is
    not there, or a layer entry of the wrong form.
    """
    folder = as_path(folder)
    path = folder / MANIFEST
    try:
        with remote_errors(path, kind=InputError):
            data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({getattr(exc, 'problem', None) or 'unreadable'})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the survey manifest ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a survey manifest is a mapping of {', '.join(KEYS)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(KEYS)})")
    if not isinstance(data.get("survey"), str):
        raise InputError(f"{path}: names no survey file (survey: FILE)")

    def local(name: str, value: str) -> str:
        if not (folder / value).exists():
            raise InputError(f"{path}: {name} {value!r} is not in {folder}")
        return str(folder / value)

    layers = data.get("layers")
    if layers is not None:
        try:
            parsed = parse_layers(layers)
        except ConfigError as exc:
            raise InputError(f"{path}: {exc}") from None
        layers = {n: {**src.model_dump(), "path": local(f"layer {n}", src.path)} for n, src in parsed.items()}
    files = {k: local(k, data[k]) if isinstance(data.get(k), str) else None for k in ("survey", "labels", "classes")}
    return Delivery(folder, files["survey"], layers, files["labels"], data.get("label_field"), files["classes"])
