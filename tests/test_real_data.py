"""Runs on the real surveys in ../shared/data; skipped cleanly where that folder is absent."""

import json

import pytest

from magpipe.errors import DataValidationError
from magpipe.pipeline import run_all, run_evaluate
from magpipe.testing import tiny_config


@pytest.mark.slow
def test_rondonia_vector_labels_in_another_crs_run_end_to_end(shared_data, tmp_path):
    """Survey in EPSG:4674 degrees, 8 lithology units as polygons with field SIGLA_UNID."""
    rondonia = shared_data / "rondonia-cprm"
    # small units fall wholly inside or outside test blocks: left out of training or of the scores, named
    cfg = tiny_config(evaluate={"block_patches": 3, "drop_small_classes": True}, classify={"chunk_px": 64})
    cfg = cfg.with_inputs(survey=rondonia / "features_tif" / "Rondonia_Geof_GT.tif",
                          labels=rondonia / "target" / "Litologia.gpkg", label_field="SIGLA_UNID")
    report = run_all(tmp_path, cfg)
    assert len(report["classes"]) == 8 and "PP4jaar" in report["classes"]
    assert report["n_train"] > 100 and report["n_test"] > 100
    assert "MP1_gamma_prc4" in report["unscored_classes"]  # learnt and mapped, never held out: not scored
    with pytest.raises(DataValidationError, match="too few labelled cells for class 'MP1_gamma_prc4'"):
        run_evaluate(tmp_path, cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(
            update={"drop_small_classes": False})}))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["pixel_accuracy"] == report["pixel_accuracy"]
    import xarray as xr

    ds = xr.open_zarr(tmp_path / "classified.zarr", consolidated=False, decode_coords="all")
    assert ds["class"].rio.crs.to_epsg() == 4674
    assert int((ds["class"] > 0).sum()) == ds["class"].size  # every cell of this grid has data
