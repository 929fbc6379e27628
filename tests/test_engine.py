from torch import nn

from maml_cli.engine import choose_strategy
from maml_cli.models.mlp import MLP


def test_auto_vectorizes_mlps_and_loops_over_conv_or_batchnorm_nets():
    assert choose_strategy("auto", MLP((1,), 1)) == "vmap"
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    assert choose_strategy("auto", conv) == "loop"
    assert choose_strategy("loop", MLP((1,), 1)) == "loop"
