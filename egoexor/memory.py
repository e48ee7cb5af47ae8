"""Scene-graph memory: the text that tells the model what happened earlier in the take.

The format is the reference's ``surgery_sg_to_memory_str`` (``scene_graph_converters.py``, shared by
ardamamur/EgoExOR and egeozsoy/MM-OR), byte for byte, and the way it enters a prompt is MM-OR's
generator's (``generate_dataset_format_for_llava.py``)::

    <image>\\n<memory_start>: Long: head surgeon,patient,holding; ... Short: ...,not holding<memory_end>.\\n<prompt>

1. :func:`change_log` (:class:`ChangeLog` frame by frame): a take's frames in time order become a log
   of changes. A (subject, object) pair that appears is logged as ``(frame, (subject, predicate,
   object))``; one that disappears as ``(frame, (subject, "not <predicate>", object))``. A pair whose
   predicate changes is not logged (the reference compares pairs only); ``closeto`` and pairs with
   ``none`` are left out. The changes of one frame are shuffled with the caller's RNG (as the reference).
2. :func:`memory_text`: the changes before the current frame, in one :data:`STYLES`: ``short`` the last 5
   changes; ``long`` the first occurrence of every non-``not`` change before those 5; ``longshort`` both.
   Entries are ``s,o,p; `` after a ``Long: `` / ``Short: `` header and the text loses its last two
   characters, so an empty last section reads ``Short`` (the reference's quirk, kept for parity). With
   ``drop_history`` p > 0 each entry is left out with probability p (one RNG draw per candidate entry).
3. :func:`augmented_style`: MM-OR's training mix, no memory for half of the samples, else short, long or
   longshort for about a sixth each (its thresholds 0.5, 0.666, 0.833).
4. :func:`insert_memory`: MM-OR's rule, ``<image>\\n`` -> ``<image>\\n<memory_start>: {text}<memory_end>.\\n``.
5. :func:`fit_memory`: the token budget. When a prompt is too long, the memory's oldest entries (those of
   ``Long`` in order, then those of ``Short``) are dropped until it fits; the caller counts tokens.

Every RNG call is the reference's in kind and order, so the same seed gives the same text
(``scripts/check_memory_parity.py`` checks it against the reference's own functions).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, NamedTuple

MemoryStyle = Literal["short", "long", "longshort"]
STYLES: tuple[str, ...] = ("short", "long", "longshort")
#: Predicates the change log ignores (MM-OR's ``IRRELEVANT_PREDS``).
IGNORED_PREDICATES = frozenset({"closeto", "closeTo"})
#: How many of the latest changes ``Short`` shows.
SHORT_LENGTH = 5
MEMORY_START, MEMORY_END = "<memory_start>: ", "<memory_end>.\n"
_IMAGE_LINE = "<image>\n"
_SECTIONS = ("Long", "Short")


class Change(NamedTuple):
    """One entry of a take's change log: at ``frame`` the pair gained ``predicate`` (or ``not <predicate>``)."""

    frame: int
    subject: str
    predicate: str
    object: str

    @property
    def entry(self) -> str:
        return f"{self.subject},{self.object},{self.predicate}"


class ChangeLog:
    """A take's change log grown frame by frame (frames in time order), as online inference needs it.

    Within a frame a later triplet of the same pair wins; the additions come in triplet order, the
    removals in the order the pairs entered the current state, and then the frame's changes are shuffled.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.changes: list[Change] = []
        self._state: dict[tuple[str, str], str] = {}

    def add(self, frame: int, triplets: Iterable[tuple[str, str, str]]) -> None:
        """Log what changed at ``frame``, whose (subject, object, predicate) triplets are given."""
        state = self._state
        current = {(s, o): p for s, o, p in triplets if p not in IGNORED_PREDICATES and s != "none" and o != "none"}
        added = [Change(frame, s, p, o) for (s, o), p in current.items() if (s, o) not in state]
        removed = [Change(frame, s, f"not {p}", o) for (s, o), p in state.items() if (s, o) not in current]
        changes = added + removed
        self.rng.shuffle(changes)
        self.changes += changes
        for change in changes:
            if change.predicate.startswith("not "):
                del state[(change.subject, change.object)]
            else:
                state[(change.subject, change.object)] = change.predicate


def change_log(frames: Iterable[tuple[int, Sequence[tuple[str, str, str]]]], rng: random.Random) -> list[Change]:
    """The change log of a take from its frames' (subject, object, predicate) triplets, in any order."""
    log = ChangeLog(rng)
    for frame, triplets in sorted(frames, key=lambda item: item[0]):
        log.add(frame, triplets)
    return log.changes


def memory_sections(
    log: Sequence[Change], frame: int, style: MemoryStyle, drop_history: float = 0.0, rng: random.Random | None = None
) -> list[tuple[str, list[str]]]:
    """The memory of ``frame`` as (header, entries) sections, oldest entries first."""
    if style not in STYLES:
        raise ValueError(f"unknown memory style {style!r}; choose one of {', '.join(STYLES)}")
    if drop_history > 0 and rng is None:
        raise ValueError("drop_history needs an rng")
    past = [change for change in log if change.frame < frame]

    def kept(entries: Iterable[str]) -> list[str]:
        return [entry for entry in entries if not (drop_history > 0 and rng.random() < drop_history)]

    sections = []
    if style in ("long", "longshort"):
        first_occurrences = dict.fromkeys(c.entry for c in past[:-SHORT_LENGTH] if not c.predicate.startswith("not "))
        sections.append(("Long", kept(first_occurrences)))
    if style in ("short", "longshort"):
        sections.append(("Short", kept(c.entry for c in past[-SHORT_LENGTH:])))
    return sections


def render(sections: Sequence[tuple[str, Sequence[str]]]) -> str:
    """The reference's text of memory sections (headers and entries, then the last two characters cut)."""
    text = "".join(f"{header}: " + "".join(f"{entry}; " for entry in entries) for header, entries in sections)
    return text[:-2]


def parse_sections(text: str) -> list[tuple[str, list[str]]]:
    """The sections of a memory text (the inverse of :func:`render`)."""
    text += ": " if text.endswith(_SECTIONS) else "; "
    sections: list[tuple[str, list[str]]] = []
    position = 0
    while position < len(text):
        header = next((h for h in _SECTIONS if text.startswith(f"{h}: ", position)), None)
        if header is not None:
            sections.append((header, []))
            position += len(header) + 2
            continue
        if not sections:
            raise ValueError(f"memory text {text[:40]!r} does not start with a Long: or Short: header")
        end = text.index("; ", position)
        sections[-1][1].append(text[position:end])
        position = end + 2
    return sections


def memory_text(
    log: Sequence[Change], frame: int, style: MemoryStyle, drop_history: float = 0.0, rng: random.Random | None = None
) -> str:
    """The reference's ``surgery_sg_to_memory_str`` of the changes before ``frame``."""
    return render(memory_sections(log, frame, style, drop_history, rng))


def augmented_style(rng: random.Random) -> MemoryStyle | None:
    """MM-OR's ``WITH_TEMPORAL_AUG`` draw: None (no memory) half of the time, else a style."""
    p = rng.random()
    if p < 0.5:
        return None
    if p < 0.666:
        return "short"
    return "long" if p < 0.833 else "longshort"


def insert_memory(question: str, text: str) -> str:
    """MM-OR's insertion of a memory text after ``<image>\\n``."""
    return question.replace(_IMAGE_LINE, f"{_IMAGE_LINE}{MEMORY_START}{text}{MEMORY_END}")


def fit_memory(question: str, fits: Callable[[str], bool]) -> str:
    """``question`` with the fewest oldest memory entries dropped for ``fits`` to accept it.

    Entries are dropped in order (those of ``Long``, then those of ``Short``); the headers stay. The
    question is returned as is when it fits or has no memory; with every entry dropped, whether or not
    it fits. ``fits`` is called about log2(entries) times (a binary search: dropping more never lengthens).
    """
    if fits(question):
        return question
    start = question.find(MEMORY_START)
    end = question.find(MEMORY_END, start)
    if start < 0 or end < 0:
        return question
    before, text, after = (
        question[: start + len(MEMORY_START)],
        question[start + len(MEMORY_START) : end],
        question[end:],
    )
    sections = parse_sections(text)
    total = sum(len(entries) for _, entries in sections)
    if total == 0:
        return question

    def dropped(n: int) -> str:
        trimmed = []
        for header, entries in sections:
            trimmed.append((header, entries[n:]))
            n = max(0, n - len(entries))
        return before + render(trimmed) + after

    low, high = 1, total
    while low < high:
        middle = (low + high) // 2
        if fits(dropped(middle)):
            high = middle
        else:
            low = middle + 1
    return dropped(high)
