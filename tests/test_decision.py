"""The SVM's decision as torch operations (any device) against sklearn's own, and classification on a GPU
device: the same code path, checked here on the CPU, and refused clearly where no GPU is there."""

import numpy as np
import pytest
import torch
import zarr
from distributed import Client, LocalCluster

from magpipe.decision import Decision
from magpipe.errors import ConfigError, DeviceError
from magpipe.svm import calibrated, class_scores, fold_nystroem, make_svm
from magpipe.tiling import output_template, write_tiles


def _blobs(n: int, f: int = 12, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    centres = np.random.default_rng(99).normal(size=(k, f))
    rng = np.random.default_rng(seed)
    y = rng.integers(1, k + 1, n)
    return (centres[y - 1] + rng.normal(scale=1.5, size=(n, f))).astype("float32") * 40 + 7, y


def _model(kernel: str, k: int, calibrate: bool):
    X, y = _blobs(400, k=k)
    svm = make_svm(C=3.0, gamma=0.08, kernel=kernel, n_components=120)
    model = (calibrated(svm, y) if calibrate else svm).fit(X, y)
    fold_nystroem(model)
    return model


@pytest.mark.parametrize("kernel,k,calibrate", [("nystroem", 4, True), ("nystroem", 2, True), ("exact", 3, True),
                                                ("nystroem", 3, False), ("exact", 2, False), ("exact", 6, True),
                                                ("exact", 4, False), ("lowrank", 2, True), ("lowrank", 3, True),
                                                ("lowrank", 5, False)])
def test_decision_equals_sklearn(kernel, k, calibrate):
    model = _model(kernel, k, calibrate)
    X, _ = _blobs(3000, k=k, seed=1)
    votes, proba = class_scores(model, X)
    dv, dp = Decision.of(model).scores(torch.from_numpy(X))
    assert dv.shape == votes.shape == (3000, k) and dv.dtype == torch.float32
    np.testing.assert_allclose(dv.numpy(), votes, rtol=1e-5, atol=1e-5)
    # the votes' tolerance through the steepest sigmoid (slope / 4 at most)
    atol = 1e-5 * np.abs(getattr(model, "slope_", np.zeros(1))).max() / 4 + 1e-6
    np.testing.assert_allclose(dp.numpy(), proba, rtol=1e-5, atol=atol, equal_nan=True)
    assert np.isnan(dp.numpy()).all() == (not calibrate)
    gap = np.sort(votes, 1)[:, -1] - np.sort(votes, 1)[:, -2]
    same = dv.numpy().argmax(1) == votes.argmax(1)
    assert same[gap > 1e-4].all()  # classes agree wherever the top two votes are not a tie to float rounding


def test_dense_scores_only_the_valid_cells():
    model = _model("nystroem", 3, True)
    X, _ = _blobs(6 * 7, seed=2)
    feats = torch.from_numpy(X.T.reshape(12, 6, 7).copy())
    cells = torch.from_numpy(np.random.default_rng(0).random((6, 7)) > 0.3)
    out = Decision.of(model).dense(feats, cells, batch=5).numpy()  # several batches, one partial
    votes, proba = class_scores(model, X)
    sel = cells.numpy().reshape(-1)
    np.testing.assert_allclose(out[0].reshape(3, -1)[:, sel].T, votes[sel], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1].reshape(3, -1)[:, sel].T, proba[sel], rtol=1e-5, atol=1e-6)
    assert np.isnan(out[:, :, ~cells.numpy()]).all()


def test_cuda_classification_where_there_is_no_gpu_is_refused_clearly(trained_run, tmp_path):
    from magpipe.io.schema import Layout
    from magpipe.stages.classify import classify_into

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        classify_into(Layout(trained_run["out"]), trained_run["out"] / "model", tmp_path / "c.zarr", tile_px=64,
                      device="cuda")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        with pytest.raises(DeviceError, match="no worker of the Dask cluster .* declares a GPU resource"):
            classify_into(Layout(trained_run["out"]), trained_run["out"] / "model", tmp_path / "c.zarr", tile_px=64,
                          client=client, device="cuda")
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "c.zarr.partial").exists()


def test_unknown_classify_device_is_a_config_error():
    from magpipe.config import RunConfig

    with pytest.raises(ConfigError, match="device"):
        RunConfig.load(None, classify={"device": "gpu"})
    assert RunConfig.load(None, classify={"device": "cuda:1"}).classify.device == "cuda:1"


def test_gpu_tiles_go_only_to_workers_declaring_a_gpu(tmp_path):
    """The routing a GPU classification relies on, on a cluster deployed as the README says (`dask worker
    --resources GPU=1` beside CPU workers): tiles needing {"GPU": 1} all run on the GPU worker."""
    import xarray as xr

    from magpipe.testing import external_cluster, gpu_worker_tile

    grid = xr.Dataset(coords={"y": np.arange(64.0), "x": np.arange(64.0)})
    template = output_template(grid, {"w": ("int16", -1, {})}, 16)
    workers = [["--nthreads", "1", "--name", "cpu0"], ["--nthreads", "1", "--name", "gpu0", "--resources", "GPU=1"]]
    with external_cluster(tmp_path, workers=workers, cwd=tmp_path) as address, \
            Client(address, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        out = write_tiles(tmp_path / "w.zarr", template, gpu_worker_tile, stage_hash="h", tile_px=16, client=client,
                          resources={"GPU": 1})
    assert (zarr.open_array(out / "w", mode="r")[:] == 1).all()  # 16 tiles, every one on the GPU worker


@pytest.mark.parametrize("serial", [True, False])
def test_cli_device_cuda_without_a_gpu_is_one_line(trained_run, tmp_path, serial):
    from magpipe.testing import assert_one_line_error, run_cli as magpipe

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    import shutil

    run = shutil.copytree(trained_run["out"], tmp_path / "run")
    saved = (run / "config.json").read_text()
    r = magpipe("classify", "--out", run, "--device", "cuda", *(["--serial"] if serial else []))
    assert_one_line_error(r, "classify.device is cuda", "classify on 'cpu'")
    assert (run / "config.json").read_text() == saved and not (run / "classified.zarr.partial").exists()


def test_a_flat_kernel_keeps_sklearns_classes():
    """A small gamma and a large C (as a search may pick): the kernel is near 1 at every support vector and
    their coefficients are of the size of C, so a float32 sum of k cancelled terms of that size and flipped
    classes whose closest pair was 0.01 from its boundary. Summing k - 1 keeps the decision within the float
    rounding of the kernel: classes differ only at pairs within 1e-3 of their boundary."""
    import copy

    X, y = _blobs(600, k=4)
    model = make_svm(C=1000.0, gamma=1e-4).fit(X, y)
    Xt, _ = _blobs(5000, k=4, seed=1)
    votes, _ = class_scores(model, Xt)
    decision = Decision.of(model)
    assert decision.kernel_shift == 1.0
    dv = decision.scores(torch.from_numpy(Xt))[0].numpy()
    ovo = copy.deepcopy(model).set_params(svc__decision_function_shape="ovo").decision_function(Xt.astype("float64"))
    margin = np.abs(ovo).min(axis=1)
    differ = dv.argmax(1) != votes.argmax(1)
    assert (margin[differ] < 1e-3).all(), margin[differ]
    same_votes = (np.round(dv) == np.round(votes)).all(axis=1)
    assert np.abs(dv - votes)[same_votes].max() < 2e-3
    assert not Decision.of(make_svm(C=3.0, gamma=0.08).fit(X, y)).kernel_shift  # a kernel far from flat: k itself
