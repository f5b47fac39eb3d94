import subprocess
import sys


def test_import_magpipe_does_not_import_prefect():
    code = "import sys, magpipe; print('prefect' in sys.modules, magpipe.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"
    assert out[1] != "0+unknown"


def test_public_names_resolve_and_model_import_is_light():
    import magpipe

    assert callable(magpipe.run_all) and magpipe.RunConfig().patches.patch_px == "auto"
    code = "import sys, magpipe.model; print(any(m in sys.modules for m in ('zarr', 'xarray', 'dask')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
