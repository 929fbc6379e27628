from torch import nn

from maml_cli.engine import choose_strategy
from maml_cli.models.mlp import MLP


def test_auto_vectorizes_mlps_and_loops_over_conv_or_batchnorm_nets():
    assert choose_strategy("auto", MLP((1,), 1)) == "vmap"
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    assert choose_strategy("auto", conv) == "loop"
    assert choose_strategy("loop", MLP((1,), 1)) == "loop"


def test_mlp_shapes():
    model = MLP((1, 28, 28), 5, hidden=(32, 16))
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 32), (32, 16), (16, 5)]
