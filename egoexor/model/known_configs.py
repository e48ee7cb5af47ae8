"""Architectures of the pretrained models the recipe names, so that their full-size shapes can be built
without a download (``python -m egoexor.inspect_model --meta``).

Each dict holds the values of the checkpoint's own ``config.json`` on the Hugging Face hub that decide
parameter shapes and memory; fields left out keep the transformers defaults, which are the checkpoints'
values for everything that does not change a shape.

* ``liuhaotian/llava-v1.5-7b`` (``LlavaLlamaForCausalLM``): a LLaMA-2-7B body (Vicuna-7B v1.5), the base
  of the recipe. ``llava-hf/llava-1.5-7b-hf`` carries the same language model under ``text_config``.
* ``openai/clip-vit-large-patch14-336``: the ``vision_config`` of that CLIP checkpoint (ViT-L/14 at 336 px).
* ``laion/larger_clap_general``: runs frozen in the data pipeline (``egoexor.data.audio``), outside the
  model; the model sees only its audio embedding, ``projection_dim`` = 512 numbers (``ModelConfig.audio_dim``).
"""

from __future__ import annotations

LLAVA_V15_7B_LLM = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}

CLIP_VIT_L_14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

#: ``projection_dim`` of ``laion/larger_clap_general``: the size of the audio embedding the model reads.
CLAP_EMBEDDING_DIM = 512

#: LLM checkpoint names -> their ``LlamaConfig`` values.
KNOWN_LLMS = {"liuhaotian/llava-v1.5-7b": LLAVA_V15_7B_LLM, "llava-hf/llava-1.5-7b-hf": LLAVA_V15_7B_LLM}
#: Vision tower names -> their ``CLIPVisionConfig`` values.
KNOWN_VISION_TOWERS = {"openai/clip-vit-large-patch14-336": CLIP_VIT_L_14_336}
#: Audio encoder names -> the size of their embedding.
KNOWN_AUDIO_ENCODERS = {"laion/larger_clap_general": CLAP_EMBEDDING_DIM}
