"""The 4-block convolutional network of the MAML paper's image experiments."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maml_cli.errors import UserError


class BatchStatNorm(nn.Module):
    """Batch norm that always normalises with the statistics of the batch it is given.

    This is the transductive convention of the MAML reference code: in the inner loop and at
    evaluation alike, a task's support (or query) set is normalised by its own mean and
    variance, and no running statistics are kept. Written from mean/var by hand because
    second-order gradients through nn.BatchNorm2d under torch.func.vmap are wrong.
    """

    def __init__(self, channels: int, eps: float = 1e-5, scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if scale else None
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = self.weight.view(1, -1, 1, 1) * scale
        return (x - mean) * scale + self.bias.view(1, -1, 1, 1)


DOWNSAMPLING = ("stride", "maxpool")
NORMS = ("batch", "batch_offset", "none")
INITS = ("torch", "reference")


class Conv4(nn.Sequential):
    """4 x [conv3x3 -> norm -> ReLU -> downsample] -> linear head of `num_outputs` (= ways).

    The reference code's Omniglot net: 64 filters, stride-2 convolutions, features averaged
    over space before the head. Its mini-ImageNet net: 32 filters, 2x2 max-pooling, features
    flattened. Relation Networks' embedding downsamples in its first two blocks only
    (`downsample_blocks=2`), leaving feature maps for its relation module to compare.
    """

    takes_images = True  # inputs [channels, height, width] (build() checks the task's)

    def __init__(self, input_shape: Sequence[int], num_outputs: int, filters: int = 64,
                 downsample: str = "stride", norm: str = "batch", norm_eps: float = 1e-5,
                 spatial_mean: bool = True, init: str = "torch", downsample_blocks: int = 4):
        if downsample not in DOWNSAMPLING:
            raise UserError(f"model.downsample must be one of {', '.join(DOWNSAMPLING)} "
                            f"(got {downsample!r})")
        if norm not in NORMS:
            raise UserError(f"model.norm must be one of {', '.join(NORMS)} (got {norm!r})")
        if init not in INITS:
            raise UserError(f"model.init must be one of {', '.join(INITS)} (got {init!r})")
        if not norm_eps > 0:
            raise UserError(f"model.norm_eps must be > 0 (got {norm_eps})")
        if filters < 1:
            raise UserError(f"model.filters must be >= 1 (got {filters})")
        if not 0 <= downsample_blocks <= 4:
            raise UserError(f"model.downsample_blocks must be in 0..4 (got {downsample_blocks})")
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for block in range(4):
            down = block < downsample_blocks
            stride = 2 if downsample == "stride" and down else 1
            layers.append(nn.Conv2d(channels, filters, 3, stride=stride, padding=1))
            layers.append(nn.Identity() if norm == "none"
                          else BatchStatNorm(filters, norm_eps, scale=norm == "batch"))
            layers.append(nn.ReLU())
            if downsample == "maxpool" and down:
                layers.append(nn.MaxPool2d(2))
            channels = filters
        with torch.no_grad():
            height, width = nn.Sequential(*layers)(torch.zeros(2, *input_shape)).shape[2:]
        if spatial_mean:
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(filters, num_outputs)]
        else:
            layers += [nn.Flatten(), nn.Linear(filters * height * width, num_outputs)]
        super().__init__(*layers)
        self.input_shape = tuple(input_shape)
        if init == "reference":
            self._reference_init(spatial_mean)

    def _reference_init(self, spatial_mean: bool) -> None:
        """The reference code's initialisation: Glorot-uniform convolutions, zero biases, and a
        head drawn from N(0, 1) on spatially averaged features (Glorot-uniform on flattened
        ones), for comparisons with it (docs/results.md, "FOMAML")."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.zeros_(module.bias)
                if isinstance(module, nn.Conv2d) or not spatial_mean:
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.normal_(module.weight)
