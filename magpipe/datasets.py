"""The small demo dataset shipped inside the package.

magpipe ships a 2 km grid of the BGS aeromagnetic survey of Great Britain
with bedrock-geology labels on the same grid, so examples, tests and the CLI
work offline. ``scripts/make_britain_sample.py`` builds it from the source
data; ``magpipe/data/README.md`` documents how.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from magpipe.errors import InputError

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
        GeoTIFF of the total-field magnetic anomaly (nT, float32, NaN = no data).
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


def read_class_table(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read a class table CSV into ``{code: name}``.

    The table needs a ``code`` column of integers; the name is the first other
    column holding text, so tables with extra numeric columns (counts, colours)
    still work.

    Parameters
    ----------
    path
        CSV file with a header row.

    Returns
    -------
    dict[int, str]
        Class names by label code, in file order.

    Raises
    ------
    InputError
        If the file is missing, has no ``code`` column or no text column, or a
        code is not an integer.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    columns = list(rows[0]) if rows else []
    if "code" not in columns:
        raise InputError(f"{path}: no 'code' column (columns: {', '.join(columns) or 'none'})")
    name_col = next((c for c in columns if c != "code" and not _all_numbers(rows, c)), None)
    if name_col is None:
        raise InputError(f"{path}: no text column to name the classes")
    try:
        return {int(row["code"]): row[name_col].strip() for row in rows}
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: class codes must be integers ({err})") from err


def _all_numbers(rows: list[dict[str, str]], column: str) -> bool:
    try:
        for row in rows:
            float(row[column])
    except (TypeError, ValueError):
        return False
    return True
