"""benchmarks/peer_predictive_mapping.py on a small stack run: the peer is scored on magpipe's own splits
and test cells, and paired split by split with the deployed map."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from magpipe.pipeline import run_all
from magpipe.testing import synthetic_stack, tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_peers_method_is_paired_with_the_deployed_map_on_the_same_splits(tmp_path):
    pytest.importorskip("xgboost")
    pytest.importorskip("imblearn")
    s = synthetic_stack(tmp_path, carrier="beta", extra={"Landsat": 3})
    cfg = tiny_config(svm={"features": "stats"}, evaluate={"sparse_per_class": 0}).with_inputs(
        survey=s["survey"], labels=s["labels"], layers=s["layers"])
    report = run_all(tmp_path / "out", cfg)
    main = runpy.run_path(str(ROOT / "benchmarks" / "peer_predictive_mapping.py"))["main"]
    out = tmp_path / "peer.json"
    assert main([str(tmp_path / "out"), "--draws", "2", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    everything, plain = saved["variants"]["all"], saved["variants"]["no-imagery"]
    assert everything["inputs"] == ["field", "alpha", "beta", "Landsat_1", "Landsat_2", "Landsat_3"]
    assert plain["inputs"] == ["field", "alpha", "beta"]
    assert any(f.startswith("Landsat_pc") for f in everything["features"]) and "Landsat_1" not in everything["features"]
    seeds = [sp["seed"] for sp in report["splits"]]
    for v in (everything, plain):
        assert [row["seed"] for row in v["per_split"]] == seeds
        assert [row["deployed"] for row in v["per_split"]] == [sp["balanced_accuracy"]["deployed"]
                                                               for sp in report["splits"]]
        assert all(row["n_test"] == report["splits"][i]["n_test"] for i, row in enumerate(v["per_split"]))
        d = v["deployed_minus_peer"]
        assert d["n"] == len(seeds) and d["mean_diff"] == pytest.approx(
            np.mean([row["deployed"] - row["peer"] for row in v["per_split"]]))
        # the classes live in one layer's values: the per-cell peer reads them too
        assert v["peer"]["mean"] > 0.6 and v["forest"]["mean"] > 0.6
