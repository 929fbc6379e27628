import pytest
import torch
from torch import nn

from maml_cli.errors import UserError
from maml_cli.models.conv4 import BatchStatNorm, Conv4
from maml_cli.models.mlp import MLP


def test_mlp_shapes():
    model = MLP((1, 28, 28), 5, hidden=(32, 16))
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 32), (32, 16), (16, 5)]


def test_conv4_options_match_the_reference_nets():
    omniglot = Conv4((1, 28, 28), 5)  # 64 filters, stride 2, spatial mean
    assert omniglot[-1].in_features == 64 and omniglot(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    mini = Conv4((3, 84, 84), 5, filters=32, downsample="maxpool", spatial_mean=False)
    assert mini[-1].in_features == 32 * 5 * 5  # 84 -> 42 -> 21 -> 10 -> 5
    assert sum(isinstance(m, nn.MaxPool2d) for m in mini) == 4
    plain = Conv4((1, 28, 28), 5, norm="none")
    assert not any(isinstance(m, BatchStatNorm) for m in plain)
    for bad in ({"downsample": "avg"}, {"norm": "layer"}, {"filters": 0}):
        with pytest.raises(UserError, match="model."):
            Conv4((1, 28, 28), 5, **bad)


def test_batch_stat_norm_normalises_each_batch_by_its_own_statistics():
    norm = BatchStatNorm(4)
    x = torch.randn(6, 4, 5, 5) * 3 + 7
    y = norm(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3,
                               rtol=0)
    torch.testing.assert_close(norm(x[:2]), torch.nn.functional.batch_norm(
        x[:2], None, None, norm.weight, norm.bias, training=True))
