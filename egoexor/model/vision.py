"""The CLIP vision tower: patch features of the penultimate layer, last layers optionally trainable.

As LLaVA-1.5 and the reference: ``CLIPVisionModel`` run with hidden states, the layer
``select_layer`` (-2: the output of the second-to-last encoder layer) taken, the CLS token
dropped: ``[n, 3, S, S] -> [n, (S / patch)^2, D]`` (``[n, 576, 1024]`` for CLIP ViT-L/14-336).

``unfreeze_layers`` (the reference's ``unfreeze_n_vision_tower_layers``, 12) makes the last layers of
the encoder trainable, counted from its last layer (``encoder.layers[-N:]``, 12-23 of CLIP ViT-L) as the
reference did: layers after the selected one never reach the output, so they receive no gradient, but
they belong to the trainable set, which is what a checkpoint holds -- the same set as a reference one.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


class CLIPVisionTower(nn.Module):
    def __init__(self, model: CLIPVisionModel, select_layer: int = -2, unfreeze_layers: int = 0) -> None:
        super().__init__()
        self.vision_tower = model  # the attribute name the reference's checkpoint keys use
        layers = getattr(model, "vision_model", model).encoder.layers  # transformers 5 dropped vision_model
        n_layers = len(layers)
        # hidden_states has n_layers + 1 entries (embeddings first): entry 0 is the embeddings' output
        if select_layer % (n_layers + 1) == 0:
            raise ValueError("select_layer picks the embeddings, not an encoder layer")
        self.select_layer = select_layer
        self.requires_grad_(False)
        for layer in layers[max(0, n_layers - unfreeze_layers) :]:
            layer.requires_grad_(True)

    @classmethod
    def from_name_or_config(
        cls,
        name_or_config: str | os.PathLike | CLIPVisionConfig | dict,
        select_layer: int = -2,
        unfreeze_layers: int = 0,
        dtype: torch.dtype | None = None,
    ) -> CLIPVisionTower:
        """Pretrained CLIP from a hub name or folder, or a randomly initialised one from a config."""
        if isinstance(name_or_config, dict):
            name_or_config = CLIPVisionConfig(**name_or_config)
        if isinstance(name_or_config, CLIPVisionConfig):
            model = CLIPVisionModel(name_or_config)
        else:
            try:
                model = CLIPVisionModel.from_pretrained(str(name_or_config), dtype=dtype)
            except OSError as error:
                raise OSError(f"cannot load the vision tower {str(name_or_config)!r}: {error}") from error
        if dtype is not None:
            model = model.to(dtype)
        return cls(model, select_layer, unfreeze_layers)

    @property
    def hidden_size(self) -> int:
        return self.vision_tower.config.hidden_size

    @property
    def num_patches(self) -> int:
        config = self.vision_tower.config
        return (config.image_size // config.patch_size) ** 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[n, 3, S, S] -> [n, patches, D] patch features of the selected layer."""
        dtype = next(self.vision_tower.parameters()).dtype
        outputs = self.vision_tower(images.to(dtype), output_hidden_states=True)
        return outputs.hidden_states[self.select_layer][:, 1:]
