"""Stopping a run cleanly: the first Ctrl-C or SIGTERM is only noted, so that the loop stops between two steps
(on every rank together) and saves a checkpoint; a second one interrupts at once."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tinygpt.distributed import World


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a run; a checkpoint of the interrupted iteration was saved first. str() says
    where, and the command that continues it."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what kill, a job scheduler or a container stop send


@contextmanager
def deferred_interrupt() -> Iterator[threading.Event]:
    """Within it, the first Ctrl-C (SIGINT) or SIGTERM only sets the event, so that the loop stops between two steps
    and saves; a second one interrupts at once. Off the main thread, where signals cannot be caught, the event
    never fires."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.default_int_handler)

    def request_stop(signum, frame) -> None:
        requested.set()
        restore()

    for signum in STOP_SIGNALS:
        signal.signal(signum, request_stop)
    try:
        yield requested
    finally:
        restore()


def on_any_rank(world: World, flag: bool) -> bool:
    """Whether flag is set on any rank (one all-reduce when there are several), so that the ranks stop together."""
    return flag if world.world_size == 1 else world.sum_floats([float(flag)])[0] > 0
