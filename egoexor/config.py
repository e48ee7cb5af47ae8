"""Typed configuration: plain dataclasses whose defaults are the paper's values.

Each reference-compatibility switch names the reference's value in its comment; the defaults
reproduce the reference wherever it shapes results, and fix it where it only loses information
(see README, "Reference-compatibility switches").
"""

from __future__ import annotations

from dataclasses import dataclass, fields

_CHOICES: dict[str, tuple[str, ...]] = {
    "flip_rule": ("train", "all"),
    "exo_views": ("reference", "all"),
    "row_matching": ("source_id", "reference"),
    "audio_norm": ("reference", "per_snippet"),
    "prompt_roles": ("train", "reference_inference"),
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclass
class DataConfig:
    """How samples become model inputs (``egoexor.data.dataset``)."""

    #: Side of the square CLIP input (336 for CLIP ViT-L/14-336; smaller for tiny test towers).
    image_size: int = 336
    #: Visual tokens each branch writes into the prompt (N; the paper and the reference: 576).
    tokens_per_branch: int = 576
    #: Which cameras get their channels reversed. ``train``: the reference's training rule (ego,
    #: ultrasound, simstation), used for training and inference alike. ``all``: the reference's
    #: inference rule (every camera), a train/test mismatch kept only to reproduce its numbers.
    flip_rule: str = "train"
    #: Exo views in training. ``reference``: a random 2-5 of them in random order (as the reference).
    #: ``all``: every exo view in camera order. Evaluation always uses every view.
    exo_views: str = "reference"
    #: At most this many exo views (the reference's fusion positions allow 8).
    max_exo_views: int = 8
    #: How depth and hand rows are matched to ego cameras. ``source_id``: by the rows' source ids.
    #: ``reference``: by position along the camera axis, which misaligns when an ego frame is black
    #: or the rows are in another order (the reference's behaviour).
    row_matching: str = "source_id"
    #: Divisors of the reference (pixels for gaze and hands, metres for depth).
    gaze_scale: float = 336.0
    hand_scale: float = 336.0
    depth_scale: float = 1.0
    #: Apply the per-take gaze calibration offsets of the reference.
    gaze_fixation: bool = True
    #: ``reference``: per-time-sample normalisation (reference); ``per_snippet``: by the snippet's peak.
    audio_norm: str = "reference"
    #: Frozen CLAP model (hub name or folder) that embeds audio; None: no audio input.
    audio_encoder: str | None = "laion/larger_clap_general"
    #: Sidecar HDF5 of precomputed audio embeddings (``python -m egoexor.data.precompute_audio``).
    audio_cache: str | None = None
    #: Probability of dropping each of gaze+depth, hands, audio and point cloud from a training
    #: sample (the reference's ``multimodal_drop_prop``; its flag never took effect: 0 reproduces it).
    modality_dropout: float = 0.0
    #: Role names of the prompt at inference (``reference_inference``: the reference's human/gpt).
    prompt_roles: str = "train"
    #: Longest token sequence after the visual tokens are inserted.
    model_max_length: int = 2048

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(choices)}")
        for name in ("image_size", "tokens_per_branch", "max_exo_views", "model_max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("gaze_scale", "hand_scale", "depth_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ConfigError(f"modality_dropout: must be in [0, 1], got {self.modality_dropout}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
