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
                   "--json", str(out), "--workdir", str(tmp_path / "work"), "--object-storage"])
    saved = json.loads(out.read_text())
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
    assert row["max_tie_margin_of_mismatches"] < 1e-3
    assert saved["parallel_efficiency"]["one_worker_pixels_per_s"] > 0
    assert {s["layout"] for s in saved["zarr_study"]} >= {"shard 512, chunk 256, zstd"}
    assert set(saved["training"]["svm"]) == {"exact", "nystroem"}
    store = saved["object_storage"]  # the same map from and into a bucket, and what crossed the wire
    assert store["identical_to_local"] and store["pixels_per_s"] > 0
    # at least the survey read (float32 field + mask) and the maps written, compressed, crossed to the server
    assert store["bytes_per_cell"] > 1
