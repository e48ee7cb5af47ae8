import random

from hypothesis import given, settings
from hypothesis import strategies as st

from egoexor import vocab
from egoexor.scene_graph import Triplet, parse, resolve, serialize, split_fields, triplets_from_annotation


def reference_serialize(triplets):
    """The reference generator's formula (G:35-46), restated to check ``serialize`` against."""
    out = "<SG> "
    for s, o, p in triplets:
        out += f"{s.replace('_', ' ').lower()},{o.replace('_', ' ').lower()},{p.replace('_', ' ').lower()}; "
    return out.rstrip("; ") + " </SG>"


def test_serialize_matches_the_reference_format():
    triplets = [
        Triplet("patient", "operating_table", "lyingon"),
        Triplet("head_surgeon", "dressing_material", "holding"),
    ]
    text = serialize(triplets)
    assert text == "<SG> patient,operating table,lyingon; head surgeon,dressing material,holding </SG>"
    assert serialize([]) == "<SG> </SG>" == reference_serialize([])


def test_serialize_equals_reference_formula_on_random_graphs():
    rng = random.Random(0)
    for _ in range(200):
        triplets = [
            (rng.choice(vocab.ENTITIES), rng.choice(vocab.ENTITIES), rng.choice(vocab.PREDICATES))
            for _ in range(rng.randint(0, 8))
        ]
        assert serialize(triplets) == reference_serialize(triplets)


def test_round_trip_in_both_modes():
    rng = random.Random(1)
    for _ in range(200):
        triplets = [
            Triplet(rng.choice(vocab.ENTITIES), rng.choice(vocab.ENTITIES), rng.choice(vocab.PREDICATES))
            for _ in range(rng.randint(0, 8))
        ]
        assert parse(serialize(triplets), "reference") == triplets
        unique = list(dict.fromkeys(triplets))
        assert parse(serialize(triplets), "robust") == unique


def test_reference_mode_keeps_the_reference_losses():
    # truncated answer: no </SG>, so the first chunk keeps "<SG> " and its subject is unknown
    assert parse("<SG> head surgeon,patient,holding; patient,operating table,lyingon") == [
        Triplet("patient", "operating_table", "lyingon")
    ]
    # a partial last triplet is dropped
    assert parse("<SG> head surgeon,patient,holding; patient,operating") == []
    # the prompt's spaced predicates are unknown to the reference
    assert parse("<SG> head surgeon,patient,close to; patient,bin,lying on </SG>") == []
    # exactly three fields
    assert parse("<SG> head surgeon,patient,holding,extra; bin,patient </SG>") == []
    # unknown names drop the whole triplet
    assert parse("<SG> dragon,patient,holding; head surgeon,patient,flying </SG>") == []
    # "none" is not a predicate
    assert parse("<SG> head surgeon,patient,none </SG>") == []


def test_reference_mode_cleaning_rules():
    text = '"""thinking, a,b,c; """<SG> head surgeon,patient,holding.; </s>anaesthetist,bin,checking </SG>'
    assert parse(text) == [Triplet("head_surgeon", "patient", "holding"), Triplet("anesthetist", "bin", "looking")]
    # the <SG> block is used only when both tags are there in order
    assert parse("</SG> head surgeon,patient,holding <SG>") == []
    # synonyms and camelCase resolve; duplicates are kept in reference mode
    assert (
        parse("<SG> operation table,microcope,closeTo; a,b,c; operation table,microcope,closeTo </SG>")
        == [Triplet("operating_table", "microscope", "closeto")] * 2
    )


def test_reference_mode_shares_one_name_space():
    # the reference resolves every field against entities + predicates: the metric decides validity
    assert parse("<SG> holding,patient,patient </SG>") == [Triplet("holding", "patient", "patient")]


def test_robust_mode_recovers_what_the_reference_loses():
    assert parse("<SG> head surgeon,patient,holding; patient,operating table,lying on", "robust") == [
        Triplet("head_surgeon", "patient", "holding"),
        Triplet("patient", "operating_table", "lyingon"),
    ]
    assert parse("<sg>  Head   Surgeon , patient , close to ;</sg>", "robust") == [
        Triplet("head_surgeon", "patient", "closeto")
    ]
    assert parse("head surgeon,patient,holding; head surgeon,patient,holding </SG> trailing", "robust") == [
        Triplet("head_surgeon", "patient", "holding")
    ]
    trailing_comma = "<SG> head surgeon,patient,holding, </SG>"
    assert parse(trailing_comma, "robust") == [Triplet("head_surgeon", "patient", "holding")]
    assert parse(trailing_comma, "reference") == []


def test_split_fields_gives_raw_strings_before_lookup():
    assert split_fields("<SG> head surgeon,patient,holding; dragon,bin,flying </SG>") == [
        ("head surgeon", "patient", "holding"),
        ("dragon", "bin", "flying"),
    ]
    assert resolve("dragon", "bin", "flying") is None
    assert resolve("head surgeon", "patient", "holding") == Triplet("head_surgeon", "patient", "holding")


def test_triplets_from_annotation_rows():
    rows = [
        (b"anaesthetist", b"closeTo", b"operation_table"),
        (b"head_surgeon", b"lying", b"On", b"patient"),  # more than 3 parts: the middle is the predicate
        (b"patient", b"holding"),  # fewer than 3: skipped
        ("assistant", "checking", "microcope"),
    ]
    assert triplets_from_annotation(rows) == [
        Triplet("anesthetist", "operating_table", "closeto"),
        Triplet("head_surgeon", "patient", "lying On"),
        Triplet("assistant", "microscope", "looking"),
    ]


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_parsing_never_raises_on_any_string(text):
    for mode in ("reference", "robust"):
        for triplet in parse(text, mode):
            assert all(name in vocab.VOCAB_INDEX for name in triplet)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "<SG>",
                "</SG>",
                ";",
                ",",
                " ",
                ".",
                '"""',
                "head surgeon",
                "patient",
                "holding",
                "close to",
                "</s>",
                "\n",
                "closeTo",
            ]
        ),
        max_size=30,
    )
)
def test_parsing_never_raises_on_tag_soup(parts):
    text = "".join(parts)
    assert isinstance(parse(text, "reference"), list)
    assert isinstance(parse(text, "robust"), list)
