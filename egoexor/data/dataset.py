"""Samples -> model inputs: a torch Dataset over a sample file + the merged HDF5, and its collator.

One item is one sample; the collator pads a list of items into one batch dict. Any modality may be
missing for any sample of a batch (the reference crashed on such a batch): every per-view or
per-sample input comes with a mask, and absent inputs are zeros under a False mask.

Batch keys (B samples, L tokens, Ve / Vx = most ego / exo views of a sample in the batch,
S = ``image_size``, D_a = audio embedding size, P = points of all clouds together):

=====================  =======================  ==========================================================
key                    dtype, shape             meaning
=====================  =======================  ==========================================================
``input_ids``          int64 [B, L]             prompt (+ answer + EOS) with ``<image>`` expanded into
                                                ``image_token_id`` x (tokens_per_branch x branches present),
                                                or kept as text for a sample with no view (as the reference);
                                                right-padded (training) or left-padded (``generate``)
``attention_mask``     int64 [B, L]             1 on real tokens
``labels``             int64 [B, L]             answer + EOS ids, -100 elsewhere (absent for ``generate``)
``ego_images``         float32 [B, Ve, 3, S, S] CLIP-normalised ego views
``ego_view_mask``      bool [B, Ve]             real ego views; a sample's ego branch is present iff any
``gaze``               float32 [B, Ve, 3]       (x, y, depth) in [0, 1] per ego view
``gaze_mask``          bool [B, Ve]             gaze and depth rows exist for the view (and were not dropped)
``hands``              float32 [B, Ve, 16]      8 (x, y) hand points in [0, 1], untracked points 0
``hand_mask``          bool [B, Ve]             a hand row with any tracked point exists for the view
``exo_images``         float32 [B, Vx, 3, S, S] CLIP-normalised exo views (room cameras, ultrasound screen)
``exo_view_mask``      bool [B, Vx]             real exo views; a sample's exo branch is present iff any
``audio``              float32 [B, D_a]         CLAP embedding of the frame's 1-s audio (D_a = 0: none in batch)
``audio_mask``         bool [B]                 the sample has audio
``point_cloud``        float32 [P, 6]           xyz (m) + rgb (0-1) of every sample's cloud, concatenated
``point_cloud_batch``  int64 [P]                sample index of each point
``point_cloud_mask``   bool [B]                 the sample has a (non-empty) cloud
=====================  =======================  ==========================================================

Extras (gaze, hands, audio, point cloud) belong to a branch and are dropped with it when it has no
view. Text follows the vicuna_v1 template (``egoexor.prompt``); prompt and answer are tokenised
separately and concatenated, so the supervised span is exactly answer + EOS by construction.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from egoexor.config import DataConfig
from egoexor.data import transforms, views
from egoexor.data.audio import ClapAudioEmbedder
from egoexor.data.reader import EgoExorReader, ReadError
from egoexor.data.samples import Sample, load_samples
from egoexor.prompt import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID, chat_prompt

Mode = Literal["train", "eval", "generate"]
MODES = ("train", "eval", "generate")


class SampleInputError(ValueError):
    """A sample's data cannot become model input; the message names the sample and its frame."""


class AudioCache:
    """Per-frame audio embeddings written by ``python -m egoexor.data.precompute_audio``."""

    DATASET = "clap"

    def __init__(self, path: str | os.PathLike, audio_norm: str) -> None:
        self.path = Path(path)
        self._reader = EgoExorReader(self.path)  # checks that it is an HDF5 file
        with h5py.File(self.path, "r") as h5:
            if h5.attrs.get("audio_norm") != audio_norm:
                raise ValueError(
                    f"{self.path}: embeddings were computed with audio_norm={h5.attrs.get('audio_norm')!r}, "
                    f"the configuration asks for {audio_norm!r}"
                )

    def embedding(self, sample: Sample) -> np.ndarray:
        path = f"{sample.take.path}/audio/{self.DATASET}"
        if path not in self._reader.h5:
            raise ReadError(f"{self.path}: no embeddings for {sample.take.path}")
        return self._reader.h5[path][sample.frame]


class EgoExorDataset(Dataset):
    """Model inputs for each sample of a sample file.

    ``mode``: ``train`` (random exo views, modality dropout, answer supervised), ``eval`` (every
    view, answer supervised: teacher-forced evaluation), ``generate`` (every view, prompt only).
    With ``row_matching: reference``, ``generate`` takes depth and hand rows by the reference's
    inference rule and the other modes by its training rule (``eval`` has no counterpart in the
    reference, which never evaluated teacher-forced; it mirrors training, as its prompt does).
    The HDF5 file is opened lazily in each worker. Random choices are drawn from a generator
    seeded by ``seed``, the epoch and the sample index, so an item is the same in any worker and on
    resume.
    """

    def __init__(
        self, samples: str | os.PathLike | Sequence[Sample], hdf5: str | os.PathLike, tokenizer,
        config: DataConfig, mode: Mode = "train", seed: int = 0,
    ) -> None:  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self.samples = load_samples(samples) if isinstance(samples, (str, os.PathLike)) else list(samples)
        self.reader = EgoExorReader(hdf5)
        self.tokenizer = tokenizer
        self.config = config
        self.mode = mode
        self.seed = seed
        self._audio_cache = AudioCache(config.audio_cache, config.audio_norm) if config.audio_cache else None
        self._embedder: ClapAudioEmbedder | None = None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New view subsets and dropout draws each epoch (the same ones again on a resumed run)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _embed_audio(self, sample: Sample, snippet: np.ndarray | None) -> np.ndarray | None:
        if self._audio_cache is not None:
            return self._audio_cache.embedding(sample)
        if snippet is None or self.config.audio_encoder is None:
            return None
        if self._embedder is None:  # loaded lazily: once per worker process
            self._embedder = ClapAudioEmbedder(self.config.audio_encoder, self.config.audio_norm)
        return self._embedder([snippet])[0]

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        try:
            return self._item(sample, random.Random(hash((self.seed, self.epoch, index))))
        except (ReadError, SampleInputError):
            raise
        except (OSError, KeyError, ValueError) as error:
            raise SampleInputError(f"sample {sample.id} ({sample.take.path}, frame {sample.frame}): {error}") from error

    def _item(self, sample: Sample, rng: random.Random) -> dict:
        config, available, training = self.config, sample.modalities, self.mode == "train"

        def kept(modality: str) -> bool:
            """Available, and not dropped by modality dropout (training only; one draw each)."""
            dropped = training and config.modality_dropout > 0 and rng.random() < config.modality_dropout
            return modality in available and not dropped

        # A gaze token needs both gaze and depth: they are kept or dropped together (one draw).
        use_gaze = use_depth = kept("eye_gaze") and "eye_gaze_depth" in available
        use_hands = kept("hand_tracking")
        use_cloud = kept("point_cloud")
        use_audio = kept("audio") and (self._audio_cache is not None or config.audio_encoder is not None)
        fields = {"rgb"} | {name for name, wanted in (
            ("gaze", use_gaze), ("gaze_depth", use_depth), ("hands", use_hands), ("point_cloud", use_cloud),
            ("audio", use_audio and self._audio_cache is None),
        ) if wanted}  # fmt: skip
        point = self.reader.read(sample.take, sample.frame, fields)

        # Ego branch: views and their per-device rows.
        ego = []
        if "ego_frames" in available:
            n_depth = len(point.gaze_depth) if point.gaze_depth is not None else 0
            ego = views.ego_views(point.sources, point.rgb, point.gaze, n_depth, point.hands, config.row_matching,
                                  generating=self.mode == "generate", selection=config.camera_selection)  # fmt: skip
        gaze_xy = depth = hands = tracked = None
        if point.gaze is not None:
            gaze_xy = transforms.gaze_rows(point.gaze, sample.take, config.gaze_scale, config.gaze_fixation)
        if point.gaze_depth is not None:
            depth = transforms.gaze_depth(point.gaze_depth, config.depth_scale)
        if point.hands is not None:
            hands, tracked = transforms.hand_rows(point.hands, config.hand_scale)
        n_ego = len(ego)
        item = {
            "ego_images": self._images(point, [v.camera for v in ego], ego=True),
            "gaze": torch.zeros(n_ego, 3), "gaze_mask": torch.zeros(n_ego, dtype=torch.bool),
            "hands": torch.zeros(n_ego, 16), "hand_mask": torch.zeros(n_ego, dtype=torch.bool),
        }  # fmt: skip
        for v, view in enumerate(ego):
            if gaze_xy is not None and depth is not None and view.gaze_row is not None and view.depth_row is not None:
                item["gaze"][v] = torch.from_numpy(np.append(gaze_xy[view.gaze_row], depth[view.depth_row]))
                item["gaze_mask"][v] = True
            if hands is not None and view.hand_row is not None and tracked[view.hand_row]:
                item["hands"][v] = torch.from_numpy(hands[view.hand_row])
                item["hand_mask"][v] = True

        # Exo branch: room cameras and the ultrasound screen, then audio and point cloud.
        exo = views.exo_cameras(
            point.sources, "exo_frames" in available, "ultrasound" in available, config.camera_selection,
            sample_views=training and config.exo_views == "reference", max_views=config.max_exo_views, rng=rng,
        ) if point.rgb is not None else []  # fmt: skip
        item["exo_images"] = self._images(point, exo, ego=False)
        item["audio"] = item["point_cloud"] = None
        if exo and use_audio:
            embedding = self._embed_audio(sample, point.audio)
            item["audio"] = None if embedding is None else torch.from_numpy(np.asarray(embedding, np.float32))
        if exo and use_cloud and point.point_coordinates is not None:
            cloud = transforms.point_cloud(point.point_coordinates, point.point_colors)
            if not np.isfinite(cloud).all():
                raise SampleInputError(
                    f"sample {sample.id} ({sample.take.path}, frame {sample.frame}): point cloud has NaN or inf values"
                )
            item["point_cloud"] = torch.from_numpy(cloud) if len(cloud) else None

        branches = int(n_ego > 0) + int(len(exo) > 0)
        item.update(self._tokens(sample, branches * config.tokens_per_branch))
        return item

    def _images(self, point, cameras: list[int], ego: bool) -> torch.Tensor:
        """The views of one branch (``ego`` or exo: the reference's flips go by branch)."""
        size, rescale = self.config.image_size, self.config.rescale_dark_frames
        images = torch.empty(len(cameras), 3, size, size)
        for view, camera in enumerate(cameras):
            flip = transforms.is_flipped(point.sources[camera], ego, self.config.flip_rule)
            transforms.image(point.rgb[camera], size, flip, rescale, out=images[view].numpy())
        return images

    def _tokens(self, sample: Sample, n_visual: int) -> dict:
        """Prompt ids (visual placeholders expanded) and, unless generating, answer + EOS with labels.

        A sample without any view keeps ``<image>`` in its prompt as plain text: the reference trains
        on that (``preprocess_v1`` with ``has_image=False``). Its inference instead inserts the
        placeholder and feeds an all-zero image per branch, visual tokens the model never met with
        such samples in training; egoexor reads the sample the same way in every mode.

        Each text segment is tokenised on its own; none may start with a space or hold repeated
        spaces (``▁`` counts as one), where transformers 5's LLaMA tokenizer and the reference's
        SentencePiece one give different ids.
        """
        tokenizer = self.tokenizer
        roles = self.config.prompt_roles if self.mode == "generate" else "train"
        prompt = chat_prompt(sample.question, roles)
        before, placeholder, after = prompt.partition(IMAGE_PLACEHOLDER) if n_visual else (prompt, "", "")
        for segment in (before, after, sample.answer if self.mode != "generate" else ""):
            spaced = segment.replace("▁", " ")
            at = 0 if spaced.startswith(" ") else spaced.find("  ")
            if at >= 0:
                raise SampleInputError(
                    f"sample {sample.id}: the text {segment[max(at - 20, 0) : at + 20]!r} starts with a space or "
                    "holds repeated spaces, where transformers' LLaMA tokenizer gives other ids than the reference's"
                )
        ids = [tokenizer.bos_token_id, *tokenizer(before, add_special_tokens=False).input_ids]
        if placeholder:
            ids += [IMAGE_TOKEN_ID] * n_visual + tokenizer(after, add_special_tokens=False).input_ids
        if len(ids) > self.config.model_max_length:
            raise SampleInputError(
                f"sample {sample.id}: the prompt with its {n_visual} visual tokens is {len(ids)} tokens long, "
                f"over model_max_length={self.config.model_max_length}"
            )
        if self.mode == "generate":
            return {"input_ids": torch.tensor(ids)}
        answer = [*tokenizer(sample.answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        answer = answer[: self.config.model_max_length - len(ids)]  # the reference truncates the end too
        return {
            "input_ids": torch.tensor(ids + answer),
            "labels": torch.tensor([IGNORE_INDEX] * len(ids) + answer),
        }


class Collator:
    """Pads a list of items into the batch dict documented in this module."""

    def __init__(self, pad_token_id: int, padding_side: Literal["right", "left"] = "right") -> None:
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def _pad_tokens(self, sequences: list[torch.Tensor], value: int) -> torch.Tensor:
        length = max(len(s) for s in sequences)
        out = torch.full((len(sequences), length), value, dtype=torch.long)
        for b, s in enumerate(sequences):
            if self.padding_side == "right":
                out[b, : len(s)] = s
            else:
                out[b, length - len(s) :] = s
        return out

    @staticmethod
    def _pad_views(items: list[dict], key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack [V_b, ...] tensors into [B, V, ...] with zeros, and a [B, V] mask of real views."""
        tensors = [item[key] for item in items]
        most = max(len(t) for t in tensors)
        out = tensors[0].new_empty((len(tensors), most, *tensors[0].shape[1:]))
        mask = torch.zeros(len(tensors), most, dtype=torch.bool)
        for b, t in enumerate(tensors):
            out[b, : len(t)] = t
            out[b, len(t) :] = 0  # only the padding is zero-filled: image batches are large
            mask[b, : len(t)] = True
        return out, mask

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        ids = [item["input_ids"] for item in items]
        batch = {
            "input_ids": self._pad_tokens(ids, self.pad_token_id),
            "attention_mask": self._pad_tokens([torch.ones_like(i) for i in ids], 0),
        }
        if "labels" in items[0]:
            batch["labels"] = self._pad_tokens([item["labels"] for item in items], IGNORE_INDEX)
        batch["ego_images"], batch["ego_view_mask"] = self._pad_views(items, "ego_images")
        for key in ("gaze", "gaze_mask", "hands", "hand_mask"):
            batch[key] = self._pad_views(items, key)[0]
        batch["exo_images"], batch["exo_view_mask"] = self._pad_views(items, "exo_images")

        audio = [item["audio"] for item in items]
        dim = next((len(a) for a in audio if a is not None), 0)
        batch["audio"] = torch.stack([a if a is not None else torch.zeros(dim) for a in audio])
        batch["audio_mask"] = torch.tensor([a is not None for a in audio])

        clouds = [item["point_cloud"] for item in items]
        present = [c for c in clouds if c is not None]
        batch["point_cloud"] = torch.cat(present) if present else torch.zeros(0, 6)
        batch["point_cloud_batch"] = torch.cat(
            [torch.full((len(c),), b, dtype=torch.long) for b, c in enumerate(clouds) if c is not None]
        ) if present else torch.zeros(0, dtype=torch.long)  # fmt: skip
        batch["point_cloud_mask"] = torch.tensor([c is not None for c in clouds])
        return batch
