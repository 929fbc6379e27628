"""maml-sweep-summary: one table of a --multirun sweep's jobs (overrides, status, final metrics),
sortable, also written as CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from maml_cli import jobs
from maml_cli.cli import fail
from maml_cli.errors import UserError


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="maml-sweep-summary", description=__doc__.splitlines()[0],
        epilog="e.g. maml-sweep-summary outputs/multirun/2026-11-22/12-00-00 --sort val_mse_best")
    parser.add_argument("sweep_dir", type=Path, help="the sweep's folder (hydra.sweep.dir)")
    parser.add_argument("--sort", help="column to sort by (default: job number)")
    parser.add_argument("--descending", action="store_true", help="largest first")
    parser.add_argument("--csv", type=Path, help="CSV file to write (default: <sweep_dir>/"
                                                 "summary.csv)")
    args = parser.parse_args(argv)
    try:
        if not args.sweep_dir.is_dir():
            raise UserError(f"no such folder: {args.sweep_dir}")
        failed = jobs.summarize(args.sweep_dir, args.sort, args.descending, args.csv)
    except UserError as e:
        fail("maml-sweep-summary", e)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    cli()
