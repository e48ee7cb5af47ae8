"""Atomic file output: every CLI writes to a temporary file and renames it only on success.

So an interrupted or failed run never leaves a half-written file at the output path.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; it replaces ``path`` when the block succeeds.

    The parent folder is created; the file gets the usual permissions (0666 less the umask),
    not ``mkstemp``'s 0600. On any exception the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, payload: object, indent: int = 2) -> None:
    """JSON written atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=indent), encoding="utf-8")
