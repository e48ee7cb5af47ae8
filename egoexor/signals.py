"""Stop signals: what a cluster, a lost terminal or Ctrl-C does to a command, made into one exception.

SLURM and Kubernetes stop a job with SIGTERM (preemption, ``scancel``, a time limit), a closed terminal
sends SIGHUP, Ctrl-C SIGINT and Ctrl-\\ SIGQUIT. Python turns only SIGINT into an exception; the others
kill the process on the spot, so no ``finally`` runs and temporary outputs stay behind. While
:func:`stop_signals` is active, each of the four raises :class:`Stopped` (a ``KeyboardInterrupt``, so
that the code that already handles Ctrl-C, the ``atomic`` writers' cleanup and torch's DataLoader workers
included, handles all four alike), and the command exits with status 128 + the signal's number, as a
shell reports a process killed by it (130 for SIGINT, 143 for SIGTERM).

Only the first signal stops the command: later ones (``torchrun`` forwards the SIGTERM a job's process
group already got; an impatient second Ctrl-C) are ignored, so that they cannot interrupt the removal of
the temporaries. ``kill -9`` still ends a command that hangs.

A long loop that has a better place to stop (``train`` at the end of a step, to save a checkpoint) holds
the signal with :func:`deferred` and asks :func:`pending` between steps.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: The signals that stop a command cleanly.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived: the command removes its temporaries and exits with :attr:`exit_status`."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.detail = signum, detail

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class _State:
    """The handler's memory: the first signal, whether a loop holds it back, the unraisable hook it replaced."""

    received: int | None = None
    deferring = False
    previous_hook = sys.unraisablehook


def _handle(signum: int, frame) -> None:
    if _State.received is not None:
        return
    _State.received = signum
    threading.excepthook = _quiet  # a worker thread losing its peer to the same signal (see quiet_from_now)
    if not _State.deferring:
        raise Stopped(signum)


def _resend_if_swallowed(unraisable) -> None:
    """``sys.unraisablehook``: Python swallows an exception raised inside a finalizer or a weakref callback (and
    prints "Exception ignored in ..."). A :class:`Stopped` raised there, because the signal's handler happened
    to run inside one, would leave the command running to its end: the signal is sent again, from another
    thread, to be handled once the callback has returned."""
    if not isinstance(unraisable.exc_value, Stopped):
        if _State.received is None:  # once stopped, a finalizer's error is a consequence of the stop
            _State.previous_hook(unraisable)
        return
    _State.received = None
    threading.Timer(0.01, os.kill, (os.getpid(), unraisable.exc_value.signum)).start()


@contextmanager
def stop_signals() -> Iterator[None]:
    """Turn :data:`STOP_SIGNALS` into :class:`Stopped` inside the block; the previous handlers come back after
    it. Outside the main thread (where Python cannot install handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handle) for signum in STOP_SIGNALS}
    _State.received, _State.deferring = None, False
    _State.previous_hook, sys.unraisablehook = sys.unraisablehook, _resend_if_swallowed
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = _State.previous_hook
        _State.received, _State.deferring = None, False


@contextmanager
def deferred() -> Iterator[None]:
    """Inside the block a stop signal is recorded instead of raised: the loop asks :func:`pending` at its
    next safe point. A signal that arrived before the block still stops at once."""
    if _State.received is not None:
        raise Stopped(_State.received)
    _State.deferring = True
    try:
        yield
    finally:
        _State.deferring = False


def quiet_from_now() -> None:
    """A stopped command is ending: from now on, what a finalizer or a background thread raises is not shown.
    Both are consequences of the stop (a DataLoader whose workers the same signal ended reports them as lost;
    multiprocessing's resource-sharing thread loses its peer), and the command's one line says what happened."""
    sys.unraisablehook = threading.excepthook = _quiet


def _quiet(error) -> None:
    """Drops an unraisable or a thread's exception (:func:`quiet_from_now`)."""


def outcome(error: KeyboardInterrupt) -> tuple[str, int]:
    """The line a stopped command ends with and its exit status: ``interrupted`` and 130 after Ctrl-C,
    ``stopped by SIGTERM`` and 143 after SIGTERM, with what the command did about it (``saved ...``) if anything."""
    stop = error if isinstance(error, Stopped) else Stopped(signal.SIGINT)  # a KeyboardInterrupt raised by hand
    said = "interrupted" if stop.signum == signal.SIGINT else f"stopped by {signal.Signals(stop.signum).name}"
    return (f"{said}; {stop.detail}" if stop.detail else said), stop.exit_status


def pending() -> int | None:
    """The stop signal received so far (its number), or ``None``."""
    return _State.received
