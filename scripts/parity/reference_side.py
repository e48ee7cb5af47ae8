"""The reference's half of the parity check: runs ardamamur/EgoExOR's own code on given inputs.

Run by ``scripts/check_reference_parity.py`` under the reference's pinned environment
(transformers 4.31, peft 0.4; see README, "Checking parity with the reference"), never under
egoexor's. It imports the reference from the user's own checkout (``--reference-src``) and only
stubs, at run time, what the reference imports but a CPU machine cannot provide or does not need
here: ``deepspeed`` (its ZeRO helpers see no ZeRO parameters), ``flash_attn`` (imported by PTv3's
module; the checks run no point cloud through PTv3), ``open3d``/``torchaudio``/``torch_scatter``
(imported, unused on these paths), ``pytorch_lightning.seed_everything`` (what it seeds), CLAP
(the per-sample check compares the audio *input* to CLAP) and ``torch.device('cuda')`` inside the
fusion module (mapped to the CPU). Nothing of the checkout is modified: its ``config.yaml`` (which
the reference rewrites on disk) is read from a private copy.

Each subcommand reads a JSON job and writes its results with ``torch.save``::

    python reference_side.py --reference-src CHECKOUT JOB.json
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import random
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audio_stand_in  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Run-time stubs for what the reference imports


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def install_stubs() -> None:
    import transformers  # noqa: F401  (first: it must see the real set of installed packages)

    class ZeroParamStatus:  # deepspeed's enum; no parameter here is ZeRO-partitioned (no ``ds_id``)
        NOT_AVAILABLE = "not available"

    _module("deepspeed", zero=types.SimpleNamespace(GatheredParameters=None))
    _module("deepspeed.runtime")
    _module("deepspeed.runtime.zero")
    _module("deepspeed.runtime.zero.partition_parameters", ZeroParamStatus=ZeroParamStatus)
    _module("open3d")
    _module("torchaudio")
    _module("flash_attn")  # PTv3 asserts it imports; no point cloud reaches PTv3 in these checks
    _module("torch_scatter")

    def seed_everything(seed: int, workers: bool = False) -> int:  # pytorch_lightning's, on the CPU
        os.environ["PL_GLOBAL_SEED"] = str(seed)
        os.environ["PL_SEED_WORKERS"] = str(int(workers))
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        return seed

    _module("pytorch_lightning", seed_everything=seed_everything)


class _CpuTorch(types.ModuleType):
    """``torch`` as the fusion module sees it, with ``torch.device('cuda')`` meaning the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def device(kind, *args):
        return torch.device("cpu" if str(kind).startswith("cuda") else kind, *args)


def import_reference(src: Path, workdir: Path):
    """The reference's modules, imported from the checkout with the stubs installed."""
    install_stubs()
    sgg = src / "scene_graph_generation"
    for path in (src, sgg, sgg / "LLaVA"):
        sys.path.insert(0, str(path))
    # The reference reads (and its train() rewrites) helpers/config.yaml: give it a private copy.
    from scene_graph_generation.helpers import config_utils

    private = workdir / "reference_config.yaml"
    shutil.copyfile(sgg / "helpers" / "config.yaml", private)
    original_init = config_utils.ConfigManager.__init__

    def init(self, config_path=None):
        original_init(self, config_path or str(private))

    config_utils.ConfigManager.__init__ = init
    from llava.model.multimodal_projector import builder

    builder.torch = _CpuTorch()
    from llava.train import train as reference_train

    return reference_train


# --------------------------------------------------------------------------------------------------
# The model, built as the reference's train() builds it


def write_tiny_clip(folder: Path, layers: int) -> None:
    """A randomly initialised CLIP vision tower at ViT-L/14-336's width and input size, few layers."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=layers,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(folder)


def _tiny_llava(job: dict, workdir: Path):
    """The tiny CLIP folder (written once) and the ``LlavaConfig`` of the job's small LLM on it."""
    from llava.model import LlavaConfig

    clip = workdir / "clip"
    if not clip.exists():
        write_tiny_clip(clip, job["clip_layers"])
    config = LlavaConfig(
        **job["llm_config"],
        mm_vision_tower=str(clip),
        mm_hidden_size=1024,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
    )
    return clip, config


def _with_lora_and_vision(ref, model, job: dict, clip):
    """The reference's training setup of a built model: LoRA on every linear layer, then its vision modules
    (CLIP tower, pooler, projector) by ``initialize_vision_modules``; the model and those module arguments."""
    from peft import LoraConfig, get_peft_model

    model.config.use_cache = False
    model.config.mv_type = "learned"
    lora = LoraConfig(
        r=job["lora_r"],
        lora_alpha=job["lora_alpha"],
        target_modules=ref.find_all_linear_names(model),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model_args = types.SimpleNamespace(
        vision_tower=str(clip),
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None,
        mm_projector_type="mlp2x_gelu",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        tune_mm_mlp_adapter=False,
    )
    model.get_model().initialize_vision_modules(model_args=model_args, fsdp=None)
    return model, model_args


def build_reference_model(ref, job: dict, workdir: Path):
    """``LlavaLlamaForCausalLM`` with vision modules, LoRA and unfrozen CLIP layers, as train() does."""
    from llava.model import LlavaLlamaForCausalLM

    clip, config = _tiny_llava(job, workdir)
    torch.manual_seed(1)
    model = LlavaLlamaForCausalLM(config)
    model, model_args = _with_lora_and_vision(ref, model, job, clip)
    for layer in model.get_vision_tower().vision_tower.vision_model.encoder.layers[-job["unfreeze"] :]:
        for parameter in layer.parameters():
            parameter.requires_grad = True
    tokenizer = None
    if job.get("tokenizer"):  # with no <im_patch>/<im_start> tokens the tokenizer is left as it is
        tokenizer = reference_tokenizer(job["tokenizer"])
        model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)
    return model.float(), tokenizer


def reference_tokenizer(folder: str):
    """The slow LLaMA tokenizer with the reference's settings (train.py: use_fast=False, pad = unk)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=False, model_max_length=2048, padding_side="right")
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def load_weights(model, path: str) -> dict:
    """egoexor's weights (in the reference's names) into the reference model; returns what stayed unset."""
    state = torch.load(path, map_location="cpu")
    result = model.load_state_dict(state, strict=False)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


def build_reference_from_pretrained(ref, job: dict, workdir: Path):
    """The reference model as ``train()`` builds it for training: ``from_pretrained`` of a LLaVA base
    (here a tiny one written first, with no pooler, projector or CLIP weights: they are not in a LLaVA
    base and none in this one), LoRA, ``initialize_vision_modules``, the BERT re-initialisation and
    PTv3's ``_init_weights`` (in a scratch working directory: it loads or saves its draw there).

    ``low_cpu_mem_usage`` is what the 4-bit run's ``device_map`` implies; the quantisation itself, the
    dtype casts and ``prepare_model_for_kbit_training`` change no initial value but by rounding."""
    from llava.model import LlavaLlamaForCausalLM

    clip, config = _tiny_llava(job, workdir)
    base = workdir / "llava_base"
    torch.manual_seed(1)
    skipped = ("model.image_pooler.", "model.mm_projector.", "model.vision_tower.")
    written = LlavaLlamaForCausalLM(config)
    state = {key: value for key, value in written.state_dict().items() if not key.startswith(skipped)}
    written.save_pretrained(base, state_dict=state, safe_serialization=False)
    del written
    torch.manual_seed(2)
    model = LlavaLlamaForCausalLM.from_pretrained(str(base), low_cpu_mem_usage=job.get("low_cpu_mem_usage", True))
    model, model_args = _with_lora_and_vision(ref, model, job, clip)
    pooler = model.get_model().image_pooler
    pooler.bert = pooler.bert.apply(pooler.bert._init_weights)  # train.py, "reinitialize image_pooler"
    scratch = workdir / "ptv3_cwd"
    (scratch / "llava" / "model" / "multimodal_projector").mkdir(parents=True, exist_ok=True)
    saved = Path.cwd()
    os.chdir(scratch)
    try:
        pooler.point_transformer._init_weights(dtype=torch.float32, device="cpu")
    finally:
        os.chdir(saved)
    return model


# --------------------------------------------------------------------------------------------------
# Jobs


def job_checkpoint(ref, job: dict, workdir: Path) -> dict:
    """A checkpoint folder written by the reference's own save code (its SaveCallback's three calls)."""
    model, _ = build_reference_model(ref, job, workdir)
    if job.get("weights"):
        load_weights(model, job["weights"])
    out = Path(job["out"])
    state_dict = ref.get_peft_state_maybe_zero_3(model.named_parameters(), "none")
    non_lora = ref.get_peft_state_non_lora_maybe_zero_3_extended(model)
    model.config.save_pretrained(out)
    model.save_pretrained(out, state_dict=state_dict)
    torch.save(non_lora, out / "non_lora_trainables.bin")
    return {"non_lora_keys": sorted(non_lora), "adapter_keys": sorted(state_dict)}


def _reference_dataset(ref, job: dict, tokenizer):
    from transformers import CLIPImageProcessor

    class Clap:  # CLAP stands in for the check: its "features" are what the reference feeds CLAP
        @classmethod
        def from_pretrained(cls, name):
            return cls()

        def eval(self):
            return self

        def parameters(self):
            return iter(())

        def __call__(self, audios, return_tensors, sampling_rate):
            return {"input_features": torch.as_tensor(audios)}

        def get_audio_features(self, input_features):
            if not job.get("audio_stand_in"):
                return input_features
            return torch.stack([torch.from_numpy(audio_stand_in.embed(row.numpy())) for row in input_features])

    ref.ClapModel = ref.ClapProcessor = Clap
    data_args = types.SimpleNamespace(
        data_path=job["samples"],
        hdf5_path=job["hdf5"],
        do_img_order_augment=False,
        do_multimodal_augment=False,
        multimodal_drop_prop=0.0,
        do_augment=False,
        image_processor=CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        dataset_name="egoexor",
        is_multimodal=True,
        mm_use_im_start_end=False,
        image_aspect_ratio="pad",
        ego_sources=job["ego_sources"],
        exo_sources=job["exo_sources"],
        egocentric_features=["gaze", "gaze_depth", "hand"],
        exocentric_features=job.get("exocentric_features", ["audio", "point_cloud"]),
    )
    from llava import conversation as conversation_lib

    conversation_lib.default_conversation = conversation_lib.conv_templates["vicuna_v1"]
    return ref.LazySupervisedDataset(job["samples"], job["hdf5"], tokenizer, data_args), data_args


def _item_record(item: dict) -> dict:
    record = {"input_ids": item["input_ids"], "labels": item["labels"]}
    for branch in ("ego", "exo"):
        if f"{branch}_frames" in item and item[f"{branch}_frames"] is not None:
            record[f"{branch}_frames"] = item[f"{branch}_frames"].float()
            record[f"{branch}_source_names"] = list(item[f"{branch}_source_names"])
    for modality, key in (
        ("eye_gaze", "data"),
        ("eye_gaze_depth", "data"),
        ("hand_tracking", "data"),
        ("point_cloud", "data"),
        ("audio", "data"),
    ):
        value = item.get(modality)
        if value is not None:
            record[modality] = value[key].float()
    if item.get("hand_tracking") is not None:
        record["hand_mask"] = item["hand_tracking"]["mask"]
    return record


def job_items(ref, job: dict, workdir: Path) -> dict:
    """Per-sample tensors of the reference's training Dataset, one seeded draw per sample."""
    tokenizer = reference_tokenizer(job["tokenizer"])
    dataset, _ = _reference_dataset(ref, job, tokenizer)
    records = []
    for index in range(len(dataset)):
        random.seed(index)
        records.append(_item_record(dataset[index]))
    return {"items": records}


def _inference_prompt(record: dict) -> str:
    """The reference's inference prompt: vicuna_v1 with the sample's own role names (human/gpt)."""
    from llava.conversation import conv_templates

    conversation = conv_templates["vicuna_v1"].copy()
    conversation.append_message(record["conversations"][0]["from"], record["conversations"][0]["value"])
    conversation.append_message(record["conversations"][1]["from"], None)
    return conversation.get_prompt()


def job_tokens(ref, job: dict, workdir: Path) -> dict:
    """Training ids/labels (``preprocess``) and inference prompt ids (``tokenizer_image_token``)."""
    from llava import conversation as conversation_lib
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    tokenizer = reference_tokenizer(job["tokenizer"])
    conversation_lib.default_conversation = conversation_lib.conv_templates["vicuna_v1"]
    out = []
    for record in json.loads(Path(job["samples"]).read_text())[: job["limit"]]:
        has_image = "<image>" in record["conversations"][0]["value"]
        sources = ref.preprocess_multimodal(
            [record["conversations"]], types.SimpleNamespace(is_multimodal=True, mm_use_im_start_end=False)
        )
        data = ref.preprocess(sources, tokenizer, has_image=has_image)
        prompt = tokenizer_image_token(_inference_prompt(record), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        out.append(
            {
                "id": record["id"],
                "input_ids": data["input_ids"][0],
                "labels": data["labels"][0],
                "inference_ids": prompt,
            }
        )
    return {"records": out}


def job_merge(ref, job: dict, workdir: Path) -> dict:
    """The reference's merge_h5.py, run as its README says."""
    import runpy

    argv = [
        "merge_h5.py",
        "--data_dir",
        job["data_dir"],
        "--input_files",
        *job["input_files"],
        "--splits_file",
        job["splits_file"],
        "--output_file",
        job["out"],
    ]
    saved, sys.argv = sys.argv, argv
    try:
        runpy.run_path(str(Path(job["reference_src"]) / "data" / "utils" / "merge_h5.py"), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code:
            raise
    finally:
        sys.argv = saved
    return {"out": job["out"]}


def job_samples(ref, job: dict, workdir: Path) -> dict:
    """The reference's sample generator (its main(): seed 42, config file, tokenizer) on a merged file."""
    import transformers
    from scene_graph_prediction.llava_helpers import generate_dataset_format_for_llava as generator

    config = json.loads(
        (
            Path(job["reference_src"])
            / "scene_graph_generation"
            / "scene_graph_prediction"
            / "scene_graph_helpers"
            / "configs"
            / "egoexor.json"
        ).read_text()
    )
    config["split"] = job["split"]
    config["preprocessing"]["n_permutations"] = job["n_permutations"]
    config["output"]["output_dir"] = job["out"]
    generator.config_loader = lambda name: config
    original = transformers.AutoTokenizer.from_pretrained
    transformers.AutoTokenizer.from_pretrained = lambda name, **kwargs: original(job["tokenizer"], **kwargs)
    saved, sys.argv = sys.argv, ["generate", "--hdf5_path", job["hdf5"], "--dataset_name", "egoexor"]
    try:
        generator.main()
    finally:
        sys.argv = saved
        transformers.AutoTokenizer.from_pretrained = original
    return {"files": sorted(str(p) for p in Path(job["out"]).iterdir())}


def as_float32(value):
    """Every floating tensor in a (nested) batch as float32, values unchanged."""
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {key: as_float32(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_float32(item) for item in value]
    return value


def job_forward(ref, job: dict, workdir: Path) -> dict:
    """Logits (float32) of the reference model on a batch its own Dataset and collator build, and
    20 greedy ids per sample from its ``generate`` on the inference prompt (batch of one, as its
    inference code runs with batch size 1)."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    model, tokenizer = build_reference_model(ref, job, workdir)
    unset = load_weights(model, job["weights"])
    model.eval()
    # The Dataset returns bf16 tensors, and the pooler casts audio embeddings to bf16, for a model that
    # train.py casts to bf16. This check runs the model in float32: the same values reach it as float32
    # (a lossless cast: the batch and the stand-in embeddings hold bf16 values).
    model.get_model().image_pooler.audio_projector.register_forward_pre_hook(lambda module, args: (args[0].float(),))
    dataset, data_args = _reference_dataset(ref, job, tokenizer)
    collator = ref.DataCollatorForSupervisedDataset(tokenizer=tokenizer, data_args=data_args)
    items = []
    for index in job["indices"]:
        random.seed(index)
        items.append(dataset[index])
    batch = as_float32(collator(items))
    names = {key: batch.pop(key, None) for key in ("ego_source_names", "exo_source_names")}
    with torch.no_grad():
        output = model(**batch)
    generated = []
    for index, item in zip(job["indices"], items, strict=True):
        prompt = tokenizer_image_token(
            _inference_prompt(dataset.list_data_dict[index]), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt"
        )[None]
        single = as_float32(
            {
                key: [value]
                for key, value in item.items()
                if key not in ("input_ids", "labels") and not key.endswith("source_names")
            }
        )
        model.config.use_cache = True
        with torch.inference_mode():
            ids = model.generate(
                input_ids=prompt,
                max_new_tokens=job["new_tokens"],
                do_sample=False,
                num_beams=1,
                use_cache=True,
                **single,
            )
        generated.append(ids[0, prompt.shape[1] :])
    return {
        "logits": output.logits.float(),
        "labels": output["modified_labels"],
        "unset": unset,
        "items": [_item_record(item) for item in items],
        "names": names,
        "generated": generated,
    }


def job_init(ref, job: dict, workdir: Path) -> dict:
    """Per-parameter statistics of the pooler and projector of the model as training builds it."""
    import init_stats

    model = build_reference_from_pretrained(ref, job, workdir)
    prefixes = ("base_model.model.model.image_pooler.", "base_model.model.model.mm_projector.")
    named = [(name, p) for name, p in model.named_parameters() if name.startswith(prefixes)]
    return {"statistics": init_stats.statistics(named)}


JOBS = {
    "checkpoint": job_checkpoint,
    "items": job_items,
    "tokens": job_tokens,
    "forward": job_forward,
    "merge": job_merge,
    "samples": job_samples,
    "init": job_init,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-src", type=Path, required=True, help="checkout of ardamamur/EgoExOR")
    parser.add_argument("job", type=Path, help="JSON job: {'kind': ..., 'result': PATH, ...}")
    args = parser.parse_args()
    job = json.loads(args.job.read_text())
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(job.get("workdir") or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        ref = import_reference(args.reference_src.resolve(), workdir)
        result = JOBS[job["kind"]](ref, job, workdir)
    torch.save(result, job["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
