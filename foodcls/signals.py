"""SIGTERM (what SLURM, Kubernetes and systemd send) handled as Ctrl-C: the trainer saves the last
completed epoch, marks the run interrupted, and the command exits with 128 + the signal number."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives; code that saves on Ctrl-C saves on it too."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[dict[str, int | None]]:
    """While inside, SIGTERM raises Terminated once (a second one, while the run saves, is ignored).
    Yields {"signal": the signal number received, or None}."""
    received: dict[str, int | None] = {"signal": None}

    def handler(signum: int, frame: object) -> None:
        if received["signal"] is None:
            received["signal"] = signum
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(received: dict[str, int | None]) -> int:
    """130 after Ctrl-C (SIGINT), 143 after SIGTERM: 128 + the signal's number, as shells report it."""
    return 128 + (received["signal"] or signal.SIGINT)
