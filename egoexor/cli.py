"""The command-line layer every egoexor command shares: one error rule, one overwrite rule.

A command is a Python function behind a thin ``main``::

    COMMAND = "egoexor.evaluate"          # the name every message starts with

    def _parser() -> cli.ArgumentParser:
        parser = cli.ArgumentParser(prog=f"python -m {COMMAND}", description=...)
        parser.add_argument("--batch_size", type=cli.int_flag(1), default=16, help=...)
        parser.add_argument("--lr", type=cli.float_flag(0, exclusive_low=True), help=...)
        cli.add_overwrite_flag(parser)
        return parser

    def _run(args) -> int:
        samples = cli.read_json(args.samples, "--samples")           # CommandError naming the file
        cli.check_output(args.out, inputs=[args.samples], overwrite=args.overwrite, owner=COMMAND)
        ...                                                           # everything checkable, then the work
        with cli.output_folder(args.out, COMMAND) as temporary: ...   # or atomic.atomic_output(file)
        return 0

    def main(argv=None) -> int:
        return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)), errors=(LayoutError,))

The rules :func:`run` enforces:

* a user mistake is a :class:`CommandError` (or an ``OSError``, or a type listed in ``errors``, such
  as a module's own ``ValueError`` subclass): exactly one line ``<command>: error: <message>`` on
  stderr, exit status 2, no traceback. Messages name the file, take, frame or field;
* Ctrl-C: one line ``<command>: interrupted``, exit status 130; SIGTERM, SIGHUP and SIGQUIT (a cluster
  stopping the job, a lost terminal): ``<command>: stopped by SIGTERM``, exit status 128 + the signal's
  number (:mod:`egoexor.signals`). The ``atomic`` writers have already removed their temporary outputs on
  the way out;
* a bad flag (unknown, abbreviated, out of range) is a :class:`CommandError` from the parser: one line
  instead of argparse's usage block. :class:`OneLineErrors` gives another parser class the same
  behaviour (``class Parser(cli.OneLineErrors, HfArgumentParser)``, built with ``allow_abbrev=False``);
  :func:`check_range` checks a value that did not come through a flag type (a dataclass field).

Outputs follow one rule (:func:`check_output`, called before any heavy work): an existing output is
refused unless ``--overwrite``; an output that is one of the inputs, holds one, or replaces a file inside
an input folder is always refused. ``--overwrite`` replaces a folder only where it is empty or holds the
marker file its command writes into every output folder (:func:`output_folder`), never the current
folder, one of its ancestors or the home folder. Writing goes through :mod:`egoexor.atomic` (temporary
name, fsync, rename); the temporary outputs it removes, left by killed runs, are named in warnings.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import huggingface_hub

from egoexor import atomic, held_messages, signals

#: Exit status of a user mistake, as argparse uses it.
EXIT_ERROR = 2
#: Exit status after Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130


class CommandError(ValueError):
    """A user mistake: reported as one line ``<command>: error: <message>``, exit status 2."""


class OneLineErrors:
    """Mixin for an ``argparse.ArgumentParser`` subclass: a parsing error raises :class:`CommandError`, and a
    long flag answers to dashes and underscores alike (``--n_permutations`` is ``--n-permutations``, and
    ``--max-new-tokens`` is ``--max_new_tokens``), while ``--help`` lists each flag once, as it is defined."""

    def error(self, message: str):  # type: ignore[override]
        raise CommandError(f"{message} (see --help)")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        args = sys.argv[1:] if args is None else list(args)
        end = args.index("--") if "--" in args else len(args)  # after '--' everything is a value
        return super().parse_known_args([*map(self._as_defined, args[:end]), *args[end:]], namespace)

    def _as_defined(self, token: str) -> str:
        """A long flag as this parser defines it, where it defines only the other spelling."""
        flag, equals, value = token.partition("=")
        if not flag.startswith("--") or flag in self._option_string_actions:  # type: ignore[attr-defined]
            return token
        for other in ("--" + flag[2:].replace("-", "_"), "--" + flag[2:].replace("_", "-")):
            if other in self._option_string_actions:  # type: ignore[attr-defined]
                return other + equals + value
        return token


class DefaultsShown(argparse.HelpFormatter):
    """``--help`` that ends each flag's text with its default, unless the text names it already or there is
    none worth showing (no default, a switch that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.option_strings and not any(action.default is none for none in (None, False, argparse.SUPPRESS))
        return f"{text} (default: %(default)s)" if shown and "default" not in text.lower() else text


class ArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without abbreviations (``--learning_rat`` is unknown, not a prefix), with
    defaults shown in ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsShown)
        super().__init__(*args, **kwargs)


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--overwrite`` flag of every command that writes a file or folder."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (an output that is also an input is refused even so)",
    )


def _range_problem(value: float, low: float | None, high: float | None, exclusive_low: bool) -> str | None:
    """What is wrong with ``value`` (``"must be >= 1, got -1"``), or ``None``."""
    too_low = low is not None and (value <= low if exclusive_low else value < low)
    if math.isfinite(value) and not too_low and (high is None or value <= high):
        return None
    bounds = [f"{'>' if exclusive_low else '>='} {low}"] if low is not None else []
    bounds += [f"<= {high}"] if high is not None else []
    return f"must be {' and '.join(bounds) or 'finite'}, got {value}"


def check_range(
    name: str, value: float, low: float | None = None, high: float | None = None, *, exclusive_low: bool = False
) -> None:
    """Raise :class:`CommandError` unless ``value`` is finite and within the bounds (for values set
    without a flag type, e.g. a dataclass field read from YAML)."""
    problem = _range_problem(value, low, high, exclusive_low)
    if problem:
        raise CommandError(f"{name} {problem}")


def _flag_type(convert: Callable[[str], float], what: str, low, high, exclusive_low) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        problem = _range_problem(value, low, high, exclusive_low)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def int_flag(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer within the bounds, else a one-line error naming the flag."""
    return _flag_type(int, "an integer", low, high, False)


def float_flag(
    low: float | None = None, high: float | None = None, *, exclusive_low: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number within the bounds (``nan`` and ``inf`` are refused)."""
    return _flag_type(float, "a number", low, high, exclusive_low)


def names_flag(choices: Iterable[str]) -> Callable[[str], tuple[str, ...]]:
    """An argparse ``type``: comma-separated names, each one of ``choices`` (an empty text: none)."""
    choices = tuple(choices)

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        return names

    parse.__name__ = "comma-separated names"
    return parse


def flagged(path: Path, flag: str | None) -> str:
    """How a message names a path: with the flag that gave it, when there is one."""
    return f"{flag} {path}" if flag else str(path)


def _file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (``"no such file"``), or ``None``."""
    if path.is_dir():
        return "is a folder, expected a file"
    if not path.is_file():
        return "no such file"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


def input_file(path: str | os.PathLike, flag: str | None = None) -> Path:
    """``path`` as an existing regular file, else :class:`CommandError` naming it."""
    path = Path(path)
    problem = _file_problem(path)
    if problem:
        raise CommandError(f"{flagged(path, flag)}: {problem}")
    return path


def input_folder(path: str | os.PathLike, flag: str | None = None) -> Path:
    """``path`` as an existing folder, else :class:`CommandError` naming it (:func:`input_file`'s twin)."""
    path = Path(path)
    if not path.is_dir():
        problem = "is a file, expected a folder" if path.exists() else "no such folder"
        raise CommandError(f"{flagged(path, flag)}: {problem}")
    return path


def local_path(name: str | os.PathLike | None) -> Path | None:
    """``name`` (a model or tokenizer: a hub name or a folder) as a path where it exists, else ``None``:
    what an output must not replace."""
    return Path(name) if name is not None and Path(name).exists() else None


def check_pretrained(name: str | None, what: str, hint: str = "", file: str = "config.json") -> None:
    """Fail at once, in one line, where loading ``name`` (a folder or a hub name) would fail only after a
    minute of download retries (as transformers does without network): a hub name whose ``file`` is missing
    from the local Hugging Face cache while offline (``HF_HUB_OFFLINE``) or while the hub cannot be reached."""
    if name is None or Path(name).is_dir():
        return
    suffix = f"; {hint}" if hint else ""
    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(name, file), str):
            return
    except ValueError:  # huggingface_hub's HFValidationError: not a repository name either ('/no/such/folder')
        raise CommandError(f"{what} {name}: no such folder{suffix}") from None
    if huggingface_hub.is_offline_mode():
        raise CommandError(f"{what} {name!r}: not a folder and not in the Hugging Face cache (offline){suffix}")
    try:
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(name, file), timeout=10)
    except Exception as error:  # whatever fails this one request (no network, no such repository) fails loading
        raise CommandError(
            f"{what} {name!r}: not a folder, not in the Hugging Face cache, and not on the hub "
            f"({one_line(error, gist=True)}){suffix}"
        ) from None


def input_hdf5(
    path: str | os.PathLike, flag: str | None = None, error: Callable[[str], Exception] = CommandError
) -> Path:
    """``path`` as an existing file with the HDF5 signature, else ``error`` (a module's own error type, where
    it has one) with a message naming it: the one "is this HDF5" check."""
    path = Path(path)
    problem = _file_problem(path) or (None if h5py.is_hdf5(path) else "not an HDF5 file")
    if problem:
        raise error(f"{flagged(path, flag)}: {problem}")
    return path


def open_hdf5(path: str | os.PathLike, flag: str | None = None) -> h5py.File:
    """Open an HDF5 file read-only; a missing, non-HDF5, truncated or unreadable one is a :class:`CommandError`."""
    path = input_hdf5(path, flag)
    try:
        return h5py.File(path, "r")
    except OSError as error:  # h5py's message does not name the file (e.g. "truncated file: eof = ...")
        raise CommandError(f"{flagged(path, flag)}: cannot read the HDF5 file ({error})") from None


def read_json(path: str | os.PathLike, flag: str | None = None) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed one is a :class:`CommandError` naming it."""
    path = input_file(path, flag)
    where = flagged(path, flag)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle, object_pairs_hook=_unique_keys)
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"{where}: cannot read: {error}") from None
    except json.JSONDecodeError as error:
        raise CommandError(f"{where}: invalid JSON: {error}") from None
    except _RepeatedKey as error:
        raise CommandError(
            f"{where}: the key {error.args[0]!r} occurs twice in one object (which one counts?)"
        ) from None


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused where a key repeats (``json`` would keep the last value without a word)."""
    found = dict(pairs)
    if len(found) < len(pairs):
        keys = [key for key, _ in pairs]
        raise _RepeatedKey(next(key for key in keys if keys.count(key) > 1))
    return found


def resolved(path: str | os.PathLike) -> Path:
    """``Path.resolve()``; a symlink loop is an ``OSError`` naming the path (Python before 3.13 raises a bare
    ``RuntimeError``, a traceback)."""
    try:
        return Path(path).resolve()
    except RuntimeError:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None


def same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Whether two paths name one file (after symlinks; hard links included), existing or not."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return resolved(first) == resolved(second)


def marker(command: str) -> str:
    """The name of the file that marks a folder as an output of ``command`` (``.egoexor.evaluate``)."""
    return f".{command}"


def _protected(path: Path) -> str | None:
    """Why a folder output must never be replaced: the current folder, one of its ancestors, the home folder."""
    real = resolved(path)
    if real == resolved(Path.home()):
        return "is the home folder"
    if real == resolved(Path.cwd()) or real in resolved(Path.cwd()).parents:
        return "is the current folder or holds it"
    return None


def check_output(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    folder: bool = False,
    owner: str | None = None,
    flag: str | None = None,
) -> Path:
    """Apply the overwrite rule to one output (a file, or a folder replaced as a whole).

    Refused always: an output that is one of ``inputs`` (after symlinks and hard links), a folder output
    holding an input, an existing output inside an input folder, a file output that is a folder and vice
    versa, a folder output that is the current folder, one of its ancestors or the home folder. Refused
    without ``overwrite``: an output that exists (an empty folder holds nothing and counts as absent).
    ``owner`` (a command) makes the output a folder, which ``overwrite`` replaces only where it holds that
    command's :func:`marker`; a caller with its own rule for existing folders passes ``folder=True`` instead.
    """
    path = Path(path)
    where = flagged(path, flag)
    folder = folder or owner is not None
    for source in (Path(p) for p in inputs if p is not None):
        if same_file(source, path):
            raise CommandError(f"{where}: is also an input ({source}); write the output elsewhere")
        if folder and resolved(path) in resolved(source).parents:
            raise CommandError(f"{where}: holds the input {source}; replacing it would delete the input")
        if path.exists() and source.is_dir() and resolved(source) in resolved(path).parents:
            raise CommandError(f"{where}: is inside the input folder {source}; write the output elsewhere")
    blocking = next((parent for parent in path.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise CommandError(f"{where}: cannot be created: {blocking} is a file, not a folder")
    if path.exists() and path.is_dir() != folder:
        expected, found = ("a folder", "a file") if folder else ("a file", "a folder")
        raise CommandError(f"{where}: is {found}, expected {expected}")
    protected = _protected(path) if folder else None
    if protected:
        raise CommandError(f"{where}: {protected}; write the output into a folder of its own")
    if not path.exists() or (folder and not any(path.iterdir())):
        return path
    if not overwrite:
        raise CommandError(f"{where}: already exists (pass --overwrite to replace it)")
    if owner is not None and not (path / marker(owner)).is_file():
        raise CommandError(
            f"{where}: not replaced: it holds files and no {marker(owner)} (not an output of {owner}); "
            "remove it yourself or choose another folder"
        )
    return path


@contextmanager
def output_folder(path: str | os.PathLike, command: str) -> Iterator[Path]:
    """:func:`egoexor.atomic.atomic_folder` with ``command``'s :func:`marker` in it (which lets a later
    ``--overwrite`` replace the folder)."""
    with atomic.atomic_folder(path) as temporary:
        (temporary / marker(command)).write_text(f"written by python -m {command}\n")
        yield temporary


def warn(command: str, message: str) -> None:
    """One warning line on stderr, in the same form as the errors."""
    print(f"{command}: warning: {message}", file=sys.stderr)


def one_line(error: BaseException, *, gist: bool = False) -> str:
    """An error's message on one line: an ``OSError`` as ``file: reason``; with ``gist``, a library's (often
    long, multi-line) message shortened to its type and first sentence."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        message = f"{error.filename}: {error.strerror}"
    else:
        message = str(error).strip() or type(error).__name__
    if gist:
        return f"{type(error).__name__}: {message.strip().splitlines()[0].split('. ')[0]}"
    return " ".join(message.split())


def _warn_stale(command: str) -> None:
    for path in atomic.removed_stale():
        warn(command, f"removed {path}, left by an interrupted run")


def run(command: str, body: Callable[[], int | None], errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's body (argument parsing included) and turn user mistakes into one line.

    Stale temporary outputs the body removed (:func:`egoexor.atomic.removed_stale`) are named in warnings.
    Returns the exit status: the body's (``None`` is 0), 2 after a :class:`CommandError`, an ``OSError``
    or one of ``errors``, 128 + the signal's number after a stop signal (:mod:`egoexor.signals`: 130 after
    Ctrl-C, 143 after SIGTERM). Anything else is a bug and keeps its traceback. Libraries' warnings and log
    lines are held back until :func:`checks_done` or the end, and dropped before the one line of a user
    mistake or a stop signal (:mod:`egoexor.held_messages`).
    """
    with held_messages.held():
        try:
            with signals.stop_signals():
                status = body()
        except (CommandError, OSError, *errors) as error:
            held_messages.drop()
            _warn_stale(command)
            print(f"{command}: error: {one_line(error)}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt as error:
            held_messages.drop()
            _warn_stale(command)
            line, status = signals.outcome(error)
            signals.quiet_from_now()
            traceback.clear_frames(error.__traceback__)  # frees what the stopped body held, now
            print(f"{command}: {line}", file=sys.stderr)
            return status
    _warn_stale(command)
    return 0 if status is None else status


def checks_done() -> None:
    """Call once the command's inputs are checked and its model loaded: the library messages :func:`run` held
    back until now are shown, and later ones go straight to stderr (:mod:`egoexor.held_messages`)."""
    held_messages.release()
