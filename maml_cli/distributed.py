"""One run across processes with torch.distributed (started by torchrun).

Every rank draws the same meta-batch from the same seeded sampler and keeps its own slice of the
tasks (as even as it can be: 25 tasks on 2 ranks are 13 and 12), so no two ranks train on the
same task and the union is exactly the single-process meta-batch. The meta-gradients are
combined with one all_reduce per iteration, each rank's weighted by its share of the tasks, so
the result is the single-process mean and every rank's meta-parameters stay identical. Rank 0
alone validates, logs and checkpoints.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Imported before any process group exists: its functions take `group=group.WORLD` as a default,
# evaluated at import, and torch.func imports it during a run (through torch._dynamo). Imported
# once the group exists, it kept the group past destroy_process_group, and gloo's threads with
# it, which then aborted a rank at exit now and then (std::terminate) after a finished run.
import torch.distributed.nn.functional  # noqa: F401


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def tasks(self, total: int) -> slice:
        """This rank's tasks of a meta-batch of `total`: the first total % world ranks take one
        more than the others."""
        base, extra = divmod(total, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def share(self, total: int) -> float:
        """This rank's fraction of the tasks: the weight of its means in the meta-batch's."""
        part = self.tasks(total)
        return (part.stop - part.start) / total


ONE_PROCESS = Group()


def group() -> Group:
    if not dist.is_initialized():
        return ONE_PROCESS
    return Group(dist.get_rank(), dist.get_world_size())


def launch_overrides(argv: list[str], shared_run_dir: bool) -> list[str]:
    """Under torchrun: join the process group, and return the Hydra overrides that put every
    rank in rank 0's run dir (if the app has run dirs), with only rank 0 writing Hydra's files
    and the text log."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    on_cpu = any(a in ("device=cpu", "device.name=cpu") for a in argv)
    backend = "nccl" if torch.cuda.is_available() and not on_cpu else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    stamp = [time.strftime("%Y-%m-%d/%H-%M-%S")]
    dist.broadcast_object_list(stamp, src=0)
    overrides = []
    if shared_run_dir and not any(a.startswith("hydra.run.dir=") for a in argv):
        overrides.append(f"hydra.run.dir=outputs/{stamp[0]}")
    if dist.get_rank() != 0:
        overrides += ["hydra.output_subdir=null", "hydra/job_logging=rich_console"]
    return overrides


def average(means: list[torch.Tensor], loss: torch.Tensor, stop: bool,
            share: float) -> tuple[torch.Tensor, bool]:
    """All-reduce in one message: `means` (the gradients, and any state the algorithm carries
    over) in place and the loss, each rank's per-task means weighted by its `share` of the
    tasks, and whether any rank was asked to stop, so that all ranks stop after the same
    iteration."""
    flat = torch.cat([*(m.flatten() for m in means), loss.detach().view(1)]) * share
    flat = torch.cat([flat, torch.tensor([float(stop)], device=loss.device)])
    dist.all_reduce(flat)
    offset = 0
    for m in means:
        m.copy_(flat[offset:offset + m.numel()].view_as(m))
        offset += m.numel()
    return flat[-2], bool(flat[-1] > 0)


def anyone(flag: bool, device: torch.device) -> bool:
    """Whether any rank's `flag` is set; every rank must ask."""
    if not dist.is_initialized():
        return flag
    flags = torch.tensor([float(flag)], device=device)
    dist.all_reduce(flags)
    return bool(flags.item() > 0)


def average_metrics(values: dict[str, torch.Tensor], share: float) -> dict[str, torch.Tensor]:
    stacked = torch.stack(list(values.values())) * share
    dist.all_reduce(stacked)
    return dict(zip(values, stacked))


def gather(items: list) -> list:
    """Every rank's list, concatenated, on every rank."""
    lists = [None] * dist.get_world_size()
    dist.all_gather_object(lists, items)
    return [item for part in lists for item in part]


def close() -> None:
    """Leave the process group once every rank has finished (a rank that tears down its gloo
    connections while rank 0 still writes its last checkpoint can abort), so that no
    collective's threads run on into the interpreter's exit."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
