from hypothesis import given, settings
from hypothesis import strategies as st

from egoexor.data.tokenizer import build_tiny_tokenizer, load_tokenizer

_TOKENIZER = build_tiny_tokenizer()


def test_llama_conventions(tokenizer):
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == 0 and tokenizer.padding_side == "right"
    ids = tokenizer("<SG> head surgeon,patient,holding </SG>").input_ids
    assert ids[0] == 1 and 2 not in ids
    pieces = tokenizer.tokenize("<SG> head surgeon")
    assert pieces[0].startswith("▁") and any(p.startswith("▁head") for p in pieces)


def test_answers_split_into_several_pieces(tokenizer):
    pieces = tokenizer.tokenize("<SG> anaesthetist,ultrasound probe,closeto; patient,operating table,lyingon </SG>")
    assert 10 < len(pieces) < 60


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_byte_fallback_round_trips_any_text(text):
    ids = _TOKENIZER(text, add_special_tokens=False).input_ids
    assert _TOKENIZER.unk_token_id not in ids
    # like LLaMA's: "▁" is prepended only when the text does not already start with a space,
    # and decoding strips one leading space
    assert _TOKENIZER.decode(ids) == (text[1:] if text.startswith(" ") else text)


def test_saved_tokenizer_loads_by_path(tokenizer_dir):
    loaded = load_tokenizer(tokenizer_dir, model_max_length=512)
    assert loaded.model_max_length == 512
    assert loaded("patient").input_ids == _TOKENIZER("patient").input_ids
