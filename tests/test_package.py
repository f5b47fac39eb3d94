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


def test_the_command_line_runs_without_prefect(survey_files, tmp_path):
    """Prefect is the flows extra's, not a core dependency: a plain install runs every CLI command. Shown with
    an ingest in a process where importing prefect fails."""
    from importlib.metadata import requires

    core = [r for r in requires("magpipe") if "extra ==" not in r]
    assert core and not [r for r in core if r.lower().startswith(("prefect", "fastapi", "sqlalchemy"))], core
    code = ("import sys; sys.modules['prefect'] = None  # import prefect raises ImportError\n"
            "from magpipe.cli import main; sys.argv = ['magpipe', *sys.argv[1:]]; main()")
    r = subprocess.run([sys.executable, "-c", code, "ingest", str(survey_files["survey"]), "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "survey.zarr" / "zarr.json").exists()
