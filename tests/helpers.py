"""Running the real console scripts, as a user would."""

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
# Subprocess timeouts only catch a hang: far beyond any run's time on a slow, busy machine, so
# that no test depends on the machine's speed (learning tests have iteration budgets).
HANG_GUARD_S = 1800
# Reptile with the inner Adam's state kept across tasks (on the default sinusoid): state that is
# carried from one meta-batch to the next, beside the weights.
REPTILE_KEPT_STATE = ["algorithm=reptile", "inner=adam", "algorithm.keep_inner_state=true",
                      "outer=sgd", "outer.lr=1.0"]


def run_cli(script: str, *args: str, cwd: Path, timeout: float = HANG_GUARD_S, env=None):
    """Run a real console script (maml-train / maml-eval) in a subprocess."""
    return subprocess.run([str(BIN / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


INJECT = Path(__file__).parent / "reliability" / "inject.py"


def with_fault(fault: str, *args: str, cwd: Path, timeout: float = HANG_GUARD_S):
    """maml-train in a subprocess with a fault injected (see tests/reliability/inject.py)."""
    return subprocess.run([sys.executable, str(INJECT), fault, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, message: str, prog: str = "maml-train") -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


class Exploit:
    """Pickles to a call of os.system that touches `marker`: proof if it ever runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)
