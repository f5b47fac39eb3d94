"""Screenshots of the dashboard's report artifact, as a person monitoring runs sees it, for docs/deployment.md.

Starts a Prefect server (a temporary PREFECT_HOME, a free port on 127.0.0.1), runs the survey-pipeline flow on
the demo survey against it, then has headless Chromium (Debian's ``chromium``: ``apt-get install chromium``)
render the ``<survey>-report`` artifact's page at ``--width`` pixels (1280: a laptop's browser pane) and
writes it as PNG slices of ``--slice`` pixels under ``--out``. About 2 minutes on 2 cores.

    python scripts/screenshot_report.py                 # -> docs/images/report-artifact-1280-*.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"no answer from {url} in {seconds:.0f} s")


def run_demo(env: dict, out: Path) -> str:
    """Run the pipeline flow on the demo against the server in ``env``; the report artifact's id."""
    code = f"""
import json
from flows.pipeline import survey_pipeline
from prefect.client.orchestration import get_client
state = survey_pipeline(out={str(out)!r}, return_state=True)
assert state.is_completed(), state.message
with get_client(sync_client=True) as client:
    arts = [a for a in client.read_artifacts() if a.key and a.key.endswith("-report")]
print(json.dumps(str(arts[0].id)))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return r.stdout.strip().splitlines()[-1].strip('"')


def screenshot(url: str, path: Path, width: int, height: int, chromium: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        "--virtual-time-budget=20000", f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=180)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=14000, help="the page's height in pixels, all of the report")
    ap.add_argument("--slice", type=int, default=1600, help="height of each PNG written")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args(argv)
    import numpy as np
    from PIL import Image

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(f"http://127.0.0.1:{port}/api/health")
            artifact = run_demo(env, Path(tmp) / "run")
            full = Path(tmp) / "page.png"
            screenshot(f"http://127.0.0.1:{port}/artifacts/artifact/{artifact}", full, args.width, args.height,
                       args.chromium)
        finally:
            server.terminate()
            server.wait(timeout=60)
        page = Image.open(full).convert("RGB")
        # the slices end where the report does: its last light pixel (text, figures) right of the menu; the
        # page's background pattern below it is dark
        pane = np.asarray(page)[:, args.width // 5 :]
        varied = np.flatnonzero((pane.max(axis=2) > 150).any(axis=1))
        bottom = min(page.height, int(varied.max()) + 40) if varied.size else page.height
        if bottom >= page.height - 40:
            print(f"the report may go on below {page.height} px: give a larger --height", file=sys.stderr)
        args.out.mkdir(parents=True, exist_ok=True)
        for old in args.out.glob(f"report-artifact-{args.width}-*.png"):
            old.unlink()
        for i, top in enumerate(range(0, bottom, args.slice)):
            part = args.out / f"report-artifact-{args.width}-{i + 1}.png"
            # 256 colours: a third of the size, the text and tables unchanged to the eye
            page.crop((0, top, page.width, min(bottom, top + args.slice))).quantize(256).save(part, optimize=True)
            print(part.relative_to(ROOT) if part.is_relative_to(ROOT) else part)
    return 0


if __name__ == "__main__":
    sys.exit(main())
