"""The one typed configuration tree of a magpipe run.

Every stage reads its own section, and a section's JSON is part of that stage's content
hash, so a changed option recomputes exactly the stages it affects. Every stage also
records the tree (inputs included, runtime excluded) as ``OUT/config.json``, a valid
config file: ``magpipe run --config OUT/config.json --out NEW`` repeats the run.

``runtime`` (Dask scheduler, workers, torch device) says where work runs, not what it
computes: it never enters a content hash and is not saved with the run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from magpipe.derived import CHANNELS
from magpipe.errors import ConfigError
from magpipe.io.location import absolute, as_path, remote_errors

SCHEMA_VERSION = 2
FEATURE_ATOMS = ("ae", "random", "stats", "raw")  # feature sets by name; "a+b" puts sets side by side


def check_feature_name(name: str) -> str:
    """A feature-set name: ``auto``, one of :data:`FEATURE_ATOMS`, or distinct ones joined by '+'.

    Raises ValueError naming the allowed names otherwise.
    """
    parts = name.split("+")
    if name != "auto" and (any(p not in FEATURE_ATOMS for p in parts) or len(set(parts)) != len(parts)):
        raise ValueError(f"unknown feature set {name!r}: use 'auto', one of {list(FEATURE_ATOMS)}, or several "
                         "joined by '+' (e.g. 'ae+stats')")
    return name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


RESAMPLING = ("bilinear", "nearest", "cubic", "average", "mode", "min", "max", "med")
LAYER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESERVED_NAMES = frozenset(CHANNELS) | {"valid", "labels"}  # variables a survey store already holds


class LayerSource(_Section):
    """One layer of a survey stack: a grid beside the magnetic one, brought onto the survey's cells."""

    path: str = Field(description="Grid file (any format a survey may be), or a URL.")
    band: int | None = Field(None, ge=1, description="1-based band; None reads every band of a multi-band file, "
                             "as layers NAME_1 .. NAME_n.")
    resampling: Literal[RESAMPLING] = Field(
        "bilinear", description="How values are resampled onto the survey's cells where the layer's grid differs: "
        "'bilinear' for continuous data, 'nearest' or 'mode' for classes, 'average' for a much finer layer.")


def parse_layer(text: str) -> tuple[str, str]:
    """``NAME=PATH`` (PATH may end in ``#BAND``) -> (name, path); ValueError naming the form otherwise."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--layer {text!r}: expected NAME=PATH or NAME=PATH#BAND")
    return name.strip(), path.strip()


def _layer_source(value: str | dict | LayerSource) -> LayerSource:
    if isinstance(value, str):
        path, sep, band = value.rpartition("#")
        if sep and band.isdigit():
            return LayerSource(path=path, band=int(band))
        return LayerSource(path=value)
    return value if isinstance(value, LayerSource) else LayerSource.model_validate(value)


class InputsConfig(_Section):
    survey: str | None = Field(None, description="Survey file: GeoTIFF (any GDAL raster), NetCDF, Zarr or CSV/XYZ "
                               "line data. It is the reference grid (its cells, CRS and extent) and the magnetic "
                               "layer, `field`.")
    layers: dict[str, LayerSource] | None = Field(
        None, description="Further layers of the survey (gamma-ray, terrain, imagery): name -> path "
        "(`PATH#BAND` for one band) or {path, band, resampling}. Each is resampled onto the survey's cells at "
        "ingest; a cell is valid where every layer has data; every stage reads the stack.")
    labels: str | None = Field(None, description="Label raster, or polygons/points (GeoPackage, GeoJSON, Shapefile).")
    label_field: str | None = Field(None, description="Attribute holding the class of vector labels.")
    classes: str | None = Field(None, description="CSV naming label raster codes (code,name).")
    groups: dict[str, list[str]] | None = Field(
        None, description="Layer groups the report scores the map without, one group at a time: group -> layer "
        "names (a multi-band layer by its own name). Layers not named here are grouped by name: magnetic (the "
        "field and its derived channels), radiometric (K, eTh, eU, ratios, CT), terrain (SRTM, DEM), imagery "
        "(Landsat, Sentinel), else a group of their own.")

    @field_validator("layers", mode="before")
    @classmethod
    def _layer_sources(cls, v):
        if v is None:
            return None
        if not isinstance(v, dict):
            raise ValueError("layers must map names to paths (NAME: PATH) or to {path, band, resampling}")
        return {k: _layer_source(x) for k, x in v.items()}

    @field_validator("layers")
    @classmethod
    def _layer_names(cls, v: dict[str, LayerSource] | None) -> dict[str, LayerSource] | None:
        for name in v or {}:
            if not LAYER_NAME.match(name):
                raise ValueError(f"layer name {name!r}: use letters, digits and '_', starting with a letter")
            if name in RESERVED_NAMES:
                raise ValueError(f"layer name {name!r} is taken (by the survey's own grids: "
                                 f"{', '.join(sorted(RESERVED_NAMES))}); choose another")
        return v or None


class IngestConfig(_Section):
    nodata: float | None = Field(
        None, description="Sentinel value marking no-data cells, in addition to NaN and the file's own nodata."
    )
    band: int | None = Field(None, description="1-based band to read from a multi-band raster.")
    variable: str | None = Field(None, description="Variable to read from a NetCDF/Zarr file with several.")
    spacing: float | None = Field(
        None, gt=0, description="Grid spacing for line (point) data, in units of `crs` (m for projected CRSs)."
    )
    crs: str | None = Field(
        None, description="Target CRS for line data (e.g. EPSG:27700); also assigned to grids that carry none."
    )
    chunk_px: int = Field(1024, ge=64, description="Dask/shard chunk side of the stored grid, in pixels.")


class PatchConfig(_Section):
    patch_px: int | Literal["auto"] = Field(
        "auto", description="Patch side in pixels, odd so a patch is centred on its pixel; or 'auto': the one of "
        "`auto_sizes` that validates best (blocked CV on the training region, a quick encoder per size)."
    )
    auto_sizes: tuple[int, ...] = Field(
        (9, 15, 31, 47), description="Patch sizes 'auto' tries, those up to a quarter of the survey's shorter side."
    )
    n_patches: int = Field(8000, ge=16, description="Training patches sampled from valid cells.")
    min_valid_fraction: float = Field(
        0.8, ge=0.0, le=1.0, description="Minimum share of valid cells in a training patch."
    )
    seed: int = Field(0, description="Seed of the patch sampler.")
    inputs: tuple[str, ...] = Field(
        ("field",), description="Grids the autoencoder reads: 'field' and any derived channel of dz (vertical "
        "derivative), thd (total horizontal derivative), tilt, asa (analytic signal amplitude); derived ones "
        "need `pip install 'magpipe[derived]'`."
    )

    @field_validator("inputs")
    @classmethod
    def _known_inputs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [n for n in v if n not in CHANNELS]
        if bad or not v or len(set(v)) != len(v):
            raise ValueError(f"inputs must be distinct names from {list(CHANNELS)}, got {list(v)}")
        return v

    @field_validator("patch_px")
    @classmethod
    def _odd(cls, v: int | str) -> int | str:
        if v != "auto" and (v % 2 == 0 or v < 5):
            raise ValueError(f"patch_px must be odd and at least 5 so a patch is centred on a pixel, got {v}")
        return v

    @field_validator("auto_sizes")
    @classmethod
    def _odd_sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(p % 2 == 0 or p < 5 for p in v):
            raise ValueError(f"auto_sizes must be odd sizes of at least 5, got {list(v)}")
        return tuple(sorted(set(v)))


class ModelConfig(_Section):
    channels: tuple[int, ...] = Field(
        (8, 16, 32, 32), description="Output channels of each encoder layer (one dilated 3x3 conv per layer)."
    )
    hidden: int = Field(256, ge=8, description="Width of the decoder's hidden layer.")
    layers: tuple[int, ...] | None = Field(
        None, description="Encoder layers (0-based) whose activations become features; None = all."
    )
    objective: Literal["reconstruct", "masked", "masked_layers", "contrastive"] = Field(
        "masked", description="Self-supervised training objective: 'reconstruct' the patch (the paper's), "
        "'masked' (rebuild hidden blocks only; the default: best on validation on Britain 1 km, second to "
        "contrastive on Rondonia, see benchmarks/objectives.py), 'masked_layers' (for a survey stack: also "
        "hide whole layers and rebuild them from the others; 'masked' on one grid), or 'contrastive' (VICReg: "
        "nearby, flipped/rotated patches alike)."
    )
    readout: Literal["mean_centre", "mean_std_centre"] = Field(
        "mean_std_centre", description="Features of each layer: channel means over the patch and values at its "
        "centre ('mean_centre', the paper's), or also channel standard deviations ('mean_std_centre'; a layer "
        "whose map is 1x1 gives its centre once)."
    )
    epochs: int = Field(12, ge=1, description="Maximum training epochs.")
    batch_size: int = Field(128, ge=1, description="Patches per training batch.")
    learning_rate: float = Field(2e-3, gt=0, description="Adam learning rate.")
    patience: int = Field(3, ge=1, description="Epochs without validation improvement before stopping.")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of patches held out for validation loss.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="'auto' = bf16 mixed precision on CUDA, fp32 elsewhere."
    )
    seed: int = Field(0, description="Seed of weight initialisation and batch order.")
    anomaly_px: int = Field(7, ge=1, description="Side of the central window scored for reconstruction error.")


class SVMConfig(_Section):
    features: str = Field(
        "auto", description="Features the SVM classifies: 'ae' (the trained encoder), 'stats' (window "
        "statistics), 'raw' (the patch), 'random' (the untrained encoder), several joined by '+' (e.g. "
        "'ae+stats'), or 'auto': chosen from `candidates` by spatially blocked CV balanced accuracy on the "
        "training region (test blocks are never seen), by the one-standard-error rule: the first listed "
        "candidate within one standard error of the best."
    )
    candidates: tuple[str, ...] = Field(
        ("stats", "ae", "ae+stats"), description="Feature sets 'auto' chooses from, simplest first: a later one "
        "must beat every earlier one by more than the validation noise (one standard error) to be chosen."
    )
    stats_windows: Literal["auto", "patch", "wide"] = Field(
        "auto", description="How far window statistics look: 'patch' (windows of 3 to 11 cells, within the patch), "
        "'wide' (also 2p - 1 and 3p cells: context as wide as a geological unit), or 'auto': chosen by blocked CV "
        "balanced accuracy of `stats` on the first split's training region, by the one-standard-error rule "
        "('patch' first).")
    C: tuple[float, ...] = Field((0.1, 1.0, 10.0, 100.0, 1000.0), description="SVC C values searched by blocked CV.")
    gamma_scale: tuple[float, ...] = Field(
        (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0), description="RBF gamma values searched, as multiples of "
        "1/n_features (standardised features: 1/n_features is a kernel as wide as the data's spread)."
    )
    kernel: Literal["auto", "exact", "lowrank", "nystroem"] = Field(
        "auto", description="'exact' RBF SVC; 'lowrank': the same SVC on the RBF kernel approximated through "
        "n_components landmarks (Nystroem), whose cost per cell is its landmarks, not the support vectors; "
        "'nystroem': that approximation with a linear SVM (LinearSVC); or 'auto': exact, unless it keeps more "
        "support vectors than n_components and 'lowrank' at the same C and gamma validates within one standard "
        "error of it (blocked CV on the training region; both in the report)."
    )
    n_components: int = Field(300, ge=10, description="Landmarks of the low-rank kernels ('lowrank', 'nystroem').")
    class_weight: Literal["balanced", "prior"] = Field(
        "balanced", description="'balanced': classes weighted inversely to their labelled area (rare units are "
        "not outvoted; best balanced accuracy); 'prior': every cell alike (common units win close calls; best "
        "pixel accuracy)."
    )
    smooth_px: Literal["auto"] | int = Field(
        "auto", description="Radius (cells) over which the map averages the SVM's class scores before taking the "
        "highest (0 = none), or 'auto': the radius of `smooth_radii` with the best blocked-CV "
        "balanced accuracy on the training region, by the one-standard-error rule (smallest first)."
    )
    smooth_radii: tuple[int, ...] = Field(
        (0, 1, 2, 4, 8), description="Radii 'auto' chooses from; those up to one patch width (the CV gap) are tried."
    )
    max_per_class: int = Field(400, ge=5, description="Labelled training pixels kept per class (subsampled).")
    cv_folds: int = Field(3, ge=2, description="Spatially blocked CV folds for the C/gamma search.")
    seed: int = Field(0, description="Seed of subsampling and of Platt scaling.")


    @field_validator("features")
    @classmethod
    def _feature_name(cls, v: str) -> str:
        return check_feature_name(v)

    @field_validator("smooth_px")
    @classmethod
    def _radius(cls, v):
        if v != "auto" and v < 0:
            raise ValueError("smooth_px must be 'auto' or a radius in cells >= 0")
        return v

    @field_validator("smooth_radii")
    @classmethod
    def _radii(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or min(v) < 0:
            raise ValueError("smooth_radii must list one or more radii in cells >= 0")
        return tuple(sorted(set(v)))

    @field_validator("candidates")
    @classmethod
    def _candidate_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or "auto" in v:
            raise ValueError("candidates must name one or more feature sets (not 'auto')")
        return tuple(check_feature_name(n) for n in v)


REPORT_ONLY = {"evaluate": ("embedding",)}  # fields that change the report, never a model or a choice


class EvalConfig(_Section):
    block_patches: int = Field(
        3, ge=1, description="Side of a spatial split block, in patch widths."
    )
    gap_patches: float = Field(
        1.0, ge=1.0, description="Gap between training cells and held-out blocks (in the split and in every CV "
        "fold), in patch widths. One patch width keeps patches apart; features that read further (wide window "
        "statistics reach 1.5 patch widths) need 1.6 to keep a training cell's features off held-out cells.")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="Share of labelled blocks held out for testing.")
    max_test_pixels: int = Field(20000, ge=10, description="Test pixels scored (subsampled when more).")
    drop_small_classes: bool = Field(
        True, description="Finish what can be finished: a class with fewer than 2 training cells after the "
        "spatial split is left out of training, and one with no test cells is left out of the scores, each with a "
        "warning naming it (the report lists unscored classes). False: refuse the run instead."
    )
    splits: int = Field(
        5, ge=1, description="Random spatial splits (seeds seed, seed+1, ...) scored and averaged: one split's few "
        "test blocks move accuracy by points. The first is the deployed model's."
    )
    sparse_per_class: int = Field(
        30, ge=0, description="Also score AE and raw features trained on only this many labelled cells per class "
        "(the paper's sparse-label regime); 0 = skip."
    )
    sparse_repeats: int = Field(5, ge=1, description="Random draws of the sparse training cells per split, averaged.")
    layer_ablation: bool = Field(
        True, description="With two or more layer groups, also score the deployed feature set with each group's "
        "layers held at their mean (the encoder is not retrained), paired against the whole stack on the same "
        "splits: what each group adds. False skips it (one SVM fit per group and split).")
    top_k: int = Field(10, ge=1, description="Rows of the report's anomaly and label-next tables.")
    embedding: Literal["pca", "umap"] = Field(
        "pca", description="2-D view of the test cells' features in the report (embedding.png): 'pca', or 'umap' "
        "(needs `pip install umap-learn`; refused before the run starts where it is missing). Recorded in "
        "report.json `embedding.method`; never switched by what happens to be installed.")
    seed: int = Field(0, description="Seed of the block assignment.")


class ClassifyConfig(_Section):
    chunk_px: int = Field(512, ge=32, description="Side of a classification tile (= one Zarr shard), in pixels.")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="Torch device tiles are classified on: "
                        "'cpu', or 'cuda' (each Dask worker's GPU: tiles go only to workers that declare a GPU "
                        "resource, one worker per GPU; a LocalCluster gets one such worker per visible GPU). "
                        "Use larger tiles on a GPU (chunk_px 2048).")
    overlap_io: bool | None = Field(None, description="Read the next tiles while one is classified, and compress "
                                    "and write finished tiles from a pool of threads; None: on a GPU only (on a CPU "
                                    "worker of one thread the threads compete with the compute). The maps are the "
                                    "same either way.")

    def overlaps_io(self) -> bool:
        """``overlap_io`` resolved: as given, else on for a GPU device."""
        return self.device != "cpu" if self.overlap_io is None else self.overlap_io


class RuntimeConfig(_Section):
    scheduler: str | None = Field(
        None, description="Address of an existing Dask scheduler; None starts a LocalCluster."
    )
    workers: int = Field(2, ge=1, description="Workers of the LocalCluster (one thread each).")
    device: str = Field("auto", description="Torch device of training: 'auto' (cuda, then mps, then cpu), or a "
                        "torch device string.")
    storage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="fsspec options per protocol for inputs and outputs given as URLs, e.g. "
        "{s3: {endpoint_url: 'https://minio.example:9000'}}; credentials are better left to the environment "
        "(AWS_ACCESS_KEY_ID, ...). Like all of runtime, never written to config.json or a report.")


def parse_layers(layers, *, prefix: str = "") -> dict[str, LayerSource]:
    """``inputs.layers`` as given (name -> path, ``PATH#BAND`` or {path, band, resampling}) checked and parsed.

    Raises ConfigError naming the option at fault (``{prefix}layers.NAME...``) and the problem, in one line.
    """
    try:
        return InputsConfig(layers=layers).layers or {}
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"] if not _UNION_BRANCH.match(str(x)))
        raise ConfigError(f"{prefix}{where}: {err['msg'].removeprefix('Value error, ')}") from None


_UNION_BRANCH = re.compile(r"^(int|float|str|bool|none|literal\[.*\]|list\[.*\]|tuple\[.*\]|function-.*)$")


def _section(model: type[BaseModel], key) -> type[BaseModel] | None:
    """The model of ``model``'s field ``key`` when that field is a section of options, else None."""
    field = model.model_fields.get(str(key))
    kind = field.annotation if field is not None else None
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The options the section at ``loc`` (a path of field names from ``model``) accepts."""
    for key in loc:
        if _section(model, key) is None:
            break
        model = _section(model, key)
    return list(model.model_fields)


class RunConfig(_Section):
    schema_version: Literal[2] = SCHEMA_VERSION
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    patches: PatchConfig = Field(default_factory=PatchConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    svm: SVMConfig = Field(default_factory=SVMConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: dict) -> "RunConfig":
        """Read a YAML/JSON file (or defaults), then apply per-section overrides."""
        data: dict = {}
        if path is not None:
            p = as_path(path)
            try:
                with remote_errors(p, kind=ConfigError):
                    data = yaml.safe_load(p.read_text()) or {}
            except OSError as exc:
                raise ConfigError(f"{p}: cannot read config ({exc.strerror or exc})") from None
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                raise ConfigError(f"{p}: not valid YAML{where} ({problem})") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{p}: config must be a mapping of sections, not a {type(data).__name__}")
            for section, values in list(data.items()):
                if values is None:  # a section whose options are all commented out
                    data[section] = {}
                elif _section(cls, section) is not None and not isinstance(values, dict):
                    raise ConfigError(f"{p}: section '{section}' must be a mapping of options, not "
                                      f"{type(values).__name__} {values!r}")
        for section, values in overrides.items():
            data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            # a union's branch ('int', "literal['auto']") is pydantic's, not a key the user wrote
            where = ".".join(str(x) for x in err["loc"] if not _UNION_BRANCH.match(str(x)))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown option (known here: {', '.join(_known_keys(cls, err['loc'][:-1]))})"
            got = "" if err["type"] in ("extra_forbidden", "value_error") else f", got {err['input']!r}"
            raise ConfigError(f"{path or 'config'}: {where}: {msg}{got}") from None

    def section_json(self, name: str, *, model_only: bool = False) -> str:
        """Canonical JSON of one section: the part of a stage's content hash that is config. With
        ``model_only``, less the fields that only change the report (``REPORT_ONLY``): what the model and
        the choices made before it depend on."""
        exclude = set(REPORT_ONLY.get(name, ())) if model_only else None
        return json.dumps(getattr(self, name).model_dump(mode="json", exclude=exclude), sort_keys=True)

    def with_inputs(self, **inputs: str | Path | None) -> "RunConfig":
        """A copy with the given inputs set (paths made absolute, so the saved config works from anywhere)."""
        new = {k: (absolute(v) if k != "label_field" else str(v)) for k, v in inputs.items()
               if v is not None and k != "layers"}
        if inputs.get("layers"):
            new["layers"] = {name: src.model_copy(update={"path": absolute(src.path)})
                             for name, src in parse_layers(inputs["layers"], prefix="inputs.").items()}
        return self.model_copy(update={"inputs": self.inputs.model_copy(update=new)})

    def parameters(self) -> dict:
        """The config as flows hand it to their tasks, subflows and deployment runs, which Prefect stores
        and shows: everything but ``runtime.storage_options`` (secrets stay in the process that read them;
        the code a flow runs in that process keeps them through :func:`magpipe.io.location.storage_scope`)."""
        return self.model_dump(mode="json", exclude={"runtime": {"storage_options"}})

    def saved(self) -> dict:
        """What ``config.json`` holds: every section but ``runtime``."""
        return self.model_dump(mode="json", exclude={"runtime"})

    def save(self, path: str | Path) -> None:
        """Write the config (without ``runtime``) atomically; inputs it lacks are kept from the file
        already there, so the stage commands of one run, each naming only its own input, add up."""
        from magpipe.io.stores import write_json

        path = as_path(path)
        data = self.saved()
        try:
            existing = json.loads(path.read_text()) if path.exists() else {}
            before = existing.get("inputs", {})
        except (OSError, ValueError, AttributeError):
            existing, before = {}, {}
        data["inputs"] = {k: v if v is not None else before.get(k) for k, v in data["inputs"].items()}
        if existing == json.loads(json.dumps(data)):
            return  # unchanged (compared as JSON values): a re-run touches nothing
        write_json(data, path)
