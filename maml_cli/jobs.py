"""How each sweep job ended (status.json in its run dir) and the sweep's summary of its jobs.

A Hydra callback, so it works the same under every launcher: on_job_end runs in the process
that ran the job (a joblib worker, a SLURM node), the summary in the process that swept.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from maml_cli import checkpoint
from maml_cli.errors import UserError
from maml_cli.tracking import log, print_table

STATUS_FILE = "status.json"

# The sweep dir of a --multirun in this process, for the console script to summarise even when
# the sweeper stops by raising a failed job's error (Hydra then skips on_multirun_end).
_sweep_dir: Path | None = None


def sweep_dir() -> Path | None:
    return _sweep_dir


def _write(path: Path, text: str) -> None:
    checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


class JobStatusCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_dir
        _sweep_dir = Path(config.hydra.sweep.dir)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return  # a single run reports on the console; its exit code says how it ended
        # _return_value: the public return_value re-raises a failed job's error and prints it.
        value, status = job_return._return_value, {"job": config.hydra.job.num,
                                                   "overrides": list(job_return.overrides)}
        if job_return.status == JobStatus.COMPLETED:
            status |= {"status": "completed", "error": None,
                       "result": value if isinstance(value, (int, float)) else None}
        else:
            error = value if isinstance(value, UserError) else f"{type(value).__name__}: {value}"
            error = str(error)
            status |= {"status": "failed", "error": error, "result": None}
            log.error("job %s failed: %s", config.hydra.job.num, error)
        _write(Path(config.hydra.runtime.output_dir) / STATUS_FILE, json.dumps(status) + "\n")


def summarize(sweep: Path) -> list[dict]:
    """Print a table of the sweep's jobs, write it to <sweep>/summary.csv; the failed jobs."""
    jobs = [json.loads(p.read_text()) | {"dir": str(p.parent.relative_to(sweep))}
            for p in sweep.rglob(STATUS_FILE)]
    jobs.sort(key=lambda j: (j["job"], j["dir"]))
    columns = ["job", "dir", "status", "result", "overrides", "error"]
    rows = [[_cell(job[c]) for c in columns] for job in jobs]
    text = io.StringIO()
    csv.writer(text).writerows([columns, *rows])
    _write(sweep / "summary.csv", text.getvalue())
    print_table(f"sweep {sweep}", columns[:5], [row[:5] for row in rows])
    return [job for job in jobs if job["status"] != "completed"]


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(value)
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return "" if value is None else str(value)
