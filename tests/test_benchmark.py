"""benchmarks/run.py end to end on a small survey: it runs, and its figures are consistent.

Speed targets are not asserted here (they are the benchmark's output); what is asserted is
what must hold at any speed: the naive per-patch method and magpipe give the same class map
up to float near-ties, and the JSON has every figure the README promises.
"""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_runs_and_matches_the_naive_method(tmp_path):
    main = runpy.run_path(str(ROOT / "benchmarks" / "run.py"))["main"]
    out = tmp_path / "bench.json"
    result = main(["--sizes", "320", "--quick", "--naive-max", "0", "--naive-cells", "4000", "--repeats", "2",
                   "--json", str(out), "--workdir", str(tmp_path / "work"), "--object-storage", "--layers", "3",
                   "--default-repeats", "2"])
    saved = json.loads(out.read_text())
    assert saved["config"]["layers"] == 3  # a survey stack: the field and two layers read by every stage
    assert saved["ratio_vs_naive"] == result["ratio_vs_naive"] > 1
    (row,) = saved["sizes"]
    for key in ("size", "magpipe_pixels_per_s", "naive_pixels_per_s", "peak_rss_gib", "workers",
                "ingest_mb_per_s", "features_pixels_per_s", "svm_pixels_per_s"):
        assert row[key] is not None and row[key] > 0, key
    assert row["size"] == 320 and row["workers"] == 2
    # the naive reference on a sample of cells, each rate the median of 2 repeats with their spread
    assert row["naive_sampled"] and row["naive_cells"] == 4000
    assert row["mismatched_cells"] <= 0.0005 * row["cells"]
    assert len(row["magpipe_pixels_per_s_runs"]) == len(row["naive_pixels_per_s_runs"]) == 2
    assert row["magpipe_pixels_per_s"] == np.median(row["magpipe_pixels_per_s_runs"])
    # the ratio is paired repeat by repeat (each magpipe run beside a naive run)
    ratios = [m / n for m, n in zip(row["magpipe_pixels_per_s_runs"], row["naive_pixels_per_s_runs"])]
    assert row["ratio_runs"] == ratios and saved["ratio_vs_naive"] == np.median(ratios)
    assert saved["ratio_spread"] == (max(ratios) - min(ratios)) / np.median(ratios)
    assert saved["ratio_spread_bound"] == row["magpipe_spread"] + row["naive_spread"] >= 0
    assert row["max_vote_margin_of_mismatches"] < 1e-2
    assert saved["parallel_efficiency"]["one_worker_pixels_per_s"] > 0
    assert {s["layout"] for s in saved["zarr_study"]} >= {"shard 512, chunk 256, zstd"}
    assert set(saved["training"]["svm"]) == {"exact", "nystroem"}
    store = saved["object_storage"]  # the same map from and into a bucket, and what crossed the wire
    assert store["identical_to_local"] and store["pixels_per_s"] > 0
    # at least the survey read (float32 field + mask) and the maps written, compressed, crossed to the server
    assert store["bytes_per_cell"] > 1
    # what `magpipe run` deploys with its defaults, paired with its own naive method, smoothing included
    d = saved["default"]
    assert d["config"]["svm_kernel"] == "exact" and d["config"]["features"] in ("stats", "ae", "ae+stats")
    assert d["config"]["patch_px"] in (9, 15, 31, 47) and d["config"]["smooth_px"] >= 0
    assert len(d["cells_per_s_runs"]) == len(d["naive_cells_per_s_runs"]) == 2
    assert d["ratio_runs"] == [m / n for m, n in zip(d["cells_per_s_runs"], d["naive_cells_per_s_runs"])]
    assert d["ratio_vs_naive"] == np.median(d["ratio_runs"]) == d["ratio_quartiles"]["median"]
    assert d["naive_cells"] == 63 * 63  # the central block of about --naive-cells cells
    assert d["mismatched_cells"] <= 0.001 * d["naive_cells"] and d["max_vote_margin_of_mismatches"] < 1e-2
    # like with like: the naive side makes the confidence and anomaly layers too, to float precision
    assert d["max_confidence_difference"] < 1e-4 and d["max_anomaly_difference_relative"] < 1e-4
    assert all(c > a for c, a in zip(d["naive_classes_cells_per_s_runs"], d["naive_cells_per_s_runs"]))
    assert d["ratio_vs_naive_classes"] == np.median(
        [m / n for m, n in zip(d["cells_per_s_runs"], d["naive_classes_cells_per_s_runs"])]) < d["ratio_vs_naive"]


@pytest.mark.slow
def test_stack_rates_pair_every_set_with_its_naive_method(tmp_path):
    main = runpy.run_path(str(ROOT / "benchmarks" / "stack_rates.py"))["main"]
    out = tmp_path / "rates.json"
    result = main(["--layers", "1", "3", "--size", "192", "--tile-px", "96", "--repeats", "2", "--naive-cells",
                   "300", "--n-patches", "300", "--epochs", "1", "--json", str(out), "--workdir", str(tmp_path / "w")])
    assert json.loads(out.read_text()) == result
    assert set(result["stacks"]) == {"1", "3"}
    for n, row in result["stacks"].items():
        sets = row["sets"]
        assert set(sets) == {"stats", "stats@wide", "ae", "ae+stats", "deployed"}
        for name, s in sets.items():
            assert len(s["cells_per_s_runs"]) == len(s["naive_cells_per_s_runs"]) == 2
            ratios = [m / r for m, r in zip(s["cells_per_s_runs"], s["naive_cells_per_s_runs"])]
            assert s["ratio"] == np.median(ratios) and s["cells_per_s"] == np.median(s["cells_per_s_runs"])
            # the naive method of the same configuration classes every sampled cell alike (smoothing aside),
            # but where float summation order flips a near-tie
            if name == "deployed":
                assert s["mismatched_cells"] is None
            else:
                assert s["mismatched_cells"] <= 1 and s["max_vote_margin_of_mismatches"] < 1e-2, (n, name)
        # window statistics grow with the layers, the encoder's readout does not
        assert sets["stats"]["n_features"] == int(n) * 21 and sets["ae"]["n_features"] == sets["deployed"]["n_features"]
        assert sets["stats@wide"]["window_px"] > sets["stats"]["window_px"] == 11


@pytest.mark.slow
def test_gpu_benchmark_dry_run_on_a_stack_matches_the_cpu(tmp_path):
    """benchmarks/gpu_classify.py's steps on the CPU (its dry run), on a 3-layer stack: the tile comparison
    it makes on a GPU finds nothing to report here, and every step writes its figures."""
    main = runpy.run_path(str(ROOT / "benchmarks" / "gpu_classify.py"))["main"]
    out = tmp_path / "gpu.json"
    res = main(["--size", "256", "--train-size", "256", "--tile-px", "128", "--device", "cpu", "--cpu-size", "0",
                "--layers", "3", "--json", str(out), "--workdir", str(tmp_path / "w")])
    assert json.loads(out.read_text())["layers"] == 3
    eq = res["equality_vs_cpu"]
    assert eq["cells"] > 0 and eq["class_differs"] == 0 and eq["nan_pattern_equal"]
    assert res["end_to_end_in_process_overlapped_io"]["pixels_per_s"] > 0
    assert res["stage_rates_device"]["tile_pixels_per_s"] > 0
    assert res["overlap_speedup"]["class_differs"] == 0 and res["overlap_speedup"]["ratio"] > 0


@pytest.mark.slow
def test_load_benchmark_runs_many_flows_at_once_to_the_sequential_maps(harness, trained_run, tmp_path):
    """benchmarks/load.py's two phases, small: 4 flow runs of 2 surveys at once on one Prefect server and one
    external Dask cluster (pairs on one output) end with every map equal to its sequential run and nothing
    left behind."""
    from magpipe.synthetic import synthetic_survey
    from magpipe.testing import external_cluster, tiny_config

    load = runpy.run_path(str(ROOT / "benchmarks" / "load.py"))

    surveys = []
    for i in range(2):
        grid, _ = synthetic_survey((96, 128), n_units=3, seed=i)
        grid.rio.to_raster(tmp_path / f"area{i}.tif")
        surveys.append(tmp_path / f"area{i}.tif")
    (tmp_path / "cluster").mkdir()
    with external_cluster(tmp_path / "cluster") as address:
        res = load["run_load"](tmp_path / "work", surveys, trained_run["out"] / "model",
                               tiny_config().parameters(), address, 4)
    assert res["all_completed"] and res["states"] == ["Completed"] * 4, res
    assert res["maps_identical_to_sequential"] == {"area0": True, "area1": True}
    assert res["partial_stores_left"] == [] and res["locks_held_after"] == [] and res["scheduler_tasks_left"] == 0
    assert res["sequential_s"] > 0 and res["concurrent_s"] > 0


def test_the_naive_smoothing_is_each_cells_mean_over_its_windows_valid_cells():
    window_mean = runpy.run_path(str(ROOT / "benchmarks" / "default_run.py"))["window_mean"]
    rng = np.random.default_rng(0)
    values = rng.normal(size=(12, 11, 3)).astype("float32")
    valid = rng.random((12, 11)) > 0.3
    values[~valid] = np.nan
    for r in (0, 1, 2):
        got = window_mean(values, valid, r)
        assert got.shape == (12 - 2 * r, 11 - 2 * r, 3)
        for y in range(got.shape[0]):
            for x in range(got.shape[1]):
                if not valid[y + r, x + r]:
                    assert np.isnan(got[y, x]).all()
                else:
                    near = values[y : y + 2 * r + 1, x : x + 2 * r + 1].reshape(-1, 3)
                    np.testing.assert_allclose(got[y, x], np.nanmean(near, axis=0, dtype=np.float64), rtol=1e-12)
