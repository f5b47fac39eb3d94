"""benchmarks/ablate.py on the tiny trained run: every variant scored, the choice made on validation."""

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ablation_scores_every_variant_and_chooses_on_validation(trained_run, tmp_path):
    main = runpy.run_path(str(ROOT / "benchmarks" / "ablate.py"))["main"]
    cfg_file = tmp_path / "config.json"
    trained_run["cfg"].save(cfg_file)
    out = tmp_path / "ablation.json"
    assert main([str(trained_run["out"]), "--config", str(cfg_file), "--patch-sizes", "9", "11",
                 "--derived", "field,tilt", "--splits", "2", "--sparse-draws", "1", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    names = [r["name"] for r in saved["rows"]]
    assert {"AE p9", "raw p9", "AE p11", "raw p11", "AE p9 layer 0", "AE multi-scale 9+11", "AE p9 [field,tilt]",
            "raw p9 [field,tilt]"} <= set(names)
    ae = [r for r in saved["rows"] if r["kind"] == "ae"]
    best = max(ae, key=lambda r: r["val"]["balanced_accuracy"])
    assert saved["chosen"]["ae"] == best["name"]
    assert len(saved["cells"]) == 2
    for r in saved["rows"]:
        for tag in ("val", "test", "sparse"):
            assert 0 <= r[tag]["balanced_accuracy"] <= 1, (r["name"], tag)
    raw9 = next(r for r in saved["rows"] if r["name"] == "raw p9")
    assert raw9["n_features"] == 81 and next(r for r in saved["rows"] if r["name"] == "raw p9 [field,tilt]")[
        "n_features"] == 162


@pytest.mark.slow
def test_objectives_benchmark_scores_each_variant_against_its_controls(trained_run, tmp_path, capsys):
    main = runpy.run_path(str(ROOT / "benchmarks" / "objectives.py"))["main"]
    out = tmp_path / "objectives.json"
    assert main([str(trained_run["out"]), "--variants", "reconstruct:mean_centre", "contrastive:mean_std_centre",
                 "--splits", "2", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    rows = saved["variants"]
    assert [(r["objective"], r["readout"]) for r in rows] == [("reconstruct", "mean_centre"),
                                                              ("contrastive", "mean_std_centre")]
    best = max(rows, key=lambda r: r["validation"]["ae"])
    assert saved["chosen_on_validation"] == f"{best['objective']}:{best['readout']}"
    for r in rows:
        assert set(r["test"]) == {"ae", "random", "stats", "ae+stats"}
        assert all(0 <= v <= 1 for v in r["test"].values())
        assert len({p["n"] for p in r["paired"]}) == 1 and 1 <= r["paired"][0]["n"] <= 2  # a short split is skipped
    assert rows[0]["test"]["stats"] == rows[1]["test"]["stats"]  # the same cells for every variant
    assert "(chosen)" in capsys.readouterr().out


def test_feature_set_throughput_is_timed_against_ae(trained_run, tmp_path):
    main = runpy.run_path(str(ROOT / "benchmarks" / "feature_sets.py"))["main"]
    out = tmp_path / "rates.json"
    assert main([str(trained_run["out"]), "--tiles", "1", "--repeats", "1", "--json", str(out)]) == 0
    sets = json.loads(out.read_text())["sets"]
    assert set(sets) == {"ae@mean_centre", "ae", "stats", "ae+stats"}
    assert sets["ae@mean_centre"]["ratio_to_reference"] == 1.0
    assert sets["ae+stats"]["n_features"] == sets["ae"]["n_features"] + sets["stats"]["n_features"]
    assert sets["ae"]["n_features"] != sets["ae@mean_centre"]["n_features"]  # the run reads out mean, std, centre
    assert all(v["cells_per_s"] > 0 for v in sets.values())
