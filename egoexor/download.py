"""Fetch the EgoExOR dataset files from the Hugging Face hub: ``egoexor-download`` / ``python -m egoexor.download``.

``egoexor-download --out DL/ [--files miss_1.h5 ...] [--token T] [--merge egoexor.h5]``

The released files live in the dataset repository ``ardamamur/EgoExOR`` (the reference's
``data/utils/load_h5.py``): one HDF5 file per procedure (``miss_1.h5`` ... ``miss_4.h5``,
``ultrasound_1.h5`` ... ``ultrasound_4.h5``, ``ultrasound_5_14.h5``, ``ultrasound_5_58.h5``) and
``splits.h5``, which is always fetched since no merged file is usable without it.

Everything goes through ``huggingface_hub.snapshot_download`` into the hub cache (``--cache_dir``,
else ``HF_HUB_CACHE``): downloads resume after an interruption, a file already cached is not fetched
again, ``HF_HUB_OFFLINE=1`` serves the cache without touching the network, and a gated repository
takes ``--token`` or ``HF_TOKEN``. The library checks each download's size against the hub's; online,
this command checks once more every file in ``--out`` against the sizes the hub lists for the same
commit, so a file damaged after the download is caught too.

``--out`` gets one entry per file, a hard link to the cached copy (a symbolic link where the cache is
on another filesystem), so tens of gigabytes are not stored twice and ``--out`` can be handed to
``egoexor-merge-h5 --data_dir``. ``--merge OUT`` then merges the per-procedure files and
``splits.h5`` (:func:`egoexor.data.merge_h5.merge_files`). An existing entry of ``--out`` that is not
already that cached file, and an existing ``--merge`` file, are refused unless ``--overwrite``; all of
it is checked before anything is fetched.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

from egoexor import cli
from egoexor.atomic import atomic_output
from egoexor.data.merge_h5 import merge_files

COMMAND = "egoexor-download"
REPO_ID = "ardamamur/EgoExOR"
REPO_TYPE = "dataset"
SPLITS_FILE = "splits.h5"
#: Per-procedure files of the release, as the reference's README lists them for merging.
RELEASED_FILES: tuple[str, ...] = (
    "miss_1.h5",
    "miss_2.h5",
    "miss_3.h5",
    "miss_4.h5",
    "ultrasound_1.h5",
    "ultrasound_2.h5",
    "ultrasound_3.h5",
    "ultrasound_4.h5",
    "ultrasound_5_14.h5",
    "ultrasound_5_58.h5",
)


def fetch(
    files: Sequence[str] | None,
    repo_id: str = REPO_ID,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Path, list[str]]:
    """Bring ``files`` + ``splits.h5`` (``None``: every ``.h5`` file) into the hub cache.

    Returns the snapshot folder (named by its commit) and the names of the files fetched in it.

    Raises :class:`cli.CommandError` when the hub (or, offline, the cache) lacks a requested file.
    """
    patterns = [*files, SPLITS_FILE] if files else ["*.h5"]
    try:
        snapshot = Path(
            huggingface_hub.snapshot_download(
                repo_id,
                repo_type=REPO_TYPE,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                allow_patterns=patterns,
            )
        )
    except HFValidationError as error:  # not a repository name at all ('../../etc'): nothing was asked of the hub
        raise cli.CommandError(f"--repo_id {repo_id}: {' '.join(str(error).split())}") from None
    except LocalEntryNotFoundError as error:  # offline (HF_HUB_OFFLINE, no network) and not (fully) cached
        raise cli.CommandError(f"{repo_id}: {' '.join(str(error).split())}") from None
    except HfHubHTTPError as error:  # unknown repository, gated without a token, bad revision
        raise cli.CommandError(f"{repo_id}: {' '.join(str(error).split())}") from None
    present = sorted(path.name for path in snapshot.iterdir()) if snapshot.is_dir() else []
    missing = [pattern for pattern in patterns if not fnmatch.filter(present, pattern)]
    if missing:
        where = "the hub cache (offline)" if huggingface_hub.constants.HF_HUB_OFFLINE else repo_id
        raise cli.CommandError(f"{', '.join(missing)}: not in {where}; released files: {', '.join(RELEASED_FILES)}")
    return snapshot, [name for name in present if any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]


def hub_sizes(snapshot: Path, names: Sequence[str], repo_id: str, token: str | None) -> dict[str, int] | None:
    """File sizes the hub lists at the snapshot's commit; ``None`` offline (nothing to ask)."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return None
    infos = huggingface_hub.HfApi().get_paths_info(
        repo_id, list(names), repo_type=REPO_TYPE, revision=snapshot.name, token=token
    )
    return {info.path: info.size for info in infos if isinstance(info, huggingface_hub.hf_api.RepoFile)}


def check_sizes(folder: Path, expected: dict[str, int]) -> None:
    """Every listed file in ``folder`` has the listed size, else :class:`cli.CommandError` naming each one."""
    wrong = [
        f"{name} is {(folder / name).stat().st_size} bytes, the hub lists {size}"
        for name, size in expected.items()
        if (folder / name).stat().st_size != size
    ]
    if wrong:
        raise cli.CommandError(f"{folder}: {'; '.join(wrong)} (delete them and download again)")


def _is_placed(entry: Path, cached: Path) -> bool:
    return entry.exists() and cli.same_file(entry, cached)


def place(cached: Path, entry: Path) -> None:
    """Make ``entry`` name the cached file: a hard link, else (another filesystem) a symbolic link."""
    with atomic_output(entry) as temporary:
        temporary.unlink()
        try:
            os.link(cached, temporary)
        except OSError:
            os.symlink(cached, temporary)


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=COMMAND,
        description=f"Download the EgoExOR dataset files from the Hugging Face dataset {REPO_ID} (through the hub "
        "cache: resumable, never fetched twice, HF_HUB_OFFLINE=1 serves the cache) into a folder, optionally merged.",
    )
    parser.add_argument("--out", required=True, help="folder that gets one entry per file (a link to the cached copy)")
    parser.add_argument(
        "--files",
        nargs="+",
        default=None,
        metavar="FILE",
        help="per-procedure files to fetch (miss_1.h5 ...; shell patterns allowed); splits.h5 is "
        "always added. Default: every .h5 file of the repository",
    )
    parser.add_argument(
        "--merge",
        default=None,
        metavar="OUT",
        help="also merge the fetched files and splits.h5 into this HDF5 file (egoexor-merge-h5)",
    )
    parser.add_argument(
        "--token", default=None, help="Hugging Face token for gated access (default: HF_TOKEN, or the saved login)"
    )
    parser.add_argument("--repo_id", default=REPO_ID, help="dataset repository on the hub")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of the repository (default: main)")
    parser.add_argument("--cache_dir", default=None, help="hub cache folder (default: HF_HUB_CACHE)")
    cli.add_overwrite_flag(parser)
    return parser


def download(
    out: str | os.PathLike,
    files: Sequence[str] | None = None,
    *,
    repo_id: str = REPO_ID,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    merge: str | os.PathLike | None = None,
) -> tuple[Path, list[str], bool]:
    """The command as a function, but for the merge itself: :func:`fetch` ``files`` and place an entry for each in
    ``out``; returns the snapshot folder, the names placed and whether their sizes were checked against the hub
    (online). ``merge``: the file the caller will merge into, checked with the rest before anything is written.
    User mistakes raise :class:`cli.CommandError`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise cli.CommandError(f"--out {out}: is a file, expected a folder")
    if merge:
        cli.check_output(merge, overwrite=overwrite, flag="--merge")
    snapshot, names = fetch(files, repo_id, revision, token, cache_dir)
    for name in names:  # checked for all before any entry is written
        if not _is_placed(out / name, snapshot / name):
            cli.check_output(out / name, overwrite=overwrite, flag="--out")
    if merge:
        cli.check_output(merge, inputs=[out / name for name in names], overwrite=overwrite, flag="--merge")
    for name in names:
        if not _is_placed(out / name, snapshot / name):
            place((snapshot / name).resolve(), out / name)
    sizes = hub_sizes(snapshot, names, repo_id, token)
    if sizes is not None:
        check_sizes(out, sizes)
    return snapshot, names, sizes is not None


def _run(args) -> int:
    out = Path(args.out)
    snapshot, names, verified = download(
        out,
        args.files,
        repo_id=args.repo_id,
        revision=args.revision,
        token=args.token,
        cache_dir=args.cache_dir,
        overwrite=args.overwrite,
        merge=args.merge,
    )
    for name in names:
        print(f"{out / name}: {(out / name).stat().st_size / 1e6:.1f} MB")
    checked = "sizes match the hub" if verified else "offline: sizes not re-checked against the hub"
    print(f"{len(names)} file(s) of {args.repo_id} at commit {snapshot.name[:12]} in {out} ({checked})")
    if args.merge:
        procedures = [out / name for name in names if name != SPLITS_FILE]
        summary = merge_files(procedures, out / SPLITS_FILE, args.merge, overwrite=args.overwrite, progress=True)
        summary.report(COMMAND)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
