"""Library chatter never comes before a command's one error line, and still reaches stderr on a run that works.

Each case runs a real process whose command body talks the way the libraries do: a logger with no handler
(kernels, accelerate: logging's last-resort handler), transformers' and huggingface_hub's own stream
handlers, and ``warnings.warn`` (peft, torch). What the process writes to its real stderr is what a user sees.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import warnings

import pytest

from egoexor import cli, held_messages

BODY = textwrap.dedent(
    """
    import logging, sys, warnings
    from transformers.utils import logging as transformers_logging
    from huggingface_hub.utils import logging as hub_logging
    from egoexor import cli

    def chatter(tag):
        logging.getLogger("kernels._internals.hf_hub").warning("%s: kernels notice", tag)
        transformers_logging.get_logger("transformers.modeling_utils").warning("%s: transformers warning", tag)
        hub_logging.get_logger("huggingface_hub.file_download").warning("%s: hub warning", tag)
        warnings.warn(f"{tag}: peft warning", UserWarning)

    def body():
        chatter("loading")
        if "{end}" == "release-then-error":
            cli.checks_done()
            chatter("running")
        if "{end}" in ("error", "release-then-error"):
            raise cli.CommandError("--checkpoint ckpt: cannot load the model")
        if "{end}" == "interrupt":
            raise KeyboardInterrupt
        if "{end}" == "bug":
            raise RuntimeError("a bug")
        print("done")

    sys.exit(cli.run("egoexor.fake", body))
    """
)
LIBRARIES = ("kernels notice", "transformers warning", "hub warning", "peft warning")


def run_body(end: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BODY.replace("{end}", end)], capture_output=True, text=True)


def messages(stderr: str, tag: str) -> list[str]:
    return [name for name in LIBRARIES if f"{tag}: {name}" in stderr]


@pytest.mark.parametrize(
    ("end", "status", "line"),
    [("error", 2, "egoexor.fake: error: --checkpoint ckpt: cannot load the model"), ("interrupt", 130, None)],
)
def test_a_user_mistake_or_ctrl_c_is_exactly_one_line_whatever_the_libraries_said(end, status, line):
    process = run_body(end)
    assert process.returncode == status
    assert process.stderr.splitlines() == [line or "egoexor.fake: interrupted"]


def test_a_run_that_works_shows_every_library_message_in_order():
    process = run_body("success")
    assert process.returncode == 0 and process.stdout == "done\n"
    assert messages(process.stderr, "loading") == list(LIBRARIES)
    positions = [process.stderr.index(f"loading: {name}") for name in LIBRARIES]
    assert positions == sorted(positions)


def test_after_checks_done_messages_go_straight_to_stderr_and_the_held_ones_are_shown():
    process = run_body("release-then-error")
    assert process.returncode == 2
    assert messages(process.stderr, "loading") == list(LIBRARIES)
    assert messages(process.stderr, "running") == list(LIBRARIES)
    assert process.stderr.splitlines()[-1] == "egoexor.fake: error: --checkpoint ckpt: cannot load the model"


def test_a_bug_shows_the_held_messages_and_its_traceback():
    process = run_body("bug")
    assert process.returncode == 1
    assert messages(process.stderr, "loading") == list(LIBRARIES)
    assert "Traceback" in process.stderr and "RuntimeError: a bug" in process.stderr


def test_handlers_writing_elsewhere_are_untouched_and_the_hold_ends_with_the_command(tmp_path):
    emit = logging.StreamHandler.emit
    log = tmp_path / "run.log"
    handler = logging.FileHandler(log)
    logger = logging.getLogger("egoexor.test_held_messages")
    logger.addHandler(handler)
    try:

        def body():
            logger.warning("kept in the file")
            raise cli.CommandError("bad input")

        assert cli.run("egoexor.fake", body) == cli.EXIT_ERROR
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert log.read_text() == "kept in the file\n"
    assert logging.StreamHandler.emit is emit and held_messages._current is None


def test_a_hold_released_inside_catch_warnings_passes_later_warnings_on():
    """catch_warnings restores the showwarning it saved on entry, the hold's: it must not keep holding."""

    def body():
        with warnings.catch_warnings():
            cli.checks_done()
        warnings.warn("after the release", UserWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as shown:  # record: what would reach stderr is kept here
        warnings.simplefilter("always")
        assert cli.run("egoexor.fake", body) == 0
    assert [str(warning.message) for warning in shown] == ["after the release"]


IMPORT_TIME = textwrap.dedent(
    """
    import sys
    sys.argv[0] = "{started_as}"  # what a command's process has while it imports the egoexor package
    import egoexor, logging
    logging.getLogger("bitsandbytes.cextension").warning("import-time notice")  # as bitsandbytes does on import
    from egoexor import cli

    def body():
        raise cli.CommandError("bad input")

    if "{calls_run}" == "yes":
        sys.exit(cli.run("egoexor.fake", body))
    print("library use, no command", flush=True)
    """
)


@pytest.mark.parametrize(
    ("started_as", "calls_run", "stderr"),
    [
        ("-m", "yes", ["egoexor.fake: error: bad input"]),  # python -m egoexor.X: held from import, dropped
        ("/venv/bin/egoexor-merge-h5", "yes", ["egoexor.fake: error: bad input"]),  # a console script: the same
        ("-m", "no", ["import-time notice"]),  # held from import, never reached cli.run: shown at exit
        ("-c", "no", ["import-time notice"]),  # egoexor imported as a library: nothing held
    ],
)
def test_messages_printed_while_a_command_imports_are_held_too(started_as, calls_run, stderr):
    script = IMPORT_TIME.replace("{started_as}", started_as).replace("{calls_run}", calls_run)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert process.stderr.splitlines() == stderr
