"""SIGINT / SIGTERM: the current iteration finishes, a checkpoint is written, the exit code
says which signal, and the run continues from there; a second SIGINT quits at once."""

import csv
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import BIN, HANG_GUARD_S, INJECT, ok, run_cli


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_a_checkpoint_to_resume_from(tmp_path, signum):
    # compile=false: a million iterations would have trainer.compile=auto compile first, which
    # is not what this waits for (a signal during a long step: the second-SIGINT test).
    proc = subprocess.Popen(
        [str(BIN / "maml-train"), "trainer.iterations=1000000", "trainer.compile=false",
         "trainer.val_every=0", "trainer.log_every=10", "hydra.run.dir=run"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + HANG_GUARD_S
    while not list((tmp_path / "run" / "tb").glob("events.*")):  # the loop has started
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 128 + signum, (out, err)
    assert "Traceback" not in out + err
    log = (tmp_path / "run" / "maml-train.log").read_text()
    assert f"stopped by {signum.name}" in log and f"maml-train resume={tmp_path / 'run'}" in log
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    stopped_at = state["iteration"]
    assert 0 < stopped_at < 1000000
    ok(run_cli("maml-train", "resume=run", f"trainer.iterations={stopped_at + 5}",
               "hydra.run.dir=resumed", cwd=tmp_path))
    resumed = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    assert resumed["iteration"] == stopped_at + 5


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_signal_while_the_run_builds_stops_it_before_its_first_step(tmp_path, nproc):
    # Under torchrun only rank 1 gets it: rank 0 must stop with it all the same.
    launcher = [sys.executable] if nproc == 1 else [
        str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(
        [*launcher, str(INJECT), f"term-in-build:{nproc - 1}", "trainer.iterations=1000",
         "device=cpu", "device.threads=1", "hydra.run.dir=run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD_S)
    out = proc.stdout + proc.stderr
    if nproc == 1:
        assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in out, out
    else:  # torchrun reports its workers' exit codes (143) as a failure of its own
        assert proc.returncode != 0 and "exitcode  : 143" in out, out
    assert "stopped by SIGTERM after iteration 0" in (tmp_path / "run/maml-train.log").read_text()
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert state["iteration"] == 0
    ok(run_cli("maml-train", "resume=run", "trainer.iterations=3", "device=cpu",
               "hydra.run.dir=resumed", cwd=tmp_path))


def test_a_second_sigint_quits_a_step_that_does_not_end_and_keeps_the_checkpoints(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(INJECT), "hang-at:25", "trainer.iterations=100",
         "trainer.val_every=0", "trainer.checkpoint_every=10", "hydra.run.dir=run"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + HANG_GUARD_S
    while not (tmp_path / "run" / "HANGING").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(2)
    assert proc.poll() is None  # the first one waits for the step to end
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 128 + signal.SIGINT, (out, err)
    assert err.strip() == "maml-train: interrupted; files written before it are kept"
    assert "Ctrl-C again quits at once" in (tmp_path / "run" / "maml-train.log").read_text()
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert state["iteration"] == 20


def test_a_sweep_stopped_by_a_signal_records_the_job_as_stopped_with_its_resume_command(tmp_path):
    proc = subprocess.Popen(
        [str(BIN / "maml-train"), "-m", "seed=0,1", "trainer.iterations=1000000",
         "trainer.compile=false", "trainer.val_every=0", "trainer.log_every=10",
         "hydra.sweep.dir=sweep"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + HANG_GUARD_S
    while not list((tmp_path / "sweep" / "0" / "tb").glob("events.*")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "Traceback" not in out + err
    sweep = tmp_path / "sweep"
    status = json.loads((sweep / "0" / "status.json").read_text())
    assert status["status"] == "stopped" and status["overrides"][0] == "seed=0"
    assert f"continue with: maml-train resume={sweep / '0'}" in status["error"]
    assert not (sweep / "1").exists()  # the sweep stops with its job
    with open(sweep / "summary.csv") as f:
        assert [(r["job"], r["status"]) for r in csv.DictReader(f)] == [("0", "stopped")]
