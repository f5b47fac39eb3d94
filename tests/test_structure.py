"""The layout rules of the code base, checked: store access only in magpipe/io, short functions,
no test module importing another, no global side effects on import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = [f for d in ("magpipe", "flows") for f in sorted((ROOT / d).rglob("*.py"))]
MAX_FUNCTION_LINES = 80


def _store_access(tree: ast.AST) -> list[tuple[int, str]]:
    """Lines that open or write a Zarr store, a dataset or a raster directly."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, f"import {n}") for n in names if n.split(".")[0] in ("zarr", "rasterio")]
        elif isinstance(node, ast.Attribute):
            base = node.value.id if isinstance(node.value, ast.Name) else "..."
            if base == "zarr" or (base == "xr" and node.attr.startswith("open_")) or node.attr == "to_zarr" \
                    or (base == "rasterio" and node.attr == "open"):
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_store_access_lives_in_magpipe_io():
    outside = [(f.relative_to(ROOT), line, what) for f in CODE if "magpipe/io/" not in f.as_posix()
               for line, what in _store_access(ast.parse(f.read_text()))]
    assert not outside, outside


def test_the_store_check_sees_store_access():  # the rule above can fail
    assert {w for _, w in _store_access(ast.parse("import zarr\nzarr.open_group(p)\nds.to_zarr(p)\n"
                                                  "xr.open_zarr(p)\nrasterio.open(p)"))} == \
        {"import zarr", "zarr.open_group", "ds.to_zarr", "xr.open_zarr", "rasterio.open"}


def test_no_function_is_longer_than_80_lines():
    long = [(f.relative_to(ROOT), node.name, node.end_lineno - node.lineno + 1) for f in CODE
            for node in ast.walk(ast.parse(f.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_no_test_module_imports_another():
    tests = {f.stem for f in (ROOT / "tests").rglob("*.py")}
    bad = [(f.relative_to(ROOT), n) for f in (ROOT / "tests").rglob("*.py")
           for node in ast.walk(ast.parse(f.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
           for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
           if n.split(".")[0] in tests]
    assert not bad, bad


def test_importing_magpipe_changes_no_process_state():
    """GDAL's cache, warning filters, torch threads and matplotlib's backend are the entry points' to set."""
    # the libraries magpipe uses first: their own import-time filters are not magpipe's
    code = ("import os, warnings, torch, numpy, scipy.ndimage, sklearn.svm, xarray, zarr, dask.array, distributed\n"
            "import rioxarray, geopandas, skops.io, pydantic\n"
            "n = torch.get_num_threads(); f = list(warnings.filters)\n"
            "import magpipe.pipeline, magpipe.report, magpipe.io.grids, magpipe.cluster, magpipe.classify\n"
            "import sys\n"
            "assert 'GDAL_CACHEMAX' not in os.environ, 'GDAL_CACHEMAX'\n"
            "assert torch.get_num_threads() == n, 'torch threads'\n"
            "assert warnings.filters == f, [w for w in warnings.filters if w not in f]\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot'\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "GDAL_CACHEMAX"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]


def _stage_imports(source: str) -> list[str]:
    """The magpipe.stages modules a module's source imports (``from magpipe.stages.x import``,
    ``import magpipe.stages.x``, ``from magpipe.stages import x``, and ``import_module`` of one)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("magpipe.stages"):
            found += [node.module] if node.module != "magpipe.stages" else [f"magpipe.stages.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("magpipe.stages.")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("magpipe.stages."):
            found.append(node.value)
    return found


def test_no_stage_module_imports_another():
    """Stages are stages: what two of them share lives in the library, and magpipe.pipeline composes them."""
    stages = [f for f in sorted((ROOT / "magpipe" / "stages").glob("*.py")) if f.name != "__init__.py"]
    assert len(stages) >= 8
    bad = [(f.name, m) for f in stages for m in _stage_imports(f.read_text())]
    assert not bad, bad


def test_the_stage_import_check_sees_stage_imports():  # the rule above can fail
    code = ("from magpipe.stages.train import x\nimport magpipe.stages.patches\nfrom magpipe.stages import evaluate\n"
            "def f():\n    from magpipe.stages.patch_size import y\n")
    assert _stage_imports(code) == ["magpipe.stages.train", "magpipe.stages.patches", "magpipe.stages.evaluate",
                                    "magpipe.stages.patch_size"]


def test_run_all_lists_every_stage_it_runs_in_order():
    """run_all calls each stage by name (no loop hiding one, no stage calling another)."""
    from magpipe import stages

    tree = ast.parse((ROOT / "magpipe" / "pipeline.py").read_text())
    run_all = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "run_all")
    calls = [n.func.attr for n in sorted(ast.walk(run_all), key=lambda n: (getattr(n, "lineno", 0), getattr(
             n, "col_offset", 0))) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "stages"]  # in source order
    assert calls == ["run_ingest", "run_labels", "run_patch_size", "run_patches", "run_train", "run_classify",
                     "run_evaluate"]
    assert set(stages.__all__) - set(calls) == {"run_similar"}  # on demand, after a run


def _own_splits_and_scoring(source: str) -> list[str]:
    """What a benchmark builds itself that the pipeline has: spatial splits, CV folds or sparse draws from
    the low-level pieces, or an SVM searched over bare block ids (no gap) instead of the pipeline's folds."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id in ("blocked_folds", "spatial_split", "subsample_per_class"):
            found.append(node.id)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "fit_svm" \
                and len(node.args) > 2 and isinstance(node.args[2], ast.Attribute) and node.args[2].attr == "blocks":
            found.append(f"fit_svm(..., {ast.unparse(node.args[2])})")
    return found


def test_benchmarks_split_and_score_as_the_pipeline_does():
    """Benchmarks call the library's folds (cv_folds), holdout and sparse-label scoring: a number they report
    is one the pipeline would produce, and there is one copy of each procedure."""
    bad = [(f.name, what) for f in sorted((ROOT / "benchmarks").glob("*.py"))
           for what in _own_splits_and_scoring(f.read_text())]
    assert not bad, bad
    assert set(_own_splits_and_scoring("from magpipe.splits import spatial_split\nspatial_split(a)\n"
                                       "fit_svm(X, y, train.blocks, cfg)\n")) == {"spatial_split",
                                                                                  "fit_svm(..., train.blocks)"}
