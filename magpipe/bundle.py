"""Model bundles that load without running code.

A bundle is a directory:

- ``autoencoder.pt``: the torch ``state_dict`` only, loaded with ``weights_only=True``;
- ``svm.skops``: the scikit-learn pipeline, loaded by skops with an explicit list of
  trusted types (anything else is refused);
- ``metadata.json``: architecture, layers, standardisation, class names, input hash,
  metrics, library versions, and the SHA-256 of the two files above (``files``): a bundle whose
  weights or SVM were changed or cut short is refused before either is read.

Pickle files are never read.
"""

from __future__ import annotations

import io
import json
import platform
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from magpipe.config import check_feature_name
from magpipe.errors import InputError
from magpipe.features import REACHES, FeatureSet, Scaling, StackScaling, feature_set
from magpipe.io.location import as_path, is_url, remove, write_bytes
from magpipe.io.stores import bytes_hash, partial_path, publish, version, write_json
from magpipe.locking import assert_owned
from magpipe.model import PatchAutoencoder

FORMAT = 1
MODEL_FILES = ("autoencoder.pt", "svm.skops")
REQUIRED_META = ("patch_px", "channels", "hidden", "layers", "anomaly_px", "inputs", "scalings", "classes")
# Types skops does not trust by default but magpipe's own SVM is made of; all else is refused.
TRUSTED_SKOPS_TYPES = [
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.model_selection._split.StratifiedKFold",
    "magpipe.svm.LinearKernelSVC",
    "magpipe.svm.PartScaler",
    "magpipe.svm.RBFFeatures",
    "magpipe.svm.VoteWithProbabilities",
]


@dataclass
class ModelBundle:
    """Everything needed to classify a survey, as saved in a bundle directory.

    Attributes
    ----------
    model : the trained autoencoder (eval mode).
    svm : the SVM on its features, with calibrated probabilities (see :func:`magpipe.svm.fit_svm`).
    layers : encoder layers the features are taken from.
    scaling : standardisation of each input grid, in its units (nT for the field).
    classes : the K class names; code k is ``classes[k - 1]``.
    anomaly_px : side (cells) of the central window the anomaly is scored on.
    meta : the rest of ``metadata.json`` (input hash, config, training history, SVM search).
    inputs : names of the C input grids, in channel order.
    feature_set : name of the feature set the SVM reads (``ae``, ``stats``, ``ae+stats``, ...; see
        :func:`magpipe.features.feature_set`); bundles from before it was recorded read ``ae``.
    readout : how encoder layers become features (``mean_centre`` or ``mean_std_centre``).
    smooth_px : radius (cells) of the probability smoothing the map applies (:mod:`magpipe.smoothing`);
        0 = none, as in bundles from before it existed.
    stats_reach : how far window statistics look (:func:`magpipe.features.stat_windows`); ``patch`` in
        bundles from before it existed.
    """

    model: PatchAutoencoder
    svm: object
    layers: list[int]
    scaling: StackScaling
    classes: list[str]
    anomaly_px: int
    meta: dict = field(default_factory=dict)
    inputs: tuple[str, ...] = ("field",)
    feature_set: str = "ae"
    readout: str = "mean_centre"
    smooth_px: int = 0
    stats_reach: str = "patch"

    @property
    def patch_px(self) -> int:
        """Patch side p in cells."""
        return self.model.patch_px

    @property
    def halo_px(self) -> int:
        """Cells a tile's window reaches beyond it: half the window the features read (half a patch, or more
        for wide window statistics), plus the smoothing radius."""
        return self.features.window_px // 2 + self.smooth_px

    @cached_property
    def features(self) -> FeatureSet:
        """The feature set the SVM was trained on: what classification and similarity compute."""
        return self.named_features(self.feature_set)

    def named_features(self, name: str) -> FeatureSet:
        """Any feature set of this bundle's encoder, patch size and inputs (``random``: its initial weights)."""
        seed = int(self.meta.get("config", {}).get("model", {}).get("seed", 0))
        return feature_set(name, self.model, self.layers, readout=self.readout, seed=seed, stats_reach=self.stats_reach)


def library_versions() -> dict[str, str]:
    """Versions of magpipe, Python and the libraries a bundle's files depend on, recorded in it so a
    bundle that misbehaves after an upgrade can be traced."""
    from importlib.metadata import version as installed

    return {"magpipe": version(), "torch": torch.__version__,
            **{name: installed(name) for name in ("scikit-learn", "dask", "xarray", "zarr")},
            "python": platform.python_version()}


def save_bundle(bundle: ModelBundle, path: str | Path) -> Path:
    """Write a bundle directory atomically (written aside, then moved into place).

    A reader never finds half a bundle, and an interrupted save leaves the previous one intact.
    On object storage (no rename) the bundle is written in place, ``metadata.json`` removed first and
    written last: a bundle cut short there has none, or checksums its files fail, and is refused.
    Returns ``path``.
    """
    import skops.io as sio

    path = as_path(path)
    tmp = partial_path(path)
    if is_url(tmp):
        remove(tmp / "metadata.json")
    else:
        tmp.mkdir(parents=True, exist_ok=True)
    weights = io.BytesIO()
    torch.save(bundle.model.state_dict(), weights)
    files = {"autoencoder.pt": weights.getvalue(), "svm.skops": sio.dumps(bundle.svm)}
    for name, data in files.items():
        write_bytes(data, tmp / name)
    meta = {
        **bundle.meta,
        "format": FORMAT,
        "patch_px": bundle.patch_px,
        "channels": [c.out_channels for c in bundle.model.encoder],
        "hidden": bundle.model.decoder[0].out_features,
        "layers": bundle.layers,
        "anomaly_px": bundle.anomaly_px,
        "inputs": list(bundle.inputs),
        "features": bundle.feature_set,
        "readout": bundle.readout,
        "smooth_px": bundle.smooth_px,
        "stats_reach": bundle.stats_reach,
        "scalings": [{"mean": s.mean, "std": s.std, **({"clip": s.clip} if s.clip is not None else {})}
                     for s in bundle.scaling.channels],
        "classes": bundle.classes,
        "versions": library_versions(),
        "files": {name: bytes_hash(data) for name, data in files.items()},
    }
    assert_owned(tmp)  # metadata.json marks the bundle whole: only while the output is still this run's
    write_json(meta, tmp / "metadata.json")
    publish(tmp, path)
    return path


def bundle_fingerprint(path: str | Path) -> str:
    """What identifies a bundle's content: the hash of its ``metadata.json``, which holds the checksums of
    its weights and SVM (so any retrain changes it). One small read: cheap enough to check per tile.

    Raises InputError when ``path`` holds no bundle."""
    meta_file = as_path(path) / "metadata.json"
    try:
        return bytes_hash(meta_file.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{as_path(path)}: not a magpipe model bundle (no metadata.json)") from None


def read_bundle_meta(path: str | Path) -> dict:
    """A bundle's metadata alone, checked for format: cheap, loads no weights.

    Raises InputError when ``path`` is not a bundle, holds pickle files, or its metadata is corrupt,
    of another format or incomplete.
    """
    path = as_path(path)
    meta_file = path / "metadata.json"
    if not meta_file.exists():
        raise InputError(f"{path}: not a magpipe model bundle (no metadata.json)")
    if any(path.glob("*.pkl")) or any(path.glob("*.pickle")):
        raise InputError(f"{path}: contains pickle files; magpipe refuses to load them")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{meta_file}: corrupt metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise InputError(f"{path}: bundle format {found!r}, this magpipe reads format {FORMAT}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise InputError(f"{meta_file}: incomplete metadata, missing {missing}")
    return meta


def check_model_files(path: Path, meta: dict) -> dict[str, bytes]:
    """Refuse a bundle whose weights or SVM differ from what it was saved with (edited, swapped, or
    cut short in a copy), before torch or skops reads a byte of them. Bundles saved before the
    checksums were recorded (no ``files`` in metadata) are only checked for presence.

    Returns the checked bytes of each file (read once, also from object storage)."""
    path = as_path(path)
    recorded = meta.get("files")
    if recorded is not None and not isinstance(recorded, dict):
        raise InputError(f"{path / 'metadata.json'}: 'files' must map file names to checksums")
    data = {}
    for name in MODEL_FILES:
        f = path / name
        if not f.is_file():
            raise InputError(f"{f}: missing from the bundle")
        data[name] = f.read_bytes()
        if recorded is not None and bytes_hash(data[name]) != recorded.get(name):
            raise InputError(f"{f}: checksum differs from the one in metadata.json (the file was changed or "
                             "cut short); refusing to load it")
    return data


def verify_bundle(path: str | Path) -> dict:
    """A bundle's metadata, once its format and the checksums of its files are checked (nothing is
    loaded): what a stage calls before any work, so a damaged bundle fails at once, in one line."""
    meta = read_bundle_meta(path)
    check_model_files(path, meta)
    return meta


def load_bundle(path: str | Path, *, patch_px: int | None = None) -> ModelBundle:
    """Load a bundle, checking it is complete, of a known format, and for ``patch_px`` if given.

    Weights are loaded with ``weights_only=True`` and the SVM only when skops finds no type outside
    :data:`TRUSTED_SKOPS_TYPES`, so a bundle from elsewhere cannot run code. Raises InputError for
    anything that fails those checks, a patch size other than ``patch_px``, or unreadable files.
    """
    import skops.io as sio

    path = as_path(path)
    meta = read_bundle_meta(path)
    if patch_px is not None and meta["patch_px"] != patch_px:
        raise InputError(f"{path}: model was trained on {meta['patch_px']} px patches, not {patch_px}")
    inputs = tuple(meta["inputs"])
    try:
        check_feature_name(str(meta.get("features", "ae")))
        PatchAutoencoder.check_readout(str(meta.get("readout", "mean_centre")))
    except ValueError as exc:
        raise InputError(f"{path / 'metadata.json'}: {exc}") from None
    files = check_model_files(path, meta)
    smooth = meta.get("smooth_px", 0)
    if not isinstance(smooth, int) or isinstance(smooth, bool) or smooth < 0:
        raise InputError(f"{path / 'metadata.json'}: smooth_px must be a whole number of cells >= 0, not {smooth!r}")
    reach = meta.get("stats_reach", "patch")
    if reach not in REACHES:
        raise InputError(f"{path / 'metadata.json'}: stats_reach must be one of {list(REACHES)}, not {reach!r}")
    model = PatchAutoencoder(meta["patch_px"], meta["channels"], meta["hidden"], in_channels=len(inputs))
    try:
        state = torch.load(io.BytesIO(files["autoencoder.pt"]), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        raise InputError(f"{path / 'autoencoder.pt'}: cannot load weights ({str(exc).splitlines()[0][:200]})") from None
    svm_file = path / "svm.skops"
    try:
        untrusted = set(sio.get_untrusted_types(data=files["svm.skops"]))
    except Exception as exc:
        raise InputError(f"{svm_file}: not a readable skops file ({str(exc).splitlines()[0][:200]})") from None
    unknown = sorted(untrusted - set(TRUSTED_SKOPS_TYPES))
    if unknown:
        raise InputError(f"{svm_file}: holds untrusted types {unknown}; refusing to load")
    svm = sio.loads(files["svm.skops"], trusted=sorted(untrusted))
    return ModelBundle(
        model=model.eval(), svm=svm, layers=list(meta["layers"]),
        scaling=StackScaling(tuple(Scaling(**s) for s in meta["scalings"])), classes=list(meta["classes"]),
        anomaly_px=int(meta["anomaly_px"]), meta=meta, inputs=inputs,
        feature_set=str(meta.get("features", "ae")), readout=str(meta.get("readout", "mean_centre")),
        smooth_px=smooth, stats_reach=reach,
    )
