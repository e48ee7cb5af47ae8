"""Read arrays -> model inputs, as transformers' ``LlavaProcessor`` + data collator: what the model reads.

:class:`EgoExorProcessor` turns one sample's read arrays into the tensors of its item and its text
into token ids; :class:`Collator` pads a list of items into one batch dict. Which views and
modalities a sample uses, and reading them, is the Dataset's part (``egoexor.data.dataset``). Any
modality may be missing for any sample of a batch (the reference crashed on such a batch): every
per-view or per-sample input comes with a mask, and absent inputs are zeros under a False mask.

Batch keys (B samples, L tokens, Ve / Vx = most ego / exo views of a sample in the batch,
S = ``image_size``, D_a = audio embedding size, P = points of all clouds together):

=====================  =======================  ==========================================================
key                    dtype, shape             meaning
=====================  =======================  ==========================================================
``input_ids``          int64 [B, L]             prompt (+ answer + EOS) with ``<image>`` expanded into
                                                ``image_token_id`` x (tokens_per_branch + appended_tokens
                                                of each branch present), or kept as text for a sample
                                                with no view (as the reference);
                                                right-padded (training) or left-padded (``generate``)
``attention_mask``     int64 [B, L]             1 on real tokens
``labels``             int64 [B, L]             answer + EOS ids, -100 elsewhere (absent for ``generate``)
``ego_images``         float32 [B, Ve, 3, S, S] CLIP-normalised ego views
``ego_view_mask``      bool [B, Ve]             real ego views; a sample's ego branch is present iff any
``ego_view_kinds``     int64 [B, Ve]            each view's camera kind, an index into ``modalities.camera_kinds``
``gaze``               float32 [B, Ve, 3]       (x, y, depth) in [0, 1] per ego view
``gaze_mask``          bool [B, Ve]             gaze and depth rows exist for the view (and were not dropped)
``hands``              float32 [B, Ve, 16]      8 (x, y) hand points in [0, 1], untracked points 0
``hand_mask``          bool [B, Ve]             a hand row with any tracked point exists for the view
``exo_images``         float32 [B, Vx, 3, S, S] CLIP-normalised exo views (room cameras, ultrasound screen)
``exo_view_mask``      bool [B, Vx]             real exo views; a sample's exo branch is present iff any
``exo_view_kinds``     int64 [B, Vx]            each view's camera kind (room cameras 0, ultrasound screen 1)
``audio``              float32 [B, D_a]         CLAP embedding of the frame's 1-s audio (D_a = 0: none in batch)
``audio_mask``         bool [B]                 the sample has audio
``point_cloud``        float32 [P, 6]           xyz (m) + rgb (0-1) of every sample's cloud, concatenated
``point_cloud_batch``  int64 [P]                sample index of each point
``point_cloud_mask``   bool [B]                 the sample has a (non-empty) cloud
=====================  =======================  ==========================================================

An item holds the same keys for one sample, unpadded (``input_ids`` [L], ``ego_images``
[V_e, 3, S, S], ``gaze_mask`` [V_e], ``audio`` [D_a] or None, ``point_cloud`` [N, 6] or None, ...), less
what the collator derives (``attention_mask``, ``ego_view_mask``, ``exo_view_mask``, ``audio_mask``,
``point_cloud_batch``, ``point_cloud_mask``). :func:`batching` says how each input becomes its batch
keys (each input's ``batching()``, ``egoexor.modalities``): a plug-in's input adds its own keys.

Extras (gaze, hands, audio, point cloud) belong to a branch and are dropped with it when it has no
view. Text follows the vicuna_v1 template (``egoexor.prompt``); prompt and answer are
tokenised separately and concatenated, so the supervised span is exactly answer + EOS by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from egoexor import modalities, vocab
from egoexor.config import DataConfig
from egoexor.data import transforms
from egoexor.data.reader import Timepoint
from egoexor.data.samples import Sample, SampleInputError
from egoexor.memory import MEMORY_START, fit_memory
from egoexor.modalities.base import Batching, ViewStack
from egoexor.prompt import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID, chat_prompt


def _view_modality(source: str, ego: bool) -> str:
    """The ``drop_modalities`` name that blanks a view of a branch (``ego``, else exo)."""
    return "ego_frames" if ego else "ultrasound" if source == vocab.ULTRASOUND_SOURCE else "exo_frames"


class EgoExorProcessor:
    """One sample's read arrays and text -> the tensors of its item (numbers by ``egoexor.data.transforms``).

    Holds no file: the Dataset reads, picks the views and hands their arrays over; each extra input's
    tensors are its own module's (``egoexor.modalities``).
    """

    def __init__(self, tokenizer, config: DataConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config

    def images(self, point: Timepoint, cameras: Sequence[int], ego: bool) -> torch.Tensor:
        """The views of one branch (``ego`` or exo: the reference's flips go by branch)."""
        size, rescale = self.config.image_size, self.config.rescale_dark_frames
        images = torch.empty(len(cameras), 3, size, size)
        for view, camera in enumerate(cameras):
            if _view_modality(point.sources[camera], ego) in self.config.drop_modalities:
                images[view] = 0  # the view stays (its gaze and hand tokens too) but shows nothing
                continue
            flip = transforms.is_flipped(point.sources[camera], ego, self.config.flip_rule)
            transforms.image(point.rgb[camera], size, flip, rescale, out=images[view].numpy())
        return images

    @staticmethod
    def view_kinds(point: Timepoint, cameras: Sequence[int], ego: bool) -> torch.Tensor:
        """Each view's camera kind, by index among its branch's (``modalities.camera_kinds``)."""
        kinds = modalities.camera_kinds("ego" if ego else "exo")
        return torch.tensor([kinds.index(_view_modality(point.sources[c], ego)) for c in cameras], dtype=torch.long)

    def tokens(self, sample: Sample, n_visual: int, generating: bool) -> dict[str, torch.Tensor]:
        """Prompt ids (visual placeholders expanded) and, unless ``generating``, answer + EOS with labels.

        A sample without any view keeps ``<image>`` in its prompt as plain text: the reference trains
        on that (``preprocess_v1`` with ``has_image=False``). Its inference instead inserts the
        placeholder and feeds an all-zero image per branch, visual tokens the model never met with
        such samples in training; egoexor reads the sample the same way in every mode.

        A prompt with scene-graph memory that would not fit ``model_max_length`` (with the answer + EOS
        when training) loses its oldest memory entries until it fits (:func:`egoexor.memory.fit_memory`).
        """
        tokenizer, limit = self.tokenizer, self.config.model_max_length
        answer = (
            None
            if generating
            else [*tokenizer(sample.answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        )
        reserve = 0 if answer is None else len(answer)
        ids = self._prompt_ids(sample, sample.question, n_visual, generating)
        if len(ids) + reserve > limit and MEMORY_START in sample.question:
            question = fit_memory(
                sample.question, lambda q: len(self._prompt_ids(sample, q, n_visual, generating)) + reserve <= limit
            )
            ids = self._prompt_ids(sample, question, n_visual, generating)
        if len(ids) > limit:
            raise SampleInputError(
                f"sample {sample.id}: the prompt with its {n_visual} visual tokens is {len(ids)} tokens long, "
                f"over model_max_length={limit}"
            )
        if answer is None:
            return {"input_ids": torch.tensor(ids)}
        answer = answer[: limit - len(ids)]  # the reference truncates the end too
        return {"input_ids": torch.tensor(ids + answer), "labels": torch.tensor([IGNORE_INDEX] * len(ids) + answer)}

    def _prompt_ids(self, sample: Sample, question: str, n_visual: int, generating: bool) -> list[int]:
        tokenizer = self.tokenizer
        prompt = chat_prompt(question, self.config.prompt_roles if generating else "train")
        before, placeholder, after = prompt.partition(IMAGE_PLACEHOLDER) if n_visual else (prompt, "", "")
        _check_spacing(sample, (before, after, "" if generating else sample.answer))
        ids = [tokenizer.bos_token_id, *tokenizer(before, add_special_tokens=False).input_ids]
        if placeholder:
            ids += [IMAGE_TOKEN_ID] * n_visual + tokenizer(after, add_special_tokens=False).input_ids
        return ids


def _check_spacing(sample: Sample, segments: Sequence[str]) -> None:
    """Refuse a text segment that starts with a space or holds repeated spaces (``▁`` counts as one).

    Each segment is tokenised on its own, and on such text transformers 5's LLaMA tokenizer and the
    reference's SentencePiece one give different ids.
    """
    for segment in segments:
        spaced = segment.replace("▁", " ")
        at = 0 if spaced.startswith(" ") else spaced.find("  ")
        if at >= 0:
            raise SampleInputError(
                f"sample {sample.id}: the text {segment[max(at - 20, 0) : at + 20]!r} starts with a space or "
                "holds repeated spaces, where transformers' LLaMA tokenizer gives other ids than the reference's"
            )


def batching() -> dict[str, Batching]:
    """How the collator batches each item input (all but the token ids), in batch-key order: each branch's
    views, then its extra inputs' keys (each input's ``batching()``, ``egoexor.modalities``)."""
    rules: dict[str, Batching] = {}
    for branch in ("ego", "exo"):
        rules[f"{branch}_images"] = ViewStack(mask=f"{branch}_view_mask")
        rules[f"{branch}_view_kinds"] = ViewStack()
        for modality in modalities.token_inputs(branch):
            rules.update(modality.batching())
    return rules


class Collator:
    """Pads a list of items into the batch dict documented in this module."""

    def __init__(self, pad_token_id: int, padding_side: Literal["right", "left"] = "right") -> None:
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.batching = batching()

    def _pad_tokens(self, sequences: list[torch.Tensor], value: int) -> torch.Tensor:
        length = max(len(s) for s in sequences)
        out = torch.full((len(sequences), length), value, dtype=torch.long)
        for b, s in enumerate(sequences):
            if self.padding_side == "right":
                out[b, : len(s)] = s
            else:
                out[b, length - len(s) :] = s
        return out

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        ids = [item["input_ids"] for item in items]
        batch = {
            "input_ids": self._pad_tokens(ids, self.pad_token_id),
            "attention_mask": self._pad_tokens([torch.ones_like(i) for i in ids], 0),
        }
        if "labels" in items[0]:
            batch["labels"] = self._pad_tokens([item["labels"] for item in items], IGNORE_INDEX)
        for key, rule in self.batching.items():
            batch.update(rule(key, [item[key] for item in items]))
        return batch
