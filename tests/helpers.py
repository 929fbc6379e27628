"""Running the real console scripts, as a user would."""

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run_cli(script: str, *args: str, cwd: Path, timeout: float = 300, env=None):
    """Run a real console script (maml-train / maml-eval) in a subprocess."""
    return subprocess.run([str(BIN / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc
