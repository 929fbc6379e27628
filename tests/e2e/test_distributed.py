"""torchrun with 2 CPU processes (gloo): the same meta-parameters as one process with the same
total meta-batch, one run dir, and only rank 0 writing."""

import json
import os
import shutil
import subprocess

import pytest
import torch

from tests.helpers import BIN, HANG_GUARD_S, REPTILE_KEPT_STATE, ok, run_cli

# The default meta-batch, 25 tasks: 13 on one rank and 12 on the other (README's command).
RUN = ["device=cpu", "device.threads=1", "trainer.iterations=6",
       "trainer.val_every=3", "trainer.val_tasks=10", "trainer.log_every=2"]


# The default, and state carried from one meta-batch to the next, which is a mean over tasks too.
@pytest.mark.parametrize("algorithm", [[], REPTILE_KEPT_STATE], ids=["maml", "reptile-kept"])
def test_two_ranks_match_one_process_with_the_same_uneven_meta_batch(tmp_path, algorithm):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok(subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m",
                       "maml_cli.train", *RUN, *algorithm], cwd=tmp_path, capture_output=True,
                      text=True, timeout=HANG_GUARD_S, env=env))
    ok(run_cli("maml-train", *RUN, *algorithm, "hydra.run.dir=single", cwd=tmp_path))
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1  # every rank used rank 0's run dir
    events = [len(list((d / "tb").glob("events.out.tfevents.*")))
              for d in (runs[0], tmp_path / "single")]
    assert events[0] == events[1]  # rank 0 alone logs: as many event files as one process
    two = torch.load(runs[0] / "checkpoints/last.pt", weights_only=True)
    one = torch.load(tmp_path / "single/checkpoints/last.pt", weights_only=True)
    assert two["iteration"] == one["iteration"] == 6
    for part in ("model", "algorithm"):
        assert two[part].keys() == one[part].keys()
        for key, value in one[part].items():
            torch.testing.assert_close(two[part][key], value, rtol=1e-5, atol=1e-6)
    assert abs(two["best"] - one["best"]) < 1e-5


# A rank whose process group outlived destroy_process_group still ran gloo's threads when the
# interpreter exited, and now and then aborted there (std::terminate) after a finished run.
# torch.distributed.nn.functional binds the default group into its functions' defaults when it
# is imported, and torch.func imports it late (through torch._dynamo), as the run does here.
LEAVE = """
import os, sys
from maml_cli import distributed
distributed.launch_overrides(["device=cpu"], shared_run_dir=False)
import torch._dynamo  # noqa: F401
distributed.close()
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
sys.exit(f"threads left: {threads}" if any("gloo" in t for t in threads) else 0)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc")
def test_leaving_the_group_stops_its_threads_even_after_late_torch_imports(tmp_path):
    (tmp_path / "leave.py").write_text(LEAVE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok(subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "leave.py"],
                      cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD_S,
                      env=env))


def test_maml_eval_shards_its_test_tasks_and_reports_what_one_process_does(trained_run,
                                                                           tmp_path):
    shutil.copy(trained_run / "checkpoints" / "last.pt", tmp_path / "last.pt")
    args = ["checkpoint=last.pt", "eval.tasks=30", "eval.batch_size=7", "inner.eval_steps=2",
            "device=cpu"]
    ok(run_cli("maml-eval", *args, cwd=tmp_path))

    def report():  # all but the speed, which is the machine's
        return {k: v for k, v in json.loads((tmp_path / "eval.json").read_text()).items()
                if k != "tasks_per_s"}

    alone = report()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok(subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m",
                       "maml_cli.eval", *args], cwd=tmp_path, capture_output=True, text=True,
                      timeout=HANG_GUARD_S, env=env))
    assert report() == alone
    assert not (tmp_path / "outputs").exists()  # maml-eval has no run dir, sharded or not


def test_ranks_split_any_meta_batch_into_consecutive_near_equal_slices():
    from maml_cli.distributed import Group

    for total in (1, 2, 25, 31):
        for world in range(1, min(total, 5) + 1):
            parts = [Group(rank, world).tasks(total) for rank in range(world)]
            sizes = [p.stop - p.start for p in parts]
            assert parts[0].start == 0 and parts[-1].stop == total
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
            assert max(sizes) - min(sizes) <= 1
            assert abs(sum(Group(r, world).share(total) for r in range(world)) - 1) < 1e-12
