"""2D navigation and the RL machinery (tasks/rl.py): dynamics, rewards and termination against
hand-computed cases, the linear baseline, the policy-gradient loss, and MAML's meta-gradient
through a policy-gradient inner step against a naive float64 reference."""

import math

import pytest
import torch

from maml_cli.algorithms.inner import SGD
from maml_cli.algorithms.maml import MAML
from maml_cli.engine import Engine, choose_strategy
from maml_cli.models.gaussian_mlp import GaussianMLP
from maml_cli.tasks.navigation import Navigation2D
from maml_cli.tasks.rl import STEP_STRIDE, linear_baseline


def test_a_step_moves_by_the_clipped_action_and_rewards_minus_the_distance_after_it():
    task = Navigation2D(scale_actions=False)
    goal = torch.tensor([0.3, -0.2])
    state = torch.tensor([[0.0, 0.0], [0.25, -0.2]])
    action = torch.tensor([[0.5, 0.05], [0.05, 0.0]])
    state, reward, done = task.step(state, action, goal)
    torch.testing.assert_close(state, torch.tensor([[0.1, 0.05], [0.3, -0.2]]))
    torch.testing.assert_close(task.observe(state), state)
    torch.testing.assert_close(reward, -torch.tensor([math.hypot(0.2, 0.25), 0.0]))
    assert done.tolist() == [False, True]  # within 0.01 of the goal


def test_scaled_actions_move_max_step_per_unit_then_clip_as_the_papers_code():
    task = Navigation2D()  # rllab's normalize: [-1, 1] onto [-0.1, 0.1], then clipped
    goal = torch.tensor([0.3, -0.2])
    state = torch.tensor([[0.0, 0.0], [0.2, -0.2]])
    action = torch.tensor([[0.5, -3.0], [1.0, 0.0]])
    state, reward, done = task.step(state, action, goal)
    torch.testing.assert_close(state, torch.tensor([[0.05, -0.1], [0.3, -0.2]]))
    torch.testing.assert_close(reward, -torch.tensor([math.hypot(0.25, 0.1), 0.0]))
    assert done.tolist() == [False, True]


def policy_towards(goal, speed, log_std=-20.0):
    """A deterministic-in-effect policy that moves `speed` per step straight at the goal (in
    action units: 1 is Navigation2D's max_step of 0.1)."""
    def policy(observation):
        to_goal = goal - observation
        direction = to_goal / to_goal.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        mean = direction * speed
        return torch.cat([mean, torch.full_like(mean, log_std)], -1)
    return policy


def one_task(task, policy, goal, count, seed):
    """task.rollouts for a single task: its observations and packed targets."""
    obs, packed = task.rollouts(policy, goal[None], count, [torch.Generator().manual_seed(seed)])
    return obs[0], packed[0]


def test_a_rollout_ends_at_the_goal_and_its_later_steps_count_for_nothing():
    task = Navigation2D(horizon=10)
    goal = torch.tensor([0.3, 0.4])  # 0.5 away: 5 steps of 0.1
    obs, packed = one_task(task, policy_towards(goal, 1.0), goal, 2, seed=0)
    # action, advantage, mask, reward, and the sampling policy's mean and log std
    assert obs.shape == (20, 2) and packed.shape == (20, 9)
    mask, reward = packed[:10, task.columns["mask"]], packed[:10, task.columns["reward"]]
    assert mask.tolist() == [1.0] * 5 + [0.0] * 5
    want = [-0.4, -0.3, -0.2, -0.1, 0.0]
    torch.testing.assert_close(reward[:5], torch.tensor(want), atol=1e-5, rtol=0)
    assert (reward[5:] == 0).all()
    assert task.metric(None, packed).item() == pytest.approx(sum(want), abs=1e-4)
    torch.testing.assert_close(obs[1], torch.tensor([0.06, 0.08]), atol=1e-5, rtol=0)


def test_advantages_are_normalised_over_the_steps_that_ran_and_zero_after():
    task = Navigation2D(horizon=10)
    goal = torch.tensor([0.3, 0.4])
    _, packed = one_task(task, policy_towards(goal, 0.7, log_std=-1.0), goal, 4, seed=1)
    advantage, mask = packed[:, task.columns["advantage"]], packed[:, task.columns["mask"]].bool()
    assert advantage[mask].mean().abs() < 1e-5 and abs(advantage[mask].std() - 1) < 1e-4
    assert (advantage[~mask] == 0).all()


def test_the_linear_baseline_fits_returns_that_are_linear_in_its_features():
    torch.manual_seed(0)
    obs = torch.randn(3, 8, 2, dtype=torch.float64)
    t = torch.arange(8, dtype=torch.float64) / 100
    returns = 2 * obs[..., 0] - obs[..., 1] ** 2 + 5 * t ** 3 + 0.5
    masks = torch.ones(3, 8, dtype=torch.float64)
    masks[0, 5:] = 0
    fitted = linear_baseline(obs, returns * masks, masks, regulariser=1e-12)
    torch.testing.assert_close(fitted, returns * masks, atol=1e-6, rtol=0)


def test_the_linear_baseline_fits_each_task_of_a_batch_on_its_own():
    torch.manual_seed(0)
    obs = torch.randn(4, 3, 8, 2, dtype=torch.float64)
    returns, masks = torch.randn(4, 3, 8, dtype=torch.float64), torch.ones(4, 3, 8)
    masks[1, :, 6:] = 0
    masks = masks.double()
    together = linear_baseline(obs, returns, masks)
    for t in range(4):
        torch.testing.assert_close(together[t], linear_baseline(obs[t], returns[t], masks[t]))


def test_the_policy_gradient_loss_is_minus_the_masked_mean_of_log_prob_times_advantage():
    task = Navigation2D()
    torch.manual_seed(0)
    prediction = torch.randn(6, 4, dtype=torch.float64)
    action, advantage = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    mask = torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.float64)
    target = torch.cat([action, advantage[:, None], mask[:, None], torch.zeros(6, 5)], -1)
    normal = torch.distributions.Normal(prediction[:, :2], prediction[:, 2:].exp())
    want = -(normal.log_prob(action).sum(-1) * advantage)[:4].mean()
    torch.testing.assert_close(task.loss(prediction, target), want)


def tiny_case():
    torch.manual_seed(0)
    task = Navigation2D(shots=3, queries=3, horizon=6)
    model = GaussianMLP((2,), 2, hidden=[5]).double()
    generator = torch.Generator().manual_seed(3)
    episode = task.sample("train", 2, generator)
    episode.support_x, episode.query_x = episode.support_x.double(), episode.query_x.double()
    return task, model, episode


def naive_log_prob(weights, obs, action):
    w1, b1, w2, b2, log_std = weights
    mean = torch.relu(obs @ w1.T + b1) @ w2.T + b2
    return torch.distributions.Normal(mean, log_std.exp()).log_prob(action).sum(-1)


def naive_meta_gradient(task, model, episode, lr, first_order):
    """MAML-RL by hand, one task at a time: rollouts of the policy (from the generators the
    task seeds for its step), one policy-gradient step with create_graph, the post-update
    rollouts' loss."""
    names = ["mean.1.weight", "mean.1.bias", "mean.3.weight", "mean.3.bias", "log_std"]
    weights = [dict(model.named_parameters())[n] for n in names]
    total = [torch.zeros_like(w) for w in weights]

    def rollouts(t, step, w):
        def policy(obs):  # one task: [1, n, 2] -> [1, n, 4]
            return torch.func.functional_call(model, dict(zip(names, w)), (obs[0],))[None]
        seed = (int(episode.support_y[t]) + STEP_STRIDE * 2 * step) % 2**63
        obs, target = task.rollouts(policy, episode.support_x[t:t + 1], task.shots,
                                    [torch.Generator().manual_seed(seed)])
        return obs[0], target[0]

    for t in range(episode.num_tasks):
        obs, target = rollouts(t, 0, [w.detach() for w in weights])
        action, advantage, mask = target[:, :2], target[:, 2], target[:, 3]
        inner = -(naive_log_prob(weights, obs, action) * advantage * mask).sum() / mask.sum()
        grads = torch.autograd.grad(inner, weights, create_graph=not first_order)
        fast = [w - lr * g for w, g in zip(weights, grads)]
        obs, target = rollouts(t, 1, [f.detach() for f in fast])
        action, advantage, mask = target[:, :2], target[:, 2], target[:, 3]
        outer = -(naive_log_prob(fast, obs, action) * advantage * mask).sum() / mask.sum()
        for acc, g in zip(total, torch.autograd.grad(outer, weights)):
            acc += g / episode.num_tasks
    return total


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_through_a_policy_gradient_step_equals_the_naive_reference(first_order,
                                                                                 strategy):
    task, model, episode = tiny_case()
    algorithm = MAML(model, task.loss, task.metric, SGD(0.1, steps=1), data_fn=task.task_data,
                     first_order=first_order)
    engine = Engine(algorithm, strategy, task=task)
    params = dict(model.named_parameters())
    engine.meta_backward(params, {}, engine.collect(params, {}, episode))
    got = [params[n].grad for n in ["mean.1.weight", "mean.1.bias", "mean.3.weight",
                                    "mean.3.bias", "log_std"]]
    want = naive_meta_gradient(task, model, episode, 0.1, first_order)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_policies_train_in_the_loop_on_cpu_and_under_vmap_on_cuda_by_default():
    _, model, _ = tiny_case()
    assert choose_strategy("auto", model, torch.device("cpu")) == "loop"
    assert choose_strategy("auto", model, torch.device("cuda")) == "vmap"


def test_a_batch_collects_as_its_tasks_would_alone_and_again_the_same():
    task, model, episode = tiny_case()
    algorithm = MAML(model, task.loss, task.metric, SGD(0.1, steps=1), data_fn=task.task_data)
    engine = Engine(algorithm, "loop", task=task)
    params = {k: p.detach() for k, p in model.named_parameters()}
    together = engine.collect(params, {}, episode, steps=2)
    assert together.support_x.shape == (2, 3, 3 * 6, 2)  # tasks, steps + 1, rollout steps, obs
    for t in range(2):
        alone = engine.collect(params, {}, episode[t:t + 1], steps=2)
        for a, b in zip(alone.tensors(), together[t:t + 1].tensors()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    task.max_rollouts = 4  # one task's 3 rollouts at a time
    for a, b in zip(engine.collect(params, {}, episode, steps=2).tensors(), together.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    task.max_rollouts = None
    # Every step's rollouts are new: the policy after each step rolls out again.
    assert not torch.equal(together.support_x[:, 1], together.support_x[:, 2])
    curves = [engine.curves(params, {}, episode, steps=2) for _ in range(2)]
    torch.testing.assert_close(curves[0], curves[1], rtol=0, atol=0)
    assert curves[0].shape == (2, 3, 1)
    vmapped = Engine(algorithm, "vmap", task=task).curves(params, {}, episode, steps=2)
    torch.testing.assert_close(vmapped, curves[0], rtol=1e-9, atol=1e-9)


def test_the_meta_objective_is_importance_weighted_and_the_kl_is_the_gaussians():
    task = Navigation2D()
    torch.manual_seed(1)
    new, old = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    action, advantage = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    mask = torch.tensor([1, 1, 1, 0, 1, 0], dtype=torch.float64)
    target = torch.cat([action, advantage[:, None], mask[:, None], torch.zeros(6, 1), old], -1)

    def normal(p):
        return torch.distributions.Normal(p[:, :2], p[:, 2:].exp())

    ratio = (normal(new).log_prob(action).sum(-1) - normal(old).log_prob(action).sum(-1)).exp()
    ran = mask.bool()
    torch.testing.assert_close(task.query_loss(new, target), -(ratio * advantage)[ran].mean())
    kl = torch.distributions.kl_divergence(normal(old), normal(new)).sum(-1)
    torch.testing.assert_close(task.kl(new, target), kl[ran].mean())
