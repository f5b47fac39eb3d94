"""End-to-end classification on a GPU: a large synthetic survey classified tile by tile on CUDA.

    python benchmarks/gpu_classify.py --json out.json              # 16384^2 on cuda
    python benchmarks/gpu_classify.py --size 2048 --device cpu     # the same steps on the CPU (a dry run)
    python benchmarks/gpu_classify.py --layers 9 --json out.json   # a 9-layer stack (clipped layer scalings)

Steps, each timed and written to the JSON as it ends (a run cut short keeps what it measured):
the model is trained on a 1024^2 labelled survey (``--train-size``) (``run.py``'s benchmark config: AE features,
Nystroem SVM, no smoothing); the large survey is generated as GeoTIFFs (``run.py``'s, with ``--layers``
further layers) and ingested; the
GPU tile classifier is compared cell for cell with the CPU one on 512 px tiles (classes, confidence,
anomaly); each stage's rate on the device (:class:`magpipe.classify.WindowClassifier` timings,
synchronised) and on one CPU thread; then the whole survey is classified in this process
(``classify_into(..., device=...)``, tiles of ``--tile-px``), one tile after another and then with overlapped I/O
(the next tiles read while one computes, writes from a pool; ``overlap_speedup``, classes compared), and through a LocalCluster of one
worker per GPU (``dask_client(gpu=True)``), with cells/s, the GPU's peak memory and the share of
the wall time the GPU stages account for (the rest is reading, compressing and writing Zarr).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roofline import machine_ceilings, print_roofline, roofline, stage_work  # noqa: E402
from run import benchmark_config, stage_rates, train, write_survey  # noqa: E402

from magpipe.bundle import load_bundle  # noqa: E402
from magpipe.classify import WindowClassifier  # noqa: E402
from magpipe.io.schema import Layout  # noqa: E402
from magpipe.io.stores import open_array  # noqa: E402
from magpipe.io.survey import open_inputs  # noqa: E402
from magpipe.patches import read_stack  # noqa: E402
from magpipe.pipeline import run_ingest  # noqa: E402
from magpipe.stages.classify import classify_into  # noqa: E402
from magpipe.tiling import tiles  # noqa: E402


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def compare(bundle, root: Path, device: str, n_tiles: int = 3, tile_px: int = 512) -> dict:
    """The device's tiles of the run in ``root`` against the CPU's, cell for cell: differing classes,
    largest differences."""
    arrays = open_inputs(Layout(root), bundle.inputs)
    grid = tiles(arrays[0].shape, tile_px)
    cpu, dev = WindowClassifier(bundle, "cpu"), WindowClassifier(bundle, device)
    out = {"cells": 0, "class_differs": 0, "confidence_max_abs_diff": 0.0, "anomaly_max_rel_diff": 0.0,
           "nan_pattern_equal": True}
    for y0, y1, x0, x1 in grid[:: max(1, len(grid) // n_tiles)][:n_tiles]:
        window = read_stack(arrays, y0, y1, x0, x1, bundle.halo_px)
        (c1, p1, a1), (c2, p2, a2) = cpu(window), dev(window)
        out["cells"] += c1.size
        out["class_differs"] += int((c1 != c2).sum())
        out["nan_pattern_equal"] &= bool((np.isnan(p1) == np.isnan(p2)).all() and (np.isnan(a1) == np.isnan(a2)).all())
        ok = np.isfinite(p1) & np.isfinite(p2)
        if ok.any():
            out["confidence_max_abs_diff"] = max(out["confidence_max_abs_diff"], float(np.abs(p1 - p2)[ok].max()))
            out["anomaly_max_rel_diff"] = max(out["anomaly_max_rel_diff"], float(
                (np.abs(a1 - a2) / np.maximum(np.abs(a1), 1e-6))[ok].max()))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=16384, help="side of the classified survey, cells")
    ap.add_argument("--tile-px", type=int, default=2048, help="tile side on the device")
    ap.add_argument("--device", default="cuda", help="torch device (cpu for a dry run)")
    ap.add_argument("--no-dask", action="store_true", help="skip the LocalCluster run")
    ap.add_argument("--cpu-size", type=int, default=4096,
                    help="side of a second survey classified on this machine's CPU cores and on the device (0: none)")
    ap.add_argument("--train-size", type=int, default=1024, help="side of the labelled survey the model is trained on")
    ap.add_argument("--layers", type=int, default=1, help="layers of each survey stack (run.py's --layers)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    from magpipe.process import configure_process, full_fp32

    configure_process()
    full_fp32()  # this script classifies on the device in its own process: it owns the process's settings
    work = Path(args.workdir or tempfile.mkdtemp(prefix="magpipe-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": time.strftime("%Y-%m-%d"), "machine": {
        "device": device_name(args.device), "cpus": os.cpu_count(), "torch": torch.__version__,
        "memory_gib": psutil.virtual_memory().total / 2**30}, "size": args.size, "tile_px": args.tile_px,
        "layers": args.layers}

    def save(step: str, value) -> None:
        res[step] = value
        print(f"{step}: {json.dumps(value, default=float)}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=float))

    cfg = benchmark_config(True)
    t0 = time.perf_counter()
    small = work / "train"
    shutil.rmtree(small, ignore_errors=True)
    small.mkdir(parents=True)
    _, layers = write_survey(args.train_size, small / "survey.tif", args.layers)
    run_ingest(small, cfg.with_inputs(survey=small / "survey.tif", layers=layers))
    tr = train(small, small / "survey.tif", args.train_size, cfg, layers)
    save("training", {"seconds": time.perf_counter() - t0, "device": tr["device"], "patches_per_s": tr["patches_per_s"]})
    bundle_path = Layout(small).model
    bundle = load_bundle(bundle_path)

    t0 = time.perf_counter()
    big = work / "big"
    shutil.rmtree(big, ignore_errors=True)
    big.mkdir(parents=True)
    gen_s, layers = write_survey(args.size, big / "survey.tif", args.layers)
    run_ingest(big, cfg.with_inputs(survey=big / "survey.tif", layers=layers))
    save("survey", {"generate_s": gen_s, "ingest_s": time.perf_counter() - t0 - gen_s})

    save("equality_vs_cpu", compare(bundle, big, args.device))
    for key, device, tile_px in (("device", args.device, args.tile_px), ("cpu_one_thread", "cpu", 512)):
        rates = stage_rates(big, bundle, tile_px, n_tiles=2, device=device)
        ceilings = machine_ceilings(device, n_features=bundle.features.n_features)
        table = roofline(rates, stage_work(bundle, tile_px), ceilings)
        print_roofline(table, ceilings, device)
        save(f"stage_rates_{key}", {**rates, "ceilings": ceilings, "roofline": table})

    cells = args.size * args.size
    dest = big / "classified.zarr"
    gpu_s = cells / res["stage_rates_device"]["tile_pixels_per_s"]
    runs = {}
    for overlap in (False, True):  # the tiles one after another, then with overlapped I/O (the default on a GPU)
        key = "overlapped_io" if overlap else "serial_io"
        runs[key] = big / f"classified-{key}.zarr"
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        classify_into(Layout(big), bundle_path, runs[key], tile_px=args.tile_px, device=args.device, overlap=overlap)
        s = time.perf_counter() - t0
        save(f"end_to_end_in_process_{key}", {
            "seconds": s, "pixels_per_s": cells / s, "device_stage_seconds_est": gpu_s, "device_share": gpu_s / s,
            "gpu_peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
            "process_rss_after_gib": psutil.Process().memory_info().rss / 2**30})
    a, b = (open_array(runs[k], "class")[:] for k in ("serial_io", "overlapped_io"))
    save("overlap_speedup", {"ratio": res["end_to_end_in_process_serial_io"]["seconds"]
                             / res["end_to_end_in_process_overlapped_io"]["seconds"],
                             "class_differs": int((a != b).sum())})
    del a, b
    shutil.rmtree(runs["serial_io"], ignore_errors=True)
    runs["overlapped_io"].rename(dest)

    if not args.no_dask and args.device.startswith("cuda"):
        from magpipe.cluster import dask_client

        shutil.rmtree(dest, ignore_errors=True)
        t0 = time.perf_counter()
        with dask_client(None, gpu=True) as client:
            start_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            classify_into(Layout(big), bundle_path, dest, tile_px=args.tile_px, client=client, device=args.device)
            s = time.perf_counter() - t1
        save("end_to_end_dask", {"gpus": torch.cuda.device_count(), "cluster_start_s": start_s, "seconds": s,
                                 "pixels_per_s": cells / s})
    if args.cpu_size and args.device.startswith("cuda"):
        from magpipe.cluster import dask_client

        mid = work / "cpu"
        shutil.rmtree(mid, ignore_errors=True)
        mid.mkdir(parents=True)
        _, layers = write_survey(args.cpu_size, mid / "survey.tif", args.layers)
        run_ingest(mid, cfg.with_inputs(survey=mid / "survey.tif", layers=layers))
        row = {"size": args.cpu_size, "cpu_workers": os.cpu_count()}
        t0 = time.perf_counter()
        classify_into(Layout(mid), bundle_path, mid / "gpu.zarr", tile_px=args.tile_px, device=args.device)
        row["gpu_pixels_per_s"] = args.cpu_size**2 / (time.perf_counter() - t0)
        with dask_client(None, workers=os.cpu_count()) as client:
            t0 = time.perf_counter()
            classify_into(Layout(mid), bundle_path, mid / "cpu.zarr", tile_px=512, client=client)
            row["cpu_pixels_per_s"] = args.cpu_size**2 / (time.perf_counter() - t0)
        a, b = open_array(mid / "gpu.zarr", "class")[:], open_array(mid / "cpu.zarr", "class")[:]
        row["class_differs"] = int((a != b).sum())
        row["gpu_over_cpu"] = row["gpu_pixels_per_s"] / row["cpu_pixels_per_s"]
        save("same_machine_cpu", row)
    return res


if __name__ == "__main__":
    main()
