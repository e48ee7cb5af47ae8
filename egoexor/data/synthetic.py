"""Synthetic EgoExOR data in the released layout, with a signal a small model can learn.

Used by the tests, the demo and the benchmarks, since the real dataset cannot be downloaded here.
Files look like the released ones (``miss_1.h5``, ``ultrasound_1.h5``, ..., ``splits.h5``): the same
groups, dtypes, attributes, gzip + per-frame chunking, raw camelCase/typo spellings in
``rel_annotations`` and raw vocabulary ids in ``scene_graph``, and the real quirks:

* frames with no annotation group (:attr:`TakeSpec.unannotated`);
* all-black camera frames (:attr:`TakeSpec.black`; ``"*"`` blanks every camera of a frame);
* a take with no ego sources and no gaze/hand groups, a ``blank`` camera, a take with no audio;
* gaze rows in shuffled source-id order, more gaze rows than ego cameras, invalid gaze ``(-1, -1)``
  and NaN gaze, NaN/+inf/>1 m gaze depth, partly-NaN and all-NaN hand rows;
* the ultrasound screen in the middle of the camera axis; source names stored as bytes.

Three learnable signals:

``templates`` (profiles ``tiny``, ``realistic``): every frame shows one of K template scene graphs. The
template tints every camera (a per-template colour) and places a bright square at a per-template spot;
the gaze and the hands of every ego device point at that spot, the audio carries a per-template tone and
the point cloud a per-template cluster. So image -> scene graph is learnable; the other modalities agree.

``parts`` (profile ``parts``, the modality benchmark behind ``python -m egoexor.ablate``): the scene graph
of a frame is one triplet per input, :data:`PARTS`, each with a fixed (subject, object) pair and a
predicate out of a group of three of its own (disjoint groups, 21 of the 22 predicates). Each part's
level (which of its three predicates) is drawn per frame independently of the others and shows in its
input alone: a tint of the ego cameras, the spot the gaze points at (nothing is drawn there), the spot
the hands are at, a tint of the room cameras, the grey level of the ultrasound screen, the tone of the
audio snippet (snippets do not overlap here, so a snippet holds its own frame's sound only) and the
position of the point cloud's dense cluster (colours are random). Every other input is independent of
it, so removing an input leaves its part to a guess (macro F1 at most 1/3 over its group) and should
leave the other parts as they were. A part is in a take's graphs where its samples can see its input
(``take_parts``): MISS takes have no ultrasound screen, the Ultrasound take has no audio; every graph has
six triplets. Gaze rows belong to devices without a calibration offset in the reference's fixation table,
so ``gaze_fixation`` moves nothing; frames are 32x32 pixels, so gaze and hands are read with
``gaze_scale``/``hand_scale`` 32.

``history`` (profile ``history``, scene-graph memory's test bed, :mod:`egoexor.memory`): every graph holds the
:data:`VISIBLE` part, a fixed pair whose predicate is drawn per frame and shows in every input, and, in held
spells, :data:`HELD` (the head surgeon holding the scalpel). Held and not-held spells alternate, each of
:data:`EPISODE_FRAMES` frames. Only the frame the scalpel is picked up shows it (a bright square in every
camera) and only the frame it is put down shows that (a dark square elsewhere); in every other frame
whether it is held follows from the earlier frames alone (:func:`history_dependent`): a model without
memory can only guess it, one with the take's change log can read it off the last change of that pair.

``python -m egoexor.data.synthetic --out DIR --profile tiny|realistic|parts|history --seed S [--overwrite]``

Existing files of the same names in ``DIR`` (a download folder's ``miss_1.h5``, say) are refused
unless ``--overwrite``, before anything is written; each file is written atomically.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
from tqdm import tqdm

from egoexor import cli, modalities, vocab
from egoexor.atomic import atomic_output
from egoexor.data import layout
from egoexor.data.layout import TakeKey
from egoexor.data.samples import Sample
from egoexor.scene_graph import Triplet, parse

#: Canonical name -> raw spellings found in the released files (the first is the usual one).
_RAW_SPELLINGS: dict[str, tuple[str, ...]] = {
    "anesthetist": ("anaesthetist",),
    "microscope": ("microcope",),
    "operating_table": ("operating_table", "operation_table"),
    "closeto": ("closeTo",),
    "lyingon": ("lyingOn",),
    "looking": ("looking", "checking"),
    "anaesthetising": ("anesthasing",),
}
_PEOPLE = ("head_surgeon", "assistant", "circulator", "anesthetist", "patient")
_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
_GZIP_LEVEL = 4
_SPLITS_FILE = "splits.h5"
COMMAND = "egoexor.data.synthetic"


@dataclass(frozen=True)
class TakeSpec:
    """One synthetic take and the quirks it carries."""

    key: TakeKey
    sources: tuple[str, ...]
    n_frames: int
    height: int
    width: int
    #: Ego devices with gaze/depth/hand rows, in row order; empty: no such groups at all.
    gaze_sources: tuple[str, ...] = ()
    audio: bool = True
    #: Points per cloud; 0: no point_cloud group.
    n_points: int = 0
    unannotated: tuple[int, ...] = ()
    black: tuple[tuple[int, str], ...] = ()
    #: Write the ``source_i`` attributes as bytes (the released files mix both).
    sources_as_bytes: bool = False


@dataclass(frozen=True)
class Profile:
    """A set of takes plus per-modality sizes."""

    name: str
    takes: tuple[TakeSpec, ...]
    snippet_samples: int
    n_templates: int
    noise_sigma: float
    #: Triplets per template scene graph (inclusive range). The answers list them in a random order
    #: (the reference shuffles), which no model can predict: the tiny profile keeps graphs small so
    #: that near-perfect teacher-forced accuracy stays reachable.
    triplets_per_template: tuple[int, int] = (2, 5)
    #: Share of the template (or part) colour in every pixel (the rest is the camera's own background).
    template_weight: float = 0.5
    #: ``templates``: every modality shows the frame's template; ``parts``: each modality shows its own
    #: part of the scene graph (:data:`PARTS`); ``history``: a visible part and a held instrument that
    #: shows only in the frames it is picked up and put down (:data:`HELD`).
    signal: Literal["templates", "parts", "history"] = "templates"
    #: Samples from one frame's audio snippet to the next; None: ``snippet_samples // FPS``, overlapping 1-s
    #: snippets as released (a snippet then holds the sound of the next 15 frames, not of its own alone).
    snippet_hop: int | None = None

    def files(self) -> dict[str, list[TakeSpec]]:
        """Per-procedure file name -> its takes (``miss_1.h5``, ``ultrasound_1.h5``, ...)."""
        out: dict[str, list[TakeSpec]] = {}
        for take in self.takes:
            out.setdefault(f"{take.key.surgery_type.lower()}_{take.key.procedure_id}.h5", []).append(take)
        return out


_EGO4 = ("head_surgeon", "assistant", "circulator", "anesthetist")


def _tiny() -> Profile:
    return Profile(
        name="tiny",
        takes=(
            TakeSpec(
                TakeKey("MISS", 1, 1),
                (*_EGO4, "or_light", "microscope", "external_1", "external_2", "external_3", "simstation"),
                n_frames=48,
                height=24,
                width=32,
                gaze_sources=("anesthetist", "head_surgeon", "circulator", "assistant"),
                n_points=64,
                unannotated=(2, 29),
                black=((1, "assistant"), (2, "external_2")),
                sources_as_bytes=True,
            ),
            TakeSpec(
                TakeKey("MISS", 1, 2),
                ("or_light", "external_1", "blank"),
                n_frames=24,
                height=24,
                width=32,
                n_points=48,
                unannotated=(5,),
            ),
            TakeSpec(
                TakeKey("MISS", 2, 1),
                ("head_surgeon", "assistant", "circulator", "or_light", "microscope", "external_1", "external_2"),
                n_frames=40,
                height=32,
                width=24,
                gaze_sources=("circulator", "anesthetist", "assistant", "head_surgeon"),
                n_points=80,
                unannotated=(7,),
                black=((0, "head_surgeon"),),
            ),
            TakeSpec(
                TakeKey("Ultrasound", 1, 1),
                ("head_surgeon", "assistant", "external_1", "ultrasound", "external_2"),
                n_frames=48,
                height=24,
                width=32,
                gaze_sources=("assistant", "head_surgeon"),
                audio=False,
                n_points=32,
                unannotated=(11,),
                black=((3, "*"),),
            ),
        ),
        snippet_samples=480,
        n_templates=6,
        noise_sigma=4.0,
        triplets_per_template=(1, 2),
        template_weight=0.8,
    )


def _realistic() -> Profile:
    exo6 = ("or_light", "microscope", "external_1", "external_2", "external_3", "simstation")
    size = {"height": 336, "width": 336}
    return Profile(
        name="realistic",
        takes=(
            TakeSpec(
                TakeKey("MISS", 1, 1),
                (*_EGO4, *exo6),
                n_frames=200,
                **size,
                gaze_sources=("anesthetist", "head_surgeon", "circulator", "assistant"),
                n_points=8192,
                unannotated=(2, 61),
                black=((1, "assistant"), (2, "external_2")),
                sources_as_bytes=True,
            ),
            TakeSpec(
                TakeKey("MISS", 1, 2),
                ("or_light", "microscope", "external_1", "blank", "external_2", "external_3", "simstation"),
                n_frames=100,
                **size,
                n_points=8192,
                unannotated=(5,),
            ),
            TakeSpec(
                TakeKey("Ultrasound", 1, 1),
                (*_EGO4, "external_1", "external_2", "ultrasound", "external_3", "or_light", "simstation"),
                n_frames=200,
                **size,
                gaze_sources=("assistant", "head_surgeon", "anesthetist", "circulator"),
                audio=False,
                n_points=8192,
                unannotated=(11,),
                black=((3, "*"),),
            ),
        ),
        snippet_samples=layout.AUDIO_SAMPLE_RATE,
        n_templates=8,
        noise_sigma=1.0,  # with the smooth backgrounds: gzip ratio ~1.8x, like camera frames
    )


def _parts() -> Profile:
    """Three takes with six parts each; their gaze devices have no calibration offset
    (``egoexor.modalities.gaze.GAZE_FIXATION_TAKES``)."""
    size = {"height": 32, "width": 32}
    return Profile(
        name="parts",
        takes=(
            TakeSpec(
                TakeKey("MISS", 1, 1),
                ("head_surgeon", "assistant", "or_light", "external_1", "external_2"),
                n_frames=160,
                **size,
                gaze_sources=("assistant", "head_surgeon"),
                n_points=64,
                unannotated=(3,),
                sources_as_bytes=True,
            ),
            TakeSpec(
                TakeKey("MISS", 2, 1),
                ("head_surgeon", "circulator", "external_1", "microscope", "external_3"),
                n_frames=160,
                **size,
                gaze_sources=("head_surgeon", "circulator"),
                n_points=64,
                unannotated=(8,),
            ),
            TakeSpec(
                TakeKey("Ultrasound", 1, 1),
                ("head_surgeon", "circulator", "external_1", "ultrasound", "external_2"),
                n_frames=200,
                **size,
                gaze_sources=("circulator", "head_surgeon"),
                audio=False,
                n_points=64,
                unannotated=(5,),
            ),
        ),
        snippet_samples=480,
        snippet_hop=480,  # one frame's sound per snippet: the audio part changes every frame
        n_templates=0,
        noise_sigma=4.0,
        template_weight=0.7,
        signal="parts",
    )


def _history() -> Profile:
    """Two takes of 200 small frames whose graphs are the visible part and the held instrument (:data:`HELD`)."""
    size = {"height": 24, "width": 32}
    return Profile(
        name="history",
        takes=(
            TakeSpec(
                TakeKey("MISS", 1, 1),
                ("head_surgeon", "assistant", "or_light", "external_1"),
                n_frames=200,
                **size,
                gaze_sources=("head_surgeon", "assistant"),
                n_points=32,
            ),
            TakeSpec(
                TakeKey("MISS", 2, 1),
                ("head_surgeon", "circulator", "microscope", "external_1"),
                n_frames=200,
                **size,
                gaze_sources=("circulator", "head_surgeon"),
                n_points=32,
            ),
        ),
        snippet_samples=480,
        n_templates=0,
        noise_sigma=4.0,
        template_weight=0.7,
        signal="history",
    )


PROFILES = {"tiny": _tiny, "realistic": _realistic, "parts": _parts, "history": _history}


@dataclass(frozen=True)
class Part:
    """One triplet of the ``parts`` scene graph: its predicate is set by one modality alone."""

    #: The modality that shows it, as ``DataConfig.drop_modalities`` names it.
    modality: str
    subject: str
    object: str
    #: The predicate of each level of the part's value (one level drawn per frame).
    predicates: tuple[str, ...]


#: The parts of the ``parts`` profile's scene graphs: disjoint predicate groups, 3 predicates each.
PARTS: tuple[Part, ...] = (
    Part("ego_frames", "head_surgeon", "scalpel", ("holding", "cutting", "dropping")),
    Part("gaze", "assistant", "microscope_screen", ("looking", "controlling", "positioning")),
    Part("hands", "assistant", "patient", ("touching", "disinfection", "dressing")),
    Part("exo_frames", "circulator", "instrument_table", ("closeto", "manipulating", "preparing")),
    Part("ultrasound", "head_surgeon", "ultrasound_probe", ("scanning", "applying", "inserting")),
    Part("audio", "anesthetist", "anesthesia_equipment", ("anaesthetising", "injecting", "aspirating")),
    Part("point_cloud", "patient", "operating_table", ("lyingon", "entering", "removing")),
)
_LEVELS = 3
#: What each level looks like in each modality.
_EGO_TINTS = np.array([[220, 40, 40], [40, 200, 40], [40, 60, 230]], np.float32)
_ROOM_TINTS = np.array([[230, 200, 30], [30, 210, 210], [210, 40, 210]], np.float32)
_ULTRASOUND_GREYS = np.array([30.0, 128.0, 225.0], np.float32)
_GAZE_SPOTS = np.array([[0.2, 0.25], [0.8, 0.3], [0.45, 0.8]], np.float32)
_HAND_SPOTS = np.array([[0.25, 0.75], [0.5, 0.25], [0.8, 0.7]], np.float32)
_TONES = np.array([10.0, 25.0, 40.0])  # cycles per snippet
_CLOUD_CENTRES = np.array([[-2.0, -2.0, 1.0], [0.0, 2.0, 1.5], [2.0, -1.0, 0.5]])


def take_parts(spec: TakeSpec) -> tuple[Part, ...]:
    """The parts a take's samples can see: those whose modality the take records (and, for audio, the ego
    cameras that ``make_samples`` requires and the exo views that carry the audio token)."""
    ego = any(s in vocab.EGO_SOURCES for s in spec.sources)
    room = any(s in vocab.EXO_SOURCES and s != vocab.ULTRASOUND_SOURCE for s in spec.sources)
    recorded = {
        "ego_frames": ego,
        "gaze": bool(spec.gaze_sources),
        "hands": bool(spec.gaze_sources),
        "exo_frames": room,
        "ultrasound": vocab.ULTRASOUND_SOURCE in spec.sources,
        "audio": spec.audio and ego and room,
        "point_cloud": spec.n_points > 0 and any(s in vocab.EXTERNAL_SOURCES for s in spec.sources),
    }
    return tuple(part for part in PARTS if recorded[part.modality])


class _PartsSignal:
    """The ``parts`` signal: each part's level, drawn per frame, shows in its own modality only."""

    def __init__(self, profile: Profile, spec: TakeSpec, levels: np.ndarray) -> None:
        self.weight, self.parts = profile.template_weight, take_parts(spec)
        self.levels = {part.modality: levels[:, i] for i, part in enumerate(PARTS)}  # [F] each
        self.gaze_spots, self.hand_spots = _GAZE_SPOTS[self.levels["gaze"]], _HAND_SPOTS[self.levels["hands"]]
        self.tones = _TONES[self.levels["audio"]]
        self.cloud_centres, self.cloud_colours = _CLOUD_CENTRES[self.levels["point_cloud"]], None

    def triplets(self, frame: int) -> list[Triplet]:
        return [Triplet(p.subject, p.object, p.predicates[self.levels[p.modality][frame]]) for p in self.parts]

    def image(self, frame: int, source: str, background: np.ndarray) -> np.ndarray:
        """Ego cameras tinted by the ego level, room cameras by the room level, the screen grey by its level."""
        if source in vocab.EGO_SOURCES:
            colour = _EGO_TINTS[self.levels["ego_frames"][frame]]
        elif source == vocab.ULTRASOUND_SOURCE:
            colour = _ULTRASOUND_GREYS[self.levels["ultrasound"][frame]].repeat(3)
        else:
            colour = _ROOM_TINTS[self.levels["exo_frames"][frame]]
        return (1 - self.weight) * background + self.weight * colour


#: The ``history`` profile's visible part: a fixed pair whose predicate (one of three, drawn per frame) tints
#: every camera and sets the gaze and hand spots, the tone and the point cloud's cluster. Its pair never
#: changes, so it adds nothing to a take's change log after the first frame (:mod:`egoexor.memory`).
VISIBLE = Part("exo_frames", "assistant", "patient", ("touching", "disinfection", "dressing"))
#: The ``history`` profile's held instrument: in the graph from the frame it is picked up (which shows it)
#: to the frame before it is put down (which shows that); the frames between show nothing of it.
HELD = Triplet("head_surgeon", "scalpel", "holding")
#: Per-frame states of the held instrument: not held, picked up (shown), held out of view, put down (shown).
NOT_HELD, PICKED_UP, HELD_OUT_OF_VIEW, PUT_DOWN = range(4)
#: The states in which the frame's graph holds :data:`HELD`.
HOLDING = (PICKED_UP, HELD_OUT_OF_VIEW)
#: Frames of one held or not-held spell (inclusive range): long beside the gap between held-out frames
#: (a split takes about one frame in seven), so the memory of the last one mostly still holds.
EPISODE_FRAMES = (30, 60)
_PICK_UP_SPOT, _PUT_DOWN_SPOT = (0.25, 0.3), (0.75, 0.7)


def held_states(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """Alternating not-held and held spells of :data:`EPISODE_FRAMES` frames, starting not held."""
    states = np.full(n_frames, NOT_HELD, np.int8)
    frame, held = int(rng.integers(EPISODE_FRAMES[0], EPISODE_FRAMES[1] + 1)), True
    while frame < n_frames:
        length = int(rng.integers(EPISODE_FRAMES[0], EPISODE_FRAMES[1] + 1))
        if held:
            states[frame], states[frame + 1 : frame + length] = PICKED_UP, HELD_OUT_OF_VIEW
        else:
            states[frame] = PUT_DOWN
        frame, held = frame + length, not held
    return states


def history_dependent(state: int) -> bool:
    """Whether a frame's :data:`HELD` relation (present or absent) follows from earlier frames only."""
    return state in (NOT_HELD, HELD_OUT_OF_VIEW)


def held_accuracy(dataset: SyntheticDataset, samples: Iterable[Sample], texts: Mapping[str, str]) -> tuple[int, int]:
    """How many of the samples whose frame's :data:`HELD` relation is :func:`history_dependent` have it right
    (present or absent) in their generated text (``texts`` by sample id), and how many such samples there are."""
    right = total = 0
    for sample in samples:
        state = dataset.held_states[sample.take][sample.frame]
        if history_dependent(state):
            total += 1
            right += (HELD in parse(texts[sample.id])) == (state == HELD_OUT_OF_VIEW)
    return right, total


class _HistorySignal:
    """The ``history`` signal: the visible part shows in every input, the held instrument only when it is
    picked up (a bright square in every camera) or put down (a dark square elsewhere)."""

    def __init__(self, profile: Profile, levels: np.ndarray, states: np.ndarray) -> None:
        self.weight, self.levels, self.states = profile.template_weight, levels, states
        self.gaze_spots, self.hand_spots = _GAZE_SPOTS[levels], _HAND_SPOTS[levels]
        self.tones = _TONES[levels]
        self.cloud_centres, self.cloud_colours = _CLOUD_CENTRES[levels], None

    def triplets(self, frame: int) -> list[Triplet]:
        visible = Triplet(VISIBLE.subject, VISIBLE.object, VISIBLE.predicates[self.levels[frame]])
        return [visible, HELD] if self.states[frame] in HOLDING else [visible]

    def image(self, frame: int, source: str, background: np.ndarray) -> np.ndarray:
        img = (1 - self.weight) * background + self.weight * _ROOM_TINTS[self.levels[frame]]
        state = self.states[frame]
        if state in (PICKED_UP, PUT_DOWN):
            height, width = img.shape[:2]
            side = max(2, min(height, width) // 4)
            u, v = _PICK_UP_SPOT if state == PICKED_UP else _PUT_DOWN_SPOT
            y0, x0 = int(v * height) - side // 2, int(u * width) - side // 2
            img[y0 : y0 + side, x0 : x0 + side] = 255.0 if state == PICKED_UP else 0.0
        return img


@dataclass
class SyntheticDataset:
    """What :func:`generate` wrote, with the ground truth the tests check against."""

    directory: Path
    files: list[Path]
    splits_file: Path
    profile: Profile
    templates: list[list[Triplet]]
    #: Template index of every frame of every take.
    frame_templates: dict[TakeKey, np.ndarray] = field(default_factory=dict)
    #: Template screen position (u, v) in 0-1 of every template.
    hotspots: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    #: ``parts`` profile: the level of every part (columns in :data:`PARTS` order) of every frame of every take.
    part_levels: dict[TakeKey, np.ndarray] = field(default_factory=dict)
    #: ``history`` profile: the :data:`VISIBLE` level and the :data:`HELD` state of every frame of every take.
    visible_levels: dict[TakeKey, np.ndarray] = field(default_factory=dict)
    held_states: dict[TakeKey, np.ndarray] = field(default_factory=dict)


def make_templates(rng: np.random.Generator, n_templates: int, sizes: tuple[int, int]) -> list[list[Triplet]]:
    """K distinct scene graphs of ``sizes`` triplets, one predicate per ordered pair."""
    templates: list[list[Triplet]] = []
    while len(templates) < n_templates:
        n = int(rng.integers(sizes[0], sizes[1] + 1))
        triplets: list[Triplet] = []
        while len(triplets) < n:
            subject = str(rng.choice(_PEOPLE))
            obj = str(rng.choice(vocab.ENTITIES))
            if obj == subject or any((t.subject, t.object) == (subject, obj) for t in triplets):
                continue
            triplets.append(Triplet(subject, obj, str(rng.choice(vocab.PREDICATES))))
        if all(set(triplets) != set(t) for t in templates):
            templates.append(triplets)
    return templates


def raw_spelling(name: str, rng: np.random.Generator) -> str:
    """A spelling of a canonical name as it appears in the released files."""
    spellings = _RAW_SPELLINGS.get(name, (name,))
    return spellings[int(rng.integers(len(spellings)))]


def _write_metadata(h5: h5py.File) -> None:
    tables = {layout.ENTITY_VOCAB: vocab.RAW_ENTITY_VOCAB, layout.RELATION_VOCAB: vocab.RAW_RELATION_VOCAB}
    for path, names in tables.items():
        h5.create_dataset(path, data=np.array([(name, i) for i, name in enumerate(names)], dtype=layout.VOCAB_DTYPE))
    table = np.array(list(vocab.SOURCES.items()), dtype=layout.VOCAB_DTYPE)
    h5.create_dataset(layout.SOURCE_TABLE, data=table)
    info = h5.require_group(layout.DATASET_INFO)
    info.attrs["version"] = "synthetic-1.0"
    info.attrs["creation_date"] = "2025-05-01"
    info.attrs["title"] = "EgoExOR (synthetic, egoexor.data.synthetic)"


def _dataset(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: object) -> h5py.Dataset:
    """A gzip-compressed dataset chunked one frame at a time, like the released files."""
    return group.create_dataset(
        name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]), compression="gzip", compression_opts=_GZIP_LEVEL
    )


class _TemplateSignal:
    """The ``templates`` signal: every modality shows the frame's template scene graph (module docstring)."""

    def __init__(self, profile: Profile, templates, frame_templates: np.ndarray, palette, hotspots) -> None:
        self.templates, self.frame_templates, self.palette = templates, frame_templates, palette
        self.weight, self.hotspot = profile.template_weight, hotspots[frame_templates]  # [F, 2] in 0-1
        self.gaze_spots = self.hand_spots = self.hotspot
        self.tones = 20.0 + 15.0 * frame_templates  # cycles per snippet
        self.cloud_centres = np.concatenate([self.hotspot * 4 - 2, np.ones((len(frame_templates), 1))], axis=1)
        self.cloud_colours = palette[frame_templates] / 255.0

    def triplets(self, frame: int) -> list[Triplet]:
        return self.templates[self.frame_templates[frame]]

    def image(self, frame: int, source: str, background: np.ndarray) -> np.ndarray:
        """The template tint over the camera's background, with a bright square at the template spot."""
        colour = self.palette[self.frame_templates[frame]]
        img = (1 - self.weight) * background + self.weight * colour
        height, width = img.shape[:2]
        side = max(2, min(height, width) // 4)
        u, v = self.hotspot[frame]
        x0 = int(u * width) - side // 2
        y0 = int(v * height) - side // 2
        img[max(y0, 0) : y0 + side, max(x0, 0) : x0 + side] = 255 - colour
        return img


class _TakeWriter:
    """Writes one take frame by frame so that memory stays bounded at the realistic size.

    The layout and the quirks are the writer's; what the frames show comes from the profile's signal.
    """

    def __init__(self, spec: TakeSpec, profile: Profile, signal, rng) -> None:
        self.spec, self.profile, self.signal, self.rng = spec, profile, signal, rng
        yy, xx = np.mgrid[0 : spec.height, 0 : spec.width]
        # A per-camera smooth background, so cameras differ and images are not flat colour.
        self.backgrounds = [
            (60 + 50 * np.sin(xx / (spec.width / 8 + c) + c) + 40 * np.cos(yy / (spec.height / 6 + c)))[..., None]
            * np.ones(3)
            for c in range(len(spec.sources))
        ]

    def image(self, frame: int, camera: int) -> np.ndarray:
        img = self.signal.image(frame, self.spec.sources[camera], self.backgrounds[camera])
        img += self.rng.standard_normal(img.shape, dtype=np.float32) * self.profile.noise_sigma
        return np.clip(img, 0, 255).astype(np.uint8)

    def write(self, group: h5py.Group) -> None:
        spec = self.spec
        sources = group.create_group(layout.SOURCES_GROUP)
        sources.attrs["source_count"] = len(spec.sources)
        for i, name in enumerate(spec.sources):
            sources.attrs[f"source_{i}"] = np.bytes_(name) if spec.sources_as_bytes else name
        n_frames, n_cams = spec.n_frames, len(spec.sources)
        rgb = _dataset(group, layout.RGB, (n_frames, n_cams, spec.height, spec.width, 3), np.uint8)
        black = {(f, s) for f, s in spec.black}
        for frame in range(n_frames):
            stack = np.zeros((n_cams, spec.height, spec.width, 3), np.uint8)
            for camera, name in enumerate(spec.sources):
                if name != vocab.BLANK_SOURCE and (frame, name) not in black and (frame, "*") not in black:
                    stack[camera] = self.image(frame, camera)
            rgb[frame] = stack
        if spec.gaze_sources:
            self._write_ego(group)
        if spec.audio:
            self._write_audio(group)
        if spec.n_points:
            self._write_point_cloud(group)
        self._write_annotations(group)
        for modality in modalities.modalities():
            if not modality.builtin:  # a plug-in's input, from a generator of its own: the rest stays as it was
                modality.write_synthetic(group, spec.sources, n_frames, self.rng.spawn(1)[0])

    def _write_ego(self, group: h5py.Group) -> None:
        spec, rng = self.spec, self.rng
        n_frames, n_rows = spec.n_frames, len(spec.gaze_sources)
        ids = np.array([vocab.SOURCES[s] for s in spec.gaze_sources], np.float32)
        size = np.array([spec.width, spec.height], np.float32)
        gaze_spot, hand_spot = self.signal.gaze_spots * size, self.signal.hand_spots * size  # [F, 2] px
        gaze = np.empty((n_frames, n_rows, 3), np.float32)
        gaze[:, :, 0] = ids
        gaze[:, :, 1:] = gaze_spot[:, None, :] + rng.normal(0, 0.5, (n_frames, n_rows, 2))
        invalid = rng.random((n_frames, n_rows)) < 0.05
        invalid[0, min(1, n_rows - 1)] = True
        gaze[invalid, 1:] = -1.0
        gaze[min(1, n_frames - 1), 0, 1] = np.nan
        depth = rng.uniform(0.3, 1.5, (n_frames, n_rows)).astype(np.float32)
        depth[invalid] = 1.0
        depth[0, 0] = np.nan
        if n_rows > 1:
            depth[0, 1] = np.inf
        if n_rows > 2:
            depth[0, 2] = 1.7
        # Hands: 8 (x, y) points per row (LW, LP, RW, RP and their normal tips) around the spot.
        offsets = np.array([-4, 3, -3, 1, 4, 3, 3, 1, -5, 5, -4, 2, 5, 5, 4, 2], np.float32)
        hands = np.empty((n_frames, n_rows, 17), np.float32)
        hands[:, :, 0] = ids
        hands[:, :, 1:] = np.tile(hand_spot, 8)[:, None, :] + offsets + rng.normal(0, 0.5, (n_frames, n_rows, 16))
        partly = rng.random((n_frames, n_rows)) < 0.1
        partly[0, 0] = True
        hands[partly, 1:9] = np.nan  # the left hand is not tracked
        hands[min(1, n_frames - 1), n_rows - 1, 1:] = np.nan
        for path, data in ((layout.GAZE, gaze), (layout.GAZE_DEPTH, depth), (layout.HANDS, hands)):
            _dataset(group, path, data.shape, np.float32)[...] = data

    def _write_audio(self, group: h5py.Group) -> None:
        spec, snippet = self.spec, self.profile.snippet_samples
        hop = self.profile.snippet_hop or max(1, snippet // layout.FPS)
        total = hop * spec.n_frames + snippet
        t = np.arange(total, dtype=np.float32) / snippet  # seconds, in snippet units
        # The tone of the frame whose hop a sample falls in, plus microphone noise.
        frequency = self.signal.tones[np.minimum(np.arange(total) // hop, spec.n_frames - 1)]
        mono = 0.3 * np.sin(2 * np.pi * frequency * t) + 0.02 * self.rng.standard_normal(total, dtype=np.float32)
        waveform = np.stack([mono, 0.8 * mono], axis=1).astype(np.float32)
        group.create_dataset(layout.AUDIO_WAVEFORM, data=waveform, compression="gzip", compression_opts=_GZIP_LEVEL)
        snippets = _dataset(group, layout.AUDIO_SNIPPETS, (spec.n_frames, snippet, 2), np.float32)
        for frame in range(spec.n_frames):
            snippets[frame] = waveform[frame * hop : frame * hop + snippet]

    def _write_point_cloud(self, group: h5py.Group) -> None:
        spec, rng, n, signal = self.spec, self.rng, self.spec.n_points, self.signal
        coords = _dataset(group, layout.POINT_COORDINATES, (spec.n_frames, n, 3), np.float32)
        colors = _dataset(group, layout.POINT_COLORS, (spec.n_frames, n, 3), np.float32)
        cluster = n // 4
        for frame in range(spec.n_frames):
            xyz = rng.uniform([-3, -3, 0], [3, 3, 2.5], (n, 3)).astype(np.float32)  # the room, metres
            xyz[:cluster] = signal.cloud_centres[frame].astype(np.float32) + rng.normal(0, 0.1, (cluster, 3))
            rgb = rng.uniform(0, 1, (n, 3)).astype(np.float32)
            if signal.cloud_colours is not None:
                rgb[:cluster] = signal.cloud_colours[frame]
            coords[frame], colors[frame] = xyz, rgb

    def _write_annotations(self, group: h5py.Group) -> None:
        rng = self.rng
        raw_entity_ids = {name: i for i, name in enumerate(vocab.RAW_ENTITY_VOCAB)}
        raw_relation_ids = {name: i for i, name in enumerate(vocab.RAW_RELATION_VOCAB)}
        annotations = group.create_group(layout.ANNOTATIONS)
        for frame in range(self.spec.n_frames):
            if frame in self.spec.unannotated:
                continue
            rows = [
                (raw_spelling(t.subject, rng), raw_spelling(t.predicate, rng), raw_spelling(t.object, rng))
                for t in self.signal.triplets(frame)
            ]
            ids = [(raw_entity_ids[s], raw_relation_ids[p], raw_entity_ids[o]) for s, p, o in rows]
            frame_group = annotations.create_group(f"frame_{frame}")
            encoded = np.array([[part.encode() for part in row] for row in rows], dtype=layout.REL_ANNOTATION_DTYPE)
            frame_group.create_dataset(layout.REL_ANNOTATIONS, data=encoded)
            frame_group.create_dataset(layout.SCENE_GRAPH, data=np.array(ids, np.float32))


def _write_atomically(path: Path, write: Callable[[h5py.File], None]) -> None:
    """Write an HDF5 file through a temporary file, renamed only on success. The file is built in memory and
    written as it closes (HDF5's ``core`` driver): a write to disk that fails half-way through the metadata
    leaves HDF5 unable to close the file, and the interpreter crashes at exit (a full disk: rc -11)."""
    with atomic_output(path) as temporary, h5py.File(temporary, "w", driver="core", backing_store=True) as h5:
        write(h5)


def _split_rows(profile: Profile, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows: dict[str, list[tuple[str, int, int, int]]] = {name: [] for name in layout.SPLIT_NAMES}
    for take in profile.takes:
        choice = rng.choice(len(layout.SPLIT_NAMES), size=take.n_frames, p=_SPLIT_FRACTIONS)
        choice[: len(layout.SPLIT_NAMES)] = np.arange(len(layout.SPLIT_NAMES))  # every split sees every take
        for frame, split in enumerate(choice):
            k = take.key
            rows[layout.SPLIT_NAMES[split]].append((k.surgery_type, k.procedure_id, k.take_id, frame))
    return {name: np.array(r, dtype=layout.SPLIT_DTYPE) for name, r in rows.items()}


def write_splits(path: Path, splits: dict[str, np.ndarray]) -> None:
    """Write a ``splits.h5`` (group ``splits/`` with one compound dataset per split)."""

    def write(h5: h5py.File) -> None:
        for name, rows in splits.items():
            h5.create_dataset(f"{layout.SPLITS}/{name}", data=rows.astype(layout.SPLIT_DTYPE), compression="gzip")

    _write_atomically(path, write)


#: The most frames a take may have: 2 hours at 15 fps, longer than any released take. A larger count is a
#: typing slip (10**12 frames would need terabytes before the first file is written).
MAX_FRAMES = 2 * 3600 * layout.FPS


def generate(
    out: str | os.PathLike,
    profile: str | Profile = "tiny",
    seed: int = 0,
    n_frames: int | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> SyntheticDataset:
    """Write a synthetic dataset (per-procedure files + ``splits.h5``) into ``out``.

    ``n_frames`` overrides every take's frame count (quirk frames beyond it are dropped).
    The same seed gives the same data. Files that exist are refused (:class:`egoexor.cli.CommandError`)
    unless ``overwrite``.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
        profile = PROFILES[profile]()
    if n_frames is not None:
        if not len(layout.SPLIT_NAMES) <= n_frames <= MAX_FRAMES:
            raise ValueError(f"n_frames must be {len(layout.SPLIT_NAMES)} to {MAX_FRAMES}, got {n_frames}")
        profile = replace(profile, takes=tuple(replace(t, n_frames=n_frames) for t in profile.takes))
    directory = Path(out)
    if directory.exists() and not directory.is_dir():
        raise cli.CommandError(f"{directory}: is a file, expected a folder")
    for name in [*profile.files(), _SPLITS_FILE]:
        cli.check_output(directory / name, overwrite=overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = make_templates(rng, profile.n_templates, profile.triplets_per_template)
    palette = rng.uniform(30, 225, (profile.n_templates, 3)).astype(np.float32)
    hotspots = rng.uniform(0.2, 0.8, (profile.n_templates, 2)).astype(np.float32)
    dataset = SyntheticDataset(directory, [], directory / _SPLITS_FILE, profile, templates, hotspots=hotspots)

    def signal(spec: TakeSpec) -> _TemplateSignal | _PartsSignal | _HistorySignal:
        if profile.signal == "history":
            dataset.visible_levels[spec.key] = rng.integers(0, _LEVELS, spec.n_frames)
            dataset.held_states[spec.key] = held_states(rng, spec.n_frames)
            return _HistorySignal(profile, dataset.visible_levels[spec.key], dataset.held_states[spec.key])
        if profile.signal == "parts":
            dataset.part_levels[spec.key] = rng.integers(0, _LEVELS, (spec.n_frames, len(PARTS)))
            return _PartsSignal(profile, spec, dataset.part_levels[spec.key])
        dataset.frame_templates[spec.key] = rng.integers(0, profile.n_templates, spec.n_frames)
        return _TemplateSignal(profile, templates, dataset.frame_templates[spec.key], palette, hotspots)

    with tqdm(total=len(profile.takes), desc=f"synthetic {profile.name}", unit="take", disable=not progress) as bar:
        for file_name, specs in profile.files().items():

            def write(h5: h5py.File, specs: Sequence[TakeSpec] = specs) -> None:
                _write_metadata(h5)
                for spec in specs:
                    _TakeWriter(spec, profile, signal(spec), rng).write(h5.create_group(spec.key.path))
                    bar.update()

            _write_atomically(directory / file_name, write)
            dataset.files.append(directory / file_name)
    write_splits(dataset.splits_file, _split_rows(profile, rng))
    return dataset


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=f"python -m {COMMAND}",
        description="Write a synthetic EgoExOR dataset (per-procedure HDF5 files + splits.h5) in the released layout.",
    )
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="tiny",
        help="tiny: small images, seconds; realistic: 336x336 cameras, 48 kHz audio, 8192-point clouds, ~1 GB; "
        "parts: each input alone sets one triplet (the modality benchmark of egoexor.ablate); "
        "history: an instrument held out of view, known only from earlier frames (the memory benchmark)",
    )
    parser.add_argument(
        "--seed", type=cli.int_flag(0), default=0, help="random seed; the same seed writes the same data"
    )
    parser.add_argument(
        "--frames",
        type=cli.int_flag(len(layout.SPLIT_NAMES), MAX_FRAMES),
        default=None,
        help=f"override the number of frames of every take ({len(layout.SPLIT_NAMES)} to {MAX_FRAMES})",
    )
    cli.add_overwrite_flag(parser)
    return parser


def _run(args) -> int:
    dataset = generate(args.out, args.profile, args.seed, args.frames, progress=True, overwrite=args.overwrite)
    for path in [*dataset.files, dataset.splits_file]:
        print(f"{path}  {path.stat().st_size / 1e6:.1f} MB")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
