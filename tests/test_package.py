import subprocess
import sys


def test_import_magpipe_does_not_import_prefect():
    code = "import sys, magpipe; print('prefect' in sys.modules, magpipe.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"
    assert out[1] != "0+unknown"
