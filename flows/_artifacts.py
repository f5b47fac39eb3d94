"""Artifacts for the Prefect UI, built from the plain data the library returns."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from magpipe.io.location import as_path

MAPS = (("class_map", "class map"), ("confidence", "confidence"), ("anomaly", "anomaly (reconstruction error)"))


def artifact_key(*parts: str) -> str:
    """Artifact keys may hold only lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def report_artifact(out: Path, report: dict, survey: str) -> str:
    """report.md of the run in ``out`` as one markdown document for the dashboard: every section, each figure
    it shows inlined (the UI cannot follow a relative path), under a title naming the survey and what the
    map uses."""
    text = (out / "report.md").read_text()
    body = text.split("\n", 1)[1] if text.startswith("# ") else text  # report.md's own title, replaced

    def inline(m: re.Match) -> str:
        png = out / m[2]
        return f"![{m[1]}]({_data_uri(png)})" if png.exists() else m[0]

    features = (report.get("deployed") or {}).get("features", "ae")
    title = f"# {survey}: the map ({features} features) against its controls (spatial holdout)"
    return title + "\n" + re.sub(r"!\[([^\]]*)\]\(([\w.-]+\.png)\)", inline, body) + f"\n\nOutputs: `{out}`\n"


def publish_report(report: dict, out: str | Path, survey: str) -> None:
    """The whole report (report.md, its figures inlined), the map's per-class table, and the PNG maps, keyed by
    survey."""
    out = as_path(out)
    maps = [(out / f"{name}.png", title) for name, title in MAPS if (out / f"{name}.png").exists()]
    md = report_artifact(out, report, survey)
    create_markdown_artifact(md, key=artifact_key(survey, "report"), description=f"magpipe report for {survey}")
    per = report.get("per_class") or {}
    rows = [{"class": c, **{k: round(v, 4) if isinstance(v, float) else v for k, v in per.get(c, {}).items()},
             "f1_ae": round(report["f1"]["ae"][c], 4), "f1_raw": round(report["f1"]["raw"][c], 4)}
            for c in report["classes"]]
    create_table_artifact(rows, key=artifact_key(survey, "class-metrics"),
                          description="the map's per-class scores (first split's test cells), AE's and raw's F1")
    for png, title in maps:
        create_image_artifact(_data_uri(png), key=artifact_key(survey, png.stem),
                              description=f"{survey}: {title}")


class TileProgress:
    """A progress artifact updated as tiles finish (at most ~20 updates per run)."""

    def __init__(self, survey: str):
        self.id = create_progress_artifact(0.0, key=artifact_key(survey, "classify-progress"),
                                           description=f"tiles of {survey} classified")
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        pct = 100.0 * done / max(total, 1)
        if pct - self._last >= 5 or done == total:
            update_progress_artifact(self.id, pct, description=f"{done}/{total} tiles")
            self._last = pct
