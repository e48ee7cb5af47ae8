"""Build the model from a :class:`~egoexor.config.ModelConfig`: LLM (4/8/16-bit), LoRA, CLIP, fusion, projector.

LLM checkpoints are read in three layouts:

* ``liuhaotian/llava-v1.5-*`` (``LlavaLlamaForCausalLM``, the reference's base): the LLaMA weights
  load into ``LlamaForCausalLM``; its pretrained ``model.mm_projector.*`` initialises our projector,
  as in the reference;
* ``llava-hf/llava-1.5-*`` (``LlavaForConditionalGeneration``): the language model's weights are
  mapped onto ``LlamaForCausalLM``; ``multi_modal_projector.linear_{1,2}`` initialise the projector;
* any other causal LM (``AutoModelForCausalLM``): the projector starts random.

Trainable: LoRA on every linear layer of the LLM except ``lm_head``, the projector, the branch fusion
(``image_pooler``: fusion encoders, gaze/hand/audio encoders, ``project_pc``; PTv3 itself only with
``train_point_transformer``) and the last CLIP layers (``unfreeze_n_vision_tower_layers``).
Trainable weights, LoRA adapters included, are kept in ``trainable_dtype`` (float32 master copies by default).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file, save_model
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)
from transformers.utils import SAFE_WEIGHTS_NAME, cached_file

from egoexor import atomic, cpus
from egoexor.config import CONFIG_FILE, NON_LORA_FILE, DataConfig, ModelConfig, read_checkpoint_config
from egoexor.model.egoexor_llava import EgoExorLlava, mlp2x_gelu
from egoexor.model.fusion import BranchFusion
from egoexor.model.vision import CLIPVisionTower

logger = logging.getLogger(__name__)

#: Projector keys in the two LLaVA layouts -> our ``mm_projector`` keys.
_PROJECTOR_KEYS = {
    "llava-v1.5": {
        "model.mm_projector.0.weight": "0.weight",
        "model.mm_projector.0.bias": "0.bias",
        "model.mm_projector.2.weight": "2.weight",
        "model.mm_projector.2.bias": "2.bias",
    },
    "llava-hf": {
        "multi_modal_projector.linear_1.weight": "0.weight",
        "multi_modal_projector.linear_1.bias": "0.bias",
        "multi_modal_projector.linear_2.weight": "2.weight",
        "multi_modal_projector.linear_2.bias": "2.bias",
    },
}
#: llava-hf language-model keys (older and newer transformers) -> LlamaForCausalLM keys.
_LLAVA_HF_KEY_MAPPING = {
    r"^language_model\.model\.": "model.",
    r"^model\.language_model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
}


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def checkpoint_layout(config_dict: dict) -> str:
    """``llava-v1.5``, ``llava-hf`` or ``causal-lm`` from a checkpoint's ``config.json``."""
    architectures = config_dict.get("architectures") or []
    if "LlavaLlamaForCausalLM" in architectures or (
        config_dict.get("model_type") == "llava" and "mm_projector_type" in config_dict
    ):
        return "llava-v1.5"
    if "LlavaForConditionalGeneration" in architectures:
        return "llava-hf"
    return "causal-lm"


def _read_config(name_or_path: str) -> dict:
    try:
        path = cached_file(name_or_path, "config.json")
        if path is None:  # transformers 5: a local folder without the file
            raise OSError(f"no config.json in {name_or_path}")
        return json.loads(Path(path).read_text())
    except OSError as error:
        raise OSError(f"cannot read the LLM checkpoint {name_or_path!r}: {error}") from error


def _checkpoint_tensors(name_or_path: str, keys: set[str]) -> dict[str, torch.Tensor]:
    """The named tensors of a (possibly sharded) safetensors or PyTorch checkpoint."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = cached_file(name_or_path, index_name, _raise_exceptions_for_missing_entries=False)
        if index is not None:
            weight_map = json.loads(Path(index).read_text())["weight_map"]
            files = sorted({weight_map[k] for k in keys if k in weight_map})
        else:
            files = [single] if cached_file(name_or_path, single, _raise_exceptions_for_missing_entries=False) else []
        found: dict[str, torch.Tensor] = {}
        for file in files:
            path = cached_file(name_or_path, file)
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(path, framework="pt") as handle:
                    found.update({k: handle.get_tensor(k) for k in keys if k in handle.keys()})
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                found.update({k: state[k] for k in keys if k in state})
        if files:
            return found
    return {}


def _quantization(config: ModelConfig) -> BitsAndBytesConfig | None:
    if config.bits == 16:
        return None
    if config.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_torch_dtype(config.dtype),
    )


def load_language_model(config: ModelConfig) -> tuple[PreTrainedModel, dict[str, torch.Tensor] | None]:
    """The causal LM (quantised as configured) and, for LLaVA checkpoints, their projector weights."""
    if config.llm_config is not None:
        model = LlamaForCausalLM(LlamaConfig(**config.llm_config))
        if config.bits == 16:
            return model.to(_torch_dtype(config.dtype)), None
        with tempfile.TemporaryDirectory() as folder:  # quantisation happens in from_pretrained
            # written by hand: save_pretrained writes on rank 0 only, and every rank needs its own copy
            model.config.save_pretrained(folder)
            save_model(model, os.path.join(folder, SAFE_WEIGHTS_NAME))
            return _load(folder, "causal-lm", config), None
    name = str(config.model_name_or_path)
    layout = checkpoint_layout(_read_config(name))
    model = _load(name, layout, config)
    projector = None
    if layout in _PROJECTOR_KEYS:
        mapping = _PROJECTOR_KEYS[layout]
        tensors = _checkpoint_tensors(name, set(mapping))
        if len(tensors) == len(mapping):
            projector = {mapping[k]: v for k, v in tensors.items()}
        else:
            logger.warning("%s: no pretrained projector weights found; the projector starts random", name)
    return model, projector


def _load(name: str, layout: str, config: ModelConfig) -> PreTrainedModel:
    kwargs = {"dtype": _torch_dtype(config.dtype), "quantization_config": _quantization(config)}
    try:
        if layout == "llava-v1.5":
            llama_config = LlamaConfig.from_dict(_read_config(name))
            model = LlamaForCausalLM.from_pretrained(name, config=llama_config, **kwargs)
        elif layout == "llava-hf":
            text_config = AutoConfig.from_pretrained(name).text_config
            model = LlamaForCausalLM.from_pretrained(
                name, config=text_config, key_mapping=_LLAVA_HF_KEY_MAPPING, **kwargs
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as error:
        raise OSError(f"cannot load the LLM {name!r}: {error}") from error
    # EgoExorLlava.generate decodes greedily: a checkpoint's generation_config.json (sampling, penalties,
    # forced tokens) would otherwise fill every setting it leaves unset
    model.generation_config = GenerationConfig()
    return model


def lora_target_modules(model: nn.Module) -> list[str]:
    """Names of every linear layer of the LLM except ``lm_head`` (the reference's ``find_all_linear_names``)."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    names.discard("lm_head")
    return sorted(names)


def _add_lora(model: PreTrainedModel, config: ModelConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.bits in (4, 8):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias="none",
        target_modules=lora_target_modules(model),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    # peft makes the adapters float32; with trainable_dtype bfloat16 they are bf16 like every other trainable
    # weight, as the reference's were (train.py casts the LLM to bf16 before adding LoRA in 16-bit mode and
    # every LoRA layer to bf16 in 4/8-bit mode)
    dtype = _torch_dtype(config.trainable_dtype)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):
            module.to(dtype)
    return model


def build_model(config: ModelConfig) -> EgoExorLlava:
    """The complete model with its trainable set marked; logs a parameter summary table.

    Random initialisation is seeded by ``config.init_seed`` (without touching the global RNG). Every command
    that runs a model builds it here, so this is where torch's threads are fitted to the CPUs the process may
    use (:func:`egoexor.cpus.limit_torch_threads`).
    """
    cpus.limit_torch_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.init_seed)
        return _build_model(config)


def _build_model(config: ModelConfig) -> EgoExorLlava:
    language_model, projector_state = load_language_model(config)
    if config.lora_enable:
        language_model = _add_lora(language_model, config)
    else:
        language_model.requires_grad_(False)
    trainable_dtype = _torch_dtype(config.trainable_dtype)
    vision = CLIPVisionTower.from_name_or_config(
        config.vision_config if config.vision_config is not None else config.vision_tower,
        config.mm_vision_select_layer,
        config.unfreeze_n_vision_tower_layers,
        dtype=trainable_dtype,
    )
    fusion = BranchFusion(config, vision.hidden_size)
    projector = mlp2x_gelu(vision.hidden_size, language_model.config.hidden_size)
    if projector_state is not None:
        projector.load_state_dict(projector_state)
    fusion.to(trainable_dtype)
    if fusion.point_transformer is not None:
        fusion.point_transformer.float()  # PTv3 runs in float32, as in the reference
    model = EgoExorLlava(language_model, vision, fusion, projector.to(trainable_dtype))
    if config.preset == "reference":
        reference_init(model, language_model.config.initializer_range, projector_loaded=projector_state is not None)
    logger.info("parameters:\n%s", parameter_summary(model))
    return model


def reference_init(model: EgoExorLlava, std: float, projector_loaded: bool) -> None:
    """The reference's initial values where they are not PyTorch's: N(0, ``std``) weights and zero biases in
    the gaze and hand encoders, ``audio_projector`` and (when no checkpoint gave it) ``mm_projector``.

    The reference builds its pooler and projector inside ``LlavaLlamaForCausalLM.from_pretrained``; every
    ``nn.Linear`` the LLaVA base checkpoint lacks then gets the LLaMA ``_init_weights`` (N(0,
    ``initializer_range``), zero bias), which overrides the xavier init written in ``gaze.py``/``hand.py``
    and PyTorch's default elsewhere (``../shared/reference/model.md`` section 2.1). Its BERT and PTv3 are
    re-initialised afterwards by their own ``_init_weights``, as egoexor builds them, so they are left alone.
    ``scripts/check_reference_parity.py`` (``init``) compares every pooler and projector tensor's statistics
    with the reference's own build.
    """
    pooler = model.image_pooler
    modules = [pooler.gaze_encoder, pooler.hand_encoder, pooler.audio_projector]
    if not projector_loaded:
        modules.append(model.mm_projector)
    with torch.no_grad():
        for module in modules:
            for linear in () if module is None else module.modules():
                if isinstance(linear, nn.Linear):
                    nn.init.normal_(linear.weight, mean=0.0, std=std)
                    if linear.bias is not None:
                        nn.init.zeros_(linear.bias)


def _parts(model: EgoExorLlava) -> dict[str, list[nn.Parameter]]:
    parts: dict[str, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if name.startswith("language_model."):
            part = "LoRA" if "lora_" in name else "language model"
        elif name.startswith("image_pooler.point_transformer."):
            part = "point cloud projection" if ".project_pc." in name else "point transformer"
        elif name.startswith("image_pooler.") and "bert." in name:
            part = "fusion encoders"
        elif name.startswith("image_pooler.output_"):
            part = "fusion output slots"
        elif name.startswith("image_pooler."):
            part = "gaze/hand/audio encoders"
        else:
            part = name.split(".", 1)[0].replace("_", " ")
        parts.setdefault(part, []).append(parameter)
    return parts


def parameter_summary(model: EgoExorLlava) -> str:
    """A table of trainable and frozen parameters per part (quantised weights counted as stored)."""
    lines = ["| part | trainable | frozen |", "|---|---:|---:|"]
    totals = [0, 0]
    for part, parameters in _parts(model).items():
        trainable = sum(p.numel() for p in parameters if p.requires_grad)
        frozen = sum(p.numel() for p in parameters if not p.requires_grad)
        totals[0] += trainable
        totals[1] += frozen
        lines.append(f"| {part} | {trainable:,} | {frozen:,} |")
    lines.append(f"| total | {totals[0]:,} | {totals[1]:,} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Checkpoints: what training writes and inference reads


def _non_lora_state(model: EgoExorLlava) -> dict[str, torch.Tensor]:
    """Trained weights outside LoRA, plus the PTv3 draw (a random frozen encoder must be kept too)."""
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return {
        name: tensor.detach().contiguous().cpu()
        for name, tensor in model.state_dict().items()
        if "lora_" not in name and (name in trained or name.startswith("image_pooler.point_transformer."))
    }


def save_checkpoint(model: EgoExorLlava, output: Path, config: dict) -> None:
    """Adapter + ``non_lora_trainables.safetensors`` + ``egoexor_config.json`` (``config``) into ``output``.

    The two egoexor files are written atomically (:mod:`egoexor.atomic`): never seen half-written, and
    flushed to disk. peft writes the adapter files itself; training writes a whole checkpoint in a
    staging folder and renames it when complete (``egoexor.train``).
    """
    output.mkdir(parents=True, exist_ok=True)
    if hasattr(model.language_model, "peft_config"):
        model.language_model.save_pretrained(output)
    with atomic.atomic_output(output / NON_LORA_FILE) as temporary:
        save_file(_non_lora_state(model), temporary)
    atomic.write_json(output / CONFIG_FILE, config)


def load_checkpoint_weights(model: EgoExorLlava, checkpoint: Path) -> None:
    """Restore the adapter and every non-LoRA trained weight saved by :func:`save_checkpoint`."""
    non_lora = checkpoint / NON_LORA_FILE
    if not non_lora.is_file():
        raise FileNotFoundError(f"{checkpoint}: no {NON_LORA_FILE} (not an egoexor checkpoint)")
    if hasattr(model.language_model, "peft_config"):
        from peft import set_peft_model_state_dict

        adapter = checkpoint / "adapter_model.safetensors"
        if not adapter.is_file():
            raise FileNotFoundError(f"{checkpoint}: no adapter_model.safetensors")
        result = set_peft_model_state_dict(model.language_model, load_file(adapter))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{adapter}: unexpected keys {result.unexpected_keys[:3]}")
    state = load_file(non_lora)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{non_lora}: keys the model does not have, e.g. {unexpected[:3]}")
    expected = set(_non_lora_state(model))
    absent = expected - set(state)
    if absent:
        raise ValueError(f"{non_lora}: lacks {len(absent)} trained weight(s), e.g. {sorted(absent)[:3]}")


def load_trained(checkpoint: str | Path, **overrides) -> tuple[EgoExorLlava, DataConfig]:
    """A trained model from a checkpoint folder (and its data configuration).

    ``overrides`` replace model-config fields, e.g. ``bits=16`` to run a 4-bit-trained model on
    bf16 weights at inference, as the reference did.
    """
    model_config, data_config = read_checkpoint_config(checkpoint, **overrides)
    model = build_model(model_config)
    load_checkpoint_weights(model, Path(checkpoint))
    return model, data_config
