"""Branch fusion: each branch's view tokens and extra tokens -> N tokens for the language model.

:class:`BranchFusion` owns the extra inputs' encoders and the fusion encoders; the model keeps it under
the attribute ``image_pooler`` (the reference's name), so checkpoint keys read ``image_pooler.*``.

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
from torch import Tensor, nn
from transformers import BertConfig, BertModel

from egoexor.config import ModelConfig
from egoexor.model.encoders import MLPEncoder, encode_point_clouds
from egoexor.model.point_transformer import PointTransformerV3


def fusion_encoder(hidden: int, layers: int, heads: int, max_positions: int, with_pooler: bool) -> BertModel:
    """The reference's pooler configuration (HF defaults elsewhere: dropout 0.1, LN eps 1e-12).

    It runs on ``inputs_embeds``: the one-word vocabulary and BERT's pooling head are never used,
    so they stay frozen (the pooling head exists only where the released checkpoint has it).
    """
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_positions,
        vocab_size=1,
    )
    encoder = BertModel(config, add_pooling_layer=with_pooler)
    encoder.embeddings.word_embeddings.requires_grad_(False)
    if with_pooler:
        encoder.pooler.requires_grad_(False)
    return encoder


def _has_any(mask: Tensor | None) -> bool:
    return mask is not None and bool(mask.any())


class BranchFusion(nn.Module):
    """Encoders of the extra inputs plus the branch fusion encoders (the reference's ``image_pooler``).

    Built from the model configuration and the fusion width ``hidden`` (CLIP's). PTv3 is frozen unless
    ``train_point_transformer``; its ``project_pc`` always trains. An extra input left out (``None``)
    counts as absent from every sample.
    """

    def __init__(self, config: ModelConfig, hidden: int) -> None:
        super().__init__()
        features = frozenset(config.features)
        point_transformer = None  # created first: the order of random draws fixes what a seeded build holds
        if "point_cloud" in features:
            point_transformer = PointTransformerV3(project_pc_dim=hidden, **(config.point_transformer or {}))
            point_transformer.requires_grad_(config.train_point_transformer)
            point_transformer.project_pc.requires_grad_(True)
        self.preset = config.preset
        self.tokens_per_branch = config.tokens_per_branch
        self.grid_size = config.point_cloud_grid_size
        self.mask_extras = config.mask_extras
        self.gaze_encoder = MLPEncoder(3, hidden, config.encoder_hidden) if "gaze" in features else None
        self.hand_encoder = MLPEncoder(16, hidden, config.encoder_hidden) if "hand" in features else None
        self.audio_projector = nn.Linear(config.audio_dim, hidden) if "audio" in features else None
        self.point_transformer = point_transformer
        shape = (hidden, config.resolved_fusion_layers, config.fusion_heads, config.fusion_max_positions)
        if self.preset == "reference":
            self.bert = fusion_encoder(*shape, with_pooler=True)
        else:
            self.ego_bert = fusion_encoder(*shape, with_pooler=False)
            self.exo_bert = fusion_encoder(*shape, with_pooler=False)

    def encoder(self, branch: str) -> BertModel:
        return self.bert if self.preset == "reference" else getattr(self, f"{branch}_bert")

    def _fuse(self, branch: str, views: Tensor, view_mask: Tensor, extras: list[tuple[Tensor, Tensor]]) -> Tensor:
        """[B, V, P, D] view tokens + [(tokens [B, k, D], mask [B, k])] extras -> [B, N, D]."""
        n_samples, n_views, patches, width = views.shape
        tokens = views.reshape(n_samples, n_views * patches, width)
        mask = view_mask[:, :, None].expand(-1, -1, patches).reshape(n_samples, -1)
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

    def ego(
        self,
        views: Tensor,
        view_mask: Tensor,
        gaze: Tensor | None = None,
        gaze_mask: Tensor | None = None,
        hands: Tensor | None = None,
        hand_mask: Tensor | None = None,
    ) -> Tensor:
        """[B, Ve, P, D] ego view tokens (``view_mask`` [B, Ve]) + gaze and hand tokens per view slot -> [B, N, D]."""
        padding = ~view_mask[..., None]  # view slots beyond a sample's views
        extras = []
        for encoder, rows, present in ((self.gaze_encoder, gaze, gaze_mask), (self.hand_encoder, hands, hand_mask)):
            if encoder is not None and _has_any(present):
                extras.append((encoder(rows.to(views.dtype)).masked_fill(padding, 0), present))
        return self._fuse("ego", views, view_mask, extras)

    def exo(
        self,
        views: Tensor,
        view_mask: Tensor,
        audio: Tensor | None = None,
        audio_mask: Tensor | None = None,
        point_cloud: Tensor | None = None,
        point_cloud_batch: Tensor | None = None,
        point_cloud_mask: Tensor | None = None,
    ) -> Tensor:
        """[B, Vx, P, D] exo view tokens (``view_mask`` [B, Vx]) + the audio and point-cloud tokens -> [B, N, D]."""
        extras = []
        if self.audio_projector is not None and _has_any(audio_mask):
            extras.append((self.audio_projector(audio.to(views.dtype))[:, None], audio_mask[:, None]))
        if self.point_transformer is not None:
            if _has_any(point_cloud_mask):
                cloud = self.point_cloud_tokens(point_cloud, point_cloud_batch, point_cloud_mask)
                extras.append((cloud[:, None], point_cloud_mask[:, None]))
            elif not self.mask_extras:  # the reference's zero token when no sample has a cloud
                absent = torch.zeros(len(views), 1, dtype=torch.bool, device=views.device)
                extras.append((views.new_zeros(len(views), 1, views.shape[-1]), absent))
        return self._fuse("exo", views, view_mask, extras)

    def point_cloud_tokens(self, point_cloud: Tensor, point_cloud_batch: Tensor, point_cloud_mask: Tensor) -> Tensor:
        """[B, D] from every sample's points (``point_cloud_batch``: sample of each point): PTv3 (frozen: no
        gradient unless it has trainable parameters) -> per-cloud mean -> ``project_pc``."""
        ptv3 = self.point_transformer
        clouds = [
            point_cloud[point_cloud_batch == b] if present else None
            for b, present in enumerate(point_cloud_mask.tolist())
        ]
        encoder = [module for name, module in ptv3.named_children() if name != "project_pc"]
        if ptv3.embedding.stem.conv.weight.dtype != torch.float32:
            for module in encoder:  # DeepSpeed casts the whole model to bf16; PTv3 runs in fp32 (as the reference)
                module.float()
        trainable = any(p.requires_grad for module in encoder for p in module.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            means = encode_point_clouds(ptv3, clouds, self.grid_size)
        return ptv3.project_pc(means.to(ptv3.project_pc.weight.dtype))
