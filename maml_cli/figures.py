"""Figures a person looks at: the MAML paper's sinusoid fit (its figure 2), its navigation paths
(figure 4), and adaptation curves."""

from __future__ import annotations

import torch

from maml_cli.build import Run
from maml_cli.tasks.navigation import Navigation2D
from maml_cli.tasks.sinusoid import Sinusoid


def axes(figsize: tuple[float, float]):
    """A figure and its axes from matplotlib's object API, which needs no backend or pyplot's
    global figure list. Imported here: matplotlib would add a third of a second to the start of
    every command, most of which draw nothing."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def task_figure(run: Run, seed: int, steps: tuple[int, ...]):
    """(name, figure) of one test task of the run's family before and after `steps` inner steps,
    for the families that have one; else None."""
    if isinstance(run.task, Sinusoid):
        return "fit", sinusoid_fit(run, seed, steps)
    if isinstance(run.task, Navigation2D):
        return "paths", navigation_paths(run, seed, steps)
    return None


@torch.no_grad()
def navigation_paths(run: Run, seed: int, steps: tuple[int, ...] = (1, 3), rollouts: int = 5):
    """The paths of a few of the rollouts the policy adapts on, before adaptation and after
    `steps` steps, with the goal, for one test task."""
    task, generator = run.task, torch.Generator(run.device).manual_seed(seed)
    episode = task.sample("test", 1, generator)
    params = {k: p.detach() for k, p in run.model.named_parameters()}
    collected = run.engine.collect(params, dict(run.model.named_buffers()), episode, max(steps))
    goal = episode.support_x[0]
    fig, ax = axes((5, 5))
    for n, color in zip((0, *steps), ("grey", "tab:blue", "tab:green", "tab:orange")):
        obs = collected.support_x[0, n].view(task.shots, task.horizon, -1)[:rollouts].cpu()
        mask = collected.support_y[0, n, :, task.columns["mask"]].view(task.shots, -1).cpu()
        for r in range(min(rollouts, task.shots)):
            ran = obs[r, mask[r].bool()]
            ax.plot(ran[:, 0], ran[:, 1], color=color, alpha=0.7,
                    label=(f"{n} grad step{'s' if n != 1 else ''}" if n else "pre-update")
                    if r == 0 else None)
    ax.scatter(*goal.cpu(), marker="*", s=200, color="red", zorder=3, label="goal")
    ax.set_title(f"2D navigation, goal ({goal[0]:.2f}, {goal[1]:.2f})")
    ax.set_aspect("equal")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


@torch.no_grad()
def sinusoid_fit(run: Run, seed: int, steps: tuple[int, ...] = (1, 10)):
    """Ground truth, the K support points, the pre-update prediction and the predictions after
    each of `steps` inner steps, for one test function. None for other task families."""
    task = run.task
    if not isinstance(task, Sinusoid):
        return None
    generator = torch.Generator(run.device).manual_seed(seed)
    amplitude, phase = task.functions(1, generator)
    grid = torch.linspace(*task.x_range, 200, device=run.device).view(1, -1, 1)
    episode = task.episode(amplitude, phase, generator, query_x=grid)[0]
    params = {k: p.detach() for k, p in run.model.named_parameters()}
    buffers = dict(run.model.named_buffers())

    predictions = [p for p, _ in run.algorithm.outcomes(params, buffers, *episode.tensors(),
                                                        max(steps))]

    def predict(n):
        return predictions[n].cpu().view(-1)

    x = episode.query_x.cpu().view(-1)
    fig, ax = axes((6, 4))
    ax.plot(x, episode.query_y.cpu().view(-1), color="red", label="ground truth")
    ax.plot(x, predict(0), ":", color="green", label="pre-update")
    for n, style in zip(steps, ("--", "-", "-.")):
        ax.plot(x, predict(n), style, label=f"{n} grad step{'s' if n > 1 else ''}")
    ax.scatter(episode.support_x.cpu(), episode.support_y.cpu(), marker="^", color="purple",
               zorder=3, label=f"{task.shots} points used for the gradient")
    ax.set_title(f"sinusoid, K={task.shots}: A={amplitude.item():.2f}, phase={phase.item():.2f}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def adaptation_curves_plot(reports: list[dict]):
    """The test metric (mean and 95% CI) against inner steps, one line per maml-eval report,
    like the MAML paper's figure 3 (MAML against the pretrained baseline)."""
    fig, ax = axes((6, 4))
    for report in reports:
        steps = [r["steps"] for r in report["results"]]
        mean = [r["mean"] for r in report["results"]]
        ci = [r["ci95"] for r in report["results"]]
        ax.errorbar(steps, mean, yerr=ci, marker="o", capsize=3, label=report["label"])
    ax.set_xlabel("inner gradient steps")
    ax.set_ylabel(f"test {reports[0]['metric']} ({reports[0]['tasks']} tasks, 95% CI)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def save_png(fig, path) -> None:
    fig.savefig(path, dpi=100)
