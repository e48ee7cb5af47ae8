"""Frames per second of ``python -m egoexor.viz take``: drawing alone, and drawing + H.264 encoding.

``python scripts/bench_viz.py [--profile tiny|realistic] [--frames 30] [--dpi 40 60 100]``

Synthetic data in the released layout is written to a temporary folder (``realistic``: 336x336
frames, 10 cameras, 8192-point clouds, like the released takes). Each row times the same frames of
the first take: ``draw`` is :meth:`TimepointFigure.draw` (matplotlib, the reading from HDF5 included),
``draw + encode`` is the whole command's work (:func:`egoexor.viz.video.write_mp4`, audio included).
Run it on the machine you care about; the numbers in README come from 2 CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from egoexor.data import layout
from egoexor.data.reader import EgoExorReader
from egoexor.data.synthetic import generate
from egoexor.viz import video
from egoexor.viz.timepoint import TimepointFigure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=("tiny", "realistic"), default="tiny")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--dpi", type=int, nargs="+", default=[40, 60, 100])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        dataset = generate(Path(folder), args.profile, seed=0)
        reader = EgoExorReader(dataset.files[0])
        take = reader.takes()[0]
        frames = range(min(args.frames, reader.frame_count(take)))
        waveform = reader.take(take)[layout.AUDIO_WAVEFORM]
        print(f"{args.profile}: {take.path}, {len(frames)} frames")
        print(f"{'dpi':>5} {'picture':>11} {'draw fps':>9} {'draw + encode fps':>18} {'MP4 KB':>7}")
        for dpi in args.dpi:
            figure = TimepointFigure(reader.read(take, 0), dpi=dpi)
            start = time.perf_counter()
            for frame in frames:
                image = figure.draw(reader.read(take, frame)).image
            draw = len(frames) / (time.perf_counter() - start)
            out = Path(folder) / f"take_{dpi}.mp4"
            audio, _ = video.audio_span(waveform, frames.start, frames.stop)
            start = time.perf_counter()
            video.write_mp4(out, (figure.draw(reader.read(take, f)).image for f in frames), audio=audio)
            total = len(frames) / (time.perf_counter() - start)
            size = f"{image.shape[1]}x{image.shape[0]}"
            print(f"{dpi:>5} {size:>11} {draw:>9.2f} {total:>18.2f} {out.stat().st_size / 1e3:>7.0f}")


if __name__ == "__main__":
    main()
