"""The small demo dataset shipped inside the package.

magpipe ships a 2 km grid of the BGS aeromagnetic survey of Great Britain
with bedrock-geology labels on the same grid, so examples, tests and the CLI
work offline. ``scripts/make_britain_sample.py`` builds it from the source
data; ``magpipe/data/README.md`` documents how.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from magpipe.io.labels import read_class_table

__all__ = ["BRITAIN_ATTRIBUTION", "BritainSample", "britain_sample", "read_class_table"]

BRITAIN_ATTRIBUTION = (
    "Magnetic data: Open Government Licence. "
    "Contains British Geological Survey materials © UKRI 2021. "
    "Geology: BGS Geology 625k (DiGMapGB-625), Open Government Licence. "
    "Contains British Geological Survey materials © UKRI."
)

_SURVEY = "britain_tmi_2km.tif"
_LABELS = "britain_labels_2km.tif"
_CLASSES = "britain_classes.csv"


@dataclass(frozen=True)
class BritainSample:
    """Paths of the shipped Britain sample and the attribution its licence requires.

    Attributes
    ----------
    survey
        GeoTIFF of the total-field magnetic anomaly (nT, float32, NaN = no data) on the
        British National Grid (EPSG:27700, metres), 2 km cells.
    labels
        GeoTIFF of uint8 rock classes on the same grid (0 = unlabelled).
    classes
        CSV with ``code,name,description`` for the label codes.
    attribution
        Text to show wherever the data or results derived from it are shown.
    """

    survey: Path
    labels: Path
    classes: Path
    attribution: str


def britain_sample() -> BritainSample:
    """Locate the Britain sample shipped in ``magpipe/data``.

    Returns
    -------
    BritainSample
        Paths to the survey grid, label grid and class table.

    Raises
    ------
    FileNotFoundError
        If a file is missing, e.g. in a checkout where the sample was not built.
    """
    data = Path(str(files("magpipe") / "data"))
    paths = {name: data / name for name in (_SURVEY, _LABELS, _CLASSES)}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"magpipe's Britain sample is incomplete: {', '.join(missing)} not found in {data}; "
            "rebuild it with scripts/make_britain_sample.py"
        )
    return BritainSample(
        survey=paths[_SURVEY],
        labels=paths[_LABELS],
        classes=paths[_CLASSES],
        attribution=BRITAIN_ATTRIBUTION,
    )


def demo_config():
    """The demo's settings: 15 px patches (30 km on the 2 km grid) and 6000 training patches."""
    from magpipe.config import RunConfig

    return RunConfig.model_validate({"patches": {"patch_px": 15, "n_patches": 6000}})
