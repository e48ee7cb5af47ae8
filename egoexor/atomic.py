"""Atomic outputs: a run that fails, is interrupted or is killed leaves the old state or the new one.

Every output (a file, or a folder of files) is written under a temporary name beside it, flushed to
disk (``fsync`` of every file), renamed over the final name, and the parent folder is fsynced so that
the rename itself survives a crash. A folder replaces an existing folder by an atomic exchange
(``renameat2(RENAME_EXCHANGE)``), so the old one stays complete under its name until the new one is.

While an output is written its lock is held (:func:`output_lock`): a second process writing the same output
is refused at once, in one line naming the first.

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
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: Stale temporaries the writers removed, not yet reported.
_removed: list[Path] = []
#: The output locks this process holds: lock file -> [descriptor, depth].
_held_locks: dict[Path, list[int]] = {}


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


def _lock_file(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


@contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``path``'s output lock in the block: another process that asks for it meanwhile gets an ``OSError``
    (``EBUSY``) naming the output and the process writing it, at once; this process may ask again (nested).

    The lock is ``flock`` on ``.<name>.lock`` beside the output, removed as it is released (one left by a
    killed process is taken over by the next). Taken after a release removed it, an old file is let go and
    the new one locked, so that two processes never both hold one.
    """
    target = Path(path).absolute()
    lock = _lock_file(target)
    if lock in _held_locks:
        _held_locks[lock][1] += 1
        try:
            yield
        finally:
            _held_locks[lock][1] -= 1
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor = _take_lock(lock, target)
    _held_locks[lock] = [descriptor, 1]
    try:
        yield
    finally:
        del _held_locks[lock]
        lock.unlink(missing_ok=True)  # while still held: a process waiting on this file takes the next one
        os.close(descriptor)


def _take_lock(lock: Path, target: Path) -> int:
    while True:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 200).decode(errors="replace").strip() or "another process"
            os.close(descriptor)
            busy = f"{holder} is writing it; wait for it to end or write elsewhere"
            raise OSError(errno.EBUSY, busy, str(target)) from None
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(descriptor), current):
            with suppress(OSError):  # who holds it, for the message of a refused writer (a full disk: no)
                os.ftruncate(descriptor, 0)
                os.write(descriptor, f"process {os.getpid()} on {socket.gethostname()}".encode())
            return descriptor
        os.close(descriptor)  # the holder removed that file as it released the lock: take the next one


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
    not the 0600 it is created with. On any exception the temporary file is removed. The output's lock
    (:func:`output_lock`) is held throughout: a second writer of ``path`` is refused.
    """
    target = Path(path)
    with output_lock(target), _temporary(target) as temporary:
        os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        _fsync(temporary)
        os.replace(temporary, target)
        _fsync(target.parent)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; it replaces ``path`` when the block succeeds.

    An existing folder at ``path`` is swapped out atomically and then deleted (where the filesystem
    cannot swap, it is moved aside just before the new one moves in). On any exception the temporary
    folder is removed and ``path`` is untouched. Whether replacing is allowed is the caller's decision;
    the output's lock (:func:`output_lock`) is held throughout.
    """
    target = Path(path)
    with output_lock(target), _temporary(target) as temporary:
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
                os.replace(aside, temporary)  # the old folder, removed as the temporary is
        else:
            os.replace(temporary, target)
        _fsync(target.parent)


@contextmanager
def _temporary(target: Path) -> Iterator[Path]:
    """A temporary name for ``target`` (stale ones of dead processes removed first); whatever is under it at
    the end is removed, and a write that found no room is an error naming ``target``."""
    _removed.extend(remove_stale_temporaries(target))
    temporary = _temporary_name(target)
    try:
        with naming_full_disk(target):
            yield temporary
    finally:
        _remove(temporary)


def write_json(path: str | os.PathLike, payload: object, indent: int = 2) -> None:
    """JSON written atomically."""
    write_text(path, json.dumps(payload, indent=indent))


def write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text written atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
