"""Parallel classification: Dask equals serial, tiles resume, output is georeferenced."""

import numpy as np
import pytest
import xarray as xr
import zarr
from distributed import Client, LocalCluster

from magpipe.bundle import load_bundle
from magpipe.classify import NODATA_CLASS, classify_array
from magpipe.io.schema import Layout
from magpipe.stages.classify import classify_into
from magpipe.io.stores import is_complete, partial_path


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster, set_as_default=False) as c:  # as magpipe.cluster makes them
            yield c


def _arrays(path):
    g = zarr.open_group(path, mode="r")
    return g["class"][:], g["confidence"][:], g["anomaly"][:]


@pytest.mark.parametrize("smooth_px", [None, 3])
def test_dask_tiles_equal_single_process_run(trained_run, client, tmp_path, smooth_px):
    """Tiles (with their halo of half a patch plus the smoothing radius) make the map one window would."""
    import dataclasses

    from magpipe.bundle import save_bundle

    out = tmp_path / "classified.zarr"
    survey = trained_run["out"] / "survey.zarr"
    model = trained_run["out"] / "model"
    if smooth_px is not None:  # the run's own bundle, smoothed over another radius
        model = save_bundle(dataclasses.replace(load_bundle(model), smooth_px=smooth_px), tmp_path / "model")
    classify_into(Layout(trained_run["out"]), model, out, tile_px=32, client=client)
    cls, conf, anom = _arrays(out)
    bundle = load_bundle(model)
    field = zarr.open_array(survey / "field", mode="r")[:]
    ref_cls, ref_conf, ref_anom = classify_array(bundle, field)
    np.testing.assert_array_equal(cls, ref_cls)
    np.testing.assert_allclose(conf, ref_conf, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(anom, ref_anom, rtol=1e-4, atol=1e-6, equal_nan=True)
    valid = np.isfinite(field)
    assert np.all((cls == NODATA_CLASS) == ~valid)
    assert np.all(np.isnan(conf) == ~valid)


@pytest.mark.parametrize("on_cluster", [False, True])
def test_overlapped_io_makes_the_same_map(trained_run, client, tmp_path, on_cluster):
    """Reading ahead and writing from a pool (classify.overlap_io, on by default on a GPU) changes no cell;
    on a cluster each task runs a run of tiles."""
    from magpipe.tiling import task_runs

    lay, model = Layout(trained_run["out"]), trained_run["out"] / "model"
    serial = classify_into(lay, model, tmp_path / "serial.zarr", tile_px=32)
    seen = []
    out = classify_into(lay, model, tmp_path / "overlapped.zarr", tile_px=32, overlap=True,
                        client=client if on_cluster else None, progress=lambda d, t: seen.append((d, t)))
    for a, b in zip(_arrays(serial), _arrays(out)):
        np.testing.assert_array_equal(a, b)
    n_tiles = seen[-1][1]
    runs = len(task_runs([(i, None) for i in range(n_tiles)], workers=2)) if on_cluster else n_tiles
    assert seen[-1][0] == n_tiles and len(seen) == runs < (n_tiles if on_cluster else n_tiles + 1)


def test_interrupted_classification_resumes_to_the_same_result(trained_run, tmp_path):
    model = trained_run["out"] / "model"
    whole = tmp_path / "whole.zarr"
    classify_into(Layout(trained_run["out"]), model, whole, tile_px=32)

    out = tmp_path / "resumed.zarr"
    calls = []

    def crash_after_two(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        classify_into(Layout(trained_run["out"]), model, out, tile_px=32, progress=crash_after_two)
    assert not out.exists() and partial_path(out).exists()  # nothing that looks finished
    assert zarr.open_array(partial_path(out) / "tile_done", mode="r")[:].sum() == 2

    seen = []
    classify_into(Layout(trained_run["out"]), model, out, tile_px=32, progress=lambda d, t: seen.append((d, t)))
    n_tiles = seen[-1][1]
    assert len(seen) == n_tiles - 2  # only the unfinished tiles ran
    assert is_complete(out)
    for a, b in zip(_arrays(whole), _arrays(out)):
        np.testing.assert_array_equal(a, b)


def test_classified_store_is_georeferenced_like_the_survey(trained_run, tmp_path):
    from magpipe.io.export import export_geotiff

    out = tmp_path / "c.zarr"
    classify_into(Layout(trained_run["out"]), trained_run["out"] / "model", out, tile_px=64)
    ds = xr.open_zarr(out, consolidated=False, decode_coords="all")
    field = trained_run["field"]
    assert ds["class"].rio.crs == field.rio.crs
    assert tuple(ds["class"].rio.transform()) == pytest.approx(tuple(field.rio.transform()))
    tif = export_geotiff(out, "class", tmp_path / "class.tif", blocksize=32)  # small: overviews on 96 x 128
    import rasterio
    import rioxarray

    with rasterio.open(tif) as src:  # GDAL itself recognises the Cloud-Optimized layout
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.overviews(1) == [2, 4] and src.block_shapes[0] == (32, 32)
        assert src.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"

    back = rioxarray.open_rasterio(tif).isel(band=0)
    assert back.rio.crs == field.rio.crs
    assert tuple(back.rio.transform()) == pytest.approx(tuple(field.rio.transform()))
    np.testing.assert_array_equal(back.values, ds["class"].values)
    # styled: a colour table in the report's class colours, the unit names, and a QGIS style beside it
    from magpipe.io.export import class_colours

    classes = ds.attrs["classes"]
    with rasterio.open(tif) as src:
        cmap, tags = src.colormap(1), src.tags(1)
        assert src.dtypes[0] == "uint8" and src.nodata == 0
    assert [cmap[k][:3] for k in range(1, len(classes) + 1)] == class_colours(len(classes)) and cmap[0][3] == 0
    assert [tags[f"CLASS_{k}"] for k in range(1, len(classes) + 1)] == classes
    import xml.etree.ElementTree as ET

    entries = ET.parse(tif.with_suffix(".qml")).getroot().iter("paletteEntry")
    assert [(int(e.get("value")), e.get("label")) for e in entries] == list(enumerate(classes, start=1))
    # confidence and anomaly: COGs with their band described, and styles in the report's ramps and stretches
    from matplotlib import colormaps

    from magpipe.io.export import RAMPS

    for name, cmap, top in (("confidence", "viridis", 1.0),
                            ("anomaly", "magma", float(np.nanpercentile(ds["anomaly"].values, 99)))):
        tif = export_geotiff(out, name, tmp_path / f"{name}.tif", blocksize=32)
        with rasterio.open(tif) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and src.overviews(1) == [2, 4]
            assert src.dtypes[0] == "float32" and src.descriptions[0] == RAMPS[name][1]
            np.testing.assert_array_equal(src.read(1), ds[name].values)
        renderer = ET.parse(tif.with_suffix(".qml")).getroot().find("pipe/rasterrenderer")
        items = list(renderer.iter("item"))
        assert renderer.get("type") == "singlebandpseudocolor"
        assert float(items[0].get("value")) == 0 and float(items[-1].get("value")) == pytest.approx(top, rel=1e-5)
        assert items[-1].get("color") == "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in colormaps[cmap](1.0)[:3]))


@pytest.mark.parametrize("name", ["ae", "stats", "ae+stats"])
def test_every_deployable_feature_set_classifies_as_its_per_cell_features_say(trained_run, tmp_path, name):
    """A bundle records the set its SVM reads; classification (dense) and the per-cell path agree on it."""
    import dataclasses

    from magpipe.bundle import save_bundle
    from magpipe.config import SVMConfig
    from magpipe.features import cell_features, part_sizes
    from magpipe.io.survey import open_inputs
    from magpipe.svm import fit_svm, predict_with_confidence

    base = load_bundle(trained_run["out"] / "model")
    arrays = open_inputs(Layout(trained_run["out"]), base.inputs)
    fs = base.named_features(name)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 96, 300), rng.integers(0, 80, 300)
    labels = trained_run["truth"][rows, cols]
    X = cell_features({name: fs}, arrays, base.scaling, rows, cols)[name]
    svm, _ = fit_svm(X, labels, cols // 20, SVMConfig(C=(10.0,), gamma_scale=(1.0,)), parts=part_sizes(fs))
    bundle = load_bundle(save_bundle(dataclasses.replace(base, svm=svm, feature_set=name), tmp_path / "model"))
    assert bundle.feature_set == name and bundle.features.n_features == X.shape[1]
    field = arrays[0][:]
    cls, conf, _ = classify_array(bundle, field)
    q_rows, q_cols = rng.integers(0, 96, 200), rng.integers(0, 128, 200)
    keep = np.isfinite(field[q_rows, q_cols])
    q_rows, q_cols = q_rows[keep], q_cols[keep]
    ref_cls, ref_conf = predict_with_confidence(
        svm, cell_features({name: fs}, arrays, base.scaling, q_rows, q_cols)[name])
    np.testing.assert_array_equal(cls[q_rows, q_cols], ref_cls)
    np.testing.assert_allclose(conf[q_rows, q_cols], ref_conf, atol=1e-4)


def test_classifying_changes_no_process_wide_torch_setting(trained_run):
    """TF32 and thread counts belong to the entry point that owns the process (a worker's setup, the CLI):
    classifying leaves them as the caller set them, and magpipe.process.full_fp32 is the one switch."""
    import torch

    from magpipe.process import full_fp32

    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    threads = torch.get_num_threads()
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        field = xr.open_zarr(Layout(trained_run["out"]).survey, consolidated=False)["field"].values
        classify_array(load_bundle(trained_run["out"] / "model"), field)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert torch.get_num_threads() == threads
        full_fp32()
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
