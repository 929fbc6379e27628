"""Checkpoint files under faults: killed or failing writes, rotation, and files that are not
what they claim to be. Earlier checkpoints always survive; bad files are one-line refusals."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from maml_cli import checkpoint
from tests.helpers import INJECT, Exploit, assert_one_line_error, ok, run_cli, with_fault

RUN = ["trainer.val_every=0", "trainer.log_every=5", "trainer.checkpoint_every=5"]


def iteration(path) -> int:
    return torch.load(path, weights_only=True)["iteration"]


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    # Writes: iter_5, last(5), iter_10, last(10): the 4th stops halfway and is killed there.
    proc = subprocess.Popen([sys.executable, str(INJECT), "pause-in-save:4", *RUN,
                             "trainer.iterations=50", "hydra.run.dir=run"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while not (folder / "SAVING").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(folder.glob(".last.pt.*.tmp"))  # the torn write never replaced last.pt
    assert iteration(folder / "last.pt") == 5 and iteration(folder / "iter_0000010.pt") == 10
    ok(run_cli("maml-train", "resume=run", "trainer.iterations=8", "hydra.run.dir=resumed",
               cwd=tmp_path))
    assert iteration(tmp_path / "resumed/checkpoints/last.pt") == 8


def test_full_disk_while_saving_is_one_line_and_keeps_earlier_checkpoints(tmp_path):
    proc = with_fault("full-disk:3", *RUN, "trainer.iterations=50", "hydra.run.dir=run",
                      cwd=tmp_path)
    folder = tmp_path / "run" / "checkpoints"
    assert_one_line_error(proc, f"cannot write checkpoint {folder / 'iter_0000010.pt'}: "
                                "No space left on device")
    assert proc.returncode == 2
    assert sorted(p.name for p in folder.iterdir()) == ["iter_0000005.pt", "last.pt"]
    assert iteration(folder / "last.pt") == 5


@pytest.mark.parametrize("keep", [1, 2])
def test_keep_last_rotates_only_numbered_checkpoints(tmp_path, keep):
    ok(run_cli("maml-train", "trainer.iterations=20", "trainer.val_every=10",
               "trainer.val_tasks=5", "trainer.checkpoint_every=3", f"trainer.keep_last={keep}",
               "hydra.run.dir=run", cwd=tmp_path))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    numbered = ["iter_0000015.pt", "iter_0000018.pt"][-keep:]
    assert names == ["best.pt", *numbered, "last.pt"]
    assert iteration(tmp_path / "run/checkpoints/last.pt") == 20


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_checkpoint_carrying_code_is_refused_by_both_scripts(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": checkpoint.FORMAT, "model": Exploit(marker)}, tmp_path / "evil.pt")
    for script, arg in (("maml-eval", "checkpoint=evil.pt"), ("maml-train", "resume=evil.pt")):
        proc = run_cli(script, arg, "hydra.run.dir=run", cwd=tmp_path)
        assert_one_line_error(proc, "refusing to load evil.pt: it asks to run code "
                                    "(posix.system)", script)
        assert not marker.exists()


def test_damaged_foreign_and_mismatched_checkpoints_are_one_line_errors(trained_run, tmp_path):
    good = (trained_run / "checkpoints" / "last.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    state = torch.load(trained_run / "checkpoints" / "last.pt", weights_only=True)
    torch.save(state | {"format": "maml-cli-checkpoint/1"}, tmp_path / "old.pt")
    # A checkpoint whose weights belong to another model than its config describes.
    state["model"] = {k: torch.zeros(3) for k in state["model"]}
    torch.save(state, tmp_path / "mismatch.pt")
    cases = [("truncated.pt", "truncated.pt is not a readable checkpoint"),
             ("foreign.pt", "foreign.pt is not a maml-cli checkpoint"),
             ("old.pt", "old.pt was written by an incompatible maml-cli version"),
             ("mismatch.pt", "mismatch.pt does not fit its own config's model")]
    for name, message in cases:
        assert_one_line_error(run_cli("maml-eval", f"checkpoint={name}", cwd=tmp_path), message,
                              "maml-eval")
    assert_one_line_error(run_cli("maml-train", "resume=mismatch.pt", "hydra.run.dir=run",
                                  cwd=tmp_path), "checkpoint does not fit this model/optimizer")
    # A checkpoint of another task or model is refused rather than silently rebuilt.
    assert_one_line_error(run_cli("maml-train", f"resume={trained_run}", "task=omniglot",
                                  "hydra.run.dir=run", cwd=tmp_path),
                          "task=omniglot would change task._target_ from the checkpoint's "
                          "'maml_cli.tasks.sinusoid.Sinusoid' to "
                          "'maml_cli.tasks.omniglot.Omniglot'")
    # A weights-only copy (benchmarks/results/) evaluates but cannot be continued.
    full = torch.load(trained_run / "checkpoints" / "last.pt", weights_only=True)
    torch.save({k: v for k, v in full.items() if k not in ("optimizer", "rng")},
               tmp_path / "slim.pt")
    assert_one_line_error(run_cli("maml-train", "resume=slim.pt", "hydra.run.dir=run",
                                  cwd=tmp_path), "slim.pt holds weights only")


def test_a_new_run_never_overwrites_an_earlier_runs_checkpoints(tmp_path):
    ok(run_cli("maml-train", "trainer.iterations=4", "trainer.val_every=2", "trainer.val_tasks=5",
               "hydra.run.dir=run", cwd=tmp_path))
    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").iterdir()}
    proc = run_cli("maml-train", "trainer.iterations=8", "hydra.run.dir=run", cwd=tmp_path)
    assert_one_line_error(proc, "already holds an earlier run's checkpoints; give this run its "
                                f"own hydra.run.dir (or continue that run: resume={tmp_path}/run)")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").iterdir()} == before
