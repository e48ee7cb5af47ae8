"""``python -m egoexor.viz frame|take|errors``: look at a timepoint, watch a take, browse an evaluation.

::

    python -m egoexor.viz frame  --hdf5 F --take MISS/1/2 --frame 195 [--predictions P.json] --out frame.png
    python -m egoexor.viz take   --hdf5 F --take MISS/1/2 [--frames A:B] [--audio] --out take.mp4
    python -m egoexor.viz errors --results RUN_DIR --hdf5 F [--compare RUN_DIR2] [--take T] [--surgery_type S]
                                 [--predicate P] --out errors.html

The rules of :mod:`egoexor.cli`: a bad file, take, frame or flag is one line and exit status 2, Ctrl-C
exit 130, an existing output needs ``--overwrite``, outputs are written to a temporary file and renamed.
The take, the frame range and every input are checked before the first picture is drawn.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from egoexor import cli, evaluate, metrics, vocab
from egoexor.atomic import atomic_output, write_text
from egoexor.data import layout
from egoexor.data.layout import TakeKey
from egoexor.data.reader import EgoExorReader, ReadError
from egoexor.scene_graph import Triplet
from egoexor.viz import errors, timepoint, video

COMMAND = "egoexor.viz"


def parse_take(text: str) -> TakeKey:
    """``MISS/1/2`` -> the take; anything else is a one-line error."""
    parts = text.strip("/").split("/")
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        raise argparse.ArgumentTypeError(f"expected SURGERY_TYPE/PROCEDURE/TAKE such as MISS/1/2, got {text!r}")
    return TakeKey(parts[0], int(parts[1]), int(parts[2]))


parse_take.__name__ = "a take"


def _open(path: str, take: TakeKey) -> tuple[EgoExorReader, int]:
    """A reader of an EgoExOR file holding ``take``, and the take's frame count."""
    cli.open_hdf5(path, "--hdf5").close()
    reader = EgoExorReader(path)
    return reader, reader.frame_count(take)


def _frame_predictions(path: str, take: TakeKey, frame: int, protocol: str) -> tuple[list[Triplet], str | None]:
    """The prediction for one frame (its first permutation) from a predictions file keyed by sample id: its
    triplets, and what the parser could not read of it (:func:`errors.dropped_note`)."""
    predictions = evaluate.read_predictions(cli.read_json(path, "--predictions"))
    ids = sorted((errors.frame_of(i)[2], i) for i in predictions if errors.frame_of(i)[:2] == (take, frame))
    if not ids:
        raise cli.CommandError(f"--predictions {path}: no prediction for {take.path} frame {frame}")
    prediction, mode = predictions[ids[0][1]], metrics.PARSE_MODE[protocol]
    return evaluate.prediction_triplets(prediction, mode), errors.dropped_note(prediction, mode)


def _save_png(picture: timepoint.Picture, out: Path) -> None:
    with atomic_output(out) as temporary:
        Image.fromarray(picture.image).save(temporary, format="PNG", optimize=True)


def _frame(args) -> int:
    reader, n_frames = _open(args.hdf5, args.take)
    if args.frame >= n_frames:
        raise cli.CommandError(f"--frame {args.frame}: out of range ({args.take.path} has {n_frames} frames)")
    predicted, note = (
        _frame_predictions(args.predictions, args.take, args.frame, args.protocol) if args.predictions else (None, None)
    )
    out = cli.check_output(args.out, inputs=[args.hdf5, args.predictions], overwrite=args.overwrite, flag="--out")
    point = reader.read(args.take, args.frame)
    picture = timepoint.render(point, predicted, note=note, dpi=args.dpi, swap_channels=not args.stored_channels)
    _save_png(picture, out)
    print(f"wrote {out}: {picture.image.shape[1]}x{picture.image.shape[0]}, {len(picture.panels)} panels")
    return 0


def frame_range(text: str, n_frames: int) -> range:
    """``A:B`` (either side may be empty, as a Python slice) within a take of ``n_frames``."""
    start, sep, stop = text.partition(":")
    try:
        first = int(start) if start else 0
        end = int(stop) if stop else n_frames
    except ValueError:
        raise cli.CommandError(f"--frames {text!r}: expected A:B, such as 0:150") from None
    if not sep or not 0 <= first < end <= n_frames:
        raise cli.CommandError(f"--frames {text}: expected A:B with 0 <= A < B <= {n_frames} (the take's frames)")
    return range(first, end)


def _entities(reader: EgoExorReader, take: TakeKey, frames: range) -> list[str]:
    """Every entity the frames' annotations name, in order of first appearance: the graph's fixed places."""
    names: dict[str, None] = {}
    for frame in frames:
        for triplet in reader.read(take, frame, fields=("annotations",)).annotations or ():
            names.update(dict.fromkeys((triplet.subject, triplet.object)))
    return list(names)


def _take(args) -> int:
    reader, n_frames = _open(args.hdf5, args.take)
    frames = frame_range(args.frames, n_frames)
    audio = None
    if args.audio:
        group = reader.take(args.take)
        if layout.AUDIO_WAVEFORM not in group:
            raise cli.CommandError(f"--audio: {args.take.path} has no {layout.AUDIO_WAVEFORM}")
        audio, silence = video.audio_span(group[layout.AUDIO_WAVEFORM], frames.start, frames.stop)
        if silence:
            seconds = silence / layout.AUDIO_SAMPLE_RATE
            cli.warn(
                COMMAND,
                f"--audio: {layout.AUDIO_WAVEFORM} of {args.take.path} ends {seconds:.2f} s before "
                f"frame {frames.stop}; silence fills the rest",
            )
    out = cli.check_output(args.out, inputs=[args.hdf5], overwrite=args.overwrite, flag="--out")
    figure = timepoint.TimepointFigure(
        reader.read(args.take, frames.start),
        dpi=args.dpi,
        swap_channels=not args.stored_channels,
        entities=_entities(reader, args.take, frames),
    )
    pictures = (figure.draw(reader.read(args.take, f)).image for f in frames)
    with tqdm(total=len(frames), desc="rendering", unit="frame") as bar, atomic_output(out) as temporary:
        count = video.write_mp4(temporary, pictures, audio=audio, on_frame=bar.update)
    print(
        f"wrote {out}: {count} frames, {count / layout.FPS:.2f} s at {layout.FPS} fps"
        + (f", {len(audio) / layout.AUDIO_SAMPLE_RATE:.2f} s of audio" if audio is not None else "")
    )
    return 0


def _errors(args) -> int:
    results = Path(args.results)
    predictions, result, plot, memories = errors.read_results(results)
    other = errors.read_results(Path(args.compare), "--compare") if args.compare else None
    cli.open_hdf5(args.hdf5, "--hdf5").close()
    inputs = [args.hdf5, *results.iterdir(), *(Path(args.compare).iterdir() if args.compare else ())]
    out = cli.check_output(args.out, inputs=inputs, overwrite=args.overwrite, flag="--out")
    folder = out.with_name(out.stem + "_files")  # the pictures, where the page would be too big with them inside
    cli.check_output(folder, inputs=inputs, overwrite=args.overwrite, owner=COMMAND, flag="--out")
    reader = EgoExorReader(args.hdf5)
    if args.take is not None:
        reader.frame_count(args.take)  # a take the file lacks is an error, not an empty page
    scored, unannotated = errors.score_frames(predictions, reader, result["parse_mode"], memories)
    if not scored:
        raise cli.CommandError(f"--results {args.results}: no predicted frame is annotated in {args.hdf5}")
    chosen = {"take": args.take, "surgery_type": args.surgery_type, "predicate": args.predicate}
    frames = errors.select(scored, **chosen)
    scope = ", ".join(
        f"{flag.replace('_', ' ')} {value.path if flag == 'take' else value}"
        for flag, value in chosen.items()
        if value is not None
    )
    if not frames:
        raise cli.CommandError(f"no scored frame of {args.results} is of {scope}")
    comparison = None
    if other is not None:
        other_frames, _ = errors.score_frames(other[0], reader, other[1]["parse_mode"])
        comparison = errors.compare(frames, other_frames, args.compare, other[1])
    listed = min(args.limit, sum(f.unreadable for f in frames)) + min(args.limit, sum(not f.unreadable for f in frames))
    bar = tqdm(total=listed, desc="drawing", unit="frame")

    def picture(frame: errors.FrameResult) -> np.ndarray:
        point = reader.read(frame.take, frame.frame)
        predicted = [t for t, status in frame.edges if status != "missed"]
        swap = not args.stored_channels
        image = timepoint.render(point, predicted, note=frame.note, dpi=args.dpi, swap_channels=swap).image
        bar.update()
        return image

    with bar:
        made = errors.page(
            frames,
            result,
            plot,
            picture,
            limit=args.limit,
            unannotated=unannotated,
            folder_name=folder.name,
            inline_limit=args.inline_mb * 1e6,
            scope=scope or None,
            comparison=comparison,
        )
    if made.files:
        with cli.output_folder(folder, COMMAND) as temporary:
            for name, data in made.files.items():
                (temporary / name).write_bytes(data)
    write_text(out, made.text)
    where = f"pictures in {folder}/" if made.files else "pictures inlined"
    print(f"wrote {out}: {listed} of {len(frames)} frames, unreadable answers first, then the wrongest; {where}")
    return 0


def _common(parser: argparse.ArgumentParser, dpi: int) -> None:
    parser.add_argument("--hdf5", required=True, help="per-procedure or merged EgoExOR HDF5 file")
    parser.add_argument(
        "--dpi",
        type=cli.int_flag(20, 400),
        default=dpi,
        help=f"resolution: the picture is 16 inches wide (default {dpi} dots per inch)",
    )
    parser.add_argument(
        "--stored_channels",
        action="store_true",
        help="show frames in their stored channel order (default: swapped, as the reference's "
        "visualiser shows them, treating them as BGR)",
    )
    cli.add_overwrite_flag(parser)


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=f"python -m {COMMAND}",
        description="Look at a timepoint (frame), watch a take (take), browse an evaluation's errors (errors).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{frame,take,errors}")
    frame = commands.add_parser(
        "frame", help="one timepoint as a PNG: every view, gaze, hands, point cloud, audio and the scene graph"
    )
    _common(frame, dpi=100)
    frame.add_argument("--take", required=True, type=parse_take, help="take as SURGERY_TYPE/PROCEDURE/TAKE (MISS/1/2)")
    frame.add_argument("--frame", required=True, type=cli.int_flag(0), help="frame index within the take")
    frame.add_argument(
        "--predictions",
        default=None,
        help="predictions.json or raw_predictions.json of egoexor.infer: colour the scene graph's "
        "edges as correct / missed / spurious",
    )
    frame.add_argument(
        "--protocol",
        choices=metrics.PROTOCOLS,
        default="paper",
        help="which parse mode reads --predictions (paper: the reference's; gt: robust)",
    )
    frame.add_argument("--out", required=True, help="PNG file to write")
    take = commands.add_parser("take", help="a take as an MP4 video (15 fps), optionally with its audio")
    _common(take, dpi=60)
    take.add_argument("--take", required=True, type=parse_take, help="take as SURGERY_TYPE/PROCEDURE/TAKE (MISS/1/2)")
    take.add_argument("--frames", default=":", help="frame range A:B (B excluded; default: the whole take)")
    take.add_argument("--audio", action="store_true", help="add the take's audio/waveform as the sound track")
    take.add_argument("--out", required=True, help="MP4 file to write")
    page = commands.add_parser("errors", help="an evaluation as a static HTML page, worst frames first")
    _common(page, dpi=60)
    page.add_argument(
        "--results",
        required=True,
        help="results folder of egoexor.infer (raw_predictions.json or predictions.json, metrics.json, "
        "f1_per_predicate.png)",
    )
    page.add_argument(
        "--limit",
        type=cli.int_flag(1),
        default=30,
        help="how many frames to show in each list (unreadable answers; the wrongest frames)",
    )
    page.add_argument(
        "--inline_mb",
        type=cli.float_flag(0),
        default=errors.INLINE_LIMIT_MB,
        help="pictures are inlined while the page stays under this many MB (default %(default)s); beyond "
        "it they are written to OUT_files/ beside the page (0: always)",
    )
    page.add_argument(
        "--compare",
        default=None,
        metavar="RESULTS",
        help="a second results folder (another run on the same frames): the page adds its headline and the "
        "frames one run gets right and the other does not",
    )
    page.add_argument("--take", type=parse_take, default=None, help="list only this take's frames (MISS/1/2)")
    page.add_argument(
        "--surgery_type", choices=vocab.SURGERY_TYPES, default=None, help="list only this surgery type's frames"
    )
    page.add_argument(
        "--predicate",
        choices=vocab.PREDICATES,
        default=None,
        metavar="PREDICATE",
        help="list only the frames with this predicate in their ground truth or prediction",
    )
    page.add_argument("--out", required=True, help="HTML file to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> int:
        args = _parser().parse_args(argv)
        return {"frame": _frame, "take": _take, "errors": _errors}[args.command](args)

    return cli.run(COMMAND, body, errors=(ReadError, layout.LayoutError))


if __name__ == "__main__":
    sys.exit(main())
