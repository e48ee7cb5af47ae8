"""Import the authors' released checkpoint: ``python -m egoexor.convert_reference IN OUT``.

The released model (``ardamamur/EgoExOR``) is a LLaVA-style LoRA folder written by the reference's
training code: ``config.json`` (a ``LlavaConfig`` with ``mm_*`` fields), ``adapter_config.json`` and
``adapter_model.bin`` (peft 0.4), and ``non_lora_trainables.bin``: every trainable non-LoRA parameter
and every buffer of the peft-wrapped model, keys ``base_model.model.model.*`` -- ``mm_projector``, the
whole ``image_pooler``, CLIP's last ``unfreeze_n_vision_tower_layers`` layers and its ``position_ids``,
and the rotary caches of each LLaMA layer (``layers.N.self_attn.rotary_emb.*``). It loads into the
``reference`` preset, whose parameter names are the reference's: the projector and the pooler
(fusion BERT, gaze/hand encoders, audio projector, PTv3 with ``project_pc``) map 1:1, CLIP's
``vision_model.`` level is dropped (transformers 5 flattened it), and LoRA keys keep their names.

Every tensor is accounted for: mapped, or listed as a buffer that the model recomputes (rotary
caches, CLIP's and BERT's ``position_ids``, BERT's ``token_type_ids``); anything else, or a shape
that does not fit, is an error naming the key. The output is an egoexor checkpoint folder
(``egoexor_config.json``, ``adapter_model.safetensors``, ``non_lora_trainables.safetensors``) that
``egoexor.infer`` reads; ``infer --checkpoint`` also accepts the released folder directly and
converts it on the fly.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from egoexor import atomic, cli
from egoexor.config import CONFIG_FILE, NON_LORA_FILE, DataConfig, ModelConfig, checkpoint_config, data_for_model

if TYPE_CHECKING:  # torch and the model code are imported where used: --help and the checks load neither
    import torch

COMMAND = "egoexor.convert_reference"
REFERENCE_NON_LORA = "non_lora_trainables.bin"
REFERENCE_ADAPTER = "adapter_model.bin"
#: The released folder's files, as ``check_reference_folder`` requires them.
REFERENCE_FILES = ("config.json", "adapter_config.json", REFERENCE_ADAPTER, REFERENCE_NON_LORA)
DEFAULT_BASE = "liuhaotian/llava-v1.5-7b"

#: Reference key patterns -> our names (``None``: a buffer the model recomputes, consumed but not loaded).
_KEY_RULES: tuple[tuple[re.Pattern, str | None], ...] = (
    (re.compile(r"^base_model\.model\.model\.mm_projector\.(.+)$"), r"mm_projector.\1"),
    (re.compile(r"^base_model\.model\.model\.image_pooler\.bert\.embeddings\.(position_ids|token_type_ids)$"), None),
    (re.compile(r"^base_model\.model\.model\.image_pooler\.(.+)$"), r"image_pooler.\1"),
    (
        re.compile(r"^base_model\.model\.model\.vision_tower\.vision_tower\.vision_model\.embeddings\.position_ids$"),
        None,
    ),
    (
        re.compile(r"^base_model\.model\.model\.vision_tower\.vision_tower\.vision_model\.(.+)$"),
        r"vision_tower.vision_tower.\1",
    ),
    # transformers 4.31 kept a rotary embedding with these buffers in every LLaMA attention layer
    (
        re.compile(r"^base_model\.model\.model\.layers\.\d+\.self_attn\.rotary_emb\.(inv_freq|cos_cached|sin_cached)$"),
        None,
    ),
)


#: A CLIP layer's parameter in ``non_lora_trainables.bin`` (the reference saves the trained layers only).
_CLIP_LAYER = re.compile(
    r"^base_model\.model\.model\.vision_tower\.vision_tower\.vision_model\.encoder\.layers\.(\d+)\."
)


class ConversionError(cli.CommandError):
    """The released files do not fit the reference preset; the message names the file or the key."""


def is_reference_checkpoint(folder: Path) -> bool:
    """A folder in the released layout: none of our files and some of its (:func:`check_reference_folder`
    then names those missing)."""
    return not (folder / CONFIG_FILE).is_file() and any((folder / name).is_file() for name in REFERENCE_FILES)


def check_reference_folder(folder: Path, flag: str | None = None) -> tuple[dict, dict]:
    """``config.json`` and ``adapter_config.json`` of a released folder that has all of :data:`REFERENCE_FILES`."""
    cli.input_folder(folder, flag)
    missing = [name for name in REFERENCE_FILES if not (folder / name).is_file()]
    if missing:
        raise ConversionError(
            f"{cli.flagged(folder, flag)}: not the released checkpoint folder: no {', '.join(missing)}"
        )
    configs = []
    for name in REFERENCE_FILES[:2]:
        config = cli.read_json(folder / name, flag)
        if not isinstance(config, dict):
            raise ConversionError(f"{folder / name}: expected a JSON object, got {type(config).__name__}")
        configs.append(config)
    return configs[0], configs[1]


def map_key(key: str) -> str | None:
    """Our name for a reference key; ``None`` for a recomputed buffer; ConversionError if unknown."""
    for pattern, replacement in _KEY_RULES:
        if pattern.match(key):
            return None if replacement is None else pattern.sub(replacement, key)
    raise ConversionError(f"{REFERENCE_NON_LORA}: no place for key {key!r} in the reference preset")


def _with_adapter_name(key: str) -> str:
    """peft 0.4 saved LoRA keys without the adapter name that current peft puts in the module path."""
    return re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", key)


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, KeyError or UnpicklingError on a bad file
        gist = cli.one_line(error, gist=True)
        raise ConversionError(f"{path}: not a readable PyTorch weights file ({gist})") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ConversionError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def trained_clip_layers(non_lora: dict[str, torch.Tensor]) -> int:
    """The run's ``unfreeze_n_vision_tower_layers``, read from the saved keys: the reference saves exactly
    the CLIP layers it trained, the last N (layers 12-23 of 24 for its default 12)."""
    layers = sorted({int(match[1]) for key in non_lora if (match := _CLIP_LAYER.match(key))})
    if layers and layers != list(range(layers[0], layers[-1] + 1)):
        raise ConversionError(f"{REFERENCE_NON_LORA}: CLIP layers {layers} are not one window of last layers")
    return len(layers)


def model_config_from(llava: dict, adapter: dict, base: str, vision_tower: str | None) -> ModelConfig:
    """The reference preset with the released run's LoRA and vision settings (from its two JSON files)."""
    try:
        return ModelConfig(
            preset="reference",
            fusion_output="first_view",
            mask_extras=False,
            model_name_or_path=base,
            vision_tower=vision_tower or llava.get("mm_vision_tower", "openai/clip-vit-large-patch14-336"),
            mm_vision_select_layer=int(llava.get("mm_vision_select_layer", -2)),
            lora_r=int(adapter.get("r", 128)),
            lora_alpha=int(adapter.get("lora_alpha", 256)),
            lora_dropout=float(adapter.get("lora_dropout", 0.05)),
            bits=4,
            dtype="bfloat16",
        )
    except (TypeError, ValueError) as error:
        raise ConversionError(f"config.json / adapter_config.json: unusable value ({error})") from None


def _check_output(folder: Path, output: Path, config: ModelConfig, overwrite: bool) -> Path:
    """The overwrite rule of :mod:`egoexor.cli` (the base LLM's and CLIP's folders are inputs too), and no
    output inside the input folder (that would change it)."""
    models = [cli.local_path(config.model_name_or_path), cli.local_path(config.vision_tower)]
    output = cli.check_output(output, inputs=[folder, *models], overwrite=overwrite, owner=COMMAND)
    if folder.resolve() in output.resolve().parents:
        raise cli.CommandError(f"{output}: is inside the input folder {folder}; write the output elsewhere")
    return output


def convert(
    folder: str | Path,
    output: str | Path,
    base: str = DEFAULT_BASE,
    vision_tower: str | None = None,
    overwrite: bool = False,
    **model_overrides,
) -> dict[str, list[str]]:
    """Write an egoexor checkpoint for a released reference folder; returns what was mapped and skipped.

    Everything is checked before the model is built: the four files, the output rule (an existing
    ``output`` needs ``overwrite``), and that the base LLM and the CLIP tower can be loaded. How many of
    CLIP's last layers the run trained comes from the saved keys (:func:`trained_clip_layers`). The model
    is then built (``model_overrides`` may shrink it, e.g. ``bits=16``) to check every mapped tensor's
    shape against the reference preset before anything is written; ``output`` appears complete or not at all.
    """
    from safetensors.torch import save_file

    from egoexor.model.build import build_model

    folder, output = Path(folder), Path(output)
    llava, adapter_config = check_reference_folder(folder)
    config = dataclasses.replace(model_config_from(llava, adapter_config, base, vision_tower), **model_overrides)
    output = _check_output(folder, output, config, overwrite)
    cli.check_pretrained(config.model_name_or_path, "base LLM")
    cli.check_pretrained(config.vision_tower, "vision tower")
    non_lora = _load_bin(folder / REFERENCE_NON_LORA)
    adapter = _load_bin(folder / REFERENCE_ADAPTER)
    unfrozen = trained_clip_layers(non_lora)
    given = model_overrides.get("unfreeze_n_vision_tower_layers", unfrozen)
    if given != unfrozen:
        raise ConversionError(
            f"{REFERENCE_NON_LORA}: holds the last {unfrozen} CLIP layers, the run trained those; "
            f"unfreeze_n_vision_tower_layers={given} cannot load it"
        )
    config = dataclasses.replace(config, unfreeze_n_vision_tower_layers=unfrozen)
    model = build_model(config)
    ours = model.state_dict()
    mapped, skipped = {}, []
    for key, tensor in non_lora.items():
        name = map_key(key)
        if name is None:
            skipped.append(key)
            continue
        if name not in ours:
            raise ConversionError(f"{REFERENCE_NON_LORA}: key {key!r} maps to {name!r}, which the model lacks")
        if tuple(ours[name].shape) != tuple(tensor.shape):
            raise ConversionError(
                f"{REFERENCE_NON_LORA}: key {key!r} has shape {tuple(tensor.shape)}, the reference preset "
                f"expects {tuple(ours[name].shape)}"
            )
        mapped[name] = tensor.to(ours[name].dtype).contiguous()
    lora_names = {k for k in model.language_model.state_dict() if "lora_" in k}
    unknown = [key for key in adapter if _with_adapter_name(key) not in lora_names]
    if unknown:
        raise ConversionError(f"{REFERENCE_ADAPTER}: key {unknown[0]!r} matches no LoRA weight of the model")
    missing = lora_names - {_with_adapter_name(key) for key in adapter}
    if missing:
        raise ConversionError(f"{REFERENCE_ADAPTER}: lacks {len(missing)} LoRA weight(s), e.g. {sorted(missing)[0]!r}")
    adapter_ours = {key: tensor.contiguous() for key, tensor in adapter.items()}
    data = data_for_model(DataConfig(), config, model.vision_tower.vision_tower.config.image_size)
    with cli.output_folder(output, COMMAND) as temporary:  # files are fsynced and the folder renamed into place
        save_file(mapped, temporary / NON_LORA_FILE)
        save_file(adapter_ours, temporary / "adapter_model.safetensors")
        model.language_model.peft_config["default"].save_pretrained(temporary)
        atomic.write_json(temporary / CONFIG_FILE, checkpoint_config(config, data))
    return {"mapped": sorted(mapped), "adapter": sorted(adapter_ours), "recomputed_buffers": sorted(skipped)}


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog=f"python -m {COMMAND}", description=__doc__.splitlines()[0])
    released = "the released folder: " + ", ".join(REFERENCE_FILES)
    written = "egoexor checkpoint folder to write (replaced as a whole when complete)"
    parser.add_argument("input", type=Path, nargs="?", metavar="INPUT", help=f"{released} (or --checkpoint)")
    parser.add_argument("output", type=Path, nargs="?", metavar="OUTPUT", help=f"{written} (or --out)")
    parser.add_argument("--checkpoint", type=Path, default=None, help=f"{released}, as INPUT")
    parser.add_argument("--out", type=Path, default=None, help=f"{written}, as OUTPUT")
    parser.add_argument("--base", default=DEFAULT_BASE, help="base LLM the adapter belongs to (hub name or folder)")
    parser.add_argument("--vision_tower", default=None, help="CLIP tower (default: the one config.json names)")
    cli.add_overwrite_flag(parser)
    return parser


def _given(positional: Path | None, flagged: Path | None, name: str, flag: str) -> Path:
    """A path given as a positional argument or by the flag the other commands use, not both."""
    if positional is not None and flagged is not None:
        raise cli.CommandError(f"{name} {positional} and {flag} {flagged}: give one of them")
    if positional is None and flagged is None:
        raise cli.CommandError(f"{flag} (or {name}) is required (see --help)")
    return positional if positional is not None else flagged


def _run(args) -> int:
    folder = _given(args.input, args.checkpoint, "INPUT", "--checkpoint")
    output = _given(args.output, args.out, "OUTPUT", "--out")
    report = convert(folder, output, args.base, args.vision_tower, overwrite=args.overwrite)
    print(
        f"wrote {output}: {len(report['mapped'])} tensors mapped, {len(report['adapter'])} LoRA tensors, "
        f"{len(report['recomputed_buffers'])} recomputed buffers skipped"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, 130 after Ctrl-C)."""
    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
