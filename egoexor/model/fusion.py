"""Branch fusion: each branch's view tokens and extra tokens -> N tokens for the language model.

A branch's input sequence is its views' CLIP patch tokens (``[V * P]``, real views first, padded
views zero and masked) followed by its extra tokens: gaze then hand tokens (one per view slot) for
the ego branch, the audio token then the point-cloud token for the exo branch. A kind of extra token
is appended only when some sample of the batch has that input (but see the point cloud below). A
BERT-style encoder (learned absolute positions, post-LN) contextualises it and the first N positions
are the branch's output: the first view's patch positions, N = P = 576 in the paper and the reference.

Presets:

``paper`` (default): a separate encoder for each branch, 2 layers each (the paper's description).
``reference``: one 3-layer encoder shared by both branches, named ``bert`` like the released
checkpoint (16 heads, 5184 positions).

Masks: padded views are hidden from attention; so are extra tokens that are padding or missing
(``mask_extras``). ``mask_extras=False`` is the reference's sequence (``multimodal_projector/builder.py``
``ImageEmbeddingPooler.forward``): every extra token is attended; a padded view slot's gaze and hand
tokens are zero vectors (it encoded only the real views' rows and zero-padded after encoding), a real
view without gaze or hands encodes a zero row, and a sample without audio or point cloud in a batch
that has them gets the projection of a zero input (the ``audio_projector`` / ``project_pc`` bias).
A batch without any point cloud still gets a point-cloud token, a zero vector: the reference's
training Dataset gives every sample a point-cloud entry (``train.py:1136-1142``), and its pooler
returns zeros when none holds points (``builder.py:179-180``). (Its inference code passes no entry
then, and the token is absent: ``scene_graph_prediction_model.py:157, 440-442``.)
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from egoexor.model.encoders import MLPEncoder
from egoexor.model.point_transformer import PointTransformerV3, encode_point_clouds


def fusion_encoder(hidden: int, layers: int, heads: int, max_positions: int, with_pooler: bool) -> BertModel:
    """The reference's pooler configuration (HF defaults elsewhere: dropout 0.1, LN eps 1e-12).

    It runs on ``inputs_embeds``: the one-word vocabulary and BERT's pooling head are never used,
    so they stay frozen (the pooling head exists only where the released checkpoint has it).
    """
    config = BertConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden,
        max_position_embeddings=max_positions, vocab_size=1,
    )  # fmt: skip
    encoder = BertModel(config, add_pooling_layer=with_pooler)
    encoder.embeddings.word_embeddings.requires_grad_(False)
    if with_pooler:
        encoder.pooler.requires_grad_(False)
    return encoder


class ImagePooler(nn.Module):
    """Encoders of the extra inputs plus the branch fusion encoders (the reference's ``image_pooler``)."""

    def __init__(
        self, hidden: int, preset: str, tokens_per_branch: int, fusion_layers: int, fusion_heads: int,
        max_positions: int, encoder_hidden: int, audio_dim: int, features: frozenset[str],
        point_transformer: PointTransformerV3 | None, grid_size: float, mask_extras: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.preset = preset
        self.tokens_per_branch = tokens_per_branch
        self.grid_size = grid_size
        self.mask_extras = mask_extras
        self.gaze_encoder = MLPEncoder(3, hidden, encoder_hidden) if "gaze" in features else None
        self.hand_encoder = MLPEncoder(16, hidden, encoder_hidden) if "hand" in features else None
        self.audio_projector = nn.Linear(audio_dim, hidden) if "audio" in features else None
        self.point_transformer = point_transformer if "point_cloud" in features else None
        if preset == "reference":
            self.bert = fusion_encoder(hidden, fusion_layers, fusion_heads, max_positions, with_pooler=True)
        else:
            self.ego_bert = fusion_encoder(hidden, fusion_layers, fusion_heads, max_positions, with_pooler=False)
            self.exo_bert = fusion_encoder(hidden, fusion_layers, fusion_heads, max_positions, with_pooler=False)

    def encoder(self, branch: str) -> BertModel:
        return self.bert if self.preset == "reference" else getattr(self, f"{branch}_bert")

    def _fuse(self, branch: str, tokens: torch.Tensor, mask: torch.Tensor, extras) -> torch.Tensor:
        """[B, L, D] view tokens + [(tokens [B, k, D], mask [B, k])] extras -> [B, N, D]."""
        for extra, extra_mask in extras:
            tokens = torch.cat([tokens, extra.to(tokens.dtype)], dim=1)
            mask = torch.cat([mask, extra_mask if self.mask_extras else torch.ones_like(extra_mask)], dim=1)
        encoder = self.encoder(branch)
        limit = encoder.config.max_position_embeddings
        if tokens.shape[1] > limit:
            raise ValueError(
                f"{branch} branch: {tokens.shape[1]} tokens exceed the fusion encoder's {limit} positions "
                "(too many views: lower max_exo_views)"
            )
        dtype = encoder.embeddings.word_embeddings.weight.dtype
        output = encoder(inputs_embeds=tokens.to(dtype), attention_mask=mask.long()).last_hidden_state
        return output[:, : self.tokens_per_branch]

    def ego(self, tokens: torch.Tensor, mask: torch.Tensor, batch: dict) -> torch.Tensor:
        padding = ~batch["ego_view_mask"][..., None]  # view slots beyond a sample's views
        extras = []
        for encoder, rows, present in ((self.gaze_encoder, batch["gaze"], batch["gaze_mask"]),
                                       (self.hand_encoder, batch["hands"], batch["hand_mask"])):  # fmt: skip
            if encoder is not None and present.any():
                extras.append((encoder(rows.to(tokens.dtype)).masked_fill(padding, 0), present))
        return self._fuse("ego", tokens, mask, extras)

    def exo(self, tokens: torch.Tensor, mask: torch.Tensor, batch: dict) -> torch.Tensor:
        extras = []
        if self.audio_projector is not None and batch["audio"].shape[1] > 0:
            audio = self.audio_projector(batch["audio"].to(tokens.dtype))
            extras.append((audio[:, None], batch["audio_mask"][:, None]))
        if self.point_transformer is not None:
            present = batch["point_cloud_mask"]
            if present.any():
                extras.append((self.point_cloud_tokens(batch)[:, None], present[:, None]))
            elif not self.mask_extras:
                extras.append((tokens.new_zeros(len(tokens), 1, tokens.shape[2]), present[:, None]))
        return self._fuse("exo", tokens, mask, extras)

    def point_cloud_tokens(self, batch: dict) -> torch.Tensor:
        """[B, D]: PTv3 (frozen: no gradient unless it has trainable parameters) -> mean -> project_pc."""
        ptv3 = self.point_transformer
        clouds = [batch["point_cloud"][batch["point_cloud_batch"] == b] if present else None
                  for b, present in enumerate(batch["point_cloud_mask"].tolist())]  # fmt: skip
        encoder = [module for name, module in ptv3.named_children() if name != "project_pc"]
        if ptv3.embedding.stem.conv.weight.dtype != torch.float32:
            for module in encoder:  # DeepSpeed casts the whole model to bf16; PTv3 runs in fp32 (as the reference)
                module.float()
        trainable = any(p.requires_grad for module in encoder for p in module.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            means = encode_point_clouds(ptv3, clouds, self.grid_size)
        return ptv3.project_pc(means.to(ptv3.project_pc.weight.dtype))
