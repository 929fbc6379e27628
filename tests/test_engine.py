import torch
from torch import nn

from maml_cli.device import resolve_device
from maml_cli.engine import choose_strategy
from maml_cli.models.mlp import MLP


def test_auto_vectorizes_mlps_and_loops_over_conv_or_batchnorm_nets():
    assert choose_strategy("auto", MLP((1,), 1)) == "vmap"
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    assert choose_strategy("auto", conv) == "loop"
    assert choose_strategy("loop", MLP((1,), 1)) == "loop"


def test_device_threads_sets_torchs_cpu_threads():
    before = torch.get_num_threads()
    try:
        assert resolve_device("cpu", threads=1) == torch.device("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
