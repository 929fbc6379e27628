"""The repository holds source and kept results, never run output."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RUN_OUTPUT = (".hydra/", "/tb/", "tfevents", "checkpoints/", "maml-train.log", "maml-eval.log",
              "status.json", "metrics.json", "multirun.yaml", "summary.csv")


def tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_no_run_output_is_tracked():
    files = tracked()
    assert not [f for f in files if any(part in f for part in RUN_OUTPUT)]
    # Checkpoints only as the results' weights-only copies.
    assert all(f.startswith("benchmarks/results/rows/") for f in files if f.endswith(".pt"))


def test_run_output_is_ignored():
    tracked()
    for path in ("run/.hydra/config.yaml", "run/checkpoints/last.pt",
                 "run/tb/events.out.tfevents.1.vm.1.0", "outputs/x/metrics.json"):
        proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert proc.returncode == 0, f"{path} is not ignored"
