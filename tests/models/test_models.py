import pytest
import torch
from torch import nn

from maml_cli.errors import UserError
from maml_cli.models.conv4 import BatchStatNorm, Conv4
from maml_cli.models.mlp import MLP
from maml_cli.models.resnet12 import ResNet12


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
    # Relation Networks' embedding: only the first two blocks downsample.
    relation = Conv4((1, 28, 28), 5, downsample="maxpool", downsample_blocks=2, spatial_mean=False)
    assert relation[-1].in_features == 64 * 7 * 7  # 28 -> 14 -> 7 -> 7 -> 7
    strided = Conv4((1, 28, 28), 5, downsample_blocks=1, spatial_mean=False)
    assert [m.stride for m in strided if isinstance(m, nn.Conv2d)] == [(2, 2)] + [(1, 1)] * 3
    for bad in ({"downsample": "avg"}, {"norm": "layer"}, {"filters": 0},
                {"downsample_blocks": 5}, {"norm_eps": 0.0}):
        with pytest.raises(UserError, match="model."):
            Conv4((1, 28, 28), 5, **bad)


def test_resnet12_is_four_residual_blocks_halving_the_image_then_a_head():
    model = ResNet12((3, 84, 84), 5)
    assert sum(p.numel() for p in model.parameters()) == 12_427_525  # docs/performance.md
    features = nn.Sequential(*list(model)[:4])(torch.rand(2, 3, 84, 84))
    assert features.shape == (2, 640, 5, 5)  # 84 -> 42 -> 21 -> 10 -> 5
    assert isinstance(model[-1], nn.Linear) and model[-1].in_features == 640
    small = ResNet12((1, 16, 16), 3, channels=(2, 3, 4, 5))
    assert small(torch.rand(4, 1, 16, 16)).shape == (4, 3)
    # Its norm layers use the batch's own statistics: an image's features depend on its batch.
    x, body = torch.rand(4, 1, 16, 16), nn.Sequential(*list(small)[:4])
    assert not torch.allclose(body(x)[:2], body(x[:2]))
    with pytest.raises(UserError, match="needs images of at least 16x16, not 12x12"):
        ResNet12((1, 12, 12), 3)
    with pytest.raises(UserError, match="model.channels must be 4 numbers"):
        ResNet12((1, 16, 16), 3, channels=(4, 4, 4))


def test_batch_stat_norm_normalises_each_batch_by_its_own_statistics():
    norm = BatchStatNorm(4)
    x = torch.randn(6, 4, 5, 5) * 3 + 7
    y = norm(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3,
                               rtol=0)
    torch.testing.assert_close(norm(x[:2]), torch.nn.functional.batch_norm(
        x[:2], None, None, norm.weight, norm.bias, training=True))


def test_norm_eps_is_what_the_norm_adds_to_the_variance():
    x = torch.randn(5, 8, 2, 2) * 0.01  # variances near 1e-4: the two eps differ here
    for eps in (1e-5, 1e-3):
        norms = [m for m in Conv4((1, 28, 28), 5, filters=8, norm_eps=eps).modules()
                 if isinstance(m, BatchStatNorm)]
        assert len(norms) == 4 and all(m.eps == eps for m in norms)
        expected = torch.nn.functional.batch_norm(x, None, None, norms[0].weight,
                                                  norms[0].bias, training=True, eps=eps)
        torch.testing.assert_close(norms[0](x), expected)
    assert not torch.allclose(BatchStatNorm(8, 1e-3)(x), BatchStatNorm(8, 1e-5)(x), rtol=0.1)


def test_offset_only_norm_is_batch_norm_with_its_scale_fixed_at_one():
    torch.manual_seed(0)
    offset_only = Conv4((1, 28, 28), 5, filters=8, norm="batch_offset")
    full = Conv4((1, 28, 28), 5, filters=8)
    norms = [m for m in offset_only.modules() if isinstance(m, BatchStatNorm)]
    assert len(norms) == 4 and all(m.weight is None for m in norms)
    state = {k: v for k, v in full.state_dict().items() if k in offset_only.state_dict()}
    offset_only.load_state_dict(state)
    x = torch.rand(6, 1, 28, 28)
    torch.testing.assert_close(offset_only(x), full(x))  # full's scales are still 1


def test_reference_init_draws_the_reference_codes_distributions():
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 5, filters=64, init="reference")
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    head = model[-1]
    assert all(not m.bias.detach().any() for m in [*convs, head])
    assert 0.9 < float(head.weight.detach().std()) < 1.1  # N(0, 1) on spatially averaged features
    bound = (6 / (9 * 64 + 9 * 64)) ** 0.5  # Glorot-uniform, 3x3 kernels, 64 -> 64
    assert float(convs[1].weight.detach().abs().max()) <= bound
    assert float(convs[1].weight.detach().std()) == pytest.approx(bound / 3 ** 0.5, rel=0.05)
    with pytest.raises(UserError, match="model.init must be one of torch, reference"):
        Conv4((1, 28, 28), 5, init="xavier")


def test_embedding_mlp_embeds_each_categorical_input_after_the_numeric_ones():
    from maml_cli.models.embedding_mlp import EmbeddingMLP

    model = EmbeddingMLP((4,), 3, categories=[5, 2], hidden=[6], embedding_dim=3)
    assert [t.num_embeddings for t in model[0].tables] == [5, 2]
    assert model[1].in_features == 2 + 2 * 3 and model[-1].out_features == 3
    x = torch.tensor([[0.5, -1.0, 4.0, 1.0]])
    features = model[0](x)
    assert torch.equal(features[0, :2], x[0, :2])
    assert torch.equal(features[0, 2:5], model[0].tables[0].weight[4])
    assert torch.equal(features[0, 5:], model[0].tables[1].weight[1])
    for bad in ({"embedding_dim": 0}, {"hidden": []}, {"hidden": [4, 0]}):
        with pytest.raises(UserError, match="model.embedding_dim and model.hidden must be >= 1"):
            EmbeddingMLP((4,), 3, categories=[5, 2], **bad)
