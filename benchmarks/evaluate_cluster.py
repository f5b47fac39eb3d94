"""The evaluate stage on a Dask cluster against the same stage in one process, on a real run.

Runs a survey up to its classified map once (``magpipe run`` without the evaluation), then times the
evaluate stage alternately in this process (``--serial``) and on a LocalCluster of ``--workers`` workers of
one thread (started before the clock, as ``magpipe run`` has it running from classification), ``--repeats``
times each, the report removed before each. Every report must equal the first figure for figure
(``compare_runs``); the JSON keeps every repeat.

    python benchmarks/evaluate_cluster.py                           # the demo survey (Britain 2 km)
    python benchmarks/evaluate_cluster.py --survey out/britain-1km --patch-px 9  # make_britain_sample.py's

``--survey`` is a folder holding ``britain_tmi_*.tif``, ``britain_labels_*.tif`` and ``britain_classes.csv``
(``scripts/make_britain_sample.py --spacing 1000 --out out/britain-1km`` makes Britain at 1 km); the run uses
the demo's configuration (``magpipe.datasets.demo_config``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from compare_runs import compare_json

from magpipe.cluster import dask_client
from magpipe.config import RunConfig
from magpipe.datasets import britain_sample, demo_config
from magpipe.io.schema import Layout
from magpipe.pipeline import run_classify, run_evaluate, run_ingest, run_labels, run_patch_size, run_patches, run_train


def survey_config(folder: Path | None, patch_px: int | None) -> RunConfig:
    """The demo's configuration (with ``patch_px`` where given) on the shipped sample, or on the Britain
    sample in ``folder``."""
    cfg = demo_config()
    if patch_px:
        cfg = cfg.model_copy(update={"patches": cfg.patches.model_copy(update={"patch_px": patch_px})})
    if folder is None:
        sample = britain_sample()
        return cfg.with_inputs(survey=sample.survey, labels=sample.labels, classes=sample.classes)
    tif = {p.name.split("_")[1]: p for p in folder.glob("britain_*.tif")}
    return cfg.with_inputs(survey=tif["tmi"], labels=tif["labels"], classes=folder / "britain_classes.csv")


def timed_evaluation(out: Path, cfg: RunConfig, client) -> tuple[float, dict]:
    Layout(out).report.unlink(missing_ok=True)
    t = time.perf_counter()
    report = run_evaluate(out, cfg, client=client)
    return time.perf_counter() - t, report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--survey", type=Path, default=None, help="folder of a Britain sample (default: the demo's)")
    ap.add_argument("--patch-px", type=int, default=None, help="patch side (default: the demo's, 15 px)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from magpipe.process import configure_process

    configure_process()  # as the CLI does: the serial side then runs numpy's BLAS on one thread, as the workers do
    cfg = survey_config(args.survey, args.patch_px)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        for stage in (run_ingest, run_labels, run_patch_size, run_patches, run_train, run_classify):
            stage(out, cfg)
        times: dict[str, list[float]] = {"serial": [], "cluster": []}
        first, diffs = None, []
        with dask_client(None, workers=args.workers) as client:
            client.submit(sum, [1]).result()  # the workers are up before the clock
            for _ in range(args.repeats):
                for mode in ("serial", "cluster"):
                    seconds, report = timed_evaluation(out, cfg, client if mode == "cluster" else None)
                    times[mode].append(round(seconds, 2))
                    first = first or report
                    diffs += compare_json(first, report)
                    print(f"{mode}: {seconds:.1f} s", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    med = {m: statistics.median(t) for m, t in times.items()}
    result = {"survey": str(args.survey or "demo (Britain 2 km, magpipe/data)"), "patch_px": cfg.patches.patch_px,
              "workers": args.workers,
              "repeats": args.repeats, "seconds": times, "median_s": med,
              "cluster_over_serial": round(med["cluster"] / med["serial"], 3), "identical": not diffs,
              "differences": diffs[:20], "machine": f"{platform.machine()}, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d")}
    print(f"evaluate: {med['serial']:.1f} s in one process, {med['cluster']:.1f} s on {args.workers} workers "
          f"({result['cluster_over_serial']:.2f}x), medians of {args.repeats}; reports "
          f"{'identical' if not diffs else f'differ ({len(diffs)})'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
