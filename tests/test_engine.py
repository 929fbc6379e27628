import torch
from torch import nn

from maml_cli.device import resolve_device
from maml_cli.engine import choose_strategy
from maml_cli.models.conv4 import Conv4
from maml_cli.models.mlp import MLP


def test_auto_follows_the_benchmark_and_never_vmaps_torchs_batchnorm():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    mlp, conv = MLP((1,), 1), Conv4((1, 28, 28), 5)
    assert choose_strategy("auto", mlp, cpu) == choose_strategy("auto", mlp, cuda) == "vmap"
    assert choose_strategy("auto", conv, cpu) == "loop"
    assert choose_strategy("auto", conv, cuda) == "vmap"
    torch_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    assert choose_strategy("auto", torch_bn, cuda) == "loop"
    assert choose_strategy("loop", mlp, cuda) == "loop"


def test_device_threads_sets_torchs_cpu_threads():
    before = torch.get_num_threads()
    try:
        assert resolve_device("cpu", threads=1) == torch.device("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
