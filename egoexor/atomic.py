"""Atomic outputs: a run that fails, is interrupted or is killed leaves the old state or the new one.

Every output (a file, or a folder of files) is written under a temporary name beside it, flushed to
disk (``fsync`` of every file), renamed over the final name, and the parent folder is fsynced so that
the rename itself survives a crash. A folder replaces an existing folder by an atomic exchange
(``renameat2(RENAME_EXCHANGE)``), so the old one stays complete under its name until the new one is.

A write that finds no room (a full disk, a quota) is an ``OSError`` naming the output the user asked for
(:func:`naming_full_disk`), whatever type the library that wrote it raised.

Temporary names are ``.<name>.<host>.<pid>.<random>.tmp``. An exception (Ctrl-C included) removes
the temporary output; ``kill -9`` cannot, so on entry every writer removes the temporary outputs of
the same target left by processes of this host that no longer exist (never those of a live process,
nor of another host, whose processes it cannot see), and records them for :func:`removed_stale`.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: Stale temporaries the writers removed, not yet reported.
_removed: list[Path] = []


#: What a write that found no room says: the disk is full, or the user's quota is.
_NO_ROOM = {errno.ENOSPC: os.strerror(errno.ENOSPC), errno.EDQUOT: os.strerror(errno.EDQUOT)}


def _out_of_room(error: Exception, folder: Path) -> bool:
    """Whether ``error`` is a write into ``folder`` that found no room. Libraries raise it as their own types with
    the errno only in the message (h5py's ``RuntimeError``, safetensors' ``SafetensorError``), or say nothing
    of it (``torch.save``'s zip writer: "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs
    534"): that one counts when under 1 MiB is left."""
    if isinstance(error, OSError) and error.errno in _NO_ROOM:
        return True
    if any(message in str(error) for message in _NO_ROOM.values()):
        return True
    if not (isinstance(error, RuntimeError) and "inline_container.cc" in str(error)):
        return False
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


@contextmanager
def naming_full_disk(target: str | os.PathLike) -> Iterator[None]:
    """A write in the block that finds no room (full disk, quota) is raised as an ``OSError`` naming ``target``,
    the output the user asked for (not a temporary name, nor a library's multi-line dump); other errors pass."""
    target = Path(target)
    try:
        yield
    except Exception as error:
        folder = next((parent for parent in (target, *target.parents) if parent.is_dir()), Path("/"))
        if not _out_of_room(error, folder):
            raise
        code = error.errno if isinstance(error, OSError) and error.errno in _NO_ROOM else errno.ENOSPC
        raise OSError(code, f"cannot write: {_NO_ROOM[code]}", str(target)) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data and metadata to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def removed_stale() -> list[Path]:
    """The stale temporaries the writers removed since the last call (for a warning)."""
    removed = list(_removed)
    _removed.clear()
    return removed


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary outputs of ``target`` left by dead processes of this host; return them."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{re.escape(_HOST)}\.(\d+)\.[^.]+\.tmp")
    if not target.parent.is_dir():
        return []
    stale = []
    for entry in target.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and not _alive(int(match.group(1))):
            _remove(entry)
            stale.append(entry)
    return stale


def _prefix(target: Path) -> str:
    return f".{target.name}.{_HOST}.{os.getpid()}."


def _temporary_name(target: Path) -> Path:
    """A fresh temporary name beside ``target``. It is named before it is created, inside the ``try`` that
    removes it: a Ctrl-C arriving just after the creation then still removes it (``mkstemp`` would return
    the name only after creating the file)."""
    return target.parent / f"{_prefix(target)}{secrets.token_hex(4)}.tmp"


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; ``False`` where the kernel or the filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; it replaces ``path`` when the block succeeds.

    The parent folder is created; the file gets the usual permissions (0666 less the umask),
    not the 0600 it is created with. On any exception the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _removed.extend(remove_stale_temporaries(target))
    temporary = _temporary_name(target)
    try:
        with naming_full_disk(target):
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            yield temporary
            os.chmod(temporary, 0o666 & ~_umask())
            _fsync(temporary)
            os.replace(temporary, target)
            _fsync(target.parent)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; it replaces ``path`` when the block succeeds.

    An existing folder at ``path`` is swapped out atomically and then deleted (where the filesystem
    cannot swap, it is moved aside just before the new one moves in). On any exception the temporary
    folder is removed and ``path`` is untouched. Whether replacing is allowed is the caller's decision.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _removed.extend(remove_stale_temporaries(target))
    temporary = _temporary_name(target)
    try:
        with naming_full_disk(target):
            os.mkdir(temporary, 0o700)
            yield temporary
            os.chmod(temporary, 0o777 & ~_umask())
            for folder, _, files in os.walk(temporary):
                for name in files:
                    _fsync(Path(folder) / name)
                _fsync(Path(folder))
            if target.is_dir() and any(target.iterdir()):
                if not _exchange(temporary, target):
                    aside = _temporary_name(target)
                    os.replace(target, aside)
                    os.replace(temporary, target)
                    temporary = aside
            else:
                os.replace(temporary, target)
            _fsync(target.parent)
    finally:
        _remove(temporary)


def write_json(path: str | os.PathLike, payload: object, indent: int = 2) -> None:
    """JSON written atomically."""
    write_text(path, json.dumps(payload, indent=indent))


def write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text written atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
