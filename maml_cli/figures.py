"""Figures a person looks at: the MAML paper's sinusoid fit (its figure 2)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from maml_cli.build import Run  # noqa: E402
from maml_cli.tasks.sinusoid import Sinusoid  # noqa: E402


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

    predictions = list(run.algorithm.predictions(params, buffers, episode.support_x,
                                                 episode.support_y, episode.query_x, max(steps)))

    def predict(n):
        return predictions[n].cpu().view(-1)

    x = episode.query_x.cpu().view(-1)
    fig, ax = plt.subplots(figsize=(6, 4))
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
    fig, ax = plt.subplots(figsize=(6, 4))
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
    plt.close(fig)
