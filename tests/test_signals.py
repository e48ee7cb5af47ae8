"""The stop-signal handler of the CLI layer (egoexor.signals), with real signals sent to this process.

Real processes stopped by them: test_cli_safety.py (merge, synthetic), test_infer_safety.py (infer),
test_train_safety.py (train).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from egoexor import atomic, cli, signals


@pytest.mark.parametrize("signum", signals.STOP_SIGNALS, ids=[s.name for s in signals.STOP_SIGNALS])
def test_each_stop_signal_is_one_line_and_128_plus_its_number(signum, tmp_path, capsys):
    target = tmp_path / "out.json"

    def body():
        with atomic.atomic_output(target) as temporary:
            temporary.write_text("half")
            os.kill(os.getpid(), signum)
            temporary.write_text("never reached")

    assert cli.run("cmd", body) == 128 + signum
    said = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    assert capsys.readouterr().err == f"cmd: {said}\n"
    assert list(tmp_path.iterdir()) == []  # the temporary went


def test_later_signals_do_not_interrupt_the_cleanup_and_the_handlers_come_back(tmp_path, capsys):
    before = {signum: signal.getsignal(signum) for signum in signals.STOP_SIGNALS}
    cleaned = []

    def body():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # torchrun forwarding what the job already got
            os.kill(os.getpid(), signal.SIGINT)
            cleaned.append(True)

    assert cli.run("cmd", body) == 143
    assert cleaned == [True] and capsys.readouterr().err == "cmd: stopped by SIGTERM\n"
    assert {signum: signal.getsignal(signum) for signum in signals.STOP_SIGNALS} == before


def test_a_deferred_signal_waits_for_the_loop_to_ask(capsys):
    steps = []

    def body():
        with signals.deferred():
            for step in range(5):
                if signals.pending():
                    raise signals.Stopped(signals.pending(), detail=f"stopped after step {step}")
                steps.append(step)
                if step == 1:
                    os.kill(os.getpid(), signal.SIGTERM)

    assert cli.run("cmd", body) == 143
    assert steps == [0, 1]
    assert capsys.readouterr().err == "cmd: stopped by SIGTERM; stopped after step 2\n"


def test_a_signal_handled_inside_a_finalizer_is_sent_again_not_lost(capsys):
    """The handler may run inside a weakref callback or a ``__del__`` (as a garbage collection in the middle of
    generation once had it), where Python swallows what it raises: the stop must still happen."""

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # the handler runs here, inside __del__

    def body():
        Finalized()  # collected at once
        time.sleep(30)
        raise AssertionError("the stop was lost")

    assert cli.run("cmd", body) == 143
    assert capsys.readouterr().err == "cmd: stopped by SIGTERM\n"  # no "Exception ignored in ..."


def test_what_a_stopped_commands_finalizers_raise_is_not_shown_and_other_errors_still_are(capsys):
    """A DataLoader whose workers the same signal ended raises from its ``__del__`` when the stopped command's
    frames are freed; the command ends with its one line all the same. A command that is not stopped shows a
    finalizer's error as Python shows it."""
    import sys
    import threading

    class Finalizer:
        def __del__(self):
            raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly with exit code 1")

    def stopped():
        held = Finalizer()  # noqa: F841  (freed with the stopped frame, as a loader's iterator is)
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(1)

    def finished():
        Finalizer()

    hooks, seen = (sys.unraisablehook, threading.excepthook), []
    try:
        sys.unraisablehook = seen.append  # what Python would print as "Exception ignored in ..."
        assert cli.run("cmd", finished) == 0
        assert [type(u.exc_value) for u in seen] == [RuntimeError]
        seen.clear()
        sys.unraisablehook = seen.append
        assert cli.run("cmd", stopped) == 128 + signal.SIGHUP
        assert capsys.readouterr().err == "cmd: stopped by SIGHUP\n" and seen == []
    finally:
        sys.unraisablehook, threading.excepthook = hooks
