"""benchmarks/ablate.py on the tiny trained run: every variant scored, the choice made on validation."""

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
