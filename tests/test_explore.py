"""Beyond the class map: top anomalies, label-next, similarity search."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import zarr

from magpipe.errors import InputError
from magpipe.explore import block_reduce, label_next, top_blocks


def _store(tmp_path, name: str, values: np.ndarray):
    g = zarr.open_group(tmp_path / "s.zarr", mode="w")
    g.create_array(name, data=values.astype("float32"))
    g.create_array("y", data=1000.0 - np.arange(values.shape[0]) * 10.0)
    g.create_array("x", data=500.0 + np.arange(values.shape[1]) * 10.0)
    return tmp_path / "s.zarr"


@pytest.mark.parametrize("tile_blocks", [1, 3, 16])
def test_block_reduce_is_the_same_whatever_the_read_tile(tile_blocks):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(53, 71))
    a[rng.random(a.shape) < 0.3] = np.nan
    ref_v, ref_r, ref_c = block_reduce(a, 8, "max", tile_blocks=100)
    v, r, c = block_reduce(a, 8, "max", tile_blocks=tile_blocks)
    np.testing.assert_array_equal(v, ref_v)
    np.testing.assert_array_equal(r, ref_r)
    assert np.nanmax(a[:8, :8]) == v[0, 0] == a[r[0, 0], c[0, 0]]
    m, frac = block_reduce(a, 8, "mean", tile_blocks=tile_blocks)
    assert np.isclose(m[1, 2], np.nanmean(a[8:16, 16:24]))
    assert np.isclose(frac[1, 2], np.isfinite(a[8:16, 16:24]).mean())


def test_top_anomalies_are_distinct_places_in_order_with_coordinates(tmp_path):
    a = np.zeros((60, 80))
    a[10, 12], a[11, 13], a[40, 70], a[55, 5] = 9.0, 8.5, 7.0, 5.0  # two peaks inside one 10-cell block
    a[30:35, 30:35] = np.nan
    hits = top_blocks(_store(tmp_path, "anomaly", a), "anomaly", 3, block=10)
    assert [(h["row"], h["col"], h["anomaly"]) for h in hits] == [(10, 12, 9.0), (40, 70, 7.0), (55, 5, 5.0)]
    assert (hits[0]["x"], hits[0]["y"]) == (500.0 + 12 * 10, 1000.0 - 10 * 10)
    # two peaks a cell apart across a block edge are one place: the next pick is elsewhere
    a[10, 12] = a[11, 13] = 0.0
    a[29, 29], a[30, 28] = 9.0, 8.9
    hits = top_blocks(_store(tmp_path, "anomaly", a), "anomaly", 3, block=10)
    assert [(h["row"], h["col"]) for h in hits] == [(29, 29), (40, 70), (55, 5)]


def test_label_next_points_at_the_least_certain_block_with_enough_data(tmp_path):
    conf = np.full((40, 40), 0.9)
    conf[20:30, 0:10] = 0.4  # least certain, fully valid
    conf[0:10, 30:40] = np.nan
    conf[0:2, 30:32] = 0.1  # lower still, but the block is 4 % valid
    rows = label_next(_store(tmp_path, "confidence", conf), 2, block=10)
    assert (rows[0]["row"], rows[0]["col"]) == (25, 5) and rows[0]["mean_confidence"] == pytest.approx(0.4)
    assert rows[1]["mean_confidence"] == pytest.approx(0.9)


def test_similar_ranks_the_query_unit_above_the_others(trained_run, tmp_path):
    from magpipe.pipeline import Layout, run_similar

    out = tmp_path / "run"
    shutil.copytree(trained_run["out"], out, ignore=shutil.ignore_patterns("classified.zarr", ".magpipe.lock"))
    truth, field = trained_run["truth"], trained_run["field"]
    valid = np.isfinite(field.values)
    r, c = 48, 20
    assert valid[r, c]
    hits = run_similar(out, trained_run["cfg"], point=(float(field.x[c]), float(field.y[r])), k=5)
    sim = zarr.open_group(Layout(out).similar, mode="r")["similarity"][:]
    assert np.isnan(sim[~valid]).all() and np.isfinite(sim[valid]).all()
    assert np.nanmax(sim) <= 1.0 + 1e-5
    same = sim[valid & (truth == truth[r, c])].mean()
    others = [sim[valid & (truth == u)].mean() for u in np.unique(truth) if u != truth[r, c]]
    assert same > max(others)
    assert len(hits) == 5 and hits[0]["similarity"] >= hits[-1]["similarity"]
    assert (out / "similar.png").exists() and (out / "similar.json").exists()
    with pytest.raises(InputError, match="outside the survey"):
        run_similar(out, trained_run["cfg"], point=(0.0, 0.0))


def test_the_embedding_is_the_configured_method_whatever_is_installed(finished_run, tmp_path, monkeypatch):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from magpipe.explore import embedding_2d

    assert finished_run["report"]["embedding"]["method"] == "PCA"  # the default, recorded in the report
    # an importable `umap` (this one marks what it embeds) must not change the default's view
    (tmp_path / "umap").mkdir()
    (tmp_path / "umap" / "__init__.py").write_text(
        "import numpy as np\nclass UMAP:\n    def __init__(self, **kw): pass\n"
        "    def fit_transform(self, Z): return np.full((len(Z), 2), 7.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    X = np.random.default_rng(0).normal(size=(50, 6))
    try:
        coords, method = embedding_2d(X)
        assert method == "PCA"
        np.testing.assert_allclose(coords, PCA(n_components=2, random_state=0).fit_transform(
            StandardScaler().fit_transform(X)))
        coords, method = embedding_2d(X, "umap")  # asked for: the installed package draws it
        assert method == "UMAP" and (coords == 7.0).all()
    finally:
        sys.modules.pop("umap", None)  # this process's later imports must not find the stand-in


def test_an_embedding_that_cannot_run_here_is_refused_before_the_run(survey_files, tmp_path):
    import importlib.util

    from magpipe.testing import assert_one_line_error, run_cli

    if importlib.util.find_spec("umap") is not None:
        pytest.skip("umap-learn is installed here")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("evaluate:\n  embedding: umap\n")
    r = run_cli("run", survey_files["survey"], "--labels", survey_files["labels"], "--config", cfg,
                "--out", tmp_path / "out")
    assert_one_line_error(r, "evaluate.embedding", "umap-learn")
    assert not (tmp_path / "out" / "survey.zarr").exists()


def test_the_embedding_changes_the_report_not_the_model():
    from magpipe.config import RunConfig
    from magpipe.stages.train import train_hash

    pca, umap = RunConfig.load(None), RunConfig.load(None, evaluate={"embedding": "umap"})
    assert train_hash("patches", "labels", pca) == train_hash("patches", "labels", umap)  # no retraining
    assert pca.section_json("evaluate") != umap.section_json("evaluate")  # the report is made again
    other_split = RunConfig.load(None, evaluate={"splits": 3})
    assert train_hash("patches", "labels", pca) != train_hash("patches", "labels", other_split)
