"""Samples -> items: a torch Dataset over a sample file + the merged HDF5.

The Dataset reads each sample's frame and decides what its item holds: which modalities it keeps
(modality dropout) and which cameras form its ego and exo branches (``egoexor.data.views``). The
processor turns what was read, and the sample's text, into the item's tensors, and the collator pads
items into the batch dict; ``egoexor.data.processor`` holds both and documents the batch keys.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Literal

from torch.utils.data import Dataset

from egoexor.config import DataConfig
from egoexor.data import views
from egoexor.data.audio import AudioCache
from egoexor.data.processor import EgoExorProcessor
from egoexor.data.reader import EgoExorReader, ReadError, Timepoint
from egoexor.data.samples import Sample, SampleInputError, load_samples

Mode = Literal["train", "eval", "generate"]
MODES = ("train", "eval", "generate")

#: The modalities modality dropout may remove, in the order of its draws.
DROPPABLE = ("eye_gaze", "hand_tracking", "point_cloud", "audio")
#: The sample modalities removed by each ``drop_modalities`` name of an extra input (the names of views and
#: branches act on views: :meth:`EgoExorProcessor.images`, :meth:`EgoExorDataset._ego_views`, ``_exo_cameras``).
_REMOVED_BY = {
    "gaze": ("eye_gaze", "eye_gaze_depth"),
    "hands": ("hand_tracking",),
    "audio": ("audio",),
    "point_cloud": ("point_cloud",),
}
#: The reader field of each modality read on its own (every camera frame is always read).
_FIELD_OF_MODALITY = {
    "eye_gaze": "gaze",
    "eye_gaze_depth": "gaze_depth",
    "hand_tracking": "hands",
    "point_cloud": "point_cloud",
    "audio": "audio",
}


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
        self,
        samples: str | os.PathLike | Sequence[Sample],
        hdf5: str | os.PathLike,
        tokenizer,
        config: DataConfig,
        mode: Mode = "train",
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self.samples = load_samples(samples) if isinstance(samples, (str, os.PathLike)) else list(samples)
        self.reader = EgoExorReader(hdf5)
        self.tokenizer = tokenizer
        self.config = config
        self.processor = EgoExorProcessor(tokenizer, config)
        self.mode = mode
        self.seed = seed
        self._audio_cache = AudioCache(config.audio_cache, config.audio_norm) if config.audio_cache else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New view subsets and dropout draws each epoch (the same ones again on a resumed run)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        try:
            return self._item(sample, random.Random(hash((self.seed, self.epoch, index))))
        except (ReadError, SampleInputError):
            raise
        except (OSError, KeyError, ValueError) as error:
            raise SampleInputError(f"sample {sample.id} ({sample.take.path}, frame {sample.frame}): {error}") from error

    def _item(self, sample: Sample, rng: random.Random) -> dict:
        """Every random draw comes from ``rng``, in this order: modality dropout, then the exo views."""
        modalities = self._kept_modalities(sample, rng)
        point = self.reader.read(sample.take, sample.frame, self._fields(modalities))
        ego, exo = self._ego_views(point, modalities), self._exo_cameras(point, modalities, rng)
        item = {**self.processor.ego_inputs(point, ego), **self._exo_inputs(sample, point, exo, modalities)}
        n_visual = (int(len(ego) > 0) + int(len(exo) > 0)) * self.config.tokens_per_branch
        return {**item, **self.processor.tokens(sample, n_visual, generating=self.mode == "generate")}

    def _kept_modalities(self, sample: Sample, rng: random.Random) -> frozenset[str]:
        """The sample's modalities less those modality dropout removes: in training, one draw for each of
        :data:`DROPPABLE` in order, whether or not the sample has it, and those ``drop_modalities`` removes.
        A gaze token needs both gaze and depth: they are kept or dropped together (by the ``eye_gaze`` draw)."""
        rate = self.config.modality_dropout if self.mode == "train" else 0.0
        dropped = {modality for modality in DROPPABLE if rate > 0 and rng.random() < rate}
        removed = {modality for name in self.config.drop_modalities for modality in _REMOVED_BY.get(name, ())}
        kept = sample.modalities - dropped - removed
        if not {"eye_gaze", "eye_gaze_depth"} <= kept:
            kept -= {"eye_gaze", "eye_gaze_depth"}
        return kept

    def _fields(self, modalities: frozenset[str]) -> set[str]:
        """What to read: every camera frame and each kept modality (audio snippets only for the CLAP
        encoder: a cache holds their embeddings already)."""
        fields = {"rgb"} | {field for modality, field in _FIELD_OF_MODALITY.items() if modality in modalities}
        if self._audio_cache is not None or self.config.audio_encoder is None:
            fields.discard("audio")
        return fields

    def _ego_views(self, point: Timepoint, modalities: frozenset[str]) -> list[views.EgoView]:
        """The ego branch: the non-black ego cameras with the gaze, depth and hand rows of each."""
        if "ego_frames" not in modalities or "ego" in self.config.drop_modalities:
            return []
        config, n_depth = self.config, len(point.gaze_depth) if point.gaze_depth is not None else 0
        return views.ego_views(
            point.sources,
            point.rgb,
            point.gaze,
            n_depth,
            point.hands,
            config.row_matching,
            generating=self.mode == "generate",
            selection=config.camera_selection,
        )

    def _exo_cameras(self, point: Timepoint, modalities: frozenset[str], rng: random.Random) -> list[int]:
        """The exo branch: room cameras and the ultrasound screen (a random subset in training)."""
        if point.rgb is None or "exo" in self.config.drop_modalities:
            return []
        config = self.config
        return views.exo_cameras(
            point.sources,
            "exo_frames" in modalities,
            "ultrasound" in modalities,
            config.camera_selection,
            sample_views=self.mode == "train" and config.exo_views == "reference",
            max_views=config.max_exo_views,
            rng=rng,
        )

    def _exo_inputs(self, sample: Sample, point: Timepoint, exo: list[int], modalities: frozenset[str]) -> dict:
        """The exo views, and the frame's audio and point cloud: exo-branch extras, absent without a view."""
        item = {"exo_images": self.processor.images(point, exo, ego=False), "audio": None, "point_cloud": None}
        if exo and "audio" in modalities:
            cached = self._audio_cache.embedding(sample) if self._audio_cache is not None else None
            item["audio"] = self.processor.audio(point.audio, cached)
        if exo and "point_cloud" in modalities:
            item["point_cloud"] = self.processor.point_cloud(point)
        return item
