from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Fully connected ReLU network; the MAML paper's sinusoid net is hidden=[40, 40]."""

    def __init__(
        self, input_shape: Sequence[int], num_outputs: int, hidden: Sequence[int] = (40, 40)
    ):
        sizes = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_outputs))
        super().__init__(*layers)
