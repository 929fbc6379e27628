"""What the console scripts share: one-line errors instead of tracebacks, and signals that ask
a run to stop rather than kill it."""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf.errors import OmegaConfBaseException

from maml_cli import config, distributed, jobs
from maml_cli.config import config_dir, config_groups
from maml_cli.errors import Stopped, UserError
from maml_cli.tracking import log

_GROUP_CHOICE = re.compile(r"\+{0,2}([a-z_]+)=([\w.,-]+)")


def check_group_choices(argv: list[str]) -> None:
    """Reject an unknown option of a config group (`task=nope`) in one line.

    Hydra would say so too, but over several lines with its search path; this check only
    looks at plain `group=a,b` overrides and leaves anything fancier to Hydra.
    """
    if any(a in ("-cd", "--config-dir") or a.startswith("--config-dir=") for a in argv):
        return
    root, groups = Path(config_dir()), config_groups()
    for arg in argv:
        m = _GROUP_CHOICE.fullmatch(arg)
        if not m or m.group(1) not in groups:
            continue
        group, values = m.groups()
        options = sorted(p.stem for p in (root / group).glob("*.yaml"))
        for value in values.split(","):
            if value not in options:
                raise UserError(f"unknown {group} '{value}' (choose from: {', '.join(options)})")


def check_launcher(argv: list[str]) -> None:
    """A SLURM sweep where SLURM is missing fails here in one line: submitit finds out only
    after Hydra made the sweep dir, and says so in a traceback."""
    slurm = {f"hydra/launcher={name}" for name in ("slurm", "submitit_slurm")}
    if ({"-m", "--multirun"} & set(argv) and slurm & {a.lstrip("+") for a in argv}
            and shutil.which("srun") is None):
        raise UserError("hydra/launcher=slurm needs SLURM, and srun is not on PATH: sweep from "
                        "the cluster's login node, or try the sweep here with "
                        "hydra/launcher=submitit_local")


def main_wrapper(prog: str, hydra_main: Callable[[], object],
                 run_dirs: bool = True) -> Callable[[], None]:
    """Console-script entry point around a @hydra.main function (run_dirs: whether the app
    writes a run dir, which the ranks of a torchrun launch must share)."""

    def cli() -> None:
        try:
            check_group_choices(sys.argv[1:])
            check_launcher(sys.argv[1:])
        except UserError as e:
            fail(prog, e)
        arguments, config.onto_checkpoint = config.split_onto_checkpoint(sys.argv[1:])
        sys.argv[1:] = arguments
        # Make Hydra raise its composition errors to us instead of printing them over several
        # lines; a user who set HYDRA_FULL_ERROR=1 gets Hydra's full report as usual.
        full_report = os.environ.get("HYDRA_FULL_ERROR") == "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
        failed: list[dict] = []
        sys.argv += distributed.launch_overrides(sys.argv[1:], run_dirs)
        try:
            hydra_main()
        except (HydraException, OmegaConfBaseException) as e:
            if full_report:
                raise
            fail(prog, one_line(e))
        except UserError as e:  # a sweep job's, handed on by Hydra after it recorded the failure
            if jobs.sweep_dir() is None:  # a sweep without the summary callback (maml-eval -m)
                fail(prog, e)
        except OSError as e:  # e.g. Hydra cannot create the run dir
            fail(prog, f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))
        except Stopped:
            # Every rank stops after the same iteration, so they leave the group together, as
            # after a finished run: a rank that exits without it can abort (std::terminate).
            distributed.close()
            raise
        except KeyboardInterrupt:
            print(f"{prog}: interrupted; files written before it are kept",
                  file=sys.stderr)
            sys.exit(128 + signal.SIGINT)
        finally:
            # A sweep's finished jobs keep their results; the summary says which ones failed.
            # (None has a status when the sweep failed before its first job: that error stands.)
            sweep = jobs.sweep_dir()
            if sweep is not None and any(sweep.glob(f"*/{jobs.STATUS_FILE}")):
                failed = jobs.summarize(sweep)
        distributed.close()
        if failed:
            first = failed[0]
            fail(prog, f"{len(failed)} sweep job(s) failed, first job {first['job']} "
                       f"({' '.join(first['overrides'])}): {first['error']}; every job's "
                       f"status is in {jobs.sweep_dir() / 'summary.csv'}")

    return cli


def reports_errors(prog: str):
    """A UserError inside a Hydra task function: one line and exit code 2 for a single run; in a
    sweep it is raised on, so that Hydra records the job as failed and runs the others. A run
    stopped by a signal exits with its code, and in a sweep records the job as stopped."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(cfg):
            sweep = HydraConfig.get().mode == RunMode.MULTIRUN
            try:
                return fn(cfg)
            except UserError as e:
                if sweep:
                    raise
                fail(prog, e)
            except Stopped as e:
                if sweep:  # the sweep stops with it; its summary lists this job as stopped
                    jobs.record("stopped", error=e.message)
                raise

        return wrapper

    return deco


def one_line(error: Exception) -> str:
    """A Hydra/OmegaConf message and its cause's, without indented detail lines, in one line."""
    lines = [line.strip() for e in (error, error.__cause__) if e is not None
             for line in str(e).splitlines() if line[:1] not in ("", " ", "\t")]
    return " ".join(dict.fromkeys(lines)) or type(error).__name__


def fail(prog: str, error: Exception) -> None:
    print(f"{prog}: error: {error}", file=sys.stderr)
    sys.exit(2)


@contextmanager
def stop_requests():
    """SIGINT / SIGTERM append their number to the yielded list instead of killing the process
    mid-step, so that a loop can finish its step and write a checkpoint before exiting. A step
    can take minutes (the first one compiles), so a second SIGINT does not wait for it: it
    raises KeyboardInterrupt, and the run keeps the checkpoints it wrote before."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be set from the main thread
        return

    def request(signum: int, _frame) -> None:
        if signum == signal.SIGINT and signal.SIGINT in requested:
            raise KeyboardInterrupt
        if signum == signal.SIGINT and distributed.group().main:
            log.warning("SIGINT: stopping before the next meta-iteration, with a checkpoint "
                        "(Ctrl-C again quits at once, without one)")
        requested.append(signum)

    previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
