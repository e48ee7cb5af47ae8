"""The LLaVA-format sample records: one JSON list per split, read back by training and evaluation.

Schema (the reference's ``generate_dataset_format_for_llava.py``; its files load unchanged)::

    {"id": "MISS_1_1_12_0",                      # <surgery_type>_<procedure>_<take>_<frame>_<permutation>
     "timepoint": 12,
     "hdf5_indices": {"surgery_type": "MISS", "procedure_id": 1, "take_id": 1, "frame_idx": 12,
                      "available_modalities": ["ego_frames", "eye_gaze", ...]},
     "conversations": [{"from": "human", "value": "<image>\\n<prompt>"},
                       {"from": "gpt", "value": "<SG> head surgeon,patient,holding; ... </SG>"}]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py

from egoexor.data.layout import TakeKey, take_frame_count

#: Every modality name a record may list, in the order this project writes them.
MODALITIES: tuple[str, ...] = (
    "ego_frames",
    "eye_gaze",
    "eye_gaze_depth",
    "hand_tracking",
    "audio",
    "exo_frames",
    "ultrasound",
    "point_cloud",
)


_KNOWN_MODALITIES = frozenset(MODALITIES)
_INDEX_FIELDS = frozenset({"surgery_type", "procedure_id", "take_id", "frame_idx"})


class SampleError(ValueError):
    """A sample file or record is malformed; the message names the file and the record."""


@dataclass(frozen=True)
class Sample:
    """One training/evaluation sample: where its frame is, what it may use, and its two turns."""

    id: str
    take: TakeKey
    frame: int
    modalities: frozenset[str]
    question: str
    answer: str

    def to_record(self) -> dict:
        """The reference's JSON record."""
        return {
            "id": self.id,
            "timepoint": self.frame,
            "hdf5_indices": {
                "surgery_type": self.take.surgery_type,
                "procedure_id": self.take.procedure_id,
                "take_id": self.take.take_id,
                "frame_idx": self.frame,
                "available_modalities": [m for m in MODALITIES if m in self.modalities],
            },
            "conversations": [{"from": "human", "value": self.question}, {"from": "gpt", "value": self.answer}],
        }


def sample_from_record(record: object, where: str = "record") -> Sample:
    """Validate one JSON record; ``where`` names it in the error."""
    if not isinstance(record, dict) or "id" not in record:
        raise SampleError(f"{where}: expected a sample object with an 'id'")
    where = f"{where} (id {record['id']!r})"
    indices = record.get("hdf5_indices")
    if not isinstance(indices, dict) or not _INDEX_FIELDS <= indices.keys():
        raise SampleError(f"{where}: 'hdf5_indices' must hold {', '.join(sorted(_INDEX_FIELDS))}")
    modalities = indices.get("available_modalities", [])
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise SampleError(f"{where}: 'available_modalities' must be a list of names")
    unknown = [m for m in modalities if m not in _KNOWN_MODALITIES]
    if unknown:  # a misspelt name would silently mean "not available"
        raise SampleError(f"{where}: unknown modality {unknown[0]!r}; known: {', '.join(MODALITIES)}")
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not all(isinstance(turn, dict) for turn in conversations):
        raise SampleError(f"{where}: 'conversations' must be a list of turns")
    turns = {turn.get("from"): turn.get("value") for turn in reversed(conversations)}  # the first turn wins
    if not isinstance(turns.get("human"), str) or not isinstance(turns.get("gpt"), str):
        raise SampleError(f"{where}: 'conversations' needs a human and a gpt turn with text values")
    try:
        take = TakeKey(str(indices["surgery_type"]), int(indices["procedure_id"]), int(indices["take_id"]))
        frame = int(indices["frame_idx"])
    except (TypeError, ValueError):
        raise SampleError(f"{where}: procedure_id, take_id and frame_idx must be integers") from None
    return Sample(str(record["id"]), take, frame, frozenset(modalities), turns["human"], turns["gpt"])


def load_samples(path: str | os.PathLike) -> list[Sample]:
    """Read a sample JSON file (ours or the reference's); a clear error names the file and record."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise SampleError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SampleError(f"{path}: not a readable JSON file ({error})") from error
    if not isinstance(records, list):
        raise SampleError(f"{path}: expected a JSON list of sample records, got {type(records).__name__}")
    return [sample_from_record(r, f"{path}: record {i}") for i, r in enumerate(records)]


def check_in_hdf5(samples: Sequence[Sample], h5: h5py.File) -> None:
    """Check that every sample's take and frame are in ``h5`` (one look at each take), so that a
    sample file of another dataset fails here, not as a read error in the middle of training.

    Raises :class:`SampleError` naming the first sample that is not there and how many are not.
    """
    frames = {take: take_frame_count(h5[take.path]) if take.path in h5 else None for take in {s.take for s in samples}}
    missing = [s for s in samples if frames[s.take] is None or not 0 <= s.frame < frames[s.take]]
    if missing:
        first = missing[0]
        why = "no such take" if frames[first.take] is None else f"the take has {frames[first.take]} frames"
        raise SampleError(
            f"{h5.filename}: {len(missing)} of {len(samples)} samples are not in the file, the first: "
            f"id {first.id!r}, take {first.take.path}, frame {first.frame} ({why})"
        )
