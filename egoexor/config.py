"""Typed configuration: plain dataclasses whose defaults are the paper's values, and their loading.

Each reference-compatibility switch names the reference's value in its comment; the defaults
reproduce the reference wherever it shapes results, and fix it where it only loses information
(see README, "Reference-compatibility switches").
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import yaml

from egoexor import atomic, cli, modalities
from egoexor.metrics import Protocol
from egoexor.prompt import PromptRoles


class ConfigError(cli.CommandError):
    """A configuration value is invalid; the message names the field (a user mistake: one line, exit 2)."""


def _check_choices(config: object) -> None:
    """The dataclass's ``Literal`` fields hold one of their values (a dataclass does not check types)."""
    for name, choices in _choices(type(config)).items():
        if getattr(config, name) not in choices:
            raise ConfigError(f"{name}: {getattr(config, name)!r} is not one of {', '.join(map(str, choices))}")


def _choices(cls: type) -> dict[str, tuple]:
    """Each ``Literal``-typed field of a config dataclass and its allowed values: their one home."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in fields(cls) if typing.get_origin(hints[f.name]) is Literal}


class _ChoiceFields:
    """Base of the config dataclasses: a ``Literal`` field's annotation is the one place its values are spelled."""

    @classmethod
    def choices(cls, name: str) -> tuple:
        """The allowed values of a choice field, for command-line ``choices`` and messages."""
        return _choices(cls)[name]


#: The sizes of a config-built LLM or CLIP tower (``llm_config``, ``vision_config``) that must be integers >= 1
#: where given: transformers accepts -2 layers or 7 heads for a width of 64 and fails later in a traceback.
_BUILT_SIZES = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "image_size",
    "patch_size",
)


def _check_built_config(name: str, config: object) -> None:
    if not isinstance(config, dict):
        raise ConfigError(f"{name}: expected a mapping of configuration fields, got {type(config).__name__}")
    for key in (key for key in _BUILT_SIZES if key in config):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}.{key} must be an integer, got {value!r}")
        cli.check_range(f"{name}.{key}", value, 1)
    width, heads, groups = (config.get(key) for key in ("hidden_size", "num_attention_heads", "num_key_value_heads"))
    if width and heads and width % heads:
        raise ConfigError(f"{name}: hidden_size {width} is not divisible by num_attention_heads {heads}")
    if heads and groups and heads % groups:
        raise ConfigError(f"{name}: num_attention_heads {heads} is not divisible by num_key_value_heads {groups}")


@dataclass
class ModelConfig(_ChoiceFields):
    """The model (``egoexor.model.build``). Defaults: the paper's architecture on LLaVA-1.5-7B."""

    #: ``paper``: separate 2-layer ego and exo fusion encoders; ``reference``: the released checkpoint's
    #: single shared 3-layer encoder (parameter names match its ``non_lora_trainables``).
    preset: Literal["paper", "reference"] = "paper"
    #: LLM: hub name or folder, in the liuhaotian/llava-v1.5 layout (its projector initialises ours),
    #: the llava-hf layout, or any LLaMA-family causal LM.
    model_name_or_path: str | None = "liuhaotian/llava-v1.5-7b"
    #: A ``LlamaConfig`` as a dict: build a randomly initialised LLM instead (tests, the CPU demo).
    llm_config: dict | None = None
    #: CLIP vision tower: hub name or folder.
    vision_tower: str | None = "openai/clip-vit-large-patch14-336"
    #: A ``CLIPVisionConfig`` as a dict: a randomly initialised tower instead.
    vision_config: dict | None = None
    #: Hidden state whose patch tokens are used (-2: the penultimate layer, as LLaVA-1.5).
    mm_vision_select_layer: int = -2
    #: Trainable CLIP layers, the encoder's last ones (the reference's ``layers[-12:]``); a layer after the
    #: selected hidden state is in that set (and in checkpoints) but gets no gradient.
    unfreeze_n_vision_tower_layers: int = 12
    #: Projector from the fusion width to the LLM width (LLaVA-1.5's two-layer GELU MLP).
    mm_projector_type: Literal["mlp2x_gelu"] = "mlp2x_gelu"
    #: Output tokens per branch (N): the first N fused positions, i.e. the first view's patches (but see
    #: ``fusion_output``).
    tokens_per_branch: int = 576
    #: What a branch passes to the LLM (``egoexor.model.fusion``). ``first_view``: the first N fused positions
    #: (the reference's slice: the other views and the extra inputs reach the LLM only through attention into
    #: them). ``append``: those N, then one token per extra input of the branch, its encoder's own (MM-OR's
    #: rule). ``summary``: the first N - S positions, then S slots, one per input of the branch (each camera
    #: kind and extra input): the mean of its fused positions plus a type embedding, a learned vector where
    #: the sample lacks it.
    fusion_output: Literal["first_view", "append", "summary"] = "first_view"
    #: Fusion encoder depth; None: the preset's (paper 2, reference 3).
    fusion_layers: int | None = None
    #: Attention heads of the fusion encoders.
    fusion_heads: int = 16
    #: Learned positions of the fusion encoders (576 x 9: at most 8 views + extras per branch).
    fusion_max_positions: int = 576 * 9
    #: Hidden width of the gaze and hand MLPs.
    encoder_hidden: int = 512
    #: Size of the audio embedding (CLAP: 512).
    audio_dim: int = 512
    #: Extra inputs the branches use, by feature name (the reference's egocentric/exocentric_features); None:
    #: the built-in ones (gaze, hand, audio, point_cloud). A plug-in's input is used where named here.
    features: tuple[str, ...] | None = None
    #: Hide padded or missing extra tokens from fusion attention (reference: False, it attended to them).
    mask_extras: bool = True
    #: PointTransformerV3 keyword arguments over the reference's configuration (smaller for tests).
    point_transformer: dict | None = None
    #: Voxel size of the point-cloud encoder, metres.
    point_cloud_grid_size: float = 0.01
    #: Train PTv3 itself (the reference ran it frozen, under no_grad; project_pc always trains).
    train_point_transformer: bool = False
    #: LLM weights: 4 (NF4, double quantisation), 8 or 16 bits (``dtype``).
    bits: Literal[4, 8, 16] = 4
    #: Dtype of the frozen LLM weights and of 4/8-bit compute.
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    #: Dtype of every trainable weight: float32 master copies (reference: bfloat16, pure bf16 training).
    trainable_dtype: Literal["float32", "bfloat16"] = "float32"
    #: Train LoRA adapters on the LLM (False: the LLM stays frozen, only the multimodal parts train).
    lora_enable: bool = True
    #: Seed of every randomly initialised weight (fusion, encoders, PTv3, and a config-built LLM or
    #: CLIP): the same configuration always builds the same model, so frozen random parts need not be saved.
    init_seed: int = 0
    #: LoRA rank, scale numerator and dropout (the recipe: 128, 256, 0.05).
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05

    def __post_init__(self) -> None:
        _check_choices(self)
        self.features = modalities.default_features() if self.features is None else tuple(self.features)
        unknown = set(self.features) - set(modalities.features())
        if unknown:
            known = ", ".join(modalities.features())
            raise ConfigError(
                f"features: unknown {', '.join(sorted(unknown))}; registered inputs: {known} "
                "(is the plug-in that adds it installed?)"
            )
        if self.fusion_output == "summary" and self.tokens_per_branch <= max(self.summary_slots().values()):
            raise ConfigError(
                f"fusion_output summary: tokens_per_branch {self.tokens_per_branch} must exceed the slots of a "
                f"branch ({max(self.summary_slots().values())})"
            )
        if (self.model_name_or_path is None) == (self.llm_config is None):
            raise ConfigError("give exactly one of model_name_or_path and llm_config")
        if (self.vision_tower is None) == (self.vision_config is None):
            raise ConfigError("give exactly one of vision_tower and vision_config")
        for name in ("llm_config", "vision_config"):
            if getattr(self, name) is not None:
                _check_built_config(name, getattr(self, name))
        for name in (
            "tokens_per_branch",
            "fusion_heads",
            "fusion_max_positions",
            "encoder_hidden",
            "audio_dim",
            "lora_r",
        ):
            cli.check_range(name, getattr(self, name), 1)
        cli.check_range("unfreeze_n_vision_tower_layers", self.unfreeze_n_vision_tower_layers, 0)
        if self.fusion_layers is not None:
            cli.check_range("fusion_layers", self.fusion_layers, 1)
        cli.check_range("lora_alpha", self.lora_alpha, 0, exclusive_low=True)
        cli.check_range("point_cloud_grid_size", self.point_cloud_grid_size, 0, exclusive_low=True)
        if not 0 <= self.lora_dropout < 1:  # 1 would zero every LoRA input: no gradient at all
            raise cli.CommandError(f"lora_dropout must be >= 0 and < 1, got {self.lora_dropout}")

    def branch_inputs(self, branch: str) -> tuple[str, ...]:
        """The names of a branch's inputs the model uses: its camera kinds, then its extra inputs in
        ``features`` (registry order)."""
        return tuple(
            m.name
            for m in modalities.modalities()
            if m.branch == branch and (isinstance(m, modalities.Camera) or m.feature in self.features)
        )

    def summary_slots(self) -> dict[str, int]:
        """Slots per branch with ``fusion_output: summary`` (one per input of the branch)."""
        return {branch: len(self.branch_inputs(branch)) for branch in ("ego", "exo")}

    def appended_tokens(self) -> tuple[int, int]:
        """Tokens each branch (ego, exo) adds after its N with ``fusion_output: append``: one per extra input."""
        if self.fusion_output != "append":
            return (0, 0)
        return tuple(
            sum(not isinstance(modalities.modality(name), modalities.Camera) for name in self.branch_inputs(branch))
            for branch in ("ego", "exo")
        )

    @property
    def resolved_fusion_layers(self) -> int:
        return self.fusion_layers or (3 if self.preset == "reference" else 2)


@dataclass
class DataConfig(_ChoiceFields):
    """How samples become model inputs (``egoexor.data.dataset`` and ``egoexor.data.processor``)."""

    #: Side of the square CLIP input (336 for CLIP ViT-L/14-336). Training sets it from the vision tower.
    image_size: int = 336
    #: Visual tokens each branch writes into the prompt (N = 576). Training sets it from the model.
    tokens_per_branch: int = 576
    #: Which cameras get their channels reversed. ``train``: the reference's training rule (ego,
    #: ultrasound, simstation), used for training and inference alike. ``all``: the reference's
    #: inference rule (every camera), a train/test mismatch kept only to reproduce its numbers.
    flip_rule: Literal["train", "all"] = "train"
    #: Exo views in training. ``reference``: a random 2-5 of them in random order (as the reference).
    #: ``all``: every exo view in camera order. Evaluation always uses every view.
    exo_views: Literal["reference", "all"] = "reference"
    #: At most this many exo views (the reference's fusion positions allow 8).
    max_exo_views: int = 8
    #: Which cameras form each branch. ``name``: ego and exo cameras by name. ``reference`` (the
    #: reference's): every camera in the index range from a branch's first to its last camera, so a
    #: blank camera inside the exo range becomes a black view (``egoexor.data.views``).
    camera_selection: Literal["name", "reference"] = "name"
    #: How depth and hand rows are matched to ego cameras. ``source_id``: by the rows' source ids.
    #: ``reference`` (the reference's): by position, with its training rule in ``train``/``eval``
    #: mode and its inference rule in ``generate`` mode; both misalign when an ego frame is black or
    #: the rows are in another order (``egoexor.data.views``).
    row_matching: Literal["source_id", "reference"] = "source_id"
    #: Multiply a frame whose brightest value is 1 by 255 (reference: True). Meant for frames in
    #: [0, 1]; on uint8 frames it only turns near-black frames white.
    rescale_dark_frames: bool = False
    #: Divisors of the reference (pixels for gaze and hands, metres for depth).
    gaze_scale: float = 336.0
    hand_scale: float = 336.0
    depth_scale: float = 1.0
    #: Apply the per-take gaze calibration offsets of the reference.
    gaze_fixation: bool = True
    #: ``reference``: per-time-sample normalisation, bit for bit the reference's (bfloat16 included);
    #: ``per_snippet``: by the snippet's peak.
    audio_norm: Literal["reference", "per_snippet"] = "reference"
    #: Frozen CLAP model (hub name or folder) that embeds audio; None: no audio input.
    audio_encoder: str | None = "laion/larger_clap_general"
    #: Sidecar HDF5 of precomputed audio embeddings (``python -m egoexor.data.precompute_audio``).
    audio_cache: str | None = None
    #: Probability of dropping each of gaze+depth, hands, audio and point cloud from a training
    #: sample (the reference's ``multimodal_drop_prop``; its flag never took effect: 0 reproduces it).
    modality_dropout: float = 0.0
    #: Inputs removed from every sample, in training and at inference (ablations): any registered input
    #: (view kinds are blanked, extra inputs left out, as modality dropout does) or a branch (``ego``, ``exo``).
    drop_modalities: tuple[str, ...] = ()
    #: Role names of the prompt at inference (``reference_inference``: the reference's human/gpt).
    prompt_roles: PromptRoles = "train"
    #: Longest token sequence after the visual tokens are inserted.
    model_max_length: int = 2048
    #: Placeholders a branch (ego, exo) has after its ``tokens_per_branch``: the inputs' own tokens of
    #: ``fusion_output: append`` (follows from the model).
    appended_tokens: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        _check_choices(self)
        for name in ("image_size", "tokens_per_branch", "max_exo_views", "model_max_length"):
            cli.check_range(name, getattr(self, name), 1)
        for name in ("gaze_scale", "hand_scale", "depth_scale"):
            cli.check_range(name, getattr(self, name), 0, exclusive_low=True)
        cli.check_range("modality_dropout", self.modality_dropout, 0, 1)
        self.drop_modalities = tuple(self.drop_modalities)
        self.appended_tokens = tuple(self.appended_tokens)
        unknown = [name for name in self.drop_modalities if name not in modalities.droppable()]
        if unknown:
            choices = ", ".join(modalities.droppable())
            raise ConfigError(f"drop_modalities: unknown {', '.join(unknown)}; choose from {choices}")


@dataclass
class TrainConfig:
    """What training reads and how (beyond the HF ``TrainingArguments`` it passes through)."""

    #: Training sample JSON (``python -m egoexor.data.make_samples``).
    data_path: str | None = None
    #: Merged EgoExOR HDF5 file.
    hdf5_path: str | None = None
    #: Validation sample JSON (``make_samples --split validation``), read from ``--hdf5_path``: what
    #: ``--eval_strategy steps|epoch`` evaluates (``eval_loss``, the training loss) and ``--load_best_model_at_end``
    #: chooses by; either without it is an error.
    eval_data_path: str | None = None
    #: At each evaluation, also generate answers for this many validation samples (a fixed subset, spread evenly
    #: over the file) and log their macro F1 as ``eval_macro_f1`` (``--eval_protocol``); 0: the loss only.
    eval_generate_samples: int = 0
    #: The protocol of ``eval_macro_f1`` (see ``egoexor.evaluate``): ``gt`` scores every ground-truth pair, so it
    #: is defined from the first step; ``paper`` is NaN while no answer names two entities.
    eval_protocol: Protocol = "gt"
    #: Token-frequency JSON: loss weights 1/(ln count + 1); without it the loss is plain mean CE.
    token_weight_path: str | None = None
    #: Tokenizer (hub name or folder); None: the LLM's; ``tiny``: the built-in tiny tokenizer.
    tokenizer: str | None = None
    #: Learning rate of the projector (None: ``learning_rate``).
    mm_projector_lr: float | None = None
    #: Batches of similar length (the reference's sampler: megabatches of world size x accumulation).
    group_by_modality_length: bool = False
    #: Apply ``multimodal_drop_prop``. The reference gated it on this flag, which its published command
    #: never set, so its dropout was inert: ``--do_multimodal_augment False`` reproduces that run.
    do_multimodal_augment: bool = True
    #: Start from the trained weights (adapter and non-LoRA weights) of this egoexor checkpoint folder, e.g. a
    #: non-temporal model before training with memory (MM-OR's curriculum); unlike ``--resume_from_checkpoint``
    #: the optimizer, schedule and step start afresh. A released reference folder: convert it first
    #: (``python -m egoexor.convert_reference``).
    init_from: str | None = None
    #: Start afresh in an ``--output_dir`` that holds an earlier run (its checkpoints are removed first);
    #: without it (or ``--resume_from_checkpoint`` from a checkpoint there) such a folder is refused.
    overwrite_output_dir: bool = False
    #: On a stop signal (SIGTERM from a cluster stopping or preempting the job, SIGHUP, SIGQUIT, Ctrl-C):
    #: finish the current step, save a checkpoint, then exit with 128 + the signal's number. False: stop at
    #: once, without saving.
    save_on_signal: bool = True

    def __post_init__(self) -> None:
        if self.mm_projector_lr is not None:
            cli.check_range("mm_projector_lr", self.mm_projector_lr, 0, exclusive_low=True)
        cli.check_range("eval_generate_samples", self.eval_generate_samples, 0)
        _check_choices(self)


# --------------------------------------------------------------------------------------------------
# Loading a training run's configuration
#
# Training configuration: a YAML file overlaid by command-line flags, checked before any model loads.
#
# ``python -m egoexor.train --config configs/egoexor.yaml [--flag value ...]``
#
# The YAML has up to four sections: ``model`` (:class:`~egoexor.config.ModelConfig`), ``data``
# (:class:`~egoexor.config.DataConfig`), ``train`` (:class:`~egoexor.config.TrainConfig`) and
# ``trainer`` (HF ``TrainingArguments``). Flags are flat, as in the reference's training command: a
# flag names a field of one of these (``--bits 4``, ``--learning_rate 2e-5``, ``--bf16 True``);
# every flag of the reference command is accepted with the same meaning (:data:`REFERENCE_ALIASES`),
# and one that has no effect here says so in one line (:data:`NO_EFFECT`). An unknown flag or a bad
# value is an error naming it, raised before anything heavy happens. Precedence: dataclass defaults,
# then the YAML, then the flags.

SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}

#: Reference flags whose field has another name or place here.
REFERENCE_ALIASES: dict[str, tuple[str, str]] = {
    "multimodal_drop_prop": ("data", "modality_dropout"),
    "evaluation_strategy": ("trainer", "eval_strategy"),  # renamed in transformers
    "warmup_ratio": ("trainer", "warmup_steps"),  # transformers 5: a float < 1 is a ratio of the steps
    "gradient_checkpointing": ("trainer", "activation_checkpointing"),  # renamed in transformers 5
}

#: The names every other egoexor command gives these inputs and outputs -> train's flags (the reference's names,
#: which stay its contract): ``--hdf5``, ``--samples`` and ``--out`` work here too.
COMMON_NAMES: dict[str, str] = {"hdf5": "hdf5_path", "samples": "data_path", "out": "output_dir"}

#: Reference flags that change nothing here: (the only supported value or None for any, why).
NO_EFFECT: dict[str, tuple[object, str]] = {
    "version": ("v1", "the vicuna_v1 prompt template is the only one"),
    "dataset_name": ("egoexor", "this package trains on EgoExOR only"),
    "mm_use_im_start_end": (False, "image start/end tokens are not used (neither by the recipe)"),
    "mm_use_im_patch_token": (False, "image patch tokens are not used (neither by the recipe)"),
    "image_aspect_ratio": ("pad", "frames are always padded to a square (the reference ignored the flag too)"),
    "lazy_preprocess": (True, "samples are always read lazily"),
    "mv_type": ("learned", "the learned multi-view pooler is the only one (the reference had no other)"),
    "do_augment": (None, "the reference built image augmentation but never applied it"),
    "image_folder": (None, "frames are read from --hdf5_path"),
    "quant_type": ("nf4", "4-bit weights are always NF4"),
    "double_quant": (True, "4-bit weights always use double quantisation"),
    "lora_bias": ("none", "LoRA never trains biases"),
    "freeze_backbone": (False, "the LLM base is always frozen under LoRA"),
}


@dataclass
class TrainSetup:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    trainer: object  # transformers.TrainingArguments
    warnings: list[str]
    #: The ``--config`` YAML file, if any (an input ``--output_dir`` may not hold).
    config_file: str | None = None


#: DataConfig fields that follow from the model (the vision tower's input size, the model's tokens per
#: branch): neither a flag nor a YAML key; :func:`data_for_model` sets them.
DERIVED_DATA_FIELDS = ("image_size", "tokens_per_branch", "appended_tokens")


def data_for_model(data: DataConfig, model: ModelConfig, image_size: int) -> DataConfig:
    """``data`` with its :data:`DERIVED_DATA_FIELDS` taken from the model (``image_size``: its vision tower's
    input side), as training reads samples and checkpoints save them. Such a field set to another value
    than its default and the model's is a mistake, not something to replace silently."""
    derived = dict(
        zip(DERIVED_DATA_FIELDS, (image_size, model.tokens_per_branch, model.appended_tokens()), strict=True)
    )
    defaults = {field.name: field.default for field in fields(DataConfig)}
    for name, value in derived.items():
        given = getattr(data, name)
        if given not in (defaults[name], value):
            raise ConfigError(f"data.{name} {given} differs from the model's {value} (it follows from the model)")
    return dataclasses.replace(data, **derived)


def _base_type(annotation):
    """``int | None`` -> int; ``tuple[str, ...]`` -> tuple; ``Literal['a', 'b']`` -> str."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if typing.get_origin(annotation) is Literal:
        return type(typing.get_args(annotation)[0])
    return typing.get_origin(annotation) or annotation


def _coerce(value, annotation, name: str):
    """A YAML value as the field's type (YAML reads ``2e-5`` as a string); an error names the field."""
    kind = _base_type(annotation)
    if value is None:
        if "None" not in str(annotation):
            raise ConfigError(f"{name}: may not be null")
        return None
    if isinstance(value, str) and kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is tuple and isinstance(value, list):
        return tuple(value)
    if not isinstance(value, kind):
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def _read_yaml(path: str) -> dict:
    config = Path(path)
    if not config.is_file():
        raise ConfigError(f"{config}: no such config file")
    try:
        content = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{config}: not valid YAML ({error})") from None
    unknown = set(content) - {*SECTIONS, "trainer"} if isinstance(content, dict) else {"(not a mapping)"}
    if unknown:
        raise ConfigError(f"{config}: unknown section(s) {', '.join(sorted(unknown))}; use model, data, train, trainer")
    return content


def _flag_dataclass(cls: type, skip: tuple[str, ...] = ()) -> type:
    """The fields of a config dataclass as ``HfArgumentParser`` reads them: dict fields as JSON text,
    tuple fields as comma-separated text, ``Literal`` fields as choices, the ``#:`` comment as help."""
    hints, docs, specs = typing.get_type_hints(cls), _field_docs(cls), []
    for field in fields(cls):
        if field.name in skip:
            continue
        kind, annotation = _base_type(hints[field.name]), hints[field.name]
        if kind in (dict, tuple):
            annotation = str | None
        specs.append(
            (
                field.name,
                annotation,
                dataclasses.field(
                    default=field.default,
                    metadata={
                        "help": docs.get(field.name, "")
                        + (" (JSON)" if kind is dict else " (comma-separated)" if kind is tuple else "")
                    },
                ),
            )
        )
    return dataclasses.make_dataclass(f"{cls.__name__}Flags", specs)


def _from_flags(cls: type, flags: object) -> object:
    """The config dataclass from its parsed flags (JSON and comma-separated text converted)."""
    hints, values = typing.get_type_hints(cls), {}
    for name, value in vars(flags).items():
        kind = _base_type(hints[name])
        if isinstance(value, str) and kind is dict:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ConfigError(f"--{name}: not a JSON object ({error})") from None
            if not isinstance(value, dict):
                raise ConfigError(f"--{name}: not a JSON object")
        elif isinstance(value, str) and kind is tuple:
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        values[name] = value
    return cls(**values)


def train_parser():
    """The ``HfArgumentParser`` of ``python -m egoexor.train``: every field of the three config sections
    (the derived data fields excepted) and of ``TrainingArguments`` is a flag; no abbreviations; errors
    are one line (:mod:`egoexor.cli`)."""
    from transformers import HfArgumentParser, TrainingArguments

    from egoexor.cli import OneLineErrors

    class Parser(OneLineErrors, HfArgumentParser):
        pass

    flag_classes = [_flag_dataclass(cls, DERIVED_DATA_FIELDS if cls is DataConfig else ()) for cls in SECTIONS.values()]
    epilog = "\n".join(
        [
            "A YAML config (--config; sections model, data, train, trainer) sets the defaults; flags override it.",
            "Reference flags with another name here: "
            + ", ".join(f"--{flag} -> --{name}" for flag, (_, name) in REFERENCE_ALIASES.items()),
            "The names of the other egoexor commands: "
            + ", ".join(f"--{flag} is --{name}" for flag, name in COMMON_NAMES.items()),
            "Reference flags accepted without effect (a warning says why): " + ", ".join(f"--{f}" for f in NO_EFFECT),
        ]
    )
    import argparse

    parser = Parser(
        [*flag_classes, TrainingArguments],
        prog="python -m egoexor.train",
        allow_abbrev=False,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default=None, help="YAML file of model/data/train/trainer defaults")
    report_to = next(action for action in parser._actions if action.dest == "report_to")
    report_to.nargs = "+"  # a list field that HfArgumentParser reads as one string: --report_to tensorboard wandb
    return parser


def _prepass(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """``--config``, the reference's flags and the common names (:data:`COMMON_NAMES`) mapped onto ours, and a
    warning for each flag without effect."""
    config, kept, warnings = None, [], []
    for name, values in split_flags(argv):
        if name in ("config", *NO_EFFECT) and len(values) != 1:
            raise ConfigError(f"--{name} takes one value, got {' '.join(values)}")
        value = values[0]
        if name == "config":
            config = value
            continue
        if name in NO_EFFECT:
            supported, why = NO_EFFECT[name]
            if supported is not None and str(value).lower() != str(supported).lower():
                raise ConfigError(f"--{name} {value}: not supported ({why}; only {supported})")
            warnings.append(f"--{name} has no effect here: {why}")
            continue
        name = COMMON_NAMES.get(name, REFERENCE_ALIASES.get(name, (None, name))[1])
        kept += [f"--{name}", *values]
    return config, kept, warnings


def split_flags(argv: list[str]) -> list[tuple[str, list[str]]]:
    """Each flag and its values, in order: ``--name v1 v2`` (every token up to the next flag; the parser
    knows which fields take a list), ``--name=value``, and a bare ``--name`` (``["True"]``)."""
    pairs: list[tuple[str, list[str]]] = []
    takes_values = False  # the last token was a flag without "=value", or one of its values
    for token in argv:
        if token.startswith("--"):
            name, sep, value = token[2:].partition("=")
            pairs.append((name.replace("-", "_"), [value] if sep else []))
            takes_values = not sep
        elif takes_values:
            pairs[-1][1].append(token)
        else:
            raise ConfigError(f"unexpected argument {token!r} (flags look like --name value)")
    return [(name, values or ["True"]) for name, values in pairs]


def parse_train_args(argv: list[str]) -> TrainSetup:
    """Resolve the configuration of a training run; raises :class:`ConfigError` on any bad input.

    Precedence: dataclass defaults, then the YAML (``--config``), then the flags.
    """
    config_file, flags, warnings = _prepass(list(argv))
    defaults = _yaml_defaults(_read_yaml(config_file) if config_file else {})
    pairs = split_flags(flags)
    flags = _without_cuda(defaults, flags, pairs, warnings)
    deepspeed = next((values[0] for name, values in reversed(pairs) if name == "deepspeed"), defaults.get("deepspeed"))
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"--deepspeed {deepspeed} needs deepspeed (pip install 'egoexor[gpu]')")
    parser = train_parser()
    parser.set_defaults(**defaults)
    model, data, train, trainer = _parse_flags(parser, flags, pairs)
    _check_reporting(trainer.report_to)
    configs = [_from_flags(cls, parsed) for cls, parsed in zip(SECTIONS.values(), (model, data, train), strict=True)]
    return TrainSetup(*configs, trainer, warnings, config_file)


def _yaml_defaults(content: dict) -> dict:
    """The YAML's sections as parser defaults over egoexor's own Trainer defaults; unknown keys and derived
    data fields are a :class:`ConfigError` naming the section."""
    from transformers import TrainingArguments

    defaults = {
        "output_dir": "runs/egoexor",
        "remove_unused_columns": False,
        "ddp_find_unused_parameters": True,
        "save_only_model": False,
    }
    trainer_fields = {f.name for f in fields(TrainingArguments)}
    for section, cls in (*SECTIONS.items(), ("trainer", TrainingArguments)):
        values = dict(content.get(section) or {})
        known = trainer_fields if section == "trainer" else {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"section {section}: unknown key(s) {', '.join(sorted(unknown))}")
        if section == "data" and set(values) & set(DERIVED_DATA_FIELDS):
            raise ConfigError(
                f"section data: {', '.join(sorted(set(values) & set(DERIVED_DATA_FIELDS)))} "
                "follow from the model (set model.tokens_per_branch or the vision tower)"
            )
        if section != "trainer":
            hints = typing.get_type_hints(cls)
            values = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
            values = {k: ",".join(v) if isinstance(v, tuple) else v for k, v in values.items()}
        defaults.update(values)
    return defaults


def _without_cuda(defaults: dict, flags: list[str], pairs, warnings: list[str]) -> list[str]:
    """On a machine without CUDA: ``tf32`` dropped and CPU training made explicit, each with a warning."""
    import torch

    if torch.cuda.is_available():
        return flags
    if defaults.get("tf32") or any(name == "tf32" and values[0].lower() == "true" for name, values in pairs):
        warnings.append("--tf32 has no effect here: no CUDA device")
        defaults.pop("tf32", None)
        flags = [token for name, values in pairs if name != "tf32" for token in (f"--{name}", *values)]
    if not defaults.get("use_cpu") and not any(name == "use_cpu" for name, _ in pairs):
        warnings.append("no CUDA device: training on the CPU")
        defaults["use_cpu"] = True
    return flags


def _parse_flags(parser, flags: list[str], pairs) -> tuple:
    """The model, data, train and Trainer sections from the flags; an unknown flag or a flag given too many
    values is a :class:`ConfigError`."""
    try:
        model, data, train, trainer, *_, unknown = parser.parse_args_into_dataclasses(
            args=flags, return_remaining_strings=True
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    if unknown:
        flag = next((u for u in unknown if u.startswith("--")), None)
        if flag:
            raise ConfigError(f"unknown flag {flag} (see --help)")
        name, values = next((n, v) for n, v in pairs if unknown[0] in v[1:])
        raise ConfigError(f"--{name} takes one value, got {' '.join(values)}")
    return model, data, train, trainer


def _check_reporting(report_to: list[str]) -> None:
    """Each ``--report_to`` integration is known and, for wandb, installed."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    unsupported = [name for name in report_to if name not in INTEGRATION_TO_CALLBACK]
    if unsupported:  # "none" and "all" became [] or the installed integrations unless given with others
        choices = ", ".join(INTEGRATION_TO_CALLBACK)
        raise ConfigError(f"--report_to {' '.join(unsupported)}: expected none, all, or some of {choices}")
    if "wandb" in report_to:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("--report_to wandb needs wandb (pip install 'egoexor[gpu]'), or use none") from None


def _field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comment above each field of a config dataclass (its documentation)."""
    import inspect

    docs, pending = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
        elif ":" in stripped and not stripped.startswith(("#", '"', "def ", "@", "class ")):
            docs[stripped.split(":", 1)[0]] = " ".join(pending)
            pending = []
        else:
            pending = []
    return docs


def train_help() -> str:
    """``python -m egoexor.train --help``: every flag ``train`` accepts, with its default and meaning.

    Building it imports transformers (every ``TrainingArguments`` field is a flag), which takes seconds; the
    text is kept in the user's cache folder under a name that changes with everything it depends on (the
    installed transformers, Python, egoexor's sources, the terminal's width), so that later calls print it
    without importing transformers or torch. An unwritable cache folder only means building it each time."""
    path = _help_cache()
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    text = train_parser().format_help()
    try:
        for stale in path.parent.glob("train-help-*.txt"):  # made by other versions: never read again
            stale.unlink()
        atomic.write_text(path, text)
    except OSError:
        pass
    return text


def _help_cache() -> Path:
    """Where :func:`train_help` keeps its text (``$XDG_CACHE_HOME/egoexor``, else ``~/.cache/egoexor``)."""
    import hashlib
    import importlib.metadata
    import shutil
    import sys

    key = hashlib.sha256()
    for part in (importlib.metadata.version("transformers"), sys.version, shutil.get_terminal_size().columns):
        key.update(f"{part}\n".encode())
    for source in sorted(Path(__file__).parent.rglob("*.py")):  # the config fields, their docs and the parser
        key.update(source.read_bytes())
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "egoexor"
    return folder / f"train-help-{key.hexdigest()[:16]}.txt"


def asks_for_help(argv: list[str]) -> bool:
    """Whether train's flags ``argv`` ask for :func:`train_help` (``-h``, ``--help``)."""
    return "--help" in argv or "-h" in argv


# --------------------------------------------------------------------------------------------------
# The configuration every checkpoint folder holds (written by training and by the reference import)

#: The file of a checkpoint folder that holds its model and data configuration.
CONFIG_FILE = "egoexor_config.json"
#: The file of a checkpoint folder that holds every trained weight outside the LoRA adapter.
NON_LORA_FILE = "non_lora_trainables.safetensors"


def checkpoint_config(model: ModelConfig, data: DataConfig) -> dict:
    """The content of :data:`CONFIG_FILE`: what rebuilds the model and reads its inputs."""
    return {"model": dataclasses.asdict(model), "data": dataclasses.asdict(data)}


def read_checkpoint_config(
    folder: str | os.PathLike, flag: str | None = None, **model_overrides
) -> tuple[ModelConfig, DataConfig]:
    """The configuration :func:`checkpoint_config` saved in ``folder``; ``model_overrides`` replace model
    fields (``bits=16``: a 4-bit-trained model on bf16 weights). A malformed or invalid file is one line
    naming it (and ``flag``, the command-line flag that gave the folder)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{cli.flagged(Path(folder), flag)}: no {CONFIG_FILE} (not an egoexor checkpoint)")
    saved = cli.read_json(path, flag)
    if not isinstance(saved, dict) or not all(isinstance(saved.get(part), dict) for part in ("model", "data")):
        raise ConfigError(f"{cli.flagged(path, flag)}: expected a 'model' and a 'data' section")
    try:
        model = {"fusion_output": "first_view", **saved["model"], **model_overrides}  # saved before the choice
        return ModelConfig(**model), DataConfig(**saved["data"])
    except (TypeError, ConfigError) as error:
        raise ConfigError(f"{cli.flagged(path, flag)}: {error}") from None
