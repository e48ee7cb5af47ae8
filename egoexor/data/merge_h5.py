"""Merge per-procedure EgoExOR files and ``splits.h5`` into one file: ``egoexor-merge-h5``.

Same result as the reference ``data/utils/merge_h5.py``: metadata from the first input, takes
copied by HDF5 object copy (dtype, compression, chunking and attributes preserved byte for byte),
the first file wins on a duplicate take (with a warning), ``splits/`` copied verbatim (an empty
``splits/`` group without a splits file). Paths are joined to ``--data_dir`` unless absolute.

Unlike the reference it checks every input before writing anything (a missing, non-HDF5, truncated
or wrong-layout file, or a file given twice, is a one-line error and exit code 2), follows the
overwrite rule of :mod:`egoexor.cli` (an existing output needs ``--overwrite``; an output that is an
input is always refused), writes atomically (:mod:`egoexor.atomic`: a failed, interrupted or killed
merge leaves nothing at the output path, and the next run removes a killed run's temporary file),
and checks the merged takes and split rows: a take without ``frames/rgb`` (no images at all) and
rows pointing at a missing take or frame are reported, or are an error with ``--strict``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from egoexor import cli
from egoexor.atomic import atomic_output
from egoexor.data import layout
from egoexor.data.layout import TakeKey

COMMAND = "egoexor-merge-h5"
#: Depth of a take group below ``data/``: data/<surgery_type>/<procedure_id>/take/<take_id>.
_TAKE_DEPTH = 4


@dataclass
class MergeSummary:
    output: Path
    takes: int = 0
    frames: int = 0
    skipped_takes: list[str] = field(default_factory=list)
    takes_without_rgb: list[str] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    dangling_rows: dict[str, int] = field(default_factory=dict)
    bytes: int = 0

    def lines(self) -> list[str]:
        out = [f"wrote {self.output}: {self.takes} takes, {self.frames} frames, {self.bytes / 1e6:.1f} MB"]
        if self.split_sizes:
            sizes = ", ".join(f"{name} {n}" for name, n in self.split_sizes.items())
            out.append(f"splits: {sizes}")
        else:
            out.append("splits: none (empty splits/ group; pass --splits_file to add them)")
        return out

    def warnings(self) -> list[str]:
        out = [
            f"splits/{name}: {n} row(s) point at a take or frame not in the merged data"
            for name, n in self.dangling_rows.items()
        ]
        if self.takes_without_rgb:
            out.append(f"take(s) without {layout.RGB} (no images): {', '.join(self.takes_without_rgb)}")
        out += [f"skipped duplicate take {take} (the first file's copy was kept)" for take in self.skipped_takes]
        return out

    def report(self, command: str) -> None:
        """The summary on stdout, each warning as ``<command>: warning: ...`` on stderr."""
        for line in self.lines():
            print(line)
        for warning in self.warnings():
            cli.warn(command, warning)


def _check_input(path: Path) -> tuple[dict[TakeKey, int], list[TakeKey]]:
    """Check one per-procedure file; return its takes with their frame counts, and those without rgb."""
    with cli.open_hdf5(path) as h5:
        try:
            layout.check_layout(h5)
            takes = dict(layout.iter_takes(h5))
            return {key: layout.take_frame_count(take) for key, take in takes.items()}, [
                key for key, take in takes.items() if layout.RGB not in take
            ]
        except layout.LayoutError as error:
            raise cli.CommandError(f"{error} (not an EgoExOR per-procedure file)") from None
        except OSError as error:
            raise cli.CommandError(f"{path}: cannot read: {error}") from None


def _read_split_rows(path: Path) -> dict[str, np.ndarray]:
    """Check the splits file and return its rows per split."""
    with cli.open_hdf5(path) as h5:
        if not isinstance(h5.get(layout.SPLITS), h5py.Group):
            raise cli.CommandError(f"{path}: no '{layout.SPLITS}/' group: not an EgoExOR splits file")
        try:  # other datasets in splits/ are copied verbatim but not checked
            return {name: layout.read_split(h5, name) for name in layout.SPLIT_NAMES if name in h5[layout.SPLITS]}
        except layout.LayoutError as error:
            raise cli.CommandError(str(error)) from None
        except OSError as error:
            raise cli.CommandError(f"{path}: cannot read: {error}") from None


def _dangling(rows: np.ndarray, frames: dict[TakeKey, int]) -> int:
    """Rows whose take is not merged or whose frame is beyond the take's end."""
    count = 0
    for row in rows:
        key = TakeKey(str(row["surgery_type"]), int(row["procedure_id"]), int(row["take_id"]))
        count += not 0 <= int(row["frame_id"]) < frames.get(key, 0)
    return count


def _merge_group(source: h5py.Group, target: h5py.Group, depth: int, summary: MergeSummary, bar: tqdm) -> None:
    """Copy ``source``'s children into ``target``; takes one by one, the first copy of anything wins."""
    for name, child in source.items():
        if depth + 1 == _TAKE_DEPTH and source.name.endswith(f"/{layout.TAKE}"):
            if name in target:
                summary.skipped_takes.append(child.name)
            else:
                source.copy(child, target, name=name)
            bar.update()
        elif name not in target and not isinstance(child, h5py.Group):
            source.copy(child, target, name=name)
        elif isinstance(child, h5py.Group) and isinstance(target.get(name), (h5py.Group, type(None))):
            created = name not in target
            group = target.require_group(name)
            if created:
                group.attrs.update(child.attrs)
            _merge_group(child, group, depth + 1, summary, bar)


def merge_files(
    input_files: Sequence[str | os.PathLike],
    splits_file: str | os.PathLike | None,
    output_file: str | os.PathLike,
    *,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = False,
) -> MergeSummary:
    """Merge per-procedure files (in order; the first wins) and a splits file into ``output_file``.

    Raises :class:`egoexor.cli.CommandError` before writing anything on a bad input, an output that exists
    (without ``overwrite``) or is an input, or, with ``strict``, dangling split rows or takes
    without ``frames/rgb``.
    """
    inputs = [Path(p) for p in input_files]
    if not inputs:
        raise cli.CommandError("no input files given")
    for index, path in enumerate(inputs):
        if any(cli.same_file(path, earlier) for earlier in inputs[:index]):
            raise cli.CommandError(f"{path}: given twice in the input files")
    output = cli.check_output(output_file, inputs=[*inputs, splits_file], overwrite=overwrite)
    summary, n_copies = _plan(inputs, splits_file, output)
    if strict and summary.takes_without_rgb:
        raise cli.CommandError(f"take(s) without {layout.RGB} (no images): {', '.join(summary.takes_without_rgb)}")
    if strict and summary.dangling_rows:
        counts = ", ".join(f"{n} in {name}" for name, n in summary.dangling_rows.items())
        raise cli.CommandError(f"{splits_file}: split rows point at takes or frames missing from the inputs ({counts})")

    checked = {path: _stamp(path) for path in [*inputs, *([Path(splits_file)] if splits_file else [])]}
    try:
        _write(inputs, splits_file, output, summary, n_copies, progress)
    except (OSError, KeyError, RuntimeError) as error:  # h5py's messages name neither file
        changed = next((path for path, stamp in checked.items() if _stamp(path) != stamp), None)
        if changed is not None:
            raise cli.CommandError(
                f"{changed}: changed while it was merged (truncated or rewritten since it was checked); nothing "
                "was written: merge again once it is complete"
            ) from None
        if not isinstance(error, OSError) or error.filename is not None:  # a bug; a full disk's error names it
            raise
        raise cli.CommandError(f"{output}: merging failed: {cli.one_line(error)}") from None
    summary.bytes = output.stat().st_size
    return summary


def _stamp(path: Path) -> tuple[int, int] | None:
    """A file's size and modification time (None once it is gone): what tells that it changed."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def _plan(inputs: list[Path], splits_file: str | os.PathLike | None, output: Path) -> tuple[MergeSummary, int]:
    """Check every input; the summary of the merge (all but the skipped duplicates and the size) and the
    number of take copies it makes."""
    frames: dict[TakeKey, int] = {}
    without_rgb: set[TakeKey] = set()
    n_copies = 0
    for path in inputs:
        takes, missing_rgb = _check_input(path)
        n_copies += len(takes)
        without_rgb.update(key for key in missing_rgb if key not in frames)  # the first copy is merged
        for key, n in takes.items():
            frames.setdefault(key, n)
    splits = _read_split_rows(Path(splits_file)) if splits_file is not None else {}
    summary = MergeSummary(output, takes=len(frames), frames=sum(frames.values()))
    summary.takes_without_rgb = [key.path for key in sorted(without_rgb)]
    summary.split_sizes = {name: len(rows) for name, rows in splits.items()}
    summary.dangling_rows = {name: n for name, rows in splits.items() if (n := _dangling(rows, frames))}
    return summary, n_copies


def _write(
    inputs: list[Path],
    splits_file: str | os.PathLike | None,
    output: Path,
    summary: MergeSummary,
    n_copies: int,
    progress: bool,
) -> None:
    with atomic_output(output) as temporary, h5py.File(temporary, "w") as out:
        with tqdm(total=n_copies, desc="merging", unit="take", disable=not progress) as bar:
            for index, path in enumerate(inputs):
                with h5py.File(path, "r") as source:
                    if index == 0:
                        source.copy(source[layout.METADATA], out, name=layout.METADATA)
                    _merge_group(source[layout.DATA], out.require_group(layout.DATA), 0, summary, bar)
        if splits_file is None:
            out.create_group(layout.SPLITS)
        else:
            with h5py.File(splits_file, "r") as source:
                source.copy(source[layout.SPLITS], out, name=layout.SPLITS)


def _resolve(data_dir: str, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else Path(data_dir) / path


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=COMMAND,
        description="Merge per-procedure EgoExOR HDF5 files and splits.h5 into one file. "
        "Relative paths are taken inside --data_dir.",
    )
    parser.add_argument("--data_dir", required=True, help="folder holding the downloaded files")
    parser.add_argument(
        "--input_files",
        nargs="+",
        required=True,
        help="per-procedure files (miss_1.h5 ...), in order: on a duplicate take the first wins",
    )
    parser.add_argument(
        "--splits_file",
        default=None,
        help="splits.h5 whose splits/ group is copied in (without it splits/ stays empty)",
    )
    parser.add_argument(
        "--output_file", "--out", required=True, help="merged file to write (--out: the name other commands use)"
    )
    cli.add_overwrite_flag(parser)
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail if a split row points at a take or frame missing from the merged data, "
        "or if a take has no frames/rgb (otherwise both are warnings)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _run(args) -> int:
    if not Path(args.data_dir).is_dir():
        raise cli.CommandError(f"--data_dir {args.data_dir}: no such folder")
    summary = merge_files(
        [_resolve(args.data_dir, name) for name in args.input_files],
        _resolve(args.data_dir, args.splits_file) if args.splits_file else None,
        _resolve(args.data_dir, args.output_file),
        overwrite=args.overwrite,
        strict=args.strict,
        progress=not args.quiet,
    )
    summary.report(COMMAND)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
