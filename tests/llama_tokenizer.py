"""Rebuild ``liuhaotian/llava-v1.5-7b``'s tokenizer folder, offline, from llama.cpp's GGUF copy of the LLaMA vocabulary.

The GGUF file (``data/llama-vocab/``) holds the 32,000 pieces of Meta's LLaMA SentencePiece model with
their scores and types; with the trainer and normaliser settings Meta's ``tokenizer.model`` records
(https://github.com/karpathy/llama2.c/blob/master/doc/train_llama_tokenizer.md prints them), they
serialise back into that very file. The tokenizer JSON files are what llava-v1.5-7b ships beside it
(written by transformers 4.31 when LLaVA saved its tokenizer), and ``config.json`` holds the model
type that steers transformers 5's AutoTokenizer.

The module depends only on ``gguf``, ``sentencepiece`` (its protobuf module) and the standard library,
so it also runs in the reference's transformers 4.31 environment to produce the reference's ids::

    python tests/llama_tokenizer.py OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import gguf
from sentencepiece import sentencepiece_model_pb2

VOCAB_DIR = Path(__file__).resolve().parent / "data" / "llama-vocab"
GGUF_FILE = VOCAB_DIR / "ggml-vocab-llama-spm.gguf"

#: Meta's trainer settings, recorded in its tokenizer.model. Only ``model_type``, ``byte_fallback``,
#: ``split_digits``, the special ids and ``unk_surface`` change encoding; the rest is stored so that the
#: file is byte-for-byte Meta's.
_TRAINER_SPEC = {
    "model_prefix": "spm_model_32k_200M_charcov099995_allowWSO__v2",
    "model_type": sentencepiece_model_pb2.TrainerSpec.BPE,
    "vocab_size": 32000,
    "self_test_sample_size": 0,
    "input_format": "text",
    "character_coverage": 0.99995,
    "input_sentence_size": 200000000,
    "seed_sentencepiece_size": 1000000,
    "shrinking_factor": 0.75,
    "num_threads": 80,
    "num_sub_iterations": 2,
    "max_sentence_length": 4192,
    "shuffle_input_sentence": True,
    "max_sentencepiece_length": 16,
    "split_by_unicode_script": True,
    "split_by_whitespace": True,
    "split_by_number": True,
    "treat_whitespace_as_suffix": False,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    "vocabulary_output_piece_score": True,
    "hard_vocab_limit": True,
    "use_all_vocab": False,
    "byte_fallback": True,
    "required_chars": "",
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "unk_surface": " \u2047 ",
    "unk_piece": "<unk>",
    "bos_piece": "<s>",
    "eos_piece": "</s>",
    "pad_piece": "<pad>",
    "train_extremely_large_corpus": False,
    "enable_differential_privacy": False,
    "differential_privacy_noise_level": 0.0,
    "differential_privacy_clipping_threshold": 0,
}
_TRAINER_INPUT = "/large_experiments/theorem/datasets/MERGED/all.test1.merged"

#: No normalisation, a "▁" prepended to the text, spaces kept as they are.
_NORMALIZER_SPEC = {
    "name": "identity",
    "precompiled_charsmap": b"",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "normalization_rule_tsv": "",
}

_NORMAL = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL


def _special(content: str) -> dict:
    """A special token as transformers 4.31 wrote it: matched verbatim, never normalised or stripped."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


#: llava-v1.5-7b's tokenizer_config.json: the slow LlamaTokenizer, BOS added, no EOS, the non-legacy
#: handling of text after special tokens, 2048 tokens, right padding and no pad token of its own.
TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": {"__type": "AddedToken", **_special("<s>")},
    "clean_up_tokenization_spaces": False,
    "eos_token": {"__type": "AddedToken", **_special("</s>")},
    "legacy": False,
    "model_max_length": 2048,
    "pad_token": None,
    "padding_side": "right",
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": {"__type": "AddedToken", **_special("<unk>")},
}

#: llava-v1.5-7b's special_tokens_map.json: LLaVA's training set pad = unk before saving.
SPECIAL_TOKENS_MAP = {
    "bos_token": _special("<s>"),
    "eos_token": _special("</s>"),
    "pad_token": "<unk>",
    "unk_token": _special("<unk>"),
}

#: The part of llava-v1.5-7b's config.json that decides which tokenizer class transformers 5's
#: AutoTokenizer picks (``llava`` overrides the declared class); no weights come with this folder.
MODEL_CONFIG = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava"}


def _array(field) -> list:
    """The raw parts of a GGUF array's items (``ReaderField.data`` indexes them; works with every gguf version)."""
    return [field.parts[index] for index in field.data]


def sentencepiece_model(gguf_file: str | os.PathLike = GGUF_FILE) -> bytes:
    """The serialised SentencePiece ModelProto of the GGUF's vocabulary (Meta's ``tokenizer.model``).

    llama.cpp's token types are SentencePiece's piece types; like sentencepiece's trainer, only
    non-normal types are written, and every score is.
    """
    fields = gguf.GGUFReader(gguf_file).fields
    pieces = [bytes(part).decode("utf-8") for part in _array(fields["tokenizer.ggml.tokens"])]
    scores = [float(part[0]) for part in _array(fields["tokenizer.ggml.scores"])]
    types = [int(part[0]) for part in _array(fields["tokenizer.ggml.token_type"])]
    model = sentencepiece_model_pb2.ModelProto()
    for piece, score, kind in zip(pieces, scores, types, strict=True):
        entry = model.pieces.add(piece=piece, score=score)
        if kind != _NORMAL:
            entry.type = kind
    model.trainer_spec.input.append(_TRAINER_INPUT)
    for name, value in _TRAINER_SPEC.items():
        setattr(model.trainer_spec, name, value)
    for name, value in _NORMALIZER_SPEC.items():
        setattr(model.normalizer_spec, name, value)
    return model.SerializeToString()


def write_tokenizer_folder(directory: str | os.PathLike, gguf_file: str | os.PathLike = GGUF_FILE) -> Path:
    """Write ``tokenizer.model``, ``tokenizer_config.json``, ``special_tokens_map.json`` and ``config.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(sentencepiece_model(gguf_file))
    files = {
        "tokenizer_config.json": TOKENIZER_CONFIG,
        "special_tokens_map.json": SPECIAL_TOKENS_MAP,
        "config.json": MODEL_CONFIG,
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write the tokenizer files into (created if missing)")
    parser.add_argument("--gguf", default=str(GGUF_FILE), help="the GGUF vocabulary file (default: %(default)s)")
    args = parser.parse_args(argv)
    print(write_tokenizer_folder(args.out_dir, args.gguf))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
