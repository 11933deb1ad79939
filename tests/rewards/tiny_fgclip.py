"""A tiny CLIP with FG-CLIP's long-text interface, for the clip-reward tests.

The tests copy this file into a model directory and load it as remote code, the way FG-CLIP ships
(``auto_map`` under ``AutoModelForCausalLM`` only, config ``model_type`` "clip"). Like FG-CLIP v1,
the text tower keeps CLIP's short position table (``text_config.max_position_embeddings``) and
adds a 248-position long table with its own projection; ``get_text_features(...,
walk_short_pos=False)`` selects them, and nothing in the config mentions 248. The layers are
deliberately simple (a causal running mean instead of attention) so that one token moves the
embedding measurably.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPConfig, PreTrainedModel

LONG_POSITIONS = 248


class TinyTextTower(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.eos_token_id = config.eos_token_id
        self.token_embedding = nn.Embedding(config.vocab_size, hidden)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, hidden)
        self.position_embedding_long = nn.Embedding(LONG_POSITIONS, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.final_layer_norm = nn.LayerNorm(hidden)

    def forward(self, input_ids: torch.Tensor, walk_short_pos: bool) -> torch.Tensor:
        length = input_ids.shape[-1]
        table = self.position_embedding if walk_short_pos else self.position_embedding_long
        if length > table.num_embeddings:  # FG-CLIP's embedding lookup would fail here too
            raise IndexError(f"{length} tokens for {table.num_embeddings} positions")
        positions = torch.arange(length, device=input_ids.device)
        hidden = torch.tanh(self.mix(self.token_embedding(input_ids) + table(positions)))
        steps = torch.arange(1, length + 1, device=input_ids.device, dtype=hidden.dtype)
        hidden = self.final_layer_norm(hidden.cumsum(dim=1) / steps[:, None])  # causal, as CLIP's mask
        first_eos = (input_ids == self.eos_token_id).int().argmax(dim=-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first_eos]


class TinyImageTower(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.patches = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)
        self.post_layernorm = nn.LayerNorm(config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(torch.tanh(self.patches(pixel_values)).flatten(2).mean(dim=-1))


class TinyFGCLIPModel(PreTrainedModel):
    config_class = CLIPConfig
    base_model_prefix = "tiny_fgclip"

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config)
        self.text_model = TinyTextTower(config.text_config)
        self.vision_model = TinyImageTower(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.text_filip_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values))

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        walk_short_pos: bool = True,
    ) -> torch.Tensor:
        pooled = self.text_model(input_ids, walk_short_pos)
        projection = self.text_projection if walk_short_pos else self.text_filip_projection
        return projection(pooled)
