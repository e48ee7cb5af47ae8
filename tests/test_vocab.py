from pathlib import Path

import pytest

from egoexor import vocab

DATA = Path(__file__).resolve().parents[1] / "data"


def test_sizes_and_order_match_the_reference_label_files():
    assert len(vocab.ENTITIES) == 36 and len(set(vocab.ENTITIES)) == 36
    assert len(vocab.PREDICATES) == 22 and len(set(vocab.PREDICATES)) == 22
    assert vocab.ENTITIES[0] == "anesthetist" and vocab.ENTITIES[-1] == "vertebrae"
    assert vocab.PREDICATES[3] == "looking" and vocab.PREDICATES[4] == "closeto"
    assert vocab.RELATION_LABELS[-1] == vocab.ENTITY_LABELS[-1] == "none"
    assert len(vocab.RELATION_LABELS) == 23 and len(vocab.ENTITY_LABELS) == 37


def test_combined_index_is_the_reference_id_space():
    assert vocab.VOCAB_INDEX["anesthetist"] == 0
    assert vocab.VOCAB_INDEX["vertebrae"] == 35
    assert vocab.VOCAB_INDEX["anaesthetising"] == 36
    assert vocab.VOCAB_INDEX["wearing"] == 57


@pytest.mark.parametrize(
    ("file_name", "labels"), [("classes.txt", vocab.ENTITY_LABELS), ("relationships.txt", vocab.RELATION_LABELS)]
)
def test_shipped_label_files_are_generated_from_vocab(file_name, labels):
    text = (DATA / file_name).read_text()
    assert text == vocab.label_file_text(labels), "regenerate with: python -m egoexor.vocab data"
    assert not text.endswith("\n")  # like the reference files


def test_raw_vocabularies_hold_the_dataset_typos():
    assert len(vocab.RAW_ENTITY_VOCAB) == 37 and len(vocab.RAW_RELATION_VOCAB) == 23
    for typo in ("anaesthetist", "microcope", "operation_table"):
        assert typo in vocab.RAW_ENTITY_VOCAB
    for raw in ("anesthasing", "checking", "closeTo", "lyingOn"):
        assert raw in vocab.RAW_RELATION_VOCAB
    # every raw spelling normalises to a canonical name
    assert {vocab.canonical_entity(n) for n in vocab.RAW_ENTITY_VOCAB} == set(vocab.ENTITIES)
    assert {vocab.canonical_predicate(n) for n in vocab.RAW_RELATION_VOCAB} == set(vocab.PREDICATES)


def test_synonyms_are_exact_match_like_the_generator():
    assert vocab.canonical_predicate("closeTo") == "closeto"
    assert vocab.canonical_predicate("checking") == "looking"
    assert vocab.canonical_predicate("CloseTo") == "CloseTo"  # case-sensitive, as the reference
    assert vocab.canonical_entity("operation_table") == "operating_table"


def test_answer_form():
    assert vocab.answer_form("head_surgeon") == "head surgeon"
    assert vocab.answer_form("closeto") == "closeto"


def test_source_table():
    assert vocab.SOURCES["head_surgeon"] == 1 and vocab.SOURCES["ultrasound"] == 13
    assert vocab.SOURCES["blank"] == -1 and len(vocab.SOURCES) == 14
    assert vocab.SOURCE_NAMES[4] == "anesthetist"
    assert set(vocab.EGO_SOURCES) | set(vocab.EXO_SOURCES) | {"blank"} == set(vocab.SOURCES)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("head_surgeon", "head_surgeon"),
        ("Head_Surgeon", "head_surgeon"),
        ("anaesthetist", "anesthetist"),
        ("operation_table", "operating_table"),
        ("closeTo", "closeto"),
        ("checking", "looking"),
        ("anesthasing", "anaesthetising"),
        ("close to", None),
        ("head surgeon", None),
        ("none", None),
    ],
)
def test_lookup_reference(name, expected):
    assert vocab.lookup_reference(name) == expected


@pytest.mark.parametrize(
    ("name", "as_predicate", "expected"),
    [
        ("close to", True, "closeto"),
        ("lying  on", True, "lyingon"),
        ("Close_To", True, "closeto"),
        ("head  surgeon", False, "head_surgeon"),
        ("operation table", False, "operating_table"),
        ("body-marker", False, "body_marker"),
        ("", False, None),
        ("dragon", True, None),
    ],
)
def test_lookup_robust(name, as_predicate, expected):
    assert vocab.lookup_robust(name, as_predicate=as_predicate) == expected
