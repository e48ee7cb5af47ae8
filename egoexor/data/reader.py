"""Read one timepoint of a take as plain numpy arrays (no torch, no normalisation).

Everything a later stage needs is here in the file's own units; what to do with it (which cameras
form which branch, gaze scaling, channel flips) is decided in ``egoexor.data.views`` and
``egoexor.data.transforms``. An absent group gives ``None``; a bad address (unknown take, frame out
of range) raises :class:`ReadError` naming the file, the take and the frame.

The file is opened lazily and reopened after a fork, so one :class:`EgoExorReader` can be handed
to DataLoader workers.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

import h5py
import numpy as np

from egoexor import cli, modalities, vocab
from egoexor.data import layout
from egoexor.data.layout import TakeKey
from egoexor.scene_graph import Triplet, triplets_from_annotation


def readable_fields() -> tuple[str, ...]:
    """What :meth:`EgoExorReader.read` can read: the camera frames, each input's per-frame datasets
    (``egoexor.modalities``) and the annotations."""
    return ("rgb", *_path_of_field(), "annotations")


def _path_of_field() -> dict[str, str]:
    return {d.field: d.path for m in modalities.modalities() for d in m.datasets if d.field is not None}


class ReadError(LookupError):
    """A timepoint could not be read; the message names the file, take and frame."""


@dataclass
class Timepoint:
    """One frame of one take.

    ``sources`` lists the camera axis of ``rgb`` (``blank`` included); ``rgb`` is None for a take without
    frames. ``arrays`` holds the frame's row of each input dataset read, by reader field (``gaze``,
    ``gaze_depth``, ``hands``, ``audio``, ``point_coordinates``, ``point_colors``, and the plug-ins'), in the
    file's units; a field not read or not in the take is absent. ``annotations`` is ``None`` for a frame with
    no annotation group.
    """

    take: TakeKey
    frame: int
    sources: list[str]
    rgb: np.ndarray | None  # uint8 [C, H, W, 3]
    arrays: dict[str, np.ndarray]
    annotations: list[Triplet] | None

    def image(self, source: str) -> np.ndarray | None:
        """The frame of one camera by source name (``None`` if the take has no such camera)."""
        if self.rgb is None or source not in self.sources:
            return None
        return self.rgb[self.sources.index(source)]

    def gaze_by_source(self) -> dict[str, np.ndarray]:
        """Gaze (x, y) per ego device, keyed by the source name the row's id stands for."""
        gaze = self.arrays.get("gaze")
        if gaze is None:
            return {}
        return {vocab.SOURCE_NAMES.get(int(row[0]), str(int(row[0]))): row[1:] for row in gaze}


class EgoExorReader:
    """Random access to timepoints of a per-procedure or merged EgoExOR file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = cli.input_hdf5(path, error=ReadError)
        self._h5: h5py.File | None = None
        self._pid: int | None = None

    @property
    def h5(self) -> h5py.File:
        """The open file, reopened in a forked worker (HDF5 handles must not cross a fork)."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __enter__(self) -> EgoExorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"path": self.path, "_h5": None, "_pid": None}

    def takes(self) -> list[TakeKey]:
        return [key for key, _ in layout.iter_takes(self.h5)]

    def take(self, key: TakeKey) -> h5py.Group:
        if key.path not in self.h5:
            raise ReadError(f"{self.path}: no take {key.path}")
        return self.h5[key.path]

    def frame_count(self, key: TakeKey) -> int:
        return layout.take_frame_count(self.take(key))

    def read(self, key: TakeKey, frame: int, fields: Collection[str] | None = None) -> Timepoint:
        """The inputs of one frame; only ``fields`` are read (default: all of :func:`readable_fields`)."""
        paths = _path_of_field()
        known = ("rgb", *paths, "annotations")
        fields = known if fields is None else fields
        unknown = set(fields) - set(known)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
        take = self.take(key)
        n_frames = layout.take_frame_count(take)
        if not 0 <= frame < n_frames:
            raise ReadError(f"{self.path}: {key.path}: frame {frame} out of range (take has {n_frames} frames)")
        try:
            annotation = layout.annotation_path(frame) + "/" + layout.REL_ANNOTATIONS
            return Timepoint(
                take=key,
                frame=frame,
                sources=layout.take_sources(take),
                rgb=take[layout.RGB][frame] if "rgb" in fields and layout.RGB in take else None,
                arrays={f: take[paths[f]][frame] for f in fields if f in paths and paths[f] in take},
                annotations=(
                    triplets_from_annotation(take[annotation][()])
                    if "annotations" in fields and annotation in take
                    else None
                ),
            )
        except (OSError, KeyError, ValueError) as error:
            raise ReadError(f"{self.path}: {key.path}: frame {frame}: {error}") from error
