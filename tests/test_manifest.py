"""A survey delivered as a folder of layers: its manifest read, and every way it can be wrong refused in one line."""

import pytest
import yaml

from magpipe.errors import InputError
from magpipe.io.manifest import MANIFEST, is_delivery, read_manifest


def _folder(tmp_path, manifest, files=("mag.tif", "k.tif", "dem.tif", "geology.gpkg")):
    d = tmp_path / "delivery"
    d.mkdir()
    for f in files:
        (d / f).write_bytes(b"x")
    (d / MANIFEST).write_text(manifest if isinstance(manifest, str) else yaml.safe_dump(manifest))
    return d


def test_a_manifest_names_the_survey_its_layers_and_labels(tmp_path):
    d = _folder(tmp_path, {"survey": "mag.tif", "layers": {"K": "k.tif", "SRTM": {"path": "dem.tif",
                                                                                   "resampling": "cubic"}},
                           "labels": "geology.gpkg", "label_field": "UNIT"})
    assert is_delivery(d) and not is_delivery(d / "mag.tif") and not is_delivery(tmp_path)
    got = read_manifest(d)
    assert got.survey == str(d / "mag.tif") and got.labels == str(d / "geology.gpkg") and got.label_field == "UNIT"
    assert got.layers["K"]["path"] == str(d / "k.tif") and got.layers["SRTM"]["resampling"] == "cubic"
    assert got.inputs()["layers"] is got.layers and got.classes is None


@pytest.mark.parametrize("manifest,needle", [
    ("survey: [mag.tif", "not valid YAML"),
    ("- mag.tif", "a mapping"),
    ({"layers": {"K": "k.tif"}}, "names no survey file"),
    ({"survey": "mag.tif", "colour": "red"}, "unknown key(s) colour"),
    ({"survey": "gone.tif"}, "survey 'gone.tif' is not in"),
    ({"survey": "mag.tif", "layers": {"K": "missing.tif"}}, "layer K 'missing.tif' is not in"),
    ({"survey": "mag.tif", "layers": {"dz": "k.tif"}}, "taken"),
    ({"survey": "mag.tif", "layers": ["k.tif"]}, "layers"),
])
def test_a_bad_manifest_is_refused_in_one_line_naming_it(tmp_path, manifest, needle):
    d = _folder(tmp_path, manifest)
    with pytest.raises(InputError) as err:
        read_manifest(d)
    assert str(d / MANIFEST) in str(err.value) and needle in str(err.value) and "\n" not in str(err.value)
