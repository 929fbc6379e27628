"""Prototypical Networks (Snell et al. 2017), the non-gradient baseline: a class's prototype is
the mean support embedding of its images; a query's logits are minus its squared Euclidean
distances to the prototypes. No inner loop."""

from __future__ import annotations

import torch.nn.functional as F
from torch.func import functional_call

from maml_cli.algorithms.base import NoInnerLoop, body_params, split_head


class ProtoNet(NoInnerLoop):
    """The embedding is the model without its last layer (conv4's body: 64 features on
    Omniglot); the head is never used and its weights never change."""

    option = "protonet"

    def __init__(self, model, loss_fn, metric_fn, inner, num_classes=None, data_fn=None,
                 objective_fn=None, kl_fn=None):
        super().__init__(model, loss_fn, metric_fn, inner, num_classes, data_fn, objective_fn,
                         kl_fn)
        self.body, _, self.head_prefix = split_head(model, "algorithm=protonet")

    def scores(self, params, buffers, support_x, support_y, query_x):
        body = body_params(params, self.head_prefix)
        support, query = (functional_call(self.body, (body, buffers), (x,)).flatten(1)
                          for x in (support_x, query_x))
        members = F.one_hot(support_y, self.num_classes).to(support.dtype)  # [support, classes]
        prototypes = (members.T @ support) / members.sum(0)[:, None]
        return -(query[:, None] - prototypes[None]).pow(2).sum(-1)
