"""How each sweep job ended (status.json in its run dir) and the sweep's summary of its jobs.

A Hydra callback, so it works the same under every launcher: on_job_end runs in the process
that ran the job (a joblib worker, a SLURM node), the summary in the process that swept.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from maml_cli import files
from maml_cli.errors import UserError
from maml_cli.tracking import log, print_table

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"  # written by the trainer at the end of a run

# The sweep dir of a --multirun in this process, for the console script to summarise even when
# the sweeper stops by raising a failed job's error (Hydra then skips on_multirun_end).
_sweep_dir: Path | None = None


def sweep_dir() -> Path | None:
    return _sweep_dir


def cpu_share() -> int | None:
    """Torch threads for one job of a parallel local sweep (hydra/launcher=parallel, joblib):
    the cores split evenly between the jobs that run at once. None outside such a sweep."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN or "joblib" not in hydra.launcher.get("_target_", ""):
        return None
    cores, n_jobs = os.cpu_count() or 1, hydra.launcher.n_jobs
    at_once = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 = all cores
    return max(1, cores // at_once)


class JobStatusCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_dir
        _sweep_dir = Path(config.hydra.sweep.dir)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return  # a single run reports on the console; its exit code says how it ended
        # _return_value: the public return_value re-raises a failed job's error and prints it.
        value = job_return._return_value
        if job_return.status == JobStatus.COMPLETED:
            record("completed", result=value if isinstance(value, (int, float)) else None)
        else:
            kind = "" if isinstance(value, UserError) else f"{type(value).__name__}: "
            error = f"{kind}{value}"
            record("failed", error=error)
            log.error("job %s failed: %s", config.hydra.job.num, error)


def record(status: str, error: str | None = None, result: float | None = None) -> None:
    """Write how the sweep job running now ended: completed, failed or stopped (by a signal,
    which Hydra does not report to callbacks: the job's task function records it)."""
    hydra = HydraConfig.get()
    files.write_json(Path(hydra.runtime.output_dir) / STATUS_FILE,
                     {"job": hydra.job.num, "overrides": list(hydra.overrides.task),
                      "status": status, "error": error, "result": result})


def summarize(sweep: Path, sort: str | None = None, descending: bool = False,
              csv_path: Path | None = None) -> list[dict]:
    """Print a table of the sweep's jobs (overrides, status, the final metrics each wrote to
    metrics.json), write it as CSV (default <sweep>/summary.csv); return the jobs that did not
    complete (failed, or stopped by a signal)."""
    jobs = []
    for status in sweep.rglob(STATUS_FILE):
        job = json.loads(status.read_text()) | {"dir": str(status.parent.relative_to(sweep))}
        metrics = status.parent / METRICS_FILE
        if metrics.is_file():
            job |= {k: v for k, v in json.loads(metrics.read_text()).items() if k != "result"}
        jobs.append(job)
    if not jobs:
        raise UserError(f"no sweep jobs in {sweep} (no */{STATUS_FILE}: not a --multirun "
                        "folder of maml-train)")
    fixed = ["job", "dir", "status", "result"]
    metric_columns = sorted({k for job in jobs for k in job} - {*fixed, "overrides", "error"})
    columns = [*fixed, *metric_columns, "overrides", "error"]
    if sort is not None and sort not in columns:
        raise UserError(f"cannot sort by {sort!r}: the columns are {', '.join(columns)}")
    key = sort or "job"
    numbers = [j for j in jobs if isinstance(j.get(key), (int, float))]
    others = [j for j in jobs if not isinstance(j.get(key), (int, float))]
    jobs = sorted(numbers, key=lambda j: j[key], reverse=descending) + others
    rows = [[_cell(job.get(c)) for c in columns] for job in jobs]
    text = io.StringIO()
    csv.writer(text).writerows([columns, *rows])
    files.write_text(csv_path or sweep / "summary.csv", text.getvalue())
    # The console gets what tells jobs apart; the CSV has every column.
    common = set.intersection(*(set(job["overrides"]) for job in jobs))
    shown = ["job", "status", "result",
             *(c for c in metric_columns if c.endswith("_best") or c == "wall_s")]
    print_table(f"sweep {sweep} ({len(jobs)} jobs; all with: {' '.join(sorted(common))})",
                [*shown, "overrides"],
                [[_cell(job.get(c)) for c in shown]
                 + [" ".join(o for o in job["overrides"] if o not in common)] for job in jobs])
    return [job for job in jobs if job["status"] != "completed"]


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)
