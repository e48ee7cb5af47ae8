"""Which sample to generate next, with which memory, when inference walks takes in time order.

``python -m egoexor.infer --temporal oracle|online`` (see :mod:`egoexor.infer`):

* A take's samples are walked in (frame, id) order. Before a sample is generated its prompt gets the
  memory (:mod:`egoexor.memory`, ``--memory_style``, default ``longshort`` as MM-OR's online inference)
  of the take's change log so far; once generated, the log grows by the sample's frame: its ground truth
  (``oracle``, the upper bound) or the model's own answer (``online``, MM-OR's ``PRED`` mode, which asserted
  batch size 1), parsed as the evaluation parses it (``reference`` mode) and written in answer form: names the
  vocabulary does not know are left out (MM-OR kept the raw strings, whose stray spaces or ``Long:`` would
  garble the memory text and make the prompt unreadable).
* Takes run side by side: each of ``lanes`` (the batch size) walks one take, the batch of a step holds
  the next sample of every lane, and a lane whose take is done takes the next one (takes in name order).
  A sample's prompt depends only on its own take's earlier samples, never on which takes share its batch.
* Each take's log shuffles a frame's changes (as the reference does) with an RNG seeded by the take's
  name, so the memory of a take is the same whatever the batch size, process count or restart.
* Resuming: a sample whose text is logged already is not generated again; its logged text (``online``)
  or its ground truth (``oracle``) grows the log as it did in the interrupted run.
* The memory is held to the token budget (oldest entries dropped first) when the sample is read
  (:meth:`egoexor.data.processor.EgoExorProcessor.tokens`), instead of MM-OR's last 5,000 characters.
"""

from __future__ import annotations

import random
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Literal

from egoexor import memory, vocab
from egoexor.data.layout import TakeKey
from egoexor.data.samples import Sample
from egoexor.scene_graph import parse, split_fields

TemporalMode = Literal["none", "oracle", "online"]
TEMPORAL_MODES: tuple[str, ...] = ("none", "oracle", "online")


def take_groups(samples: Sequence[Sample]) -> list[list[int]]:
    """Indices of ``samples`` per take, takes in name order, each in (frame, id) order."""
    groups: dict[TakeKey, list[int]] = {}
    for index, sample in enumerate(samples):
        groups.setdefault(sample.take, []).append(index)
    return [
        sorted(indices, key=lambda i: (samples[i].frame, samples[i].id))
        for _, indices in sorted(groups.items(), key=lambda item: item[0].name)
    ]


class TakeWalk:
    """The batches of a temporal run: ``next_batch`` gives samples with their memory, ``record`` their answers."""

    def __init__(
        self,
        samples: Sequence[Sample],
        mode: TemporalMode,
        style: memory.MemoryStyle,
        lanes: int,
        done: Mapping[str, str],
    ) -> None:
        if mode not in ("oracle", "online"):
            raise ValueError(f"unknown temporal mode {mode!r}; choose oracle or online")
        if style not in memory.STYLES:
            raise ValueError(f"unknown memory style {style!r}; choose one of {', '.join(memory.STYLES)}")
        self.samples, self.mode, self.style, self.done = samples, mode, style, done
        self.replayed = {index for index, sample in enumerate(samples) if sample.id in done}
        self.queue = deque(deque(group) for group in take_groups(samples))
        self.lanes: list[deque[int]] = []
        self.n_lanes = lanes
        self.logs = {
            take: memory.ChangeLog(random.Random(zlib.crc32(take.name.encode()))) for take in {s.take for s in samples}
        }
        self.pending: set[int] = set()

    def next_batch(self) -> list[tuple[int, Sample, str]]:
        """The next sample of every lane (index, the sample with its memory in its question, the memory text);
        [] when all are done."""
        if self.pending:
            raise RuntimeError("record the answers of the last batch first")
        batch = []
        for lane in self._filled_lanes():
            index = lane[0]
            sample = self.samples[index]
            text = memory.memory_text(self.logs[sample.take].changes, sample.frame, self.style)
            batch.append((index, replace(sample, question=memory.insert_memory(sample.question, text)), text))
        self.pending = {index for index, _, _ in batch}
        return batch

    def record(self, index: int, text: str) -> None:
        """The generated ``text`` of sample ``index`` of the last batch: its take's log grows by its frame."""
        self.pending.remove(index)
        lane = next(lane for lane in self.lanes if lane and lane[0] == index)
        self._grow(lane.popleft(), text)

    def _grow(self, index: int, text: str) -> None:
        sample = self.samples[index]
        if self.mode == "oracle":
            triplets = split_fields(sample.answer, "reference")
        else:
            triplets = [tuple(vocab.answer_form(name) for name in t) for t in parse(text, "reference")]
        self.logs[sample.take].add(sample.frame, triplets)

    def _filled_lanes(self) -> list[deque[int]]:
        """The lanes with a sample to generate: finished takes replaced by queued ones, logged samples replayed."""
        for position in range(self.n_lanes):
            if position == len(self.lanes):
                self.lanes.append(deque())
            lane = self.lanes[position]
            while True:
                while lane and lane[0] in self.replayed:
                    index = lane.popleft()
                    self._grow(index, self.done[self.samples[index].id])
                if lane or not self.queue:
                    break
                lane.extend(self.queue.popleft())
        return [lane for lane in self.lanes if lane]
