"""An MLP over a table's rows: each categorical input embedded, the embeddings concatenated with
the numeric inputs, then fully connected ReLU layers and a linear head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maml_cli.errors import UserError


class EmbedInputs(nn.Module):
    """[..., numeric + categorical] rows (the categorical inputs as integer codes) -> [...,
    numeric + categorical x dim]."""

    def __init__(self, numeric: int, categories: Sequence[int], dim: int):
        super().__init__()
        self.numeric = numeric
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n in categories)

    def forward(self, x):
        codes = x[..., self.numeric:].long()
        return torch.cat([x[..., :self.numeric],
                          *(table(codes[..., i]) for i, table in enumerate(self.tables))], -1)


class EmbeddingMLP(nn.Sequential):
    """EmbedInputs -> hidden ReLU layers -> linear head of `num_outputs`: a plain Sequential
    whose last layer is its head, so algorithm.adapt=head (ANIL; MeLU adapts only its decision
    layers) and every other algorithm apply unchanged."""

    takes_categories = True  # build() passes the table task's `categories`

    def __init__(self, input_shape: Sequence[int], num_outputs: int,
                 categories: Sequence[int] = (), hidden: Sequence[int] = (64, 64),
                 embedding_dim: int = 8):
        if embedding_dim < 1 or not hidden or min(hidden) < 1:
            raise UserError(f"model.embedding_dim and model.hidden must be >= 1 (got "
                            f"{embedding_dim}, {list(hidden)})")
        numeric = input_shape[0] - len(categories)
        sizes = [numeric + len(categories) * embedding_dim, *hidden]
        layers: list[nn.Module] = [EmbedInputs(numeric, categories, embedding_dim)]
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_outputs))
        super().__init__(*layers)
