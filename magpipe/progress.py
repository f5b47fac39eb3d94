"""Progress of the long steps (training epochs, classification tiles, evaluation splits).

Library code reports each step to :func:`progress`; how it is shown is the entry point's choice.
By default (flows, logs, pipes) a step is a log line, at most about ten per step run plus the
last, so a log stays readable whatever the survey's size. The CLI on a terminal calls
:func:`show_bars`: one bar per running step (tqdm) that vanishes when the step ends, with log
lines printed above it, so a whole run's output fits on one screen.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

from magpipe.process import raise_if_interrupted

log = logging.getLogger("magpipe")

_state = {"bars": False}
LOG_EVERY_S = 30.0  # and at every tenth of the steps


def show_bars(on: bool = True) -> None:
    """Draw bars on stderr instead of logging steps (for a terminal; process-wide)."""
    _state["bars"] = on


@contextlib.contextmanager
def progress(name: str, total: int, unit: str, *, done: int = 0) -> Iterator[Callable[..., None]]:
    """A reporter for ``total`` steps named ``name`` (``done`` of them already finished, on a resume).

    Yields ``update(n=1, **info)``: ``n`` more steps are done; ``info`` (e.g. the losses of an epoch)
    is shown beside the count.
    """
    if _state["bars"] and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, initial=done, desc=name, unit=f" {unit}", leave=False, file=sys.stderr,
                   dynamic_ncols=True, bar_format="{desc}: {bar:24} {n_fmt}/{total_fmt}{unit} {elapsed}<{remaining}"
                   "{postfix}")

        def update(n: int = 1, **info) -> None:
            raise_if_interrupted()
            if info:
                bar.set_postfix({k: _fmt(v) for k, v in info.items()}, refresh=False)
            bar.update(n)

        try:
            yield update
        finally:
            bar.close()
        return
    every, state = max(1, total // 10), {"done": done, "logged": time.monotonic()}

    def update(n: int = 1, **info) -> None:
        raise_if_interrupted()
        before, state["done"] = state["done"], state["done"] + n
        now = time.monotonic()
        if state["done"] >= total or state["done"] // every > before // every or now - state["logged"] > LOG_EVERY_S:
            state["logged"] = now
            extra = "  ".join(f"{k} {_fmt(v)}" for k, v in info.items())
            log.info("%s %d/%d %s%s", name, state["done"], total, unit, f"  {extra}" if extra else "")

    yield update


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@contextlib.contextmanager
def log_above_bars() -> Iterator[None]:
    """Route magpipe's log lines through tqdm while bars may be drawn, so a line never splits a bar."""
    if not (_state["bars"] and sys.stderr.isatty()):
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger("magpipe")]):
        yield
