"""Typed configuration: plain dataclasses whose defaults are the paper's values.

Each reference-compatibility switch names the reference's value in its comment; the defaults
reproduce the reference wherever it shapes results, and fix it where it only loses information
(see README, "Reference-compatibility switches").
"""

from __future__ import annotations

from dataclasses import dataclass, fields

_CHOICES: dict[str, tuple[str, ...]] = {
    "preset": ("paper", "reference"),
    "mm_projector_type": ("mlp2x_gelu",),
    "dtype": ("bfloat16", "float16", "float32"),
    "trainable_dtype": ("float32", "bfloat16"),
    "flip_rule": ("train", "all"),
    "exo_views": ("reference", "all"),
    "row_matching": ("source_id", "reference"),
    "audio_norm": ("reference", "per_snippet"),
    "prompt_roles": ("train", "reference_inference"),
}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def _check_choices(config: object) -> None:
    for name, choices in _CHOICES.items():
        if hasattr(config, name) and getattr(config, name) not in choices:
            raise ConfigError(f"{name}: {getattr(config, name)!r} is not one of {', '.join(choices)}")


EXTRA_FEATURES = ("gaze", "hand", "audio", "point_cloud")


@dataclass
class ModelConfig:
    """The model (``egoexor.model.build``). Defaults: the paper's architecture on LLaVA-1.5-7B."""

    #: ``paper``: separate 2-layer ego and exo fusion encoders; ``reference``: the released checkpoint's
    #: single shared 3-layer encoder (parameter names match its ``non_lora_trainables``).
    preset: str = "paper"
    #: LLM: hub name or folder, in the liuhaotian/llava-v1.5 layout (its projector initialises ours),
    #: the llava-hf layout, or any LLaMA-family causal LM.
    model_name_or_path: str | None = "liuhaotian/llava-v1.5-7b"
    #: A ``LlamaConfig`` as a dict: build a randomly initialised LLM instead (tests, the CPU demo).
    llm_config: dict | None = None
    vision_tower: str | None = "openai/clip-vit-large-patch14-336"
    #: A ``CLIPVisionConfig`` as a dict: a randomly initialised tower instead.
    vision_config: dict | None = None
    mm_vision_select_layer: int = -2
    unfreeze_n_vision_tower_layers: int = 12
    mm_projector_type: str = "mlp2x_gelu"
    #: Output tokens per branch (N); the first N fused positions, i.e. the first view's patches.
    tokens_per_branch: int = 576
    #: Fusion encoder depth; None: the preset's (paper 2, reference 3).
    fusion_layers: int | None = None
    fusion_heads: int = 16
    fusion_max_positions: int = 576 * 9
    #: Hidden width of the gaze and hand MLPs.
    encoder_hidden: int = 512
    #: Size of the audio embedding (CLAP: 512).
    audio_dim: int = 512
    #: Extra inputs the branches use (the reference's egocentric/exocentric_features).
    features: tuple[str, ...] = EXTRA_FEATURES
    #: Hide padded or missing extra tokens from fusion attention (reference: False, it attended to them).
    mask_extras: bool = True
    #: PointTransformerV3 keyword arguments over the reference's configuration (smaller for tests).
    point_transformer: dict | None = None
    point_cloud_grid_size: float = 0.01
    #: Train PTv3 itself (the reference ran it frozen, under no_grad; project_pc always trains).
    train_point_transformer: bool = False
    #: LLM weights: 4 (NF4, double quantisation), 8 or 16 bits (``dtype``).
    bits: int = 4
    #: Dtype of the frozen LLM weights and of 4/8-bit compute.
    dtype: str = "bfloat16"
    #: Dtype of every trainable weight: float32 master copies (reference: bfloat16, pure bf16 training).
    trainable_dtype: str = "float32"
    lora_enable: bool = True
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05

    def __post_init__(self) -> None:
        _check_choices(self)
        self.features = tuple(self.features)
        unknown = set(self.features) - set(EXTRA_FEATURES)
        if unknown:
            known = ", ".join(EXTRA_FEATURES)
            raise ConfigError(f"features: unknown {', '.join(sorted(unknown))}; choose from {known}")
        if self.bits not in (4, 8, 16):
            raise ConfigError(f"bits: must be 4, 8 or 16, got {self.bits}")
        if (self.model_name_or_path is None) == (self.llm_config is None):
            raise ConfigError("give exactly one of model_name_or_path and llm_config")
        if (self.vision_tower is None) == (self.vision_config is None):
            raise ConfigError("give exactly one of vision_tower and vision_config")
        for name in ("tokens_per_branch", "fusion_heads", "fusion_max_positions", "encoder_hidden", "audio_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")

    @property
    def resolved_fusion_layers(self) -> int:
        return self.fusion_layers or (3 if self.preset == "reference" else 2)


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
        _check_choices(self)
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
