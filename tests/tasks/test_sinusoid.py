import math

import pytest
import torch

from maml_cli.errors import UserError
from maml_cli.tasks.sinusoid import Sinusoid


def test_episode_shapes_and_ranges():
    task = Sinusoid(shots=10, queries=15)
    episode = task.sample("train", 25, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == episode.support_y.shape == (25, 10, 1)
    assert episode.query_x.shape == episode.query_y.shape == (25, 15, 1)
    for x in (episode.support_x, episode.query_x):
        assert x.min() >= -5 and x.max() <= 5
    assert episode.support_y.abs().max() <= 5.0


def test_targets_follow_one_sinusoid_per_task_with_paper_ranges():
    task = Sinusoid()
    g = torch.Generator().manual_seed(1)
    amplitude, phase = task.functions(2000, g)
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0
    assert 0 <= phase.min() and phase.max() <= math.pi
    # Spread over the whole range, not a corner of it.
    assert amplitude.max() - amplitude.min() > 4.5 and phase.max() - phase.min() > 3.0
    episode = task.episode(amplitude, phase, g)
    torch.testing.assert_close(episode.query_y, amplitude * torch.sin(episode.query_x - phase))
    torch.testing.assert_close(episode.support_y,
                               amplitude * torch.sin(episode.support_x - phase))


def test_sampling_is_determined_by_the_generator():
    task = Sinusoid()
    a = task.sample("train", 4, torch.Generator().manual_seed(3))
    b = task.sample("train", 4, torch.Generator().manual_seed(3))
    c = task.sample("train", 4, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))
    assert not torch.equal(a.support_x, c.support_x)


def test_loss_is_mse_and_lower_is_better():
    task = Sinusoid()
    assert task.loss(torch.zeros(3, 1), torch.full((3, 1), 2.0)).item() == pytest.approx(4.0)
    assert task.better(0.1, 0.2) and not task.better(0.3, 0.2) and task.better(5.0, None)


def test_inverted_range_is_rejected():
    with pytest.raises(UserError, match="task.amplitude"):
        Sinusoid(amplitude=(5.0, 0.1))
