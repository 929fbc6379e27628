"""Reinforcement-learning tasks (Finn et al. 2017, section 5.3): a task is an environment's goal,
and its data are rollouts of the policy being adapted, so they depend on the parameters.

A task's inner step s trains on rollouts of the policy after s steps, and the meta-objective and
the metric after s steps use rollouts of that same policy, as in the paper: fresh rollouts for
every step. The loss is vanilla policy gradient (REINFORCE) with a linear feature baseline refit
on each batch, the metric the average undiscounted return per rollout.

A sampled meta-batch holds each task's goal and seed. The engine collects it (Engine.collect):
it adapts every task's policy step by step and, before each step, has simulate() roll out all
the tasks' current policies at once. The collected batch holds each task's rollouts after 0, 1,
..., steps inner steps, with the sampling policy's Gaussian recorded beside each time step (for
the importance weights and the KL), and from then on it is data like a supervised batch: the
meta-gradient, TRPO's line search (which evaluates the meta-objective again at other
meta-parameters, on the same samples) and vmap all work on it as it is.

Rollouts draw their start states and action noise from generators seeded by the task's seed
and the step, so a task's rollouts are a function of its policy alone, whichever tasks share its
batch: training resumes exactly, and maml-eval gives the same numbers for the same eval.seed.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from functools import partial

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
    needs_policy = True
    max_rollouts: int | None = None  # stepped at once (None: all of a batch's)
    observation_size: int
    action_size: int

    def __init__(self, shots: int, queries: int, horizon: int, discount: float, device="cpu",
                 data=None):
        super().__init__(device, data)
        self.shots, self.queries, self.horizon, self.discount = shots, queries, horizon, discount
        self.input_shape, self.num_outputs = (self.observation_size,), self.action_size
        self.simulated = 0  # environment steps stepped so far, for perf/env_steps_per_s
        a = self.action_size  # the columns of a rollout step's target
        self.columns = {"action": slice(0, a), "advantage": a, "mask": a + 1, "reward": a + 2,
                        "old": slice(a + 3, 3 * a + 3)}

    @abstractmethod
    def goals(self, num_tasks: int, generator: torch.Generator) -> Tensor: ...

    @abstractmethod
    def reset(self, goal: Tensor, seeds: Tensor) -> Tensor:
        """The start states of rollouts with these goals [rollouts, goal size], any randomness
        from their seeds [rollouts]."""

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
        return Episode(goal, seed, goal, seed)

    def allocate(self, episode: Episode, steps: int) -> Episode:
        """The collected form of a sampled batch, to be filled by simulate(): each task's
        rollouts after 0..steps inner steps, [tasks, steps + 1, rollouts * horizon, ...]. The
        query rollouts are the support's own when there are as many."""
        like = episode.support_x  # the goals: rollouts are in their dtype and on their device

        def rollouts(count: int) -> tuple[Tensor, Tensor]:
            shape = (episode.num_tasks, steps + 1, count * self.horizon)
            return (like.new_zeros(*shape, self.observation_size),
                    like.new_zeros(*shape, 3 * self.action_size + 3))

        support = rollouts(self.shots)
        return Episode(*support, *(support if self.queries == self.shots
                                   else rollouts(self.queries)))

    def simulate(self, episode: Episode, step: int, policy: Callable[[Tensor, slice], Tensor],
                 into: Episode) -> None:
        """The rollouts after `step` inner steps of every task of the sampled `episode`, written
        into its collected form `into`. `policy(observations, tasks)` maps observations
        [tasks, n, observation size] of the batch's `tasks` (a slice) to each task's Gaussian
        [tasks, n, 2 * action size] (mean, log std). At most `max_rollouts` rollouts are
        stepped at once, whole tasks at a time."""
        goal, seeds = episode.support_x, episode.support_y.tolist()
        streams = [(into.support_x, into.support_y, self.shots)]
        if into.query_x is not into.support_x:
            streams.append((into.query_x, into.query_y, self.queries))
        for stream, (x, y, count) in enumerate(streams):
            generators = [torch.Generator(goal.device).manual_seed(
                (seed + STEP_STRIDE * (2 * step + stream)) % 2**63) for seed in seeds]
            chunk = max(1, (self.max_rollouts or len(seeds) * count) // count)
            for start in range(0, len(seeds), chunk):
                tasks = slice(start, start + chunk)
                x[tasks, step], y[tasks, step] = self.rollouts(
                    partial(policy, tasks=tasks), goal[tasks], count, generators[tasks])

    def task_data(self, support_x, support_y, query_x, query_y) -> TaskData:
        return StepData(support_x, support_y, query_x, query_y)

    @torch.no_grad()
    def rollouts(self, policy: Callable[[Tensor], Tensor], goal: Tensor, count: int,
                 generators: list[torch.Generator]) -> tuple[Tensor, Tensor]:
        """`count` rollouts per task of the tasks with goals `goal` [tasks, goal size], stepped
        together; task i's start states and action noise come from generators[i]. `policy`:
        as in simulate(). Per task: the observations [count * horizon, observation size] and,
        per step, the action, its advantage, whether the rollout was still running, the reward
        and the sampling policy's mean and log std, packed as [count * horizon,
        3 * action size + 3] (self.columns)."""
        tasks, n, a = goal.shape[0], goal.shape[0] * count, self.action_size
        seeds = [torch.randint(2**31, (count,), generator=g, device=goal.device)
                 for g in generators]
        noise = torch.cat([torch.randn(self.horizon, count, a, generator=g, device=goal.device,
                                       dtype=goal.dtype) for g in generators], 1)
        goals = goal.repeat_interleave(count, 0)
        state = self.reset(goals, torch.cat(seeds))
        self.simulated += n * self.horizon
        running = torch.ones(n, dtype=torch.bool, device=goal.device)
        observations, actions, rewards, masks, sampling = [], [], [], [], []
        for t in range(self.horizon):
            observation = self.observe(state)
            prediction = policy(observation.view(tasks, count, -1)).view(n, -1)
            mean, log_std = prediction.split(a, dim=-1)
            action = mean + log_std.exp() * noise[t]
            state, reward, done = self.step(state, action, goals)
            observations.append(observation)
            actions.append(action)
            rewards.append(torch.where(running, reward, 0.0))
            masks.append(running)
            sampling.append(prediction)
            running = running & ~done

        def per_rollout(steps: list[Tensor]) -> Tensor:  # -> [tasks, count, horizon, ...]
            stacked = torch.stack(steps, 1)
            return stacked.view(tasks, count, self.horizon, *stacked.shape[2:])

        observations, rewards = per_rollout(observations), per_rollout(rewards)
        masks = per_rollout(masks).to(rewards.dtype)
        advantages = self.advantages(observations, rewards, masks)
        packed = torch.cat([per_rollout(actions), advantages[..., None], masks[..., None],
                            rewards[..., None], per_rollout(sampling)], -1)
        return observations.flatten(1, 2), packed.flatten(1, 2)

    def advantages(self, observations: Tensor, rewards: Tensor, masks: Tensor) -> Tensor:
        """Discounted returns-to-go minus a linear feature baseline fitted to them, normalised
        over the steps that ran, per task. All [tasks, rollouts, horizon]."""
        returns = torch.zeros_like(rewards)
        running = torch.zeros_like(rewards[..., 0])
        for t in reversed(range(rewards.shape[-1])):
            running = rewards[..., t] + self.discount * running * masks[..., t]
            returns[..., t] = running
        advantages = (returns - linear_baseline(observations, returns, masks)) * masks
        ran = masks.sum((-2, -1), keepdim=True)
        mean = advantages.sum((-2, -1), keepdim=True) / ran
        std = ((advantages - mean).pow(2) * masks).sum((-2, -1), keepdim=True) / (ran - 1)
        return ((advantages - mean) / (std.sqrt() + 1e-8)) * masks

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
    (o, o², t, t², t³, 1) of the steps that ran; its predictions at every step. Shapes
    [..., rollouts, horizon(, observation size)]: one fit per leading index (per task)."""
    horizon = returns.shape[-1]
    o = observations.clamp(-10, 10)
    t = (torch.arange(horizon, device=o.device, dtype=o.dtype) / TIME_SCALE)
    t = t.expand(returns.shape)[..., None]
    features = torch.cat([o, o * o, t, t * t, t ** 3, torch.ones_like(t)], -1) * masks[..., None]
    flat, target = features.flatten(-3, -2), (returns * masks).flatten(-2)[..., None]
    gram, moment = flat.mT @ flat, flat.mT @ target
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    regulariser = torch.full((*gram.shape[:-2], 1, 1), regulariser, dtype=gram.dtype,
                             device=gram.device)
    for _ in range(5):  # rllab raises the regulariser tenfold until the system solves
        weights, info = torch.linalg.solve_ex(gram + regulariser * eye, moment)
        failed = (info != 0) | ~torch.isfinite(weights).all(-1).all(-1)
        if not failed.any():
            break
        regulariser = torch.where(failed[..., None, None], regulariser * 10, regulariser)
    return (features @ weights.unsqueeze(-3)).squeeze(-1) * masks


class StepData(TaskData):
    """One task's collected rollouts, [steps + 1, rollouts * horizon, ...]: those of the policy
    after each inner step, which are the next step's support and that step's query."""

    def __init__(self, support_x, support_y, query_x, query_y):
        self.support_x, self.support_y = support_x, support_y
        self.query_x, self.query_y = query_x, query_y

    def support(self, step: int):
        return self.support_x[step], self.support_y[step]

    def query(self, step: int):
        return self.query_x[step], self.query_y[step]
