"""The EgoExOR HDF5 schema in one place: group paths, dataset names, dtypes, split names.

Released per-procedure files (``miss_1.h5``, ``ultrasound_1.h5``, ...) and the merged file share
this layout; the merged file adds ``splits/``::

    metadata/vocabulary/{entity,relation}   compound (name: vlen str, id: int64)
    metadata/sources/sources                compound (name: vlen str, id: int64)
    metadata/dataset                        attrs version, creation_date, title
    data/<surgery_type>/<procedure_id>/take/<take_id>/     ("take", not "takes" as the README says)
        sources                 attrs source_count, source_<i> (camera i of frames/rgb; str or bytes)
        frames/rgb              uint8   [F, C, H, W, 3]
        eye_gaze/coordinates    float32 [F, G, 3]   (source id, x px, y px); invalid = (-1, -1)
        eye_gaze_depth/values   float32 [F, G]      metres, 1.0 when unknown, may be NaN/inf
        hand_tracking/positions float32 [F, G, 17]  source id + 8 (x, y) points; missing = NaN
        audio/waveform          float32 [S, 2]      48 kHz stereo (optional group)
        audio/snippets          float32 [F, S1, 2]  1 s per frame (optional group)
        point_cloud/coordinates float32 [F, N, 3]   metres
        point_cloud/colors      float32 [F, N, 3]   0-1
        annotations/frame_<i>/rel_annotations  vlen bytes [n, 3]  (subject, predicate, object), raw
        annotations/frame_<i>/scene_graph      float32 [n, 3]     raw vocabulary ids
    splits/{train,validation,test}   compound (surgery_type vlen str, procedure_id, take_id,
                                     frame_id int32), one row per frame

Procedure and take ids are decimal strings as group names and int32 in split rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import h5py
import numpy as np

from egoexor import cli

DATA = "data"
METADATA = "metadata"
SPLITS = "splits"
TAKE = "take"

ENTITY_VOCAB = "metadata/vocabulary/entity"
RELATION_VOCAB = "metadata/vocabulary/relation"
SOURCE_TABLE = "metadata/sources/sources"
VOCABULARY = (ENTITY_VOCAB, RELATION_VOCAB)
DATASET_INFO = "metadata/dataset"

SOURCES_GROUP = "sources"
RGB = "frames/rgb"
GAZE = "eye_gaze/coordinates"
GAZE_DEPTH = "eye_gaze_depth/values"
HANDS = "hand_tracking/positions"
AUDIO_WAVEFORM = "audio/waveform"
AUDIO_SNIPPETS = "audio/snippets"
POINT_COORDINATES = "point_cloud/coordinates"
POINT_COLORS = "point_cloud/colors"
ANNOTATIONS = "annotations"
REL_ANNOTATIONS = "rel_annotations"
SCENE_GRAPH = "scene_graph"


def frame_axis_datasets() -> tuple[str, ...]:
    """Datasets whose first axis is the frame axis, in the order used to find a take's frame count: the
    camera frames, then each input's (``egoexor.modalities``)."""
    from egoexor import modalities

    return (RGB, *(d.path for m in modalities.modalities() for d in m.datasets if d.frame_axis))


SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")

VOCAB_DTYPE = np.dtype([("name", h5py.string_dtype()), ("id", np.int64)])
SPLIT_DTYPE = np.dtype(
    [
        ("surgery_type", h5py.string_dtype()),
        ("procedure_id", np.int32),
        ("take_id", np.int32),
        ("frame_id", np.int32),
    ]
)
REL_ANNOTATION_DTYPE = h5py.string_dtype(encoding="ascii")  # vlen bytes, read back as bytes

AUDIO_SAMPLE_RATE = 48_000
FPS = 15


class LayoutError(cli.CommandError):
    """A file does not have the EgoExOR layout; the message names the file and the field. A user mistake, so
    a :class:`cli.CommandError`: the Python API raises what the commands print as one line."""


@dataclass(frozen=True, order=True)
class TakeKey:
    """Address of one take: ``data/<surgery_type>/<procedure_id>/take/<take_id>``."""

    surgery_type: str
    procedure_id: int
    take_id: int

    @property
    def path(self) -> str:
        return f"{DATA}/{self.surgery_type}/{self.procedure_id}/{TAKE}/{self.take_id}"

    @property
    def name(self) -> str:
        """The reference's take name used for per-take metrics: ``<st>_<pid>_<tid>``."""
        return f"{self.surgery_type}_{self.procedure_id}_{self.take_id}"


def annotation_path(frame: int) -> str:
    """Path of a frame's annotation group, relative to its take."""
    return f"{ANNOTATIONS}/frame_{frame}"


def decode(value: object) -> str:
    """HDF5 strings come back as ``str`` or ``bytes`` depending on how they were written."""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def take_sources(take: h5py.Group) -> list[str]:
    """Camera names along the ``frames/rgb`` camera axis, from the take's ``sources`` attributes."""
    if SOURCES_GROUP not in take:
        return []
    attrs = take[SOURCES_GROUP].attrs
    return [decode(attrs[f"source_{i}"]) for i in range(int(attrs.get("source_count", 0)))]


def take_frame_count(take: h5py.Group) -> int:
    """Number of frames of a take (0 when it holds no frame-indexed dataset)."""
    for name in frame_axis_datasets():
        if name in take:
            return int(take[name].shape[0])
    return 0


def iter_takes(h5: h5py.File) -> Iterator[tuple[TakeKey, h5py.Group]]:
    """Every take of a file, sorted by surgery type, procedure and take id.

    Raises :class:`LayoutError` on a group name that is not a decimal id.
    """
    if DATA not in h5:
        raise LayoutError(f"{h5.filename}: no '{DATA}/' group: not an EgoExOR file")
    keys = []
    for surgery_type, procedures in h5[DATA].items():
        for procedure_id, procedure in procedures.items():
            if TAKE not in procedure:
                raise LayoutError(f"{h5.filename}: {procedure.name} has no '{TAKE}/' group")
            for take_id in procedure[TAKE]:
                if not (procedure_id.isdigit() and take_id.isdigit()):
                    raise LayoutError(f"{h5.filename}: {procedure[TAKE].name}/{take_id}: ids must be decimal")
                keys.append(TakeKey(surgery_type, int(procedure_id), int(take_id)))
    for key in sorted(keys):
        yield key, h5[key.path]


def check_layout(h5: h5py.File) -> int:
    """Check that a per-procedure or merged file has the EgoExOR layout; return its take count.

    The one schema check of an HDF5 input, run before any heavy work: the metadata tables, the take ids,
    each take's camera names (``sources``), the dtype, rank and width of every input dataset (each input's
    ``datasets``, ``egoexor.modalities``: all hold floating-point numbers), and the values of those marked
    ``finite_or_nan`` (gaze and hands: NaN means "missing" in the released files, an infinity is an error).
    Frames, audio and point clouds are not read. Raises :class:`LayoutError` naming the file and the path.
    """
    from egoexor import modalities

    take_datasets = [d for m in modalities.modalities() for d in m.datasets]
    for path in (*VOCABULARY, SOURCE_TABLE):
        if path not in h5:
            raise LayoutError(f"{h5.filename}: missing '{path}'")
        table = h5[path]
        if not isinstance(table, h5py.Dataset) or "name" not in (table.dtype.names or ()):
            raise LayoutError(f"{h5.filename}: '{path}' must be a table with a 'name' field, got {_described(table)}")
    count = 0
    for _, take in iter_takes(h5):
        if RGB in take:
            _check_rgb(h5, take)
        for dataset in take_datasets:
            if dataset.path in take:
                _check_dataset(h5, take[dataset.path], dataset)
        count += 1
    return count


def vocabulary(h5: h5py.File) -> tuple[frozenset[str], frozenset[str]]:
    """The entity and the relation names the file's ``metadata/vocabulary`` lists (raw spellings)."""
    entities, relations = (frozenset(decode(name) for name in h5[path].fields("name")[()]) for path in VOCABULARY)
    return entities, relations


def check_annotation(h5: h5py.File, dataset: h5py.Dataset, names: tuple[frozenset[str], frozenset[str]]) -> None:
    """A ``rel_annotations`` dataset holds text rows (subject, predicate, object) whose names the file's
    vocabulary (:func:`vocabulary`) lists: a row of numbers or a misspelt name would become a sample's answer.
    (A row of more than three parts joins the middle ones into the predicate; one of fewer is skipped.)"""
    if dataset.dtype.kind not in "OSU" or dataset.ndim != 2:
        raise LayoutError(
            f"{h5.filename}: {dataset.name} must hold text rows (subject, predicate, object), got {_described(dataset)}"
        )
    entities, relations = names
    for row_number, row in enumerate(dataset[()]):
        parts = [decode(part) for part in row]
        if len(parts) < 3:
            continue
        named = ((parts[0], entities, ENTITY_VOCAB), (" ".join(parts[1:-1]), relations, RELATION_VOCAB))
        for name, known, table in (*named, (parts[-1], entities, ENTITY_VOCAB)):
            if name not in known:
                raise LayoutError(f"{h5.filename}: {dataset.name} row {row_number}: {name!r} is not in {table}")


def open_checked(path: str | os.PathLike, flag: str) -> h5py.File:
    """:func:`egoexor.cli.open_hdf5` and :func:`check_layout`: the EgoExOR file a command reads, its schema
    checked before any heavy work; a mistake is a :class:`egoexor.cli.CommandError` naming the flag."""
    h5 = cli.open_hdf5(path, flag)
    try:
        check_layout(h5)
    except LayoutError as error:
        h5.close()
        raise cli.CommandError(f"{flag} {error}") from None
    return h5


def _check_rgb(h5: h5py.File, take: h5py.Group) -> None:
    rgb = take[RGB]
    if not isinstance(rgb, h5py.Dataset) or rgb.ndim != 5 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise LayoutError(f"{h5.filename}: {rgb.name} must be uint8 [F, C, H, W, 3], got {_described(rgb)}")
    attrs = take[SOURCES_GROUP].attrs if SOURCES_GROUP in take else {}
    if "source_count" not in attrs:
        raise LayoutError(f"{h5.filename}: {take.name}/sources: no source_count attribute (names of the cameras)")
    missing = [f"source_{i}" for i in range(int(attrs["source_count"])) if f"source_{i}" not in attrs]
    if missing:
        raise LayoutError(f"{h5.filename}: {take.name}/sources lacks the attribute {missing[0]}")
    n_sources = len(take_sources(take))
    if n_sources != rgb.shape[1]:
        raise LayoutError(
            f"{h5.filename}: {take.name}/sources names {n_sources} cameras, {rgb.name} has {rgb.shape[1]}"
        )


def _check_dataset(h5: h5py.File, dataset: h5py.Dataset, schema) -> None:
    """``schema``: the input's ``egoexor.modalities.base.TakeDataset``."""
    fits = isinstance(dataset, h5py.Dataset) and dataset.dtype.kind == "f" and dataset.ndim == schema.rank
    if not fits or (schema.width is not None and dataset.shape[-1] != schema.width):
        raise LayoutError(f"{h5.filename}: {dataset.name} must be float {schema.shape}, got {_described(dataset)}")
    if schema.finite_or_nan:
        values = dataset[()]
        infinite = np.isinf(values)
        if infinite.any():
            frame = int(np.argwhere(infinite)[0][0])
            raise LayoutError(f"{h5.filename}: {dataset.name}: infinite value at frame {frame} (NaN marks a gap)")


def _described(node: h5py.Group | h5py.Dataset) -> str:
    return f"{node.dtype} {list(node.shape)}" if isinstance(node, h5py.Dataset) else "a group"


def read_split(h5: h5py.File, split: str) -> np.ndarray:
    """Rows of ``splits/<split>`` as a structured array with ``surgery_type`` decoded to ``str``."""
    if split not in SPLIT_NAMES:
        raise LayoutError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)}")
    path = f"{SPLITS}/{split}"
    if path not in h5:
        raise LayoutError(f"{h5.filename}: missing '{path}'")
    dataset = h5[path]
    missing = [field for field in SPLIT_DTYPE.names if field not in (dataset.dtype.names or ())]
    if missing:
        raise LayoutError(f"{h5.filename}: '{path}' lacks field(s) {', '.join(missing)}")
    rows = dataset[()]
    out = np.empty(rows.shape, dtype=[("surgery_type", object)] + [(f, np.int32) for f in SPLIT_DTYPE.names[1:]])
    out["surgery_type"] = [decode(v) for v in rows["surgery_type"]]
    for field in SPLIT_DTYPE.names[1:]:
        out[field] = rows[field]
    return out
