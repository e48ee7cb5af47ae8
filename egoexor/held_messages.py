"""Library messages held back while a command checks its inputs and loads, so a user mistake stays one line.

transformers, huggingface_hub, kernels, bitsandbytes, peft and accelerate print warnings and notices on
stderr through Python's ``logging`` (their own stream handlers, or logging's last-resort handler) and
``warnings``. Loading a model makes them talk (``Skipping publisher trust check ... offline mode`` from
kernels, under ``HF_HUB_OFFLINE=1``), and what they print changes with every release. A command's one-line
error must not come after a screen of that, and users still need those messages on a run that works.

So :func:`held` (``egoexor.cli.run`` wraps every command in it) keeps what any stream handler writing to
stderr emits, and every warning Python would show, in memory, in order. Some libraries talk as they are
imported (bitsandbytes looks up a hub kernel on CPUs with AVX512-BF16), before a command's ``main`` runs, so
a process started as an egoexor command starts holding when the ``egoexor`` package is imported
(:func:`hold_if_command`) and ``held`` takes that hold over. The messages reach stderr

* at :func:`release`, which a command calls once its inputs are checked and its model loaded (from then on
  they go straight to stderr, as without egoexor), or at the end of a run that did not fail on a user
  mistake;
* never, when the command ends with a user mistake or Ctrl-C: the one line is the message;
* at exit, in a process that never reached ``held`` (nothing is lost).

Handlers writing anywhere else (a file, pytest's capture) are untouched, and so is everything a command
prints itself (progress bars, results, its own warnings).
"""

from __future__ import annotations

import atexit
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _Hold:
    """The messages kept so far, and the patches that keep them."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        # False once ended: a patch that outlives the hold (warnings.catch_warnings restores the showwarning it
        # saved, which may be this one) then passes everything on instead of keeping it.
        self.active = True
        self.saved = (logging.StreamHandler.emit, warnings.showwarning)
        original_emit, original_showwarning = self.saved
        hold = self

        def emit(handler: logging.StreamHandler, record: logging.LogRecord) -> None:
            stderr = handler.stream in (sys.stderr, sys.__stderr__) and not isinstance(handler, logging.FileHandler)
            if hold.active and stderr:
                try:
                    hold.texts.append(handler.format(record) + "\n")
                except Exception:  # a record that cannot be formatted: logging's own error path, as unheld
                    handler.handleError(record)
            else:
                original_emit(handler, record)

        def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
            if hold.active and (file is None or file in (sys.stderr, sys.__stderr__)):
                hold.texts.append(warnings.formatwarning(message, category, filename, lineno, line))
            else:
                original_showwarning(message, category, filename, lineno, file, line)

        logging.StreamHandler.emit = emit  # type: ignore[method-assign]
        warnings.showwarning = showwarning

    def end(self, show: bool) -> None:
        """Stop holding; with ``show``, write what was held to stderr."""
        self.active = False
        logging.StreamHandler.emit, warnings.showwarning = self.saved  # type: ignore[method-assign]
        if show and self.texts:
            sys.stderr.write("".join(self.texts))
            sys.stderr.flush()
        self.texts = []


_current: _Hold | None = None


#: What ``sys.argv[0]`` is while the egoexor package is imported by an egoexor command: ``-m`` while
#: ``python -m egoexor...`` locates its module, else the console script's name.
COMMAND_SCRIPTS = ("egoexor", "egoexor-merge-h5", "egoexor-download")


def hold_if_command() -> None:
    """Start holding now if this process was started as an egoexor command (see :data:`COMMAND_SCRIPTS`);
    what is still held at exit is shown then."""
    global _current
    started_as = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if _current is None and (started_as == "-m" or started_as in COMMAND_SCRIPTS):
        _current = _Hold()
        atexit.register(release)


@contextmanager
def held() -> Iterator[None]:
    """Hold library messages for the block (taking over a hold already started, by :func:`hold_if_command`
    or an enclosing block); they are shown when it ends, unless :func:`drop` or :func:`release` ended the
    hold first."""
    global _current
    _current = _current or _Hold()
    try:
        yield
    finally:
        release()


def release() -> None:
    """The command has checked its inputs and loaded its model: show what was held, stop holding."""
    global _current
    hold, _current = _current, None
    if hold is not None:
        hold.end(show=True)


def drop() -> None:
    """The command ended on a user mistake or Ctrl-C: forget what was held, stop holding."""
    global _current
    hold, _current = _current, None
    if hold is not None:
        hold.end(show=False)
