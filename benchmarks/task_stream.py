"""Where a classification's wall time goes: tile compute on each worker, or gaps between tasks.

    python benchmarks/task_stream.py RUN [--repeats 4] [--workers 2]

RUN is a run directory with ``survey.zarr`` and ``model/`` (``magpipe run`` or ``benchmarks/run.py
--workdir``). Each repeat classifies the whole survey on a fresh LocalCluster with Dask's task stream
recorded and prints cells/s, the tile times (median, 90th percentile, slowest) and each worker's busy
fraction of the wall time. A run that is slow because its tiles are slow is the machine; a run that
is slow with idle workers is scheduling.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tile-px", type=int, default=512)
    args = ap.parse_args(argv)

    from distributed import get_task_stream

    from magpipe.classify import cached_bundle
    from magpipe.cluster import dask_client
    from magpipe.io.schema import Layout
    from magpipe.io.stores import open_array
    from magpipe.process import configure_process
    from magpipe.stages.classify import classify_into

    configure_process()
    layout, bundle = Layout(args.run), args.run / "model"
    cells = int(np.prod(open_array(layout.survey, "field").shape))
    rows = []
    with tempfile.TemporaryDirectory(prefix="magpipe-stream-") as tmp:
        out = Path(tmp) / "classified.zarr"
        for i in range(args.repeats):
            shutil.rmtree(out, ignore_errors=True)
            with dask_client(None, workers=args.workers) as client:
                client.run(cached_bundle, str(bundle))
                t0 = time.perf_counter()
                with get_task_stream(client) as ts:
                    classify_into(layout, bundle, out, tile_px=args.tile_px, client=client)
                wall = time.perf_counter() - t0
            spans = [(d["worker"], s["stop"] - s["start"]) for d in ts.data for s in d["startstops"]
                     if s["action"] == "compute"]
            tiles = np.array([s for _, s in spans])
            busy = {w: sum(s for v, s in spans if v == w) / wall for w in {w for w, _ in spans}}
            rows.append({"pixels_per_s": cells / wall, "wall_s": wall, "tiles": len(tiles),
                         "tile_s_median": float(np.median(tiles)), "tile_s_p90": float(np.percentile(tiles, 90)),
                         "tile_s_max": float(tiles.max()), "busy_fraction": sorted(busy.values())})
            r = rows[-1]
            print(f"run {i + 1}: {r['pixels_per_s']:,.0f} cells/s ({wall:.1f} s); {r['tiles']} tiles, median "
                  f"{r['tile_s_median']:.2f} s, p90 {r['tile_s_p90']:.2f}, slowest {r['tile_s_max']:.2f}; workers busy "
                  + ", ".join(f"{b:.0%}" for b in r["busy_fraction"]), flush=True)
    return rows


if __name__ == "__main__":
    main()
