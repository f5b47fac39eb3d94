"""Are two runs' results identical? The check behind "no change in results" refactors.

Compares, cell for cell, every variable of ``classified.zarr`` (class, confidence, anomaly;
NaN equal to NaN) and every number of ``report.json`` except wall-clock timings (and the input hash), and
prints each difference. Exit status 0 when identical, 1 otherwise.

    python benchmarks/compare_runs.py RUN_A RUN_B
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from magpipe.io.schema import Layout
from magpipe.io.stores import open_store

# wall-clock times differ between identical runs; input_hash records what a report was made from, not a result
IGNORED_KEYS = {"seconds", "input_hash"}


def compare_maps(a: Path, b: Path) -> list[str]:
    """Differences between the class, confidence and anomaly maps of two runs."""
    da, db = open_store(Layout(a).classified), open_store(Layout(b).classified)
    out = []
    for name in ("class", "confidence", "anomaly"):
        x, y = da[name].values, db[name].values
        if x.shape != y.shape:
            out.append(f"classified.zarr:{name}: shapes {x.shape} and {y.shape}")
            continue
        same = (x == y) | (np.isnan(x) & np.isnan(y)) if x.dtype.kind == "f" else x == y
        if not same.all():
            out.append(f"classified.zarr:{name}: {int((~same).sum())} of {x.size} cells differ")
    return out


def compare_json(x, y, where: str = "report.json") -> list[str]:
    """Differences between two JSON values, ignoring timing keys."""
    if isinstance(x, dict) and isinstance(y, dict):
        out = [f"{where}.{k}: only in {'A' if k in x else 'B'}" for k in sorted(set(x) ^ set(y))
               if k not in IGNORED_KEYS]
        for k in x.keys() & y.keys():
            if k not in IGNORED_KEYS:
                out += compare_json(x[k], y[k], f"{where}.{k}")
        return out
    if isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            return [f"{where}: lengths {len(x)} and {len(y)}"]
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in compare_json(u, v, f"{where}[{i}]")]
    return [] if x == y else [f"{where}: {x!r} != {y!r}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    diffs = compare_maps(args.a, args.b)
    diffs += compare_json(json.loads(Layout(args.a).report.read_text()), json.loads(Layout(args.b).report.read_text()))
    for d in diffs:
        print(d)
    print(f"{'identical' if not diffs else f'{len(diffs)} differences'}: classified.zarr and report.json "
          f"of {args.a} and {args.b} (timings aside)")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
