"""Tokenizers: the LLM's own for real runs, a small LLaMA-style one built locally for tests and the demo.

The local tokenizer behaves like LLaMA's where it matters here: byte-fallback BPE, ``▁`` marks a
word start and is prepended to the text, ``<unk>``/``<s>``/``</s>`` are ids 0/1/2 and BOS is added.
It is trained on the prompt, the system text and every answer form of the vocabulary, so answers
tokenize into a few dozen pieces as they do with the real tokenizer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase
from transformers.models.auto.tokenization_auto import get_tokenizer_config

from egoexor import vocab
from egoexor.prompt import HUMAN_TURN, ROLES, SYSTEM

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
_BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))


def _corpus() -> list[str]:
    names = [vocab.answer_form(n) for n in (*vocab.ENTITIES, *vocab.PREDICATES)]
    roles = [f"{user}: {assistant}:" for user, assistant in ROLES.values()]
    return [HUMAN_TURN, SYSTEM, *roles, "<SG> </SG> , ; .", *names, " ".join(names)]


def build_tiny_tokenizer(vocab_size: int = 600) -> LlamaTokenizer:
    """A small LLaMA-style tokenizer trained on the project's own text (no download)."""
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, *_BYTE_TOKENS], show_progress=False
    )
    draft = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    draft.train_from_iterator(_corpus() * 4, trainer)
    # Rebuild so that only <unk>, <s>, </s> are special: byte tokens must be ordinary vocabulary.
    model = json.loads(draft.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Tokenizer(models.BPE(model["vocab"], merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return LlamaTokenizer(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True
    )


def save_tiny_tokenizer(directory: str | os.PathLike) -> Path:
    """Build the tiny tokenizer and save it where ``AutoTokenizer.from_pretrained`` finds it."""
    build_tiny_tokenizer().save_pretrained(directory)
    return Path(directory)


def load_tokenizer(name_or_path: str | os.PathLike, model_max_length: int = 2048) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer from a hub name or a local folder, with the reference's settings.

    A folder whose ``tokenizer_config.json`` names ``LlamaTokenizer`` gets that class. AutoTokenizer
    would not give it to LLaVA-1.5 checkpoints such as ``liuhaotian/llava-v1.5-7b``: their
    ``config.json`` says ``model_type: llava``, for which transformers 5 ignores the declared class
    and reads ``tokenizer.model`` with a generic converter that drops the "▁" SentencePiece puts
    before the text, so every segment would begin with another id than the reference's.

    transformers 5 has no SentencePiece-backed LlamaTokenizer any more: this one is the fast
    (``tokenizers``) conversion of ``tokenizer.model``. It equals SentencePiece, hence the
    reference's slow tokenizer, on text that neither starts with a space nor holds repeated
    spaces, which is all the text egoexor tokenises (``EgoExorProcessor`` checks it).

    The pad token is ``<unk>`` (id 0) as in the reference; right padding for training (the
    generation collator pads on the left itself).
    """
    source = str(name_or_path)
    problem = _folder_json_problem(Path(source)) if Path(source).is_dir() else None
    if problem:
        raise OSError(f"cannot load a tokenizer from {source}: {problem}")
    try:
        declared = get_tokenizer_config(source).get("tokenizer_class") or ""
        loader = LlamaTokenizer if declared.removesuffix("Fast") == "LlamaTokenizer" else AutoTokenizer
        tokenizer = loader.from_pretrained(source, model_max_length=model_max_length)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot load a tokenizer from {source}: {_cause(source, error)}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


#: The JSON files of a tokenizer folder that transformers reads as objects (its messages for a file of
#: another kind are tracebacks: "argument after ** must be a mapping, not list").
_FOLDER_JSON = ("config.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


def _folder_json_problem(folder: Path) -> str | None:
    """What is wrong with the first of a folder's :data:`_FOLDER_JSON` files that is no JSON object, or None."""
    for name in _FOLDER_JSON:
        if not (folder / name).is_file():
            continue
        try:
            content = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"{name} is not readable JSON ({' '.join(str(error).split())})"
        if not isinstance(content, dict):
            return f"{name} holds a JSON {type(content).__name__}, expected an object"
    return None


def _cause(source: str, error: Exception) -> str:
    """Why loading failed, in one line.

    Without a ``tokenizer.json``, transformers reads ``tokenizer.model`` with sentencepiece (which
    needs protobuf); whatever goes wrong there (a package missing, a damaged file, no file at all),
    it ends up saying that tiktoken is required, which misleads for a SentencePiece model.
    """
    folder = Path(source)
    if not folder.exists() and (folder.is_absolute() or source.startswith(".")):
        return "no such folder"
    message = " ".join(str(error).split()) or type(error).__name__
    if "tiktoken" not in message:
        return message
    try:
        import sentencepiece  # noqa: F401
        from google import protobuf  # noqa: F401
    except ImportError:
        return "its tokenizer.model needs the sentencepiece and protobuf packages: pip install sentencepiece protobuf"
    if not folder.is_dir():
        return message
    if not (folder / "tokenizer.model").is_file():
        return "it holds neither tokenizer.json nor tokenizer.model"
    return "its tokenizer.model is not a SentencePiece model"
