"""Build the Britain demo sample shipped in ``magpipe/data``.

Grids the BGS aeromagnetic line data of Great Britain onto British National
Grid and rasterises BGS 625k bedrock geology onto the same grid as a few
magnetically meaningful rock classes, so magpipe has a small, real,
labelled survey to train and test on.

Usage (from the repository root)::

    python scripts/make_britain_sample.py                      # 2 km, into magpipe/data
    python scripts/make_britain_sample.py --spacing 1000 --out out/britain-1km
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio.features
import shapely
import xarray as xr

from magpipe.datasets import BRITAIN_ATTRIBUTION
from magpipe.io.lines import grid_line_data, read_line_data

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "data" / "britain-magnetic"
PACKAGE_DATA = REPO / "magpipe" / "data"
PACKAGE_SPACING = 2000
CRS = "EPSG:27700"
MAGNETIC_FILE = "britain-magnetic.csv.xz"
GEOLOGY_FILE = "bgs_625k_bedrock_geology.gpkg"

# RCS_D (BGS rock composition) -> class. Each unit goes by its dominant,
# first-named lithology. Igneous rocks carry most of the magnetite, so they
# are split by composition; metamorphic basement is often magnetic; sedimentary
# rocks, clastic or carbonate, are all weakly magnetic, so magnetics cannot tell
# them apart and they form one class.
CLASSES: dict[int, tuple[str, list[str]]] = {
    1: (
        "mafic_igneous",
        [
            "ANORTHOSITE",
            "DOLERITE AND THOLEIITIC BASALT",
            "MAFIC IGNEOUS-ROCK",
            "MAFIC LAVA",
            "MAFIC LAVA AND MAFIC TUFF",
            "MAFIC TUFF",
            "MAFITE",
            "ULTRAMAFITITE",
        ],
    ),
    2: (
        "felsic_igneous",
        [
            "FELSIC LAVA",
            "FELSIC LAVA AND FELSIC TUFF",
            "FELSIC TUFF",
            "FELSIC-ROCK",
            "SYENITIC-ROCK",
        ],
    ),
    3: (
        "metamorphic",
        [
            "DIAMICTITE",
            "GNEISS",
            "GNEISSOSE PSAMMITE AND GNEISSOSE SEMIPELITE",
            "GNEISSOSE SEMIPELITE AND GNEISSOSE PSAMMITE",
            "GRAPHITIC PELITE, CALCAREOUS PELITE, CALCSILICATE-ROCK AND PSAMMITE",
            "HORNBLENDE SCHIST",
            "MAFIC GNEISS",
            "METALIMESTONE",
            "METASEDIMENTARY ROCK",
            "METAVOLCANICLASTIC IGNEOUS-ROCK AND METAVOLCANICLASTIC SEDIMENTARY-ROCK",
            "MICA SCHIST",
            "MIGMATITIC ROCK",
            "PELITE",
            "PSAMMITE",
            "PSAMMITE AND PELITE",
            "PSAMMITE AND SEMIPELITE",
            "PSAMMITE, PELITE, SEMIPELITE AND CALCSILICATE-ROCK",
            "PSAMMITE, SEMIPELITE AND PELITE",
            "QUARTZITE",
            "SCHIST",
            "SEMIPELITE",
            "SEMIPELITE AND PELITE",
        ],
    ),
    4: (
        "sedimentary",
        [
            "BRECCIA AND METABRECCIA",
            "BRECCIA, CONGLOMERATE AND SANDSTONE",
            "CLAY AND LIGNITE",
            "CLAY, SILT AND SAND",
            "CLAY, SILT, SAND AND GRAVEL",
            "CONGLOMERATE AND [SUBEQUAL/SUBORDINATE] SANDSTONE, INTERBEDDED",
            "CONGLOMERATE, SANDSTONE, SILTSTONE AND MUDSTONE",
            "GRAVEL, SAND, SILT AND CLAY",
            "MUDSTONE, CHERT AND SMECTITE-CLAYSTONE",
            "MUDSTONE, SANDSTONE AND CONGLOMERATE",
            "MUDSTONE, SANDSTONE AND LIMESTONE",
            "MUDSTONE, SILTSTONE AND SANDSTONE",
            "MUDSTONE, SILTSTONE, LIMESTONE AND SANDSTONE",
            "MUDSTONE, SILTSTONE, SANDSTONE, COAL, IRONSTONE AND FERRICRETE",
            "QUARTZ-ARENITE",
            "SAND, SILT AND CLAY",
            "SANDSTONE AND CONGLOMERATE, INTERBEDDED",
            "SANDSTONE AND MUDSTONE",
            "SANDSTONE AND SILTSTONE, INTERBEDDED",
            "SANDSTONE AND SUBORDINATE BRECCIA",
            "SANDSTONE AND [SUBEQUAL/SUBORDINATE] ARGILLACEOUS ROCKS, INTERBEDDED",
            "SANDSTONE AND [SUBEQUAL/SUBORDINATE] LIMESTONE, INTERBEDDED",
            "SANDSTONE WITH SUBORDINATE ARGILLACEOUS ROCKS AND LIMESTONE",
            "SANDSTONE WITH SUBORDINATE CONGLOMERATE AND SILTSTONE",
            "SANDSTONE WITH SUBORDINATE CONGLOMERATE, SILTSTONE AND MUDSTONE",
            "SANDSTONE, BRECCIA AND CONGLOMERATE",
            "SANDSTONE, CONGLOMERATE AND [SUBORDINATE] ARGILLACEOUS ROCKS",
            "SANDSTONE, LIMESTONE AND ARGILLACEOUS ROCKS",
            "SANDSTONE, MUDSTONE, SILTSTONE AND CONGLOMERATE",
            "SANDSTONE, SILTSTONE AND MUDSTONE",
            "SEDIMENTARY ROCK CYCLES, CLACKMANNAN GROUP TYPE",
            "SEDIMENTARY ROCK CYCLES, STRATHCLYDE GROUP TYPE",
            "SILTSTONE AND SANDSTONE WITH SUBORDINATE MUDSTONE",
            "WACKE",
            "CHALK",
            "CHALK AND SANDSTONE",
            "DOLOMITISED LIMESTONE AND DOLOMITE",
            "DOLOSTONE",
            "LIMESTONE",
            "LIMESTONE AND CALCAREOUS SANDSTONE",
            "LIMESTONE AND MUDSTONE, INTERBEDDED",
            "LIMESTONE WITH SUBORDINATE SANDSTONE AND ARGILLACEOUS ROCKS",
            "LIMESTONE, ARGILLACEOUS ROCKS AND SUBORDINATE SANDSTONE, INTERBEDDED",
            "LIMESTONE, MUDSTONE AND CALCAREOUS MUDSTONE",
            "LIMESTONE, MUDSTONE, SANDSTONE AND SILTSTONE, WITH SUBORDINATE CHERT, COAL AND "
            "CONGLOMERATE",
            "LIMESTONE, SANDSTONE, SILTSTONE AND MUDSTONE",
        ],
    ),
}

DESCRIPTIONS = {
    1: "Mafic and ultramafic igneous rocks (basalt, dolerite, gabbro); often strongly magnetic",
    2: "Felsic and intermediate igneous rocks (granite, syenite, rhyolite, felsic tuff)",
    3: "Metamorphic basement (Lewisian gneiss, Moine and Dalradian metasediments)",
    4: "Sedimentary rocks, clastic and carbonate (sandstone, mudstone, limestone, chalk); weakly magnetic",
}

# Units left unlabelled (0) on purpose: their magnetic signature is not one class.
LEFT_OUT = {
    "LAVA AND TUFF": "volcanic rocks of unknown composition",
    "LAVA, TUFF, VOLCANICLASTIC ROCK AND SEDIMENTARY ROCK": "mixed volcanic and sedimentary",
    "MYLONITIC-ROCK AND FAULT-BRECCIA": "fault-zone rocks, not a lithology",
    "PYROCLASTIC-ROCK": "volcanic vent fills of unknown composition",
    "SERPENTINITE, METABASALT, METALIMESTONE AND PSAMMITE": "mixed ophiolitic complex",
}


def spacing_tag(spacing: float) -> str:
    """Name a spacing for file names: 2000 -> '2km', 500 -> '500m'."""
    return f"{spacing / 1000:g}km" if spacing % 1000 == 0 else f"{spacing:g}m"


def class_of(rcs_d: list[str]) -> list[int]:
    """Map RCS_D values to class codes, refusing any value not decided on above."""
    lookup = {name: code for code, (_, names) in CLASSES.items() for name in names}
    lookup.update(dict.fromkeys(LEFT_OUT, 0))
    unknown = sorted(set(rcs_d) - set(lookup))
    if unknown:
        raise SystemExit(f"RCS_D values with no class decided: {unknown}")
    return [lookup[value] for value in rcs_d]


def rasterise_labels(geology: Path, survey: xr.DataArray) -> xr.DataArray:
    """Burn rock classes onto the survey grid; 0 off the map or where the survey has no data.

    Polygons are repaired first: over half of them self-intersect (from the tile
    dissolve), which leaves spurious unlabelled holes when rasterised as is.
    """
    units = gpd.read_file(geology, layer="bedrock").to_crs(CRS).sort_values("MSLINK")
    codes = class_of(units["RCS_D"].tolist())
    burnt = rasterio.features.rasterize(
        zip(shapely.make_valid(units.geometry.to_numpy()), codes),
        out_shape=survey.shape,
        transform=survey.rio.transform(),
        fill=0,
        all_touched=False,
        dtype="uint8",
    )
    burnt[~np.isfinite(survey.to_numpy())] = 0
    labels = xr.DataArray(burnt, coords=survey.coords, dims=survey.dims, name="labels")
    labels = labels.rio.write_crs(CRS).rio.write_transform(survey.rio.transform())
    return labels.rio.write_nodata(0, encoded=False)


def class_stats(survey: xr.DataArray, labels: xr.DataArray) -> list[dict[str, object]]:
    """Pixel count and field statistics per class, for the printout and README."""
    field = survey.to_numpy()
    lab = labels.to_numpy()
    rows = []
    for code, (name, _) in CLASSES.items():
        values = field[lab == code]
        rows.append(
            {
                "code": code,
                "name": name,
                "pixels": int(values.size),
                "median": float(np.median(values)) if values.size else float("nan"),
                "std": float(np.std(values)) if values.size else float("nan"),
            }
        )
    return rows


def write_classes(path: Path) -> None:
    """Write ``code,name,description``; the description lists the RCS_D values used."""
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["code", "name", "description"])
        for code, (name, names) in CLASSES.items():
            writer.writerow([code, name, f"{DESCRIPTIONS[code]}. RCS_D: {'; '.join(names)}"])


def write_readme(
    path: Path,
    files: dict[str, Path],
    survey: xr.DataArray,
    stats: list[dict[str, object]],
    n_points: int,
    command: str,
) -> None:
    """Document what the files are, how they were made, and their licence."""
    spacing = survey.rio.resolution()[0]
    left, bottom, right, top = survey.rio.bounds()
    field = survey.to_numpy()
    finite = np.isfinite(field)
    total = sum(int(row["pixels"]) for row in stats)
    class_rows = "\n".join(
        f"| {row['code']} | {row['name']} | {row['pixels']} "
        f"| {100 * int(row['pixels']) / total:.1f} | {row['median']:.0f} | {row['std']:.0f} |"
        for row in stats
    )
    left_out = "\n".join(f"  - {name}: {why}" for name, why in LEFT_OUT.items())
    text = f"""# Britain sample: aeromagnetic grid and bedrock-geology labels

A small, real, labelled survey so magpipe's examples and tests run offline
(`magpipe.datasets.britain_sample()`).

| file | what |
|---|---|
| `{files["survey"].name}` | Total-field magnetic anomaly, nT, float32, NaN = no data |
| `{files["labels"].name}` | Rock class per cell, uint8, 0 = unlabelled (GeoTIFF nodata 0) |
| `{files["classes"].name}` | `code,name,description`; descriptions list the BGS `RCS_D` values |

Both GeoTIFFs share one grid: British National Grid (EPSG:27700), {spacing:g} m cells,
{survey.shape[0]} rows x {survey.shape[1]} columns, bounds (W, S, E, N) =
({left:.0f}, {bottom:.0f}, {right:.0f}, {top:.0f}), north up, cell edges on multiples of
{spacing:g} m. {int(finite.sum())} of {field.size} cells have data
(field {np.nanmin(field):.0f} to {np.nanmax(field):.0f} nT).

## How it was made

From the repository root, with the source data (`{MAGNETIC_FILE}`, `{GEOLOGY_FILE}`;
see their `SOURCE.md`) in `../shared/data/britain-magnetic`:

    {command}

- Magnetic grid: the {n_points:,} BGS line-data points (longitude, latitude,
  `total_field_anomaly_nt`) are projected to EPSG:27700, reduced to the median of
  each cell, and interpolated linearly between cell medians (Delaunay triangulation,
  `magpipe.io.lines.grid_line_data`). Cells more than {2.5 * spacing:g} m from any
  point are NaN. Linear interpolation was chosen because it predicted held-out
  flight lines best (cubic overshoots between lines; nearest-neighbour averaging
  blurs anomalies).
- Labels: BGS 625k bedrock polygons rasterised at cell centres
  (`rasterio.features.rasterize`, `all_touched=False`), with the rock composition
  `RCS_D` grouped by each unit's dominant (first-named) lithology. Offshore cells,
  cells without magnetic data, and these units are 0:
{left_out}

## Classes

| code | name | pixels | % of labelled | median field (nT) | std field (nT) |
|---|---|---|---|---|---|
{class_rows}

## Licence and attribution

- Magnetic data: Open Government Licence.
  "Contains British Geological Survey materials © UKRI 2021."
- Geology (BGS Geology 625k, DiGMapGB-625): Open Government Licence.
  "Contains British Geological Survey materials © UKRI."

## Citations

- British Geological Survey, GB aeromagnetic survey,
  https://www.bgs.ac.uk/datasets/gb-aeromagnetic-survey/
- Fatiando a Terra Project (2022), Britain aeromagnetic data (v1), Zenodo,
  doi:10.5281/zenodo.5879260
- British Geological Survey, BGS Geology 625k (DiGMapGB-625),
  https://www.bgs.ac.uk/datasets/bgs-geology-625k-digmapgb/
"""
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Build the sample and print what was written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="source data folder")
    parser.add_argument("--spacing", type=float, default=PACKAGE_SPACING, help="cell size, m")
    parser.add_argument("--out", type=Path, help=f"output folder (default {PACKAGE_DATA})")
    args = parser.parse_args(argv)
    if args.out is None and args.spacing != PACKAGE_SPACING:
        parser.error(f"--out is needed unless --spacing is {PACKAGE_SPACING} (the shipped grid)")
    out = args.out or PACKAGE_DATA
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    points = read_line_data(args.shared / MAGNETIC_FILE)
    survey = grid_line_data(points, spacing=args.spacing, crs=CRS)
    labels = rasterise_labels(args.shared / GEOLOGY_FILE, survey)
    survey.attrs.update(long_name="total-field magnetic anomaly", attribution=BRITAIN_ATTRIBUTION)
    labels.attrs.update(long_name="rock class", attribution=BRITAIN_ATTRIBUTION)

    tag = spacing_tag(args.spacing)
    files = {
        "survey": out / f"britain_tmi_{tag}.tif",
        "labels": out / f"britain_labels_{tag}.tif",
        "classes": out / "britain_classes.csv",
    }
    tiff = {"compress": "DEFLATE", "zlevel": 9, "tiled": True, "blockxsize": 256, "blockysize": 256}
    survey.rio.to_raster(files["survey"], dtype="float32", predictor=3, **tiff)
    labels.rio.to_raster(files["labels"], dtype="uint8", **tiff)
    write_classes(files["classes"])
    stats = class_stats(survey, labels)
    command = "python scripts/make_britain_sample.py" + (
        "" if args.out is None else f" --spacing {args.spacing:g} --out {args.out}"
    )
    write_readme(out / "README.md", files, survey, stats, len(points), command)
    elapsed = time.perf_counter() - start

    valid = int(np.isfinite(survey).sum())
    print(f"grid {survey.shape} at {args.spacing:g} m, {valid} cells with data")
    for row in stats:
        code, name, pixels, median = (row[k] for k in ("code", "name", "pixels", "median"))
        print(f"  {code} {name:<22} {pixels:>7} px  median {median:6.1f} nT")
    for path in [*files.values(), out / "README.md"]:
        print(f"  {path.name:<26} {path.stat().st_size / 1024:8.1f} KiB")
    print(f"done in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
