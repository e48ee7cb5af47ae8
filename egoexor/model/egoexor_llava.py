"""The EgoExOR model: encode both branches, project, write into the prompt's placeholder positions.

Shaped like ``transformers``' own ``LlavaForConditionalGeneration``: visual features are computed,
projected by ``mm_projector`` (``mlp2x_gelu``) to the LLM width, and written with one
``masked_scatter`` into the input embeddings where the collator put ``IMAGE_TOKEN_ID``
placeholders; the language model then runs on ``inputs_embeds``. Per sample the placeholders hold
the ego branch's N tokens (if the sample has ego views) followed by the exo branch's N tokens (if
it has exo views), so any branch or modality may be absent for any sample.

Inputs are the batch dict of :mod:`egoexor.data.dataset`.
"""

from __future__ import annotations

import torch
from torch import nn

from egoexor.model.fusion import ImagePooler
from egoexor.model.vision import CLIPVisionTower
from egoexor.prompt import IGNORE_INDEX, IMAGE_TOKEN_ID


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross entropy of each supervised next token; with ``weights`` (one per vocabulary id), weighted by the
    target token's weight and normalised by the weights' sum (``CrossEntropyLoss(weight=w)``)."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    weight = None if weights is None else weights.to(shift_logits.device)
    return nn.functional.cross_entropy(shift_logits, shift_labels, weight=weight, ignore_index=IGNORE_INDEX)


def mlp2x_gelu(in_features: int, out_features: int) -> nn.Sequential:
    """LLaVA-1.5's projector; indices 0 and 2 match its ``mm_projector.{0,2}`` checkpoint keys."""
    return nn.Sequential(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))


class EgoExorLlava(nn.Module):
    #: The loss is a mean per micro-batch (the reference's): the HF Trainer averages over accumulation.
    accepts_loss_kwargs = False

    def __init__(
        self, language_model: nn.Module, vision_tower: CLIPVisionTower, image_pooler: ImagePooler,
        mm_projector: nn.Module,
    ) -> None:  # fmt: skip
        super().__init__()
        self.language_model = language_model
        self.vision_tower = vision_tower
        self.image_pooler = image_pooler
        self.mm_projector = mm_projector

    @property
    def config(self):
        """The language model's config (what the Trainer and generation utilities look at)."""
        return self.language_model.config

    @property
    def device(self) -> torch.device:
        return self.mm_projector[0].weight.device

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        """Gradient checkpointing of the LLM's layers (as the reference); called by the HF Trainer."""
        kwargs = {"gradient_checkpointing_kwargs": activation_checkpointing_kwargs or {"use_reentrant": False}}
        self.language_model.gradient_checkpointing_enable(**kwargs)
        self.language_model.enable_input_require_grads()

    def _branch_tokens(self, batch: dict, branch: str, features: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Scatter per-view patch features back to [B, V * P, D] with a matching mask, then fuse."""
        mask = batch[f"{branch}_view_mask"]
        n_samples, n_views = mask.shape
        patches = features.shape[1]
        tokens = features.new_zeros(n_samples, n_views, patches, features.shape[2])
        tokens[mask] = features[views]
        token_mask = mask[:, :, None].expand(-1, -1, patches).reshape(n_samples, -1)
        fuse = self.image_pooler.ego if branch == "ego" else self.image_pooler.exo
        return fuse(tokens.reshape(n_samples, n_views * patches, -1), token_mask, batch)

    def visual_features(self, batch: dict) -> torch.Tensor | None:
        """[sum of placeholders, H]: each sample's ego then exo tokens, projected; None without views."""
        ego_mask, exo_mask = batch["ego_view_mask"], batch["exo_view_mask"]
        n_ego, n_exo = int(ego_mask.sum()), int(exo_mask.sum())
        if n_ego + n_exo == 0:
            return None
        images = torch.cat([batch["ego_images"][ego_mask], batch["exo_images"][exo_mask]])
        features = self.vision_tower(images)  # one CLIP pass over every view of the batch
        per_sample = []
        branches = []
        if n_ego:
            branches.append((self._branch_tokens(batch, "ego", features, slice(0, n_ego)), ego_mask.any(1)))
        if n_exo:
            branches.append((self._branch_tokens(batch, "exo", features, slice(n_ego, None)), exo_mask.any(1)))
        for b in range(ego_mask.shape[0]):
            per_sample += [tokens[b] for tokens, present in branches if present[b]]
        fused = torch.cat(per_sample)
        projector_dtype = self.mm_projector[0].weight.dtype
        return self.mm_projector(fused.to(projector_dtype))

    def input_embeddings(self, batch: dict) -> torch.Tensor:
        """Token embeddings with the projected visual tokens written into the placeholder positions."""
        input_ids = batch["input_ids"]
        placeholders = input_ids == IMAGE_TOKEN_ID
        embed = self.language_model.get_input_embeddings()
        embeds = embed(input_ids.masked_fill(placeholders, 0))
        visual = self.visual_features(batch)
        n_visual = 0 if visual is None else len(visual)
        if n_visual != int(placeholders.sum()):
            raise ValueError(
                f"the batch has {int(placeholders.sum())} visual placeholder tokens but its views give {n_visual} "
                "visual tokens: tokens_per_branch of the data and the model differ"
            )
        if visual is None:
            return embeds
        return embeds.masked_scatter(placeholders[..., None], visual.to(embeds.dtype))

    def forward(self, batch: dict | None = None, **inputs) -> dict:
        """Logits over the expanded sequence, and plain mean cross entropy when ``labels`` are given.

        Accepts the batch dict or its keys as keyword arguments (how the HF Trainer calls a model).
        Visual positions carry label -100 already (the collator), so they are never supervised.
        """
        batch = {**(batch or {}), **inputs}
        embeds = self.input_embeddings(batch)
        outputs = self.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False)
        logits = outputs.logits
        result = {"logits": logits}
        if "labels" in batch:
            result["loss"] = next_token_loss(logits, batch["labels"])
        return result

    @torch.no_grad()
    def generate(
        self, batch: dict, max_new_tokens: int = 300, eos_token_id: int = 2, pad_token_id: int = 0
    ) -> torch.Tensor:
        """Greedy decoding with a KV cache for a left-padded batch: [B, <= max_new_tokens] new token ids.

        Positions start at each sample's first real token (as the reference computes them), a row
        stops at EOS (later positions hold ``pad_token_id``), decoding stops when every row has.
        """
        mask = batch["attention_mask"]
        embeds = self.input_embeddings(batch)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        outputs = self.language_model(  # only the last position's logits are needed
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        finished = torch.zeros(len(mask), dtype=torch.bool, device=mask.device)
        generated = []
        for _ in range(max_new_tokens):
            predicted = outputs.logits[:, -1].argmax(-1)
            generated.append(predicted.masked_fill(finished, pad_token_id))
            finished |= predicted == eos_token_id
            if finished.all():
                break
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
            positions = positions[:, -1:] + 1
            outputs = self.language_model(  # finished rows keep decoding; their tokens are discarded
                input_ids=predicted[:, None], attention_mask=mask, position_ids=positions,
                past_key_values=outputs.past_key_values, use_cache=True,
            )  # fmt: skip
        return torch.stack(generated, dim=1) if generated else mask.new_zeros(len(mask), 0)
