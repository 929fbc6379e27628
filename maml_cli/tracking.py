"""Where a run reports: TensorBoard event files, the rich console, and the text log."""

from __future__ import annotations

import logging
from typing import Any

from rich import get_console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("maml_cli")


class Tracker:
    """TensorBoard writer for one run dir; with log_dir None it records nothing (the ranks
    other than 0 of a distributed run)."""

    def __init__(self, log_dir=None):
        self.writer = None if log_dir is None else SummaryWriter(str(log_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.writer:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        # On disk at once (once per log window): a run killed without warning keeps every step
        # it logged, so its log and the resumed run's meet without a gap.
        self.writer.flush()

    def figure(self, tag: str, figure, step: int) -> None:
        if self.writer:
            self.writer.add_figure(tag, figure, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.writer:  # run_name="." keeps the hparams summary in this run's own event dir
            self.writer.add_hparams(hparams, metrics, run_name=".")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        if self.writer:
            self.writer.close()


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": scalar}; lists and None become strings (hparams need scalars)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def progress(description: str, show: bool = True) -> Progress:
    console = get_console()
    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not (show and console.is_terminal),
    )


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    get_console().print(table)
