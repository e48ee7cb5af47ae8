"""A take as an MP4: the picture of :mod:`egoexor.viz.timepoint` for every frame, optionally with its sound.

Encoded with PyAV (H.264 in yuv420p, AAC audio), whose wheel carries its own FFmpeg libraries: no
system FFmpeg. The video plays at the recording's 15 frames per second, so a frame range ``A:B`` lasts
``(B - A) / 15`` seconds and the sound track is the slice of ``audio/waveform`` (48 kHz stereo) that
covers the same span.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from fractions import Fraction

import av
import numpy as np

from egoexor.data import layout

#: AAC frames hold 1024 samples; feeding the encoder whole frames avoids a padded partial one mid-stream.
_AUDIO_CHUNK = 1024


def audio_span(waveform: np.ndarray, start: int, stop: int, fps: float = layout.FPS) -> tuple[np.ndarray, int]:
    """The samples of ``waveform`` [S, 2] that play during frames ``start`` to ``stop`` (exclusive), and how many
    of them are silence added where the recording ends before the frames do (the track always spans the video)."""
    per_frame = layout.AUDIO_SAMPLE_RATE / fps
    first, last = round(start * per_frame), round(stop * per_frame)
    samples = np.asarray(waveform[first:last], dtype=np.float32).reshape(-1, 2)
    missing = (last - first) - len(samples)
    return np.concatenate([samples, np.zeros((missing, 2), np.float32)]), missing


def write_mp4(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    fps: int = layout.FPS,
    audio: np.ndarray | None = None,
    on_frame: Callable[[], None] = lambda: None,
) -> int:
    """Encode RGB frames (uint8 [H, W, 3], one size, even sides) and optional 48 kHz stereo ``audio``; return the
    number of video frames written. ``on_frame`` is called after each frame (a progress bar's update)."""
    count = 0
    with av.open(os.fspath(path), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "veryfast"})
        video.pix_fmt = "yuv420p"
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=layout.AUDIO_SAMPLE_RATE, layout="stereo")
        for image in frames:
            if count == 0:
                video.height, video.width = image.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = count, Fraction(1, fps)
            container.mux(video.encode(frame))
            count += 1
            on_frame()
        container.mux(video.encode(None))
        if sound is not None:
            planar = np.ascontiguousarray(np.nan_to_num(audio, nan=0.0).T.astype(np.float32))
            for start in range(0, planar.shape[1], _AUDIO_CHUNK):
                chunk = av.AudioFrame.from_ndarray(
                    planar[:, start : start + _AUDIO_CHUNK], format="fltp", layout="stereo"
                )
                chunk.sample_rate, chunk.pts = layout.AUDIO_SAMPLE_RATE, start
                chunk.time_base = Fraction(1, layout.AUDIO_SAMPLE_RATE)
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
    return count
