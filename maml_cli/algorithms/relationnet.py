"""Relation Networks (Sung et al. 2018): a learned relation module scores how well each query
matches each class, from the two feature maps side by side; trained with the mean squared error
of the scores against the one-hot labels. No inner loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from maml_cli.algorithms.base import NoInnerLoop, feature_maps
from maml_cli.errors import UserError
from maml_cli.models.conv4 import BatchStatNorm


class RelationModule(nn.Module):
    """2 x [conv3x3 -> norm -> ReLU -> 2x2 max-pool] -> linear -> ReLU -> linear -> sigmoid,
    on a class's and a query's feature maps stacked along the channels (the paper's module;
    its norm uses each batch's own statistics, as conv4's does)."""

    def __init__(self, maps: torch.Size, filters: int, hidden: int):
        super().__init__()
        channels, height, width = maps
        if min(height, width) < 4:
            raise UserError(f"the relation module pools twice: it needs feature maps of at "
                            f"least 4x4, and the model gives {height}x{width} (with conv4: "
                            f"model.downsample_blocks=2, as +experiment=relationnet_omniglot_5w1s)")
        self.channels = channels
        self.compare = nn.Conv2d(2 * channels, filters, 3, padding=1)
        size = filters * (height // 4) * (width // 4)
        self.rest = nn.Sequential(
            BatchStatNorm(filters), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(filters, filters, 3, padding=1), BatchStatNorm(filters), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(size, hidden), nn.ReLU(),
            nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, classes: Tensor, queries: Tensor) -> Tensor:
        """[queries, classes] scores of every pair. The first convolution of a stacked pair is
        the sum of its class half's and its query half's: each map is convolved once, not once
        per pair (19 x 5 pairs in the Omniglot 5-way 1-shot preset)."""
        weight, c = self.compare.weight, self.channels
        per_class = F.conv2d(classes, weight[:, :c], padding=1)
        per_query = F.conv2d(queries, weight[:, c:], self.compare.bias, padding=1)
        pairs = (per_query[:, None] + per_class[None]).flatten(0, 1)
        return self.rest(pairs).view(queries.shape[0], classes.shape[0])


def one_hot_mse(scores: Tensor, labels: Tensor) -> Tensor:
    """The paper's loss: the scores' mean squared error against the one-hot labels."""
    return F.mse_loss(scores, F.one_hot(labels, scores.shape[-1]).to(scores.dtype))


class RelationNet(NoInnerLoop):
    """The embedding is the model's convolutional part (its feature maps, before any flattening
    or pooling away); a class's feature map is the sum of its support images' (the paper's K-shot
    rule). The relation module is the algorithm's own, trained and checkpointed beside the
    model; the model's head is never used. The task's own loss is replaced by `one_hot_mse`."""

    option = "relationnet"

    def __init__(self, model, loss_fn, metric_fn, inner, num_classes=None, data_fn=None,
                 objective_fn=None, kl_fn=None, filters=64, hidden=8):
        super().__init__(model, one_hot_mse, metric_fn, inner, num_classes, data_fn)
        self.embedding = feature_maps(model, "algorithm=relationnet")
        self.embedded = [name for name, _ in self.embedding.named_parameters()]
        with torch.no_grad():
            probe = next(model.parameters()).new_zeros(2, *model.input_shape)
            maps = self.embedding(probe).shape[1:]
        self.learned.relation = RelationModule(maps, filters, hidden).to(probe)

    def scores(self, params, buffers, support_x, support_y, query_x):
        embedding = {k: params[k] for k in self.embedded}
        support, query = (functional_call(self.embedding, (embedding, buffers), (x,))
                          for x in (support_x, query_x))
        members = F.one_hot(support_y, self.num_classes).to(support.dtype)  # [support, classes]
        classes = (members.T @ support.flatten(1)).view(-1, *support.shape[1:])
        return self.learned.relation(classes, query)
