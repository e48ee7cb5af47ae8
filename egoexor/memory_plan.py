"""GPU memory and compute of the full-size recipe, calculated from shapes: a plan, not a measurement.

No GPU has run this code. Every number here is calculated by the formulas below from the model's shapes
(:class:`Shapes`), the bytes of its weights as trained (:mod:`egoexor.model.footprint`) and a workload
(:class:`TrainingWorkload`, :class:`InferenceWorkload`). The assumptions, each a named constant or field:

* bf16 autocast (``--bf16 True``): a matmul's inputs are cast to bf16 (2 bytes, :data:`ACTIVATION_BYTES`)
  and kept for backward, once per matmul; float32 trainable weights are cast once per forward and the
  copies are kept for backward too. Normalisation layers run in float32 and the residual stream keeps the
  dtype of the weights around it: ``trainable_dtype`` for CLIP, fusion and projector; float32 for the LLM
  under 4/8 bits + LoRA, because peft's ``prepare_model_for_kbit_training`` upcasts its embeddings and
  norms, and a bitsandbytes layer returns its input's dtype (so the LLM's MLP intermediates are float32 too).
* The layer formulas count the tensors autograd keeps, one by one (:func:`clip_layer_bytes`,
  :func:`bert_layer_bytes`, :func:`llama_layer_bytes`). ``scripts/full_width_cpu.py`` measures them on a
  CPU at full width and they agree there (CPU kernels differ in two places that the comparison accounts
  for: float32 dropout masks, and the math attention path for the masked fusion encoders).
* Attention runs in a fused SDPA kernel (flash or memory-efficient) that keeps no sequence x sequence
  matrix; only the fusion encoders' padding mask (a bf16 bias) is kept per layer. Without such a kernel add
  :func:`attention_fallback_bytes`.
* Peak = weights + gradients + optimizer states + activations kept for backward + the largest transient (a
  checkpointed LLM layer recomputed with its backward, the logits and loss, CLIP's forward keeping every
  hidden state). Transients happen at different moments, so only the largest counts. Allocator
  fragmentation is not modelled; :data:`CUDA_CONTEXT_BYTES` stands for the CUDA context and workspaces.
* ZeRO-2 (``--deepspeed configs/zero2.json`` with bf16): DeepSpeed casts the module to bf16 (4/8-bit
  weights kept) and holds float32 master weights, gradients and AdamW states partitioned over the GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from egoexor.config import ModelConfig

GIB = 2**30
#: bf16 autocast: bytes of a matmul output or of an input cast for a matmul.
ACTIVATION_BYTES = 2
#: CUDA context, cuBLAS/cuDNN workspaces: a typical value, not measured here.
CUDA_CONTEXT_BYTES = 1.0 * GIB
#: GPU sizes the plan is checked against (GiB).
GPU_SIZES = (24, 40, 80)
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Shapes:
    """The sizes the plan depends on, from a model configuration with its architectures filled in
    (:func:`egoexor.model.footprint.full_size_config`)."""

    llm_hidden: int
    llm_intermediate: int
    llm_layers: int
    llm_kv_width: int
    vocab: int
    lora_r: int
    #: The LLM's linear layers are bitsandbytes layers (4/8 bits): they keep no input for backward.
    llm_quantised: bool
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_image_size: int
    #: CLIP tokens per image: patches + the CLS token.
    vision_tokens: int
    #: Trainable CLIP layers whose output reaches the selected hidden state (they keep activations).
    vision_stored_layers: int
    fusion_layers: int
    fusion_heads: int
    tokens_per_branch: int
    #: Residual-stream bytes of CLIP, fusion and projector (their weights' dtype) and of the LLM.
    vision_residual_bytes: int
    llm_residual_bytes: int
    #: Bytes of a trainable weight, of its gradient and of each AdamW state (torch keeps them in its dtype).
    trainable_bytes: int
    #: Bytes per element of a kept dropout mask: bool on CUDA (float32 on CPU).
    dropout_mask_bytes: int = 1

    @classmethod
    def from_config(cls, config: ModelConfig) -> Shapes:
        from transformers import CLIPVisionConfig, LlamaConfig

        llm, vision = LlamaConfig(**config.llm_config), CLIPVisionConfig(**config.vision_config)
        layers = vision.num_hidden_layers
        selected = config.mm_vision_select_layer % (layers + 1)  # hidden_states index = layers run
        first_trainable = max(0, layers - config.unfreeze_n_vision_tower_layers)
        kbit = config.bits in (4, 8)
        return cls(
            llm_hidden=llm.hidden_size,
            llm_intermediate=llm.intermediate_size,
            llm_layers=llm.num_hidden_layers,
            llm_kv_width=llm.hidden_size // llm.num_attention_heads * llm.num_key_value_heads,
            vocab=llm.vocab_size,
            lora_r=config.lora_r if config.lora_enable else 0,
            llm_quantised=kbit,
            vision_hidden=vision.hidden_size,
            vision_intermediate=vision.intermediate_size,
            vision_layers=layers,
            vision_image_size=vision.image_size,
            vision_tokens=(vision.image_size // vision.patch_size) ** 2 + 1,
            vision_stored_layers=max(0, selected - first_trainable),
            fusion_layers=config.resolved_fusion_layers,
            fusion_heads=config.fusion_heads,
            tokens_per_branch=config.tokens_per_branch,
            vision_residual_bytes=_DTYPE_BYTES[config.trainable_dtype],
            llm_residual_bytes=4 if kbit and config.lora_enable else _DTYPE_BYTES[config.dtype],
            trainable_bytes=_DTYPE_BYTES[config.trainable_dtype],
        )


@dataclass(frozen=True)
class TrainingWorkload:
    """One micro-batch per GPU. Views: the most a training sample has (4 ego cameras; the reference's
    random 2-5 exo views)."""

    batch: int = 2
    seq: int = 2048
    ego_views: int = 4
    exo_views: int = 5
    #: GPUs the ZeRO-2 partitions span; 0: no DeepSpeed (one GPU or DDP: every GPU holds everything).
    zero2_gpus: int = 0


@dataclass(frozen=True)
class InferenceWorkload:
    """``python -m egoexor.infer`` defaults; views: 4 ego cameras and the 8 exo views fusion allows."""

    batch: int = 16
    prompt: int = 2048
    new_tokens: int = 300
    ego_views: int = 4
    exo_views: int = 8


@dataclass(frozen=True)
class Term:
    name: str
    bytes: float
    #: ``persistent``, ``activations`` (kept for backward) or ``transient`` (the largest one counts).
    kind: str


# --- activations kept for backward, per token and layer ----------------------------------------------------


def clip_layer_bytes(hidden: int, intermediate: int, residual: int, activation_tensors: int = 3) -> float:
    """Pre-LN ViT layer: the two LayerNorm inputs (residual dtype); bf16 copies of the LayerNorm outputs for
    q, k, v and fc1; q, k, v and the attention output; ``activation_tensors`` MLP intermediates (CLIP's
    quick_gelu, x * sigmoid(1.702 x), keeps fc1's output, the sigmoid and the product; a fused GELU two)."""
    kept = 4 * hidden + 3 * hidden + hidden + activation_tensors * intermediate
    return 2 * residual * hidden + ACTIVATION_BYTES * kept


def bert_layer_bytes(hidden: int, intermediate: int, residual: int, mask_bytes: int) -> float:
    """Post-LN BERT layer (fused GELU): as a ViT layer, plus the masks of its two hidden dropouts (its
    attention dropout runs inside the fused kernel)."""
    return clip_layer_bytes(hidden, intermediate, residual, activation_tensors=2) + 2 * mask_bytes * hidden


def llama_layer_bytes(shapes: Shapes) -> float:
    """LLaMA layer: the two RMSNorm inputs; q, k, v (rotated) and the attention output; gate, up and SiLU
    outputs (the residual dtype behind a bitsandbytes layer, bf16 otherwise); bf16 copies of the seven
    projections' inputs unless quantised; per LoRA adapter its dropout mask, the bf16 copy of its input
    and its rank-r output."""
    h, i, res = shapes.llm_hidden, shapes.llm_intermediate, shapes.llm_residual_bytes
    inputs = 6 * h + i  # q, k, v, o, gate, up read width h; down reads width i
    mlp = 3 * i * (res if shapes.llm_quantised else ACTIVATION_BYTES)
    base_inputs = 0 if shapes.llm_quantised else ACTIVATION_BYTES * inputs
    lora = inputs * (shapes.dropout_mask_bytes + ACTIVATION_BYTES) + 7 * shapes.lora_r * ACTIVATION_BYTES
    return 2 * res * h + ACTIVATION_BYTES * 4 * h + mlp + base_inputs + (lora if shapes.lora_r else 0)


def attention_fallback_bytes(heads: int, length: int, batch: int, element_bytes: int = 4) -> float:
    """What an unfused (math) attention keeps per layer: scores' softmax, dropout mask and dropped
    probabilities, ``heads x L^2`` each (float32 on CPU, where the masked fusion encoders take this path)."""
    return 3 * heads * length**2 * batch * element_bytes


def fusion_lengths(shapes: Shapes, ego_views: int, exo_views: int) -> tuple[int, int]:
    """Sequence lengths of the ego branch (views + a gaze and a hand token per view) and the exo branch
    (views + audio + point cloud)."""
    patches = shapes.vision_tokens - 1
    return ego_views * (patches + 2), exo_views * patches + 2


# --- training ----------------------------------------------------------------------------------------------


def clip_activations(shapes: Shapes, images: int) -> float:
    """CLIP's trainable layers up to the selected one, and the selected hidden state."""
    h, res = shapes.vision_hidden, shapes.vision_residual_bytes
    per_token = shapes.vision_stored_layers * clip_layer_bytes(h, shapes.vision_intermediate, res) + res * h
    return images * shapes.vision_tokens * per_token


def fusion_activations(shapes: Shapes, batch: int, lengths: tuple[int, ...]) -> float:
    """Each branch's encoder layers (the reference preset runs its shared encoder once per branch), its
    embeddings (LayerNorm input, dropout mask) and the bf16 padding bias each layer's attention keeps."""
    h, res, mask = shapes.vision_hidden, shapes.vision_residual_bytes, shapes.dropout_mask_bytes
    per_token = shapes.fusion_layers * bert_layer_bytes(h, 4 * h, res, mask) + res * h + mask * h
    return sum(batch * n * per_token + shapes.fusion_layers * ACTIVATION_BYTES * batch * n**2 for n in lengths)


def projector_activations(shapes: Shapes, batch: int) -> float:
    """fc1's bf16 input and output (GELU's input), GELU's output (fc2's input), per visual token."""
    tokens = batch * 2 * shapes.tokens_per_branch
    return tokens * ACTIVATION_BYTES * (shapes.vision_hidden + 2 * shapes.llm_hidden)


def training_terms(shapes: Shapes, weights: float, trainable: int, work: TrainingWorkload) -> list[Term]:
    """The plan of one GPU. ``weights``: bytes as trained (ZeRO-2: as DeepSpeed holds them);
    ``trainable``: trainable parameters."""
    b, images = work.batch, work.batch * (work.ego_views + work.exo_views)
    if work.zero2_gpus:
        states = trainable * (4 + 4 + 8) / work.zero2_gpus  # fp32 master, fp32 gradient, AdamW m and v
        shapes = replace(shapes, vision_residual_bytes=2, llm_residual_bytes=2)
        persistent = [
            Term("weights (bf16 module; 4-bit kept)", weights, "persistent"),
            Term(f"master + gradients + AdamW, ZeRO-2 / {work.zero2_gpus}", states, "persistent"),
        ]
    else:
        persistent = [
            Term("weights as trained", weights, "persistent"),
            Term("gradients", trainable * shapes.trainable_bytes, "persistent"),
            Term("AdamW states (m, v)", 2 * trainable * shapes.trainable_bytes, "persistent"),
        ]
        if shapes.trainable_bytes > ACTIVATION_BYTES:
            copies = trainable * ACTIVATION_BYTES
            persistent.append(Term("bf16 copies of float32 trainable weights (autocast)", copies, "activations"))
    lengths = fusion_lengths(shapes, work.ego_views, work.exo_views)
    tokens = b * work.seq
    layer = llama_layer_bytes(shapes)
    return [
        *persistent,
        Term("CUDA context and workspaces (assumed)", CUDA_CONTEXT_BYTES, "persistent"),
        Term("batch inputs (images, float32)", images * 3 * shapes.vision_image_size**2 * 4, "activations"),
        Term(
            f"CLIP ({images} views, {shapes.vision_stored_layers} layers)",
            clip_activations(shapes, images),
            "activations",
        ),
        Term(f"fusion (L = {' + '.join(map(str, lengths))})", fusion_activations(shapes, b, lengths), "activations"),
        Term("projector", projector_activations(shapes, b), "activations"),
        Term(
            "LLM layer inputs (checkpointed)",
            (shapes.llm_layers + 1) * tokens * shapes.llm_hidden * shapes.llm_residual_bytes,
            "activations",
        ),
        Term("one LLM layer recomputed + its backward", 2 * tokens * layer, "transient"),
        Term("logits and loss (bf16 logits, fp32 copy, log-softmax)", tokens * shapes.vocab * (2 + 4 + 4), "transient"),
        Term("CLIP forward (all hidden states kept)", clip_forward_bytes(shapes, images), "transient"),
    ]


def clip_forward_bytes(shapes: Shapes, images: int) -> float:
    """``output_hidden_states=True`` keeps every layer's output until CLIP returns, plus one MLP transient."""
    tokens = images * shapes.vision_tokens
    hidden = (shapes.vision_layers + 1) * tokens * shapes.vision_hidden * shapes.vision_residual_bytes
    return hidden + tokens * shapes.vision_intermediate * 2 * shapes.vision_residual_bytes


def peak(terms: list[Term]) -> float:
    """Persistent + kept activations + the largest transient."""
    kept = sum(t.bytes for t in terms if t.kind != "transient")
    return kept + max((t.bytes for t in terms if t.kind == "transient"), default=0.0)


# --- inference ---------------------------------------------------------------------------------------------


def kv_cache_bytes(shapes: Shapes, batch: int, positions: int, element_bytes: int = 2) -> float:
    """Keys and values of every layer: 2 x layers x (kv heads x head dim) x positions x batch x bytes."""
    return 2 * shapes.llm_layers * shapes.llm_kv_width * positions * batch * element_bytes


def inference_terms(shapes: Shapes, weights: float, work: InferenceWorkload) -> list[Term]:
    """``egoexor.infer``: no autocast (CLIP and fusion run in their weights' dtype), greedy decoding. The three
    stages run one after the other, so only the largest is counted; the KV cache belongs to the last."""
    images = work.batch * (work.ego_views + work.exo_views)
    positions = work.prompt + work.new_tokens
    _, exo = fusion_lengths(shapes, work.ego_views, work.exo_views)
    vis, h = shapes.vision_residual_bytes, shapes.vision_hidden
    fusion = work.batch * exo * 6 * h * vis + work.batch * exo**2 * (1 + vis)  # MLP, residual; bool + float mask
    kv_cache = kv_cache_bytes(shapes, work.batch, positions)
    prefill = work.batch * work.prompt * (3 * shapes.llm_intermediate + 2 * shapes.llm_hidden) * ACTIVATION_BYTES
    visual = work.batch * 2 * shapes.tokens_per_branch * shapes.llm_hidden * ACTIVATION_BYTES
    return [
        Term("weights", weights, "persistent"),
        Term("CUDA context and workspaces (assumed)", CUDA_CONTEXT_BYTES, "persistent"),
        Term("projected visual tokens", visual, "activations"),
        Term(f"CLIP forward ({images} views, all hidden states kept)", clip_forward_bytes(shapes, images), "transient"),
        Term(f"fusion forward (exo L = {exo}, with its mask)", fusion, "transient"),
        Term(
            f"LLM: KV cache ({positions} positions x {work.batch}) + one prefill MLP", kv_cache + prefill, "transient"
        ),
    ]


# --- compute -------------------------------------------------------------------------------------------------


def _transformer_flops(params_per_layer: float, layers: int, tokens: int, hidden: int, causal: bool) -> float:
    """Forward FLOPs: 2 per weight per token, plus QK^T and AV (halved under a causal mask)."""
    attention = 4 * tokens**2 * hidden * (0.5 if causal else 1.0)
    return layers * (2 * params_per_layer * tokens + attention)


def training_flops_per_sample(shapes: Shapes, seq: int, ego_views: int, exo_views: int) -> dict[str, float]:
    """Forward FLOPs per sample of each part, their sum, and the training total.

    Training multiplies each part's forward by: 3 where weights train (forward, input and weight
    gradients: CLIP's stored layers, fusion, projector); 3 for the LLM (forward, input gradients through
    the frozen body, recomputation of checkpointed layers); 1 for frozen CLIP layers (no gradient reaches
    them). LoRA's own FLOPs (~5% of the LLM's at r 128) and the small encoders are left out.
    """
    h, m = shapes.vision_hidden, shapes.vision_intermediate
    vit_layer = 4 * h * h + 2 * h * m
    images = ego_views + exo_views
    clip_layer = _transformer_flops(vit_layer, 1, shapes.vision_tokens, h, causal=False) * images
    lengths = fusion_lengths(shapes, ego_views, exo_views)
    fusion = sum(_transformer_flops(vit_layer, shapes.fusion_layers, n, h, causal=False) for n in lengths)
    projector = 2 * (h * shapes.llm_hidden + shapes.llm_hidden**2) * 2 * shapes.tokens_per_branch
    llama_layer = 2 * shapes.llm_hidden**2 + 2 * shapes.llm_hidden * shapes.llm_kv_width
    llama_layer += 3 * shapes.llm_hidden * shapes.llm_intermediate
    llm = _transformer_flops(llama_layer, shapes.llm_layers, seq, shapes.llm_hidden, causal=True)
    llm += 2 * shapes.llm_hidden * shapes.vocab * seq
    forward = {"CLIP": clip_layer * shapes.vision_layers, "fusion": fusion, "projector": projector, "LLM": llm}
    clip_train = clip_layer * (shapes.vision_layers + 2 * shapes.vision_stored_layers)
    return {**forward, "forward": sum(forward.values()), "training": clip_train + 3 * (fusion + projector + llm)}
