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
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, field_validator

from egoexor import modalities
from egoexor.data.layout import TakeKey, take_frame_count


class SampleError(ValueError):
    """A sample file or record is malformed; the message names the file and the record."""


class SampleInputError(ValueError):
    """A sample's data cannot become model input (raised by the processor and the dataset); the message names
    the sample and its frame. Defined here, beside :class:`SampleError`, so that commands list it among their
    user errors without importing torch."""


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
                "available_modalities": [m for m in modalities.sample_groups() if m in self.modalities],
            },
            "conversations": [{"from": "human", "value": self.question}, {"from": "gpt", "value": self.answer}],
        }


class _Strict(BaseModel):
    """Fields of exactly their JSON type: ``frame_idx`` 3.7, ``true`` or ``"12"`` and ``"id": null`` are errors,
    not frame 3, frame 1, frame 12 and the sample ``"None"``. Fields of other tools are let through."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class _Indices(_Strict):
    surgery_type: str = Field(min_length=1)
    procedure_id: NonNegativeInt
    take_id: NonNegativeInt
    frame_idx: NonNegativeInt
    #: A misspelt name would silently mean "not available": each must be a registered input's group.
    available_modalities: list[str] = []

    @field_validator("available_modalities")
    @classmethod
    def _registered(cls, names: list[str]) -> list[str]:
        known = modalities.sample_groups()
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(
                f"unknown modality {unknown[0]!r} (is the plug-in that adds it installed?); "
                f"registered inputs list {', '.join(known)}"
            )
        return names


class _Turn(_Strict):
    speaker: str = Field(alias="from")
    value: str


class _Record(_Strict):
    id: str = Field(min_length=1)
    hdf5_indices: _Indices
    conversations: list[_Turn]

    @field_validator("conversations")
    @classmethod
    def _question_then_answer(cls, turns: list[_Turn]) -> list[_Turn]:
        if [turn.speaker for turn in turns[:2]] != ["human", "gpt"]:
            raise ValueError("must start with a human turn (the question), then a gpt turn (the answer)")
        return turns


def _first_problem(error: ValidationError) -> str:
    """Pydantic's first complaint on one line: the field, what is wrong, the value found."""
    problem = error.errors(include_url=False)[0]
    field = ".".join(str(part) for part in problem["loc"])
    message = problem["msg"].removeprefix("Value error, ")
    found = "" if problem["type"] == "missing" else f" (got {reprlib.repr(problem['input'])})"
    return f"{field}: {message}{found}"


def sample_from_record(record: object, where: str = "record") -> Sample:
    """Validate one JSON record (:class:`_Record`: the types, the known modality names, the order of the turns);
    ``where`` names it in the error."""
    if not isinstance(record, dict):
        raise SampleError(f"{where}: expected a sample object, got {reprlib.repr(record)}")
    if isinstance(record.get("id"), str):
        where = f"{where} (id {record['id']!r})"
    try:
        checked = _Record.model_validate(record)
    except ValidationError as error:
        raise SampleError(f"{where}: {_first_problem(error)}") from None
    indices = checked.hdf5_indices
    take = TakeKey(indices.surgery_type, indices.procedure_id, indices.take_id)
    question, answer = (turn.value for turn in checked.conversations[:2])
    return Sample(checked.id, take, indices.frame_idx, frozenset(indices.available_modalities), question, answer)


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


def check_unique_ids(samples: Sequence[Sample], where: str) -> None:
    """One record per id: predictions and scores go by id, so a repeated one would be scored twice or lost."""
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise SampleError(f"{where}: sample id {sample.id!r} occurs twice (predictions go by id)")
        seen.add(sample.id)


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
