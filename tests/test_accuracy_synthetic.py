"""On a survey whose right answer is known, the pipeline must actually classify."""

import numpy as np
import zarr

from magpipe.classify import NODATA_CLASS


def test_synthetic_units_are_recovered_beyond_chance(trained_run):
    from magpipe.pipeline import run_classify, run_evaluate

    out, cfg = trained_run["out"], trained_run["cfg"]
    run_classify(out, cfg)
    report = run_evaluate(out, cfg)
    assert report["balanced_accuracy"]["ae"] > 0.8  # 3 units: chance is 0.33
    cls = zarr.open_group(out / "classified.zarr", mode="r")["class"][:]
    truth = trained_run["truth"]
    unlabelled = np.zeros_like(truth, dtype=bool)
    unlabelled[:, 80:] = True  # the part of the survey no label touched
    sel = unlabelled & (cls != NODATA_CLASS)
    assert np.mean(cls[sel] == truth[sel]) > 0.8
