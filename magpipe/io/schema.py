"""The on-disk schema of a run: where each output lives and the attribute names stores carry.

Every module that reads or writes a run names paths through :class:`Layout` and
attributes through the constants here, so renaming one is a change in one place.

Layout of an output directory::

    OUT/config.json        the full config of the run (inputs and method; see magpipe.config)
    OUT/survey.zarr        field (float32, y/x), the stack's layers (float32, y/x, by name), valid (uint8:
                           every layer has data), labels (int16, 0 = unlabelled), CRS
    OUT/inputs.zarr        derived channels (dz, thd, tilt, asa) when patches.inputs names any
    OUT/patch_size.json    with patches.patch_px: auto, the size chosen on validation and its table
    OUT/patches.zarr       patch (n, C, p, p): raw training patches of C inputs; row/col/x/y
    OUT/model/             autoencoder.pt, svm.skops, metadata.json (see magpipe.bundle)
    OUT/classified.zarr    class (int16, 0 = no data), confidence, anomaly (float32)
    OUT/similar.zarr       similarity (float32) to the last query of `magpipe similar`
    OUT/report.json, OUT/report.md, OUT/*.png, OUT/similar.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from magpipe.io.location import as_path

# --- every store --------------------------------------------------------------------------------
COMPLETE = "magpipe_complete"  # true once the last byte is written
HASH = "magpipe_hash"  # content hash of the stage's inputs and config
VERSION = "magpipe_version"
SOURCE = "source"  # file name the store was made from

# --- survey.zarr ----------------------------------------------------------------------------------
SOURCE_HASH = "source_hash"
SCALING_MEAN = "scaling_mean"  # standardisation of the field (nT), fitted on its valid cells
SCALING_STD = "scaling_std"
CHUNK_PX = "chunk_px"
CRS_WKT = "crs_wkt"
CLASSES = "classes"  # class names; code k (1-based) is classes[k - 1]
LABELS_SOURCE = "labels_source"
LABELS_HASH = "labels_hash"  # content hash of the labels on this survey
LAYERS = "layers"  # names of the stack's further layers (variables beside the field), in order
LAYER_SOURCES = "layer_sources"  # name -> {source, band, resampling, source_hash}
LAYER_SCALINGS = "layer_scalings"  # name -> [centre, scale, clip] (robust; see magpipe.features)

# --- inputs.zarr ----------------------------------------------------------------------------------
CHANNELS = "channels"
DEPTH_PX = "depth_px"
SCALINGS = "scalings"  # channel -> [mean, std]

# --- patches.zarr ---------------------------------------------------------------------------------
PATCH_PX = "patch_px"
SURVEY_HASH = "survey_hash"
INPUTS = "inputs"

# --- tiled outputs (classified.zarr, similar.zarr) ------------------------------------------------
TILE_PX = "tile_px"
TILE_DONE = "tile_done"  # (tile_y, tile_x) uint8, 1 once a tile's every variable is written

# --- variables ------------------------------------------------------------------------------------
FIELD = "field"
VALID = "valid"
LABELS = "labels"
NODATA_CLASS = 0  # class code of cells with no data (classes are 1..K)


@dataclass(frozen=True)
class Layout:
    """Paths of one run's outputs, all under ``root``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", as_path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def survey(self) -> Path:
        return self.root / "survey.zarr"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs.zarr"

    @property
    def patches(self) -> Path:
        return self.root / "patches.zarr"

    @property
    def patch_size(self) -> Path:
        return self.root / "patch_size.json"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def classified(self) -> Path:
        return self.root / "classified.zarr"

    @property
    def similar(self) -> Path:
        return self.root / "similar.zarr"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def similar_json(self) -> Path:
        return self.root / "similar.json"

    def figure(self, name: str) -> Path:
        """``OUT/<name>.png``: class_map, confidence, anomaly, confusion, embedding, similar."""
        return self.root / f"{name}.png"

    def checkpoint(self, stage_hash: str) -> Path:
        """Training checkpoint of one training configuration (removed once the bundle is saved)."""
        return self.root / f"train-{stage_hash[:12]}.ckpt"
