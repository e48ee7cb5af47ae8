"""The EgoExOR model: encode both branches, project, write into the prompt's placeholder positions.

Shaped like ``transformers``' own ``LlavaForConditionalGeneration``: visual features are computed,
projected by ``mm_projector`` (``mlp2x_gelu``) to the LLM width, and written with one
``masked_scatter`` into the input embeddings where the collator put ``IMAGE_TOKEN_ID``
placeholders; the language model then runs on ``inputs_embeds``. Per sample the placeholders hold
the ego branch's N tokens (if the sample has ego views) followed by the exo branch's N tokens (if
it has exo views), so any branch or modality may be absent for any sample.

Inputs are tensors passed by keyword, named like the batch dict of :mod:`egoexor.data.processor`
(``model(**batch)``, as the HF Trainer calls a model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egoexor import modalities
from egoexor.model.fusion import BranchFusion
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
        self,
        language_model: nn.Module,
        vision_tower: CLIPVisionTower,
        image_pooler: BranchFusion,
        mm_projector: nn.Module,
    ) -> None:
        super().__init__()
        self.language_model = language_model
        self.vision_tower = vision_tower
        self.image_pooler = image_pooler  # the branch fusion, under the reference's (checkpoint) name
        self.mm_projector = mm_projector
        self._input_keys = {key for modality in modalities.token_inputs() for key in modality.batch_keys()}

    @property
    def config(self):
        """The language model's config (what the Trainer and generation utilities look at)."""
        return self.language_model.config

    @property
    def device(self) -> torch.device:
        return self.mm_projector[0].weight.device

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        """Activation (gradient) checkpointing of the LLM's layers (as the reference); called by the HF Trainer."""
        checkpoint_kwargs = activation_checkpointing_kwargs or {"use_reentrant": False}
        self.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs, **kwargs)
        self.language_model.enable_input_require_grads()

    def visual_features(
        self,
        ego_images: Tensor,
        ego_view_mask: Tensor,
        exo_images: Tensor,
        exo_view_mask: Tensor,
        ego_view_kinds: Tensor | None = None,
        exo_view_kinds: Tensor | None = None,
        **inputs: Tensor,
    ) -> Tensor | None:
        """[sum of placeholders, H]: each sample's ego then exo tokens, projected; None without views.

        Shapes and meanings are the batch keys' (:mod:`egoexor.data.processor`); ``inputs`` are the extra
        inputs' keys (``gaze``, ``gaze_mask``, ..., and the plug-ins'): one left out counts as absent from
        every sample, one no registered input has is an error. The view kinds are needed by
        ``fusion_output: summary`` only.
        """
        unknown = set(inputs) - self._input_keys
        if unknown:
            raise TypeError(f"unknown input(s) {', '.join(sorted(unknown))}: no registered modality makes them")
        n_ego, n_exo = int(ego_view_mask.sum()), int(exo_view_mask.sum())
        if n_ego + n_exo == 0:
            return None
        # one CLIP pass over every view of the batch, ego views first
        features = self.vision_tower(torch.cat([ego_images[ego_view_mask], exo_images[exo_view_mask]]))
        branches = []
        for branch, mask, kinds, branch_features in (
            ("ego", ego_view_mask, ego_view_kinds, features[:n_ego]),
            ("exo", exo_view_mask, exo_view_kinds, features[n_ego:]),
        ):
            if mask.any():
                views = _per_view(branch_features, mask)
                branches.append((self.image_pooler.branch(branch, views, mask, inputs, kinds), mask.any(1)))
        fused = torch.cat([tokens[b] for b in range(len(ego_view_mask)) for tokens, present in branches if present[b]])
        return self.mm_projector(fused.to(self.mm_projector[0].weight.dtype))

    def input_embeddings(self, input_ids: Tensor, **visual_inputs: Tensor | None) -> Tensor:
        """Token embeddings with the projected visual tokens written into the placeholder positions.

        ``visual_inputs``: the keyword arguments of :meth:`visual_features`.
        """
        placeholders = input_ids == IMAGE_TOKEN_ID
        embed = self.language_model.get_input_embeddings()
        embeds = embed(input_ids.masked_fill(placeholders, 0))
        visual = self.visual_features(**visual_inputs)
        n_visual = 0 if visual is None else len(visual)
        if n_visual != int(placeholders.sum()):
            raise ValueError(
                f"the batch has {int(placeholders.sum())} visual placeholder tokens but its views give {n_visual} "
                "visual tokens: tokens_per_branch of the data and the model differ"
            )
        if visual is None:
            return embeds
        return embeds.masked_scatter(placeholders[..., None], visual.to(embeds.dtype))

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None, **visual_inputs: Tensor | None
    ) -> dict:
        """Logits over the expanded sequence, and plain mean cross entropy when ``labels`` are given.

        ``visual_inputs``: the keyword arguments of :meth:`visual_features`. Visual positions carry
        label -100 already (the collator), so they are never supervised.
        """
        embeds = self.input_embeddings(input_ids, **visual_inputs)
        logits = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).logits
        result = {"logits": logits}
        if labels is not None:
            result["loss"] = next_token_loss(logits, labels)
        return result

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        max_new_tokens: int = 300,
        eos_token_id: int = 2,
        pad_token_id: int = 0,
        **visual_inputs: Tensor | None,
    ) -> Tensor:
        """Greedy decoding of a left-padded batch by the language model's ``generate``: [B, <= max_new_tokens].

        Only the new token ids. transformers derives the positions from ``attention_mask``, so they start
        at each sample's first real token (as the reference's); a row stops at EOS (later positions hold
        ``pad_token_id``, which must be a vocabulary id: it is fed back), decoding stops when every row has.
        ``visual_inputs``: the keyword arguments of :meth:`visual_features`.
        """
        embeds = self.input_embeddings(input_ids, **visual_inputs)
        return self.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )


def _per_view(features: Tensor, view_mask: Tensor) -> Tensor:
    """[real views, P, D] patch features -> [B, V, P, D] view slots, zeros where ``view_mask`` is False."""
    views = features.new_zeros(*view_mask.shape, *features.shape[1:])
    views[view_mask] = features
    return views
