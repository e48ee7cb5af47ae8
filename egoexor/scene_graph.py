"""Scene-graph text: serialise a frame's triplets as the reference answers do, and parse text back.

Answer format (reference ``scene_graph_to_string``)::

    <SG> head surgeon,patient,holding; patient,operating table,lyingon </SG>

lower case, ``_`` -> space, fields ordered subject,object,predicate, separated by ``"; "``, no
space after commas; an empty graph is ``<SG> </SG>``.

Parsing has two modes:

``reference``
    Bit-for-bit the reference evaluator's rules, losses included: the ``<SG>`` block is used only
    when both tags are present in order, otherwise the whole text is split on ``;`` (so a truncated
    answer loses its first triplet to ``<sg>_head_surgeon``); chunks must have exactly three
    comma-separated fields; names resolve through :func:`egoexor.vocab.lookup_reference`, where
    ``close to`` and ``lying on`` are unknown; unknown names drop the triplet.
``robust``
    The same idea without the losses: a missing ``</SG>`` or ``<SG>`` is tolerated, tags match in
    any case, whitespace runs are collapsed, a trailing empty field is ignored, ``close to`` /
    ``lying on`` resolve, and repeated triplets are kept once.

Both modes keep the reference's shared name space: a field resolves to any vocabulary name, so a
"predicate" that is really an entity survives parsing and the metric decides what it is worth.
Parsing never raises.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Literal, NamedTuple

from egoexor import vocab

ParseMode = Literal["reference", "robust"]
PARSE_MODES: tuple[str, ...] = ("reference", "robust")

_CHAIN_OF_THOUGHT = re.compile(r'""".*?"""', flags=re.DOTALL)
_OPEN_TAG = re.compile(r"<sg>", flags=re.IGNORECASE)
_CLOSE_TAG = re.compile(r"</sg>", flags=re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


class Triplet(NamedTuple):
    """One relation of a frame, in canonical underscore names (``head_surgeon``, ``closeto``)."""

    subject: str
    object: str
    predicate: str


def serialize(triplets: Iterable[Triplet | tuple[str, str, str]]) -> str:
    """The reference's answer string for triplets given as (subject, object, predicate)."""
    fields = [",".join(vocab.answer_form(name) for name in triplet) for triplet in triplets]
    return "<SG> " + "; ".join(fields) + " </SG>" if fields else "<SG> </SG>"


def triplets_from_annotation(rows: Iterable[Iterable[str | bytes]]) -> list[Triplet]:
    """Triplets of an HDF5 ``rel_annotations`` dataset, normalised as the reference's generator does.

    Each row is (subject, predicate, object) in raw spellings; a row with more than three parts
    joins the middle ones into the predicate, a row with fewer is skipped; synonyms are mapped by
    exact match and the names are otherwise kept as written.
    """
    triplets = []
    for row in rows:
        parts = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in row]
        if len(parts) < 3:
            continue
        subject, predicate, obj = parts[0], " ".join(parts[1:-1]), parts[-1]
        triplets.append(
            Triplet(vocab.canonical_entity(subject), vocab.canonical_entity(obj), vocab.canonical_predicate(predicate))
        )
    return triplets


def split_fields(text: str, mode: ParseMode = "reference") -> list[tuple[str, str, str]]:
    """The raw (subject, object, predicate) strings of every well-formed chunk, before lookup.

    The reference saves these (as ``[sub, pred, obj]``) in its prediction files.
    """
    text = _CHAIN_OF_THOUGHT.sub("", text)
    if mode == "reference":
        if "<SG>" in text and "</SG>" in text and text.index("<SG>") < text.index("</SG>"):
            text = text.split("<SG>")[1].split("</SG>")[0].strip()
    else:
        opened = _OPEN_TAG.search(text)
        if opened:
            text = text[opened.end() :]
        closed = _CLOSE_TAG.search(text)
        if closed:
            text = text[: closed.start()]
    fields = []
    for chunk in text.split(";"):
        chunk = chunk.replace(".", "").replace("</s>", "").replace("<s>", "").strip()
        if not chunk:
            continue
        parts = [part.strip() for part in chunk.split(",")]
        if mode == "robust":
            parts = [_WHITESPACE.sub(" ", part) for part in parts]
            while len(parts) > 3 and not parts[-1]:
                parts.pop()
        if len(parts) == 3:
            fields.append((parts[0], parts[1], parts[2]))
    return fields


@functools.lru_cache(maxsize=1 << 16)
def resolve(subject: str, obj: str, predicate: str, mode: ParseMode = "reference") -> Triplet | None:
    """Map raw field strings to canonical names, or ``None`` when the reference would drop them.

    Memoised (bounded): an evaluation repeats a few thousand field strings over and over, and name
    lookup is most of the parsing time.
    """
    if mode == "reference":
        names = (
            vocab.lookup_reference(subject.replace(" ", "_")),
            vocab.lookup_reference(obj.replace(" ", "_")),
            vocab.lookup_reference(predicate),
        )
    else:
        names = (
            vocab.lookup_robust(subject, as_predicate=False),
            vocab.lookup_robust(obj, as_predicate=False),
            vocab.lookup_robust(predicate, as_predicate=True),
        )
    if None in names:
        return None
    return Triplet(*names)


def parse(text: str, mode: ParseMode = "reference") -> list[Triplet]:
    """Triplets of a generated or ground-truth answer, in text order (see the module docstring)."""
    if mode not in PARSE_MODES:
        raise ValueError(f"unknown parse mode {mode!r}; choose one of {', '.join(PARSE_MODES)}")
    resolved = (resolve(*fields, mode) for fields in split_fields(text, mode))
    triplets = [triplet for triplet in resolved if triplet is not None]
    return list(dict.fromkeys(triplets)) if mode == "robust" else triplets
