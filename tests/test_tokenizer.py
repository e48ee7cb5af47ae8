"""Tokenizers: the tiny test tokenizer, and the real LLaMA one against SentencePiece, llama.cpp and the reference."""

import hashlib
import re
import shutil
import sys
from dataclasses import replace

import pytest
import sentencepiece
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from llama_tokenizer import VOCAB_DIR, write_tokenizer_folder
from transformers import LlamaTokenizer

from egoexor import scene_graph, vocab
from egoexor.data.dataset import EgoExorDataset
from egoexor.data.processor import SampleInputError
from egoexor.data.samples import load_samples
from egoexor.data.tokenizer import build_tiny_tokenizer, load_tokenizer
from egoexor.prompt import HUMAN_TURN, IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID, ROLES, chat_prompt

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
    # a special token's text ('<unk>', '</s>') is that token, in LLaMA's tokenizer as here: not a round trip
    assume(not any(special in text for special in _TOKENIZER.all_special_tokens))
    ids = _TOKENIZER(text, add_special_tokens=False).input_ids
    assert _TOKENIZER.unk_token_id not in ids
    # like LLaMA's: "▁" is prepended only when the text does not already start with a space,
    # and decoding strips one leading space
    assert _TOKENIZER.decode(ids) == (text[1:] if text.startswith(" ") else text)


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("config.json", "[]", "config.json holds a JSON list, expected an object"),
        ("tokenizer_config.json", "{", "tokenizer_config.json is not readable JSON"),
        ("special_tokens_map.json", '"<unk>"', "special_tokens_map.json holds a JSON str, expected an object"),
    ],
)
def test_a_folder_with_a_json_file_of_the_wrong_kind_is_one_error_naming_it(
    tokenizer_dir, tmp_path, name, content, says
):
    folder = tmp_path / "tokenizer"
    shutil.copytree(tokenizer_dir, folder)
    (folder / name).write_text(content)
    with pytest.raises(OSError, match=f"cannot load a tokenizer from {folder}: {re.escape(says)}"):
        load_tokenizer(folder)


def test_saved_tokenizer_loads_by_path(tokenizer_dir):
    loaded = load_tokenizer(tokenizer_dir, model_max_length=512)
    assert loaded.model_max_length == 512
    assert loaded("patient").input_ids == _TOKENIZER("patient").input_ids


# --- The real LLaMA vocabulary (llava-v1.5-7b's tokenizer folder, rebuilt from llama.cpp's GGUF copy) ---

#: sha256 and size of Meta's LLaMA tokenizer.model, the file llava-v1.5-7b and vicuna-7b-v1.5 ship.
META_TOKENIZER_MODEL = ("9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347", 499723)
#: Special texts the HF tokenizers match before SentencePiece sees the text (raw SentencePiece does not).
SPECIAL_TEXTS = ("<s>", "</s>", "<unk>")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return write_tokenizer_folder(tmp_path_factory.mktemp("llava-v1.5-7b"))


@pytest.fixture(scope="module")
def llama(llama_dir):
    return load_tokenizer(llama_dir)


@pytest.fixture(scope="module")
def spm(llama_dir):
    """SentencePiece itself on the same model: the engine of the reference's slow LlamaTokenizer."""
    return sentencepiece.SentencePieceProcessor(model_file=str(llama_dir / "tokenizer.model")).encode


def llama_cpp_cases() -> list[tuple[str, list[int]]]:
    """llama.cpp's test vectors, read as its test-tokenizer-0 does: inputs end with a separator line,
    outputs are one line of ids each (no BOS)."""
    text = (VOCAB_DIR / "ggml-vocab-llama-spm.gguf.inp").read_text(encoding="utf-8")
    inputs = text.split("\n__ggml_vocab_test__\n")
    assert inputs.pop() == ""
    lines = (VOCAB_DIR / "ggml-vocab-llama-spm.gguf.out").read_text(encoding="utf-8").splitlines()
    assert len(inputs) == len(lines)
    return [(text, [int(i) for i in line.split()]) for text, line in zip(inputs, lines, strict=True)]


def unspaced(text: str) -> bool:
    """No leading space and no run of spaces, SentencePiece's "▁" counting as a space."""
    spaced = text.replace("▁", " ")
    return not spaced.startswith(" ") and "  " not in spaced


def test_rebuilt_tokenizer_model_is_metas_byte_for_byte(llama_dir):
    data = (llama_dir / "tokenizer.model").read_bytes()
    assert (hashlib.sha256(data).hexdigest(), len(data)) == META_TOKENIZER_MODEL


def test_llava_folder_loads_as_the_llama_tokenizer_with_the_reference_settings(llama):
    # llava-v1.5-7b's config.json says model_type "llava": AutoTokenizer alone would not give LlamaTokenizer
    assert type(llama) is LlamaTokenizer
    assert (llama.unk_token_id, llama.bos_token_id, llama.eos_token_id, llama.pad_token_id) == (0, 1, 2, 0)
    assert (llama.padding_side, llama.model_max_length, len(llama)) == ("right", 2048, 32000)
    assert llama("A chat between a curious user").input_ids == [1, 319, 13563, 1546, 263, 12758, 1404]
    assert llama.convert_tokens_to_ids(["<s>", "</s>", "<0x0A>", "▁"]) == [1, 2, 13, 29871]


def test_llama_cpp_vectors(llama, spm):
    """SentencePiece gives all 46 expected id lists. The fast tokenizer gives the 31 whose text does not
    start with a space; it differs on the 15 that do: it does not prepend "▁" to a text that starts
    with a space, where SentencePiece always does, and it merges a run of spaces before a word into
    one piece where SentencePiece keeps the last space with the word (a newline then four spaces and
    "Hello" in case 28)."""
    cases = llama_cpp_cases()
    assert len(cases) == 46
    assert [spm(text) for text, _ in cases] == [ids for _, ids in cases]
    differ = [i for i, (text, ids) in enumerate(cases) if llama(text, add_special_tokens=False).input_ids != ids]
    assert differ == [i for i, (text, _) in enumerate(cases) if text.startswith(" ")]
    assert len(differ) == 15


@settings(max_examples=300, deadline=None)
@given(
    st.text(st.sampled_from([*"aZ09 ,.;:<>/_-'\t\n\r\x00", "é", "中", "🦙", "\u00a0", "\u3000", "▁"]), max_size=30)
    | st.text(max_size=20)
)
def test_fast_tokenizer_equals_sentencepiece_on_unspaced_text(llama, spm, text):
    if not unspaced(text) or any(special in text for special in SPECIAL_TEXTS):
        return
    assert llama(text, add_special_tokens=False).input_ids == spm(text)


def egoexor_segments() -> list[str]:
    """Every text egoexor tokenises: the prompt around ``<image>`` and whole (a sample without views),
    for both prompt role sets, and answers naming every entity and predicate (and the empty one)."""
    segments = []
    for roles in ROLES:
        prompt = chat_prompt(HUMAN_TURN, roles)
        segments += [prompt, *prompt.split(IMAGE_PLACEHOLDER)]
    n = len(vocab.ENTITIES)
    triplets = [
        (vocab.ENTITIES[i], vocab.ENTITIES[(i + 1) % n], vocab.PREDICATES[i % len(vocab.PREDICATES)]) for i in range(n)
    ]
    return [*segments, scene_graph.serialize(triplets), scene_graph.serialize(triplets[:1]), scene_graph.serialize([])]


def test_egoexor_text_is_unspaced_and_tokenises_as_sentencepiece(llama, spm):
    segments = egoexor_segments()
    assert all(vocab.answer_form(name) in segments[-3] for name in (*vocab.ENTITIES, *vocab.PREDICATES))
    for segment in segments:
        assert unspaced(segment), segment
        assert llama(segment, add_special_tokens=False).input_ids == spm(segment)


def reference_training_ids(spm, prompt: str, answer: str, has_image: bool) -> tuple[list[int], list[int]]:
    """Ids and labels of reference ``preprocess_v1`` (vicuna_v1, one round), ``<image>`` as one -200.

    Its slow tokenizer on these texts is BOS + SentencePiece; with images it tokenises the chunks around
    ``<image>`` separately (``tokenizer_image_token``), without images the whole text. Labels hide BOS
    and ``len(tokenize(prompt + " ")) - 2`` tokens, ``- 2`` for BOS and the trailing space's "▁".
    """

    def tokenize(text: str) -> list[int]:
        first, *rest = text.split(IMAGE_PLACEHOLDER) if has_image else [text]
        ids = [1, *spm(first)]
        for chunk in rest:
            ids += [-200, *spm(chunk)]
        return ids

    ids = [*tokenize(f"{prompt} {answer}"), 2]
    masked = 1 + len(tokenize(prompt + " ")) - 2
    return ids, [IGNORE_INDEX] * masked + ids[masked:]


def collapse_visual(ids: list[int]) -> list[int]:
    """The reference's single -200 for egoexor's run of visual placeholders."""
    return [t for i, t in enumerate(ids) if t != IMAGE_TOKEN_ID or i == 0 or ids[i - 1] != IMAGE_TOKEN_ID]


@pytest.fixture(scope="module")
def llama_dataset(sample_files, merged_file, llama, tiny_data_config):
    sample = next(s for s in load_samples(sample_files["validation"]) if {"ego_frames", "exo_frames"} <= s.modalities)
    config = replace(tiny_data_config, audio_encoder=None, prompt_roles="reference_inference")

    def make(mode, **changes):
        return EgoExorDataset([replace(sample, **changes)], merged_file, llama, config, mode=mode)

    return sample, make


@pytest.mark.parametrize("with_views", [True, False])
def test_training_ids_and_labels_equal_the_reference(llama_dataset, llama, spm, tiny_data_config, with_views):
    sample, make = llama_dataset
    item = make("train", **({} if with_views else {"modalities": frozenset()}))[0]
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    assert ids.count(IMAGE_TOKEN_ID) == (2 * tiny_data_config.tokens_per_branch if with_views else 0)
    visual = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID]
    kept = [i for i in range(len(ids)) if i not in visual[1:]]
    expected = reference_training_ids(spm, chat_prompt(sample.question), sample.answer, has_image=with_views)
    assert ([ids[i] for i in kept], [labels[i] for i in kept]) == expected
    text = llama.decode([t for t in ids if t != IMAGE_TOKEN_ID])
    assert (IMAGE_PLACEHOLDER in text) is not with_views  # without views, read as text


def test_inference_prompt_ids(llama_dataset, spm):
    sample, make = llama_dataset
    prompt = chat_prompt(sample.question, "reference_inference")
    before, after = prompt.split(IMAGE_PLACEHOLDER)
    # with views: the reference's tokenizer_image_token, -200 expanded to the visual tokens
    assert collapse_visual(make("generate")[0]["input_ids"].tolist()) == [1, *spm(before), -200, *spm(after)]
    # without views the reference inserts -200 and encodes zero images; egoexor keeps the training text
    assert make("generate", modalities=frozenset())[0]["input_ids"].tolist() == [1, *spm(prompt)]


@pytest.mark.parametrize(
    "changes",
    [
        {"answer": " <SG> head surgeon,patient,holding </SG>"},
        {"answer": "<SG> head surgeon,patient,holding;  patient,operating table,lyingon </SG>"},
        {"answer": "<SG> head surgeon,patient, ▁holding </SG>"},
        {"question": " " + HUMAN_TURN},
    ],
)
def test_text_with_leading_or_repeated_spaces_is_refused(llama_dataset, changes):
    sample, make = llama_dataset
    with pytest.raises(SampleInputError, match=f"sample {sample.id}: .*starts with a space or holds repeated spaces"):
        make("train", **changes)[0]


def test_unreadable_folder_errors_name_it_and_the_cause(llama_dir, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (damaged / name).write_bytes((llama_dir / name).read_bytes())
    (damaged / "tokenizer.model").write_bytes(b"not a model")
    for folder, cause in (
        (empty, "it holds neither tokenizer.json nor tokenizer.model"),
        (damaged, "its tokenizer.model is not a SentencePiece model"),
        (tmp_path / "missing", "no such folder"),
    ):
        with pytest.raises(OSError, match=f"^cannot load a tokenizer from {re.escape(str(folder))}: {cause}$"):
            load_tokenizer(folder)
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if installed without it
    with pytest.raises(OSError, match=f"^cannot load a tokenizer from {re.escape(str(llama_dir))}: .*sentencepiece"):
        load_tokenizer(llama_dir)
