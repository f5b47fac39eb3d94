"""The command line of a script that generates a page of docs/: write it, or with ``--check`` say whether
the page on disk is what the script gives (exit 1 if not), so a test and CI can hold it current."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def generated_page_main(doc: Path, render: Callable[[], str], *, root: Path, source: str, script: str,
                        argv: list[str] | None = None) -> int:
    """Write ``render()`` to ``doc``, or with ``--check`` compare them; ``source`` names what the page is made
    from and ``script`` the command that regenerates it (both for messages)."""
    ap = argparse.ArgumentParser(description=f"Generate {doc.relative_to(root)} from {source}.")
    ap.add_argument("--check", action="store_true", help=f"exit 1 if {doc.relative_to(root)} is not what "
                    f"{source} gives")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not doc.exists() or doc.read_text(encoding="utf-8") != text:
            print(f"{doc.relative_to(root)} is out of date: run python {script}", file=sys.stderr)
            return 1
        return 0
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")
    print(f"wrote {doc.relative_to(root)}")
    return 0
