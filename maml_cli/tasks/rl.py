"""Reinforcement-learning tasks (Finn et al. 2017, section 5.3): a task is an environment's goal,
and its data are rollouts of the policy being adapted, so they depend on the parameters.

A task's inner step s trains on rollouts of the policy after s steps, and the meta-objective and
the metric after s steps use rollouts of that same policy, as in the paper: fresh rollouts for
every step. The loss is vanilla policy gradient (REINFORCE) with a linear feature baseline refit
on each batch, the metric the average undiscounted return per rollout.

Rollouts draw their action noise from generators seeded by the task (a seed drawn from the run's
sampler with the goal, and the step), so a task's rollouts are a function of the policy alone:
training resumes exactly, and maml-eval gives the same numbers for the same eval.seed.

A sampled meta-batch's rollouts are drawn once, by the policy as it is when they are first
asked for, and kept until the next batch is sampled: an outer optimizer that evaluates the
meta-objective again at other meta-parameters (TRPO's line search) sees the same samples, with
the sampling policy's Gaussian recorded beside each step for the importance weights and the KL.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from maml_cli.episode import Episode
from maml_cli.tasks.base import TaskData, TaskFamily

# rllab's LinearFeatureBaseline: time enters its features as t / 100.
TIME_SCALE = 100.0
# Seeds of a task's steps, apart enough that no two steps of two tasks share a stream.
STEP_STRIDE = 1_000_003


class RLTask(TaskFamily):
    """`shots` rollouts per inner step, `queries` rollouts for the meta-objective and the
    metric (the paper: 20 and 20), each at most `horizon` steps, returns discounted by
    `discount` for the policy gradient."""

    metric_name = "return"
    higher_is_better = True
    vmappable = False  # rollouts draw from their own generators, which vmap cannot batch
    needs_policy = True
    observation_size: int
    action_size: int

    def __init__(self, shots: int, queries: int, horizon: int, discount: float, device="cpu",
                 data=None):
        super().__init__(device, data)
        self.shots, self.queries, self.horizon, self.discount = shots, queries, horizon, discount
        self.input_shape, self.num_outputs = (self.observation_size,), self.action_size
        self.drawn: dict = {}
        self.simulated = 0  # environment steps stepped so far, for perf/env_steps_per_s
        a = self.action_size  # the columns of a rollout step's target
        self.columns = {"action": slice(0, a), "advantage": a, "mask": a + 1, "reward": a + 2,
                        "old": slice(a + 3, 3 * a + 3)}

    @abstractmethod
    def goals(self, num_tasks: int, generator: torch.Generator) -> Tensor: ...

    @abstractmethod
    def reset(self, goal: Tensor, rollouts: int, generator: torch.Generator) -> Tensor:
        """The start state of `rollouts` rollouts of the task with this goal, any randomness
        drawn from `generator`."""

    @abstractmethod
    def step(self, state: Tensor, action: Tensor, goal: Tensor):
        """(next state, reward, done), each with the rollouts first; observe() gives the
        policy's view of a state."""

    def env_steps_simulated(self) -> int:
        return self.simulated

    def observe(self, state: Tensor) -> Tensor:
        return state

    def sample(self, split: str, num_tasks: int, generator: torch.Generator) -> Episode:
        """Every split draws from the same goal distribution, as in the paper; the splits' own
        generator seeds keep them apart. support/query x: the goal; y: the task's seed."""
        goal = self.goals(num_tasks, generator)
        seed = torch.randint(2**62, (num_tasks,), generator=generator, device=self.device)
        self.drawn = {}  # (task seed, step, stream) -> rollouts, for this batch only
        return Episode(goal, seed, goal, seed)

    def task_data(self, support_x, support_y, query_x, query_y, policy) -> TaskData:
        return Rollouts(self, support_x, int(support_y), policy)

    @torch.no_grad()
    def rollouts(self, policy: Callable[[Tensor], Tensor], goal: Tensor, count: int,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """`count` rollouts of `policy` (observations -> Gaussian mean and log std): the
        observations [count * horizon, observation_size] and, per step, the action, its
        advantage, whether the rollout was still running, the reward and the sampling policy's
        mean and log std, packed as [count * horizon, 3 * action_size + 3] (self.columns)."""
        state = self.reset(goal, count, generator)
        self.simulated += count * self.horizon
        running = torch.ones(count, dtype=torch.bool, device=goal.device)
        observations, actions, rewards, masks, sampling = [], [], [], [], []
        for _ in range(self.horizon):
            observation = self.observe(state)
            prediction = policy(observation)
            mean, log_std = prediction.split(self.action_size, dim=-1)
            noise = torch.randn(mean.shape, generator=generator, device=mean.device)
            action = mean + log_std.exp() * noise
            state, reward, done = self.step(state, action, goal)
            observations.append(observation)
            actions.append(action)
            rewards.append(torch.where(running, reward, 0.0))
            masks.append(running)
            sampling.append(prediction)
            running = running & ~done
        observations, actions = torch.stack(observations, 1), torch.stack(actions, 1)
        rewards = torch.stack(rewards, 1)
        masks = torch.stack(masks, 1).to(rewards.dtype)
        advantages = self.advantages(observations, rewards, masks)
        packed = torch.cat([actions, advantages[..., None], masks[..., None],
                            rewards[..., None], torch.stack(sampling, 1)], -1)
        return observations.flatten(0, 1), packed.flatten(0, 1)

    def advantages(self, observations: Tensor, rewards: Tensor, masks: Tensor) -> Tensor:
        """Discounted returns-to-go minus a linear feature baseline fitted to them, normalised
        over the steps that ran. All [rollouts, horizon]."""
        returns = torch.zeros_like(rewards)
        running = rewards.new_zeros(rewards.shape[0])
        for t in reversed(range(rewards.shape[1])):
            running = rewards[:, t] + self.discount * running * masks[:, t]
            returns[:, t] = running
        advantages = returns - linear_baseline(observations, returns, masks)
        valid = masks.bool()
        mean, std = advantages[valid].mean(), advantages[valid].std()
        return ((advantages - mean) / (std + 1e-8)) * masks

    def log_prob(self, prediction: Tensor, action: Tensor) -> Tensor:
        """Log density of each action under the Gaussian the policy predicted."""
        mean, log_std = prediction.split(self.action_size, dim=-1)
        z = (action - mean) / log_std.exp()
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """REINFORCE, the inner loss: minus the mean over the steps that ran of log pi(a|s)
        times the advantage."""
        c = self.columns
        log_prob = self.log_prob(prediction, target[:, c["action"]])
        mask = target[:, c["mask"]]
        return -(log_prob * target[:, c["advantage"]] * mask).sum() / mask.sum()

    def query_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """The meta-objective: the importance-weighted surrogate, pi(a|s) / pi_old(a|s) times the
        advantage, with pi_old the policy that drew the samples. Its gradient where pi = pi_old
        is REINFORCE's; elsewhere (a line search) it estimates the change in return."""
        c = self.columns
        action, mask = target[:, c["action"]], target[:, c["mask"]]
        old = self.log_prob(target[:, c["old"]], action)
        ratio = (self.log_prob(prediction, action) - old).exp()
        return -(ratio * target[:, c["advantage"]] * mask).sum() / mask.sum()

    def kl(self, prediction: Tensor, target: Tensor) -> Tensor:
        """KL(pi_old || pi) per state, averaged over the steps that ran."""
        c, a = self.columns, self.action_size
        mean, log_std = prediction.split(a, dim=-1)
        old_mean, old_log_std = target[:, c["old"]].split(a, dim=-1)
        per_state = (log_std - old_log_std + ((2 * old_log_std).exp() + (old_mean - mean) ** 2)
                     / (2 * (2 * log_std).exp()) - 0.5).sum(-1)
        mask = target[:, c["mask"]]
        return (per_state * mask).sum() / mask.sum()

    def metric(self, prediction: Tensor, target: Tensor) -> Tensor:
        """The average undiscounted return of the rollouts (the policy's, not the prediction's:
        it is read from the rollouts themselves)."""
        reward = target[:, self.columns["reward"]]
        return reward.sum() / (reward.numel() / self.horizon)


def linear_baseline(observations: Tensor, returns: Tensor, masks: Tensor,
                    regulariser: float = 1e-5) -> Tensor:
    """rllab's LinearFeatureBaseline: returns regressed by ridge least squares on the features
    (o, o², t, t², t³, 1) of the steps that ran; its predictions at every step."""
    rollouts, horizon = returns.shape
    o = observations.clamp(-10, 10)
    t = (torch.arange(horizon, device=o.device, dtype=o.dtype) / TIME_SCALE)
    t = t.expand(rollouts, horizon)[..., None]
    features = torch.cat([o, o * o, t, t * t, t ** 3, torch.ones_like(t)], -1) * masks[..., None]
    flat, target = features.flatten(0, 1), (returns * masks).flatten()
    gram = flat.T @ flat
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    for _ in range(5):  # rllab raises the regulariser tenfold until the system solves
        weights, info = torch.linalg.solve_ex(gram + regulariser * eye, flat.T @ target)
        if not info.item() and torch.isfinite(weights).all():
            break
        regulariser *= 10
    return (features @ weights) * masks


class Rollouts(TaskData):
    """One RL task's data: the rollouts of the policy after each inner step (they are both the
    next step's support and that step's query), drawn once per sampled batch."""

    def __init__(self, task: RLTask, goal: Tensor, seed: int, policy):
        self.task, self.goal, self.seed, self.policy = task, goal, seed, policy

    def _rollouts(self, step: int, params, count: int, stream: int):
        key = (self.seed, step, stream)
        if key not in self.task.drawn:
            seed = (self.seed + STEP_STRIDE * (2 * step + stream)) % 2**63
            generator = torch.Generator(self.goal.device).manual_seed(seed)
            weights = {k: v.detach() for k, v in params.items()}
            self.task.drawn[key] = self.task.rollouts(
                lambda obs: self.policy(weights, obs, step), self.goal, count, generator)
        return self.task.drawn[key]

    def support(self, step: int, params):
        return self._rollouts(step, params, self.task.shots, 0)

    def query(self, step: int, params):
        """The support rollouts of the same step when there are as many; else its own."""
        shared = self.task.queries == self.task.shots
        return self._rollouts(step, params, self.task.queries, 0 if shared else 1)
