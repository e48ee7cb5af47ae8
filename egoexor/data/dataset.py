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

from egoexor import modalities
from egoexor.config import DataConfig
from egoexor.data import views
from egoexor.data.processor import EgoExorProcessor
from egoexor.data.reader import EgoExorReader, ReadError, Timepoint
from egoexor.data.samples import Sample, SampleInputError, load_samples
from egoexor.modalities.base import InputContext

Mode = Literal["train", "eval", "generate"]
MODES = ("train", "eval", "generate")


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
        self.inputs = modalities.token_inputs()
        self._state: dict = {}  # what the inputs keep (a CLAP encoder, an audio cache), per worker after a fork
        for modality in self.inputs:
            modality.prepare(config, self._state)
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
        kept = self._kept_inputs(sample, rng)
        point = self.reader.read(sample.take, sample.frame, self._fields(kept))
        ego, exo = self._ego_views(point, sample.modalities), self._exo_cameras(point, sample.modalities, rng)
        ego_cameras = [view.camera for view in ego]
        item = {
            "ego_images": self.processor.images(point, ego_cameras, ego=True),
            "ego_view_kinds": self.processor.view_kinds(point, ego_cameras, ego=True),
            "exo_images": self.processor.images(point, exo, ego=False),
            "exo_view_kinds": self.processor.view_kinds(point, exo, ego=False),
        }
        context = InputContext(self.config, sample, self._state)
        for modality in self.inputs:
            views = ego if modality.branch == "ego" else exo
            item.update(modality.item(point, views, modality.name in kept and bool(views), context))
        per_branch = [self.config.tokens_per_branch + appended for appended in self.config.appended_tokens]
        n_visual = per_branch[0] * (len(ego) > 0) + per_branch[1] * (len(exo) > 0)
        return {**item, **self.processor.tokens(sample, n_visual, generating=self.mode == "generate")}

    def _kept_inputs(self, sample: Sample, rng: random.Random) -> frozenset[str]:
        """The extra inputs the item keeps: those whose every group the sample lists, less those modality
        dropout removes and those ``drop_modalities`` removes. In training, modality dropout draws once for
        each built-in input in ``modalities.dropout_order()`` (the reference's: whether or not the sample has
        it), and once for a plug-in's input where the sample has it (so existing data draws as before)."""
        rate = self.config.modality_dropout if self.mode == "train" else 0.0
        dropped = set()
        if rate > 0:
            for modality in modalities.dropout_order():
                if (modality.builtin or set(modality.groups) <= sample.modalities) and rng.random() < rate:
                    dropped.add(modality.name)
        return frozenset(
            modality.name
            for modality in self.inputs
            if set(modality.groups) <= sample.modalities
            and modality.name not in dropped
            and modality.name not in self.config.drop_modalities
        )

    def _fields(self, kept: frozenset[str]) -> set[str]:
        """What to read: every camera frame and what each kept input needs."""
        return {"rgb"}.union(*(modality.fields(self.config) for modality in self.inputs if modality.name in kept))

    def _ego_views(self, point: Timepoint, groups: frozenset[str]) -> list[views.EgoView]:
        """The ego branch: the non-black ego cameras."""
        if "ego_frames" not in groups or "ego" in self.config.drop_modalities:
            return []
        return views.ego_views(
            point.sources, point.rgb, generating=self.mode == "generate", selection=self.config.camera_selection
        )

    def _exo_cameras(self, point: Timepoint, groups: frozenset[str], rng: random.Random) -> list[int]:
        """The exo branch: room cameras and the ultrasound screen (a random subset in training)."""
        if point.rgb is None or "exo" in self.config.drop_modalities:
            return []
        config = self.config
        return views.exo_cameras(
            point.sources,
            "exo_frames" in groups,
            "ultrasound" in groups,
            config.camera_selection,
            sample_views=self.mode == "train" and config.exo_views == "reference",
            max_views=config.max_exo_views,
            rng=rng,
        )
