"""The EgoExOR vocabulary: the single source of truth for every name the project uses.

Three spellings of the same concept exist in the released material, and mixing them up is the
most common way to lose triplets silently:

* **raw HDF5 names** (``metadata/vocabulary`` and ``rel_annotations``): underscore names with the
  dataset's typos and camelCase predicates (``anaesthetist``, ``operation_table``, ``closeTo``);
* **canonical names** (the metric's label space, ``data/classes.txt`` / ``relationships.txt``):
  underscore entities and one-word lower-case predicates (``head_surgeon``, ``closeto``);
* **answer forms** (what the model reads and writes): canonical names lower-cased with ``_``
  replaced by a space (``head surgeon``, ``closeto``).

Order matters: entity and predicate order is the reference's label order, and the combined index
(entities 0-35, predicates 36-57) is the reference's ``scene_graph_name_to_vocab_idx``.
"""

from __future__ import annotations

import re

NONE = "none"

#: The 36 entities, in the reference's ``classes.txt`` order (= metric entity ids 0-35).
ENTITIES: tuple[str, ...] = (
    "anesthetist",
    "anesthesia_equipment",
    "antiseptic",
    "assistant",
    "bin",
    "body_marker",
    "circulator",
    "cotton",
    "curette",
    "dressing_material",
    "forceps",
    "gloves",
    "head_surgeon",
    "health_monitor",
    "herbal_disk",
    "instrument_table",
    "instruments",
    "microscope",
    "microscope_controller",
    "microscope_eye",
    "microscope_screen",
    "needle",
    "operating_room",
    "operating_table",
    "patient",
    "scalpel",
    "scissors",
    "syringe",
    "tissue_mark",
    "tissue_paper",
    "ultrasound_gel",
    "ultrasound_machine",
    "ultrasound_probe",
    "ultrasound_screen",
    "unsterile_instruments",
    "vertebrae",
)

#: The 22 predicates, in the reference's ``relationships.txt`` order (= metric labels 0-21).
PREDICATES: tuple[str, ...] = (
    "anaesthetising",
    "applying",
    "aspirating",
    "looking",
    "closeto",
    "controlling",
    "cutting",
    "disinfection",
    "dressing",
    "dropping",
    "entering",
    "holding",
    "injecting",
    "inserting",
    "lyingon",
    "manipulating",
    "positioning",
    "preparing",
    "removing",
    "scanning",
    "touching",
    "wearing",
)

#: Entity labels of the entity report: the 36 entities + ``none`` (``classes.txt``).
ENTITY_LABELS: tuple[str, ...] = ENTITIES + (NONE,)
#: Relation labels of the metric: the 22 predicates + ``none`` (``relationships.txt``).
RELATION_LABELS: tuple[str, ...] = PREDICATES + (NONE,)

#: Combined name -> id space of the reference evaluator: entities 0-35, predicates 36-57.
VOCAB_INDEX: dict[str, int] = {name: i for i, name in enumerate(ENTITIES + PREDICATES)}

#: ``metadata/vocabulary/entity`` of the released files: raw spellings (typos included) and ids.
RAW_ENTITY_VOCAB: tuple[str, ...] = (
    "anaesthetist",
    "anesthesia_equipment",
    "antiseptic",
    "assistant",
    "bin",
    "body_marker",
    "circulator",
    "cotton",
    "curette",
    "dressing_material",
    "forceps",
    "gloves",
    "head_surgeon",
    "health_monitor",
    "herbal_disk",
    "instrument_table",
    "instruments",
    "microcope",
    "microscope_controller",
    "microscope_eye",
    "microscope_screen",
    "needle",
    "operating_room",
    "operating_table",
    "operation_table",
    "patient",
    "scalpel",
    "scissors",
    "syringe",
    "tissue_mark",
    "tissue_paper",
    "ultrasound_gel",
    "ultrasound_machine",
    "ultrasound_probe",
    "ultrasound_screen",
    "unsterile_instruments",
    "vertebrae",
)

#: ``metadata/vocabulary/relation`` of the released files: raw spellings and ids.
RAW_RELATION_VOCAB: tuple[str, ...] = (
    "anesthasing",
    "applying",
    "aspirating",
    "checking",
    "closeTo",
    "controlling",
    "cutting",
    "disinfection",
    "dressing",
    "dropping",
    "entering",
    "holding",
    "injecting",
    "inserting",
    "looking",
    "lyingOn",
    "manipulating",
    "positioning",
    "preparing",
    "removing",
    "scanning",
    "touching",
    "wearing",
)

#: Raw entity spelling -> canonical name (exact, case-sensitive match, as the reference does).
ENTITY_SYNONYMS: dict[str, str] = {
    "operation_table": "operating_table",
    "operating_table": "operating_table",
    "anaesthetist": "anesthetist",
    "microcope": "microscope",
}

#: Raw predicate spelling -> canonical name (exact, case-sensitive match, as the reference does).
PREDICATE_SYNONYMS: dict[str, str] = {
    "closeTo": "closeto",
    "lyingOn": "lyingon",
    "looking": "looking",
    "checking": "looking",
    "anesthasing": "anaesthetising",
}

#: Camera / device source ids (``metadata/sources/sources``); gaze and hand rows carry these ids.
SOURCES: dict[str, int] = {
    "head_surgeon": 1,
    "assistant": 2,
    "circulator": 3,
    "anesthetist": 4,
    "or_light": 5,
    "microscope": 6,
    "external_1": 7,
    "external_2": 8,
    "external_3": 9,
    "external_4": 10,
    "external_5": 11,
    "simstation": 12,
    "ultrasound": 13,
    "blank": -1,
}
SOURCE_NAMES: dict[int, str] = {i: name for name, i in SOURCES.items()}
BLANK_SOURCE = "blank"

#: Smart-glasses wearers: their cameras form the ego branch and they carry gaze/hand rows.
EGO_SOURCES: tuple[str, ...] = ("head_surgeon", "assistant", "circulator", "anesthetist")
#: Room cameras and screens: the exo branch (ultrasound only when that modality is available).
EXTERNAL_SOURCES: tuple[str, ...] = tuple(f"external_{i}" for i in range(1, 6))
EXO_SOURCES: tuple[str, ...] = ("or_light", "microscope", *EXTERNAL_SOURCES, "simstation", "ultrasound")
ULTRASOUND_SOURCE = "ultrasound"
SURGERY_TYPES: tuple[str, ...] = ("MISS", "Ultrasound")


def canonical_entity(raw: str) -> str:
    """Generation-time entity normalisation (exact synonym match; unknown names pass through)."""
    return ENTITY_SYNONYMS.get(raw, raw)


def canonical_predicate(raw: str) -> str:
    """Generation-time predicate normalisation (exact synonym match; unknown names pass through)."""
    return PREDICATE_SYNONYMS.get(raw, raw)


def answer_form(name: str) -> str:
    """The surface form a name takes in answer strings: lower case, ``_`` -> space."""
    return name.lower().replace("_", " ")


def lookup_reference(name: str) -> str | None:
    """Resolve a name exactly as the reference evaluator does, or ``None`` where it raises.

    Lower-case, then the predicate synonyms, then the entity synonyms, then the combined
    vocabulary; no whitespace handling (callers replace spaces first where the reference does).
    The result may be an entity or a predicate: the reference shares one id space for both.
    """
    name = name.lower()
    name = PREDICATE_SYNONYMS.get(name, name)
    name = ENTITY_SYNONYMS.get(name, name)
    return name if name in VOCAB_INDEX else None


_SEPARATORS = re.compile(r"[\s_\-]+")


def lookup_robust(name: str, *, as_predicate: bool) -> str | None:
    """Resolve a name tolerantly: any case, any run of spaces/underscores/hyphens.

    Predicates are also matched with the separators removed, so ``close to``, ``lying on`` and
    ``close_to`` all resolve to ``closeto``/``lyingon``. Returns ``None`` for unknown names.
    """
    words = _SEPARATORS.sub(" ", name).strip().lower()
    if not words:
        return None
    candidates = [words.replace(" ", "_")]
    if as_predicate:
        candidates.insert(0, words.replace(" ", ""))
    for candidate in candidates:
        found = lookup_reference(candidate)
        if found is not None:
            return found
    return None


def label_file_text(labels: tuple[str, ...]) -> str:
    """Contents of ``classes.txt`` / ``relationships.txt``: one name a line, no trailing newline."""
    return "\n".join(labels)


def write_label_files(directory: str) -> None:
    """Write ``classes.txt`` and ``relationships.txt`` (the reference's label files) into a folder."""
    from pathlib import Path

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text(label_file_text(ENTITY_LABELS))
    (folder / "relationships.txt").write_text(label_file_text(RELATION_LABELS))


if __name__ == "__main__":  # python -m egoexor.vocab DIR: regenerate the shipped label files
    import sys

    write_label_files(sys.argv[1] if len(sys.argv) > 1 else "data")
