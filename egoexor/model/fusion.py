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

from egoexor import modalities
from egoexor.config import ModelConfig

#: An extra input's tokens in a branch: its name, tokens [B, k, D] and which are present [B, k].
Extra = tuple[str, Tensor, Tensor]


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


def _small_normal(shape: tuple[int, ...]) -> nn.Parameter:
    """N(0, 0.02): the initializer_range of HF's init, as the fusion encoders' embeddings."""
    return nn.Parameter(torch.randn(shape) * 0.02)


class BranchFusion(nn.Module):
    """Encoders of the extra inputs plus the branch fusion encoders (the reference's ``image_pooler``).

    Built from the model configuration and the fusion width ``hidden`` (CLIP's). PTv3 is frozen unless
    ``train_point_transformer``; its ``project_pc`` always trains. An extra input left out (``None``)
    counts as absent from every sample.
    """

    def __init__(self, config: ModelConfig, hidden: int) -> None:
        super().__init__()
        self.config = config
        self.inputs = {branch: modalities.token_inputs(branch) for branch in ("ego", "exo")}
        features = frozenset(config.features)
        # each input's encoder under its checkpoint name (None where unused), in registry order; those with
        # ``built_first`` are drawn first: the order of random draws fixes what a seeded build holds
        used = [m for m in modalities.token_inputs() if m.feature in features]
        encoders = {m.name: m.build_encoder(config, hidden) for m in sorted(used, key=lambda m: not m.built_first)}
        for modality in modalities.token_inputs():
            setattr(self, modality.parameter, encoders.get(modality.name))
        self.preset = config.preset
        self.tokens_per_branch = config.tokens_per_branch
        self.mask_extras = config.mask_extras
        shape = (hidden, config.resolved_fusion_layers, config.fusion_heads, config.fusion_max_positions)
        if self.preset == "reference":
            self.bert = fusion_encoder(*shape, with_pooler=True)
        else:
            self.ego_bert = fusion_encoder(*shape, with_pooler=False)
            self.exo_bert = fusion_encoder(*shape, with_pooler=False)
        self.fusion_output = config.fusion_output
        self.slots = {branch: config.branch_inputs(branch) for branch in ("ego", "exo")}
        self.camera_kinds = {branch: modalities.camera_kinds(branch) for branch in ("ego", "exo")}
        if self.fusion_output != "first_view":
            # summary: a type embedding and an "absent" vector per slot; append: an "absent" vector per extra input
            if self.fusion_output == "append":
                self.slots = {
                    b: tuple(n for n in names if n not in self.camera_kinds[b]) for b, names in self.slots.items()
                }
            shapes = {branch: (len(names), hidden) for branch, names in self.slots.items() if names}
            self.output_absent = nn.ParameterDict({b: _small_normal(shape) for b, shape in shapes.items()})
            if self.fusion_output == "summary":
                self.output_types = nn.ParameterDict({b: _small_normal(shape) for b, shape in shapes.items()})

    def output_names(self, branch: str) -> list[str]:
        """What each of the branch's LLM-input positions carries, in order: ``view`` (a first-view position) or
        the name of the input whose slot it is (``append``: after the N; ``summary``: the last S of the N)."""
        if self.fusion_output == "first_view":
            return ["view"] * self.tokens_per_branch
        slots = list(self.slots[branch])
        views = self.tokens_per_branch - (len(slots) if self.fusion_output == "summary" else 0)
        return ["view"] * views + slots

    def encoder(self, branch: str) -> BertModel:
        return self.bert if self.preset == "reference" else getattr(self, f"{branch}_bert")

    def _fuse(
        self, branch: str, views: Tensor, view_mask: Tensor, view_kinds: Tensor | None, extras: list[Extra]
    ) -> Tensor:
        """[B, V, P, D] view tokens + each extra input's (name, tokens [B, k, D], present [B, k]) -> [B, N (+K), D]."""
        n_samples, n_views, patches, width = views.shape
        tokens = views.reshape(n_samples, n_views * patches, width)
        mask = view_mask[:, :, None].expand(-1, -1, patches).reshape(n_samples, -1)
        for _, extra, present in extras:
            tokens = torch.cat([tokens, extra.to(tokens.dtype)], dim=1)
            mask = torch.cat([mask, present if self.mask_extras else torch.ones_like(present)], dim=1)
        encoder = self.encoder(branch)
        limit = encoder.config.max_position_embeddings
        if tokens.shape[1] > limit:
            raise ValueError(
                f"{branch} branch: {tokens.shape[1]} tokens exceed the fusion encoder's {limit} positions "
                "(too many views: lower max_exo_views)"
            )
        dtype = encoder.embeddings.word_embeddings.weight.dtype
        output = encoder(inputs_embeds=tokens.to(dtype), attention_mask=mask.long()).last_hidden_state
        n = self.tokens_per_branch
        if self.fusion_output == "first_view":
            return output[:, :n]
        if self.fusion_output == "append":  # each extra input's own token (its encoder's), after the N
            own = {name: (extra.to(output.dtype), present) for name, extra, present in extras}
            return torch.cat([output[:, :n], self._slots(branch, own, output)], dim=1)
        # summary: each input's fused positions
        regions, start = {}, n_views * patches
        for name, extra, present in extras:
            regions[name] = (output[:, start : start + extra.shape[1]], present)
            start += extra.shape[1]
        for kind, name in enumerate(self.camera_kinds[branch]):
            if view_kinds is None:
                raise ValueError(f"fusion_output summary needs the batch's {branch}_view_kinds")
            of_kind = view_mask & (view_kinds == kind)
            regions[name] = (output[:, : n_views * patches], of_kind[:, :, None].expand(-1, -1, patches).flatten(1))
        slots = self._slots(branch, regions, output) + self.output_types[branch].to(output.dtype)
        return torch.cat([output[:, : n - len(self.slots[branch])], slots], dim=1)

    def _slots(self, branch: str, regions: dict[str, tuple[Tensor, Tensor]], like: Tensor) -> Tensor:
        """[B, S, D]: per slot of the branch, the mean of its region's present tokens; the learned absent
        vector where a sample has none (or the batch has no such input)."""
        absent = self.output_absent[branch].to(like.dtype)
        slots = []
        for index, name in enumerate(self.slots[branch]):
            if name not in regions:
                slots.append(absent[index].expand(len(like), -1))
                continue
            tokens, present = regions[name]
            weight = present.to(like.dtype)[..., None]
            mean = (tokens * weight).sum(1) / weight.sum(1).clamp(min=1)
            slots.append(torch.where(present.any(1)[:, None], mean, absent[index]))
        return torch.stack(slots, dim=1)

    def branch(
        self, branch: str, views: Tensor, view_mask: Tensor, inputs: dict[str, Tensor], view_kinds: Tensor | None = None
    ) -> Tensor:
        """[B, V, P, D] view tokens of a branch (``view_mask`` [B, V], ``view_kinds`` [B, V]: each view's camera
        kind, by index among the branch's) + each of its inputs' tokens -> [B, N (+K with append), D].

        ``inputs``: batch keys of the extra inputs (:mod:`egoexor.data.processor`); one left out counts as
        absent from every sample.
        """
        extras = []
        for modality in self.inputs[branch]:
            encoder = getattr(self, modality.parameter)
            if encoder is not None:
                extra = modality.tokens(encoder, inputs, views, view_mask, self.config)
                if extra is not None:
                    extras.append((modality.name, *extra))
        return self._fuse(branch, views, view_mask, view_kinds, extras)
