"""ResNet-12, the backbone of later few-shot work (TADAM, MetaOptNet; learn2learn's ResNet12):
four residual blocks of three 3x3 convolutions, each block halving the resolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import nn

from maml_cli.errors import UserError
from maml_cli.models.conv4 import BatchStatNorm

# MetaOptNet's LeakyReLU slope.
SLOPE = 0.1


class ResidualBlock(nn.Module):
    """3 x [conv3x3 -> norm] with LeakyReLU between, plus a 1x1 conv -> norm shortcut, LeakyReLU,
    then 2x2 max-pooling: MetaOptNet's BasicBlock without its DropBlock regulariser."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        for i, cin in enumerate((in_channels, out_channels, out_channels), 1):
            self.add_module(f"conv{i}", nn.Conv2d(cin, out_channels, 3, padding=1, bias=False))
            self.add_module(f"norm{i}", BatchStatNorm(out_channels))
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm_shortcut = BatchStatNorm(out_channels)

    def forward(self, x):
        out = F.leaky_relu(self.norm1(self.conv1(x)), SLOPE)
        out = F.leaky_relu(self.norm2(self.conv2(out)), SLOPE)
        out = self.norm3(self.conv3(out)) + self.norm_shortcut(self.shortcut(x))
        return F.max_pool2d(F.leaky_relu(out, SLOPE), 2)


class ResNet12(nn.Sequential):
    """4 residual blocks of `channels` (MetaOptNet's 64, 160, 320, 640), features averaged over
    space, then a linear head of `num_outputs` (= ways). Its norm layers normalise with each
    batch's own statistics, as conv4's do (the reference code's transductive convention), so
    it is exact under both engines and every algorithm. The input needs at least 16x16 pixels
    (four halvings)."""

    takes_images = True  # inputs [channels, height, width] (build() checks the task's)

    def __init__(self, input_shape: Sequence[int], num_outputs: int,
                 channels: Sequence[int] = (64, 160, 320, 640)):
        if len(channels) != 4 or min(channels) < 1:
            raise UserError(f"model.channels must be 4 numbers >= 1 (got {list(channels)})")
        if min(input_shape[1:]) < 16:
            raise UserError(f"resnet12 halves its input four times: it needs images of at "
                            f"least 16x16, not {input_shape[1]}x{input_shape[2]} (set "
                            f"task.image_size, or use model=conv4)")
        sizes = [input_shape[0], *channels]
        blocks = [ResidualBlock(cin, cout) for cin, cout in zip(sizes[:-1], sizes[1:])]
        super().__init__(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels[-1], num_outputs))
        self.input_shape = tuple(input_shape)
