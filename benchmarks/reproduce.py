"""Results rows, end to end: train a row of benchmarks/rows.yaml with maml-train (continuing an
unfinished one with resume=), evaluate it with maml-eval, and keep the outcome under
benchmarks/results/rows/<row>/: row.json (commands, iterations, wall time, hardware, versions,
the paper's number), a weights-only copy of the evaluated checkpoint (model.pt) and maml-eval's
eval.json beside it. docs/results.md's table is generated from those files. A row stopped early
also keeps its full last checkpoint there (resume.pt), so that a later call on a fresh clone,
whose run folders are gone, continues it rather than starting again.

    python benchmarks/reproduce.py ROW [ROW ...] [--device cpu|cuda] [--threads N] [--nproc N]
                                   [--stop-after N] [--time-limit SECONDS] [--runs DIR]
    python benchmarks/reproduce.py --table          # rewrite docs/results.md's table
    python benchmarks/reproduce.py --list           # the rows and whether each has a result
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from maml_cli import files
from maml_cli.schemas import EvalConfig

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / "benchmarks" / "rows.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "rows"
DOC = ROOT / "docs" / "results.md"
BEGIN, END = "<!-- results-table: begin -->", "<!-- results-table: end -->"
BIN = Path(sys.executable).parent
# What a weights-only copy keeps: all maml-eval reads. The optimizer and RNG states, which only
# resume= needs, would triple a conv4 checkpoint.
EVAL_KEYS = ("format", "version", "iteration", "model", "algorithm", "best", "metric", "config")
# The most a row's resume.pt may weigh in git: conv4 with Adam's state is about 1.4 MB.
RESUME_MAX_BYTES = 2 * 2**20
# The processes of each segment of a row's run folder (torchrun's --nproc_per_node).
PROCESSES = "processes.json"


def load_rows(path: Path = ROWS) -> dict[str, dict]:
    return yaml.safe_load(path.read_text())


def hardware(device: str) -> str:
    if device == "cuda":
        return f"1x {torch.cuda.get_device_name()}"
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return f"{os.cpu_count()}-core CPU ({model})"


def segments(run_root: Path) -> list[Path]:
    """The row's training processes that left a checkpoint, oldest first: seg1, seg2, ...,
    each resumed from the one before."""
    found = [p for p in run_root.glob("seg*") if p.name[3:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[3:]))


def last_state(segment: Path) -> dict | None:
    path = segment / "checkpoints" / "last.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def wall_seconds(segment: Path) -> float:
    """A segment's training time: from its metrics.json, or, for a process stopped by a signal
    (which writes none), the span of its TensorBoard events."""
    metrics = segment / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())["wall_s"]
    events = scalars(segment / "tb")
    times = [e.wall_time for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
    return max(times) - min(times) if times else 0.0


def scalars(tb: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb))
    events.Reload()
    return events


def in_loop(segment: Path) -> bool:
    """Whether a run has logged a training window: each of its processes (under torchrun, the
    workers too) is then past its imports and catches a signal to stop with a checkpoint (a
    worker still importing torch dies of it, and its peer fails in all_reduce)."""
    return any((segment / "tb").glob("events.*")) and (
        "train/skipped_meta_batches" in scalars(segment / "tb").Tags()["scalars"])


def tool(name: str, nproc: int) -> list[str]:
    """maml-train or maml-eval, in `nproc` processes sharing each meta-batch (torchrun)."""
    if nproc == 1:
        return [str(BIN / f"maml-{name}")]
    return [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m",
            f"maml_cli.{name}"]


def run(command: list[str], log: Path, time_limit: float | None = None,
        loop_started: Callable[[], bool] = lambda: True, checkpoint: Path | None = None) -> float:
    """Run `command`; past `time_limit` seconds, once `loop_started()` (the trainer then stops
    at a signal with a checkpoint), SIGTERM it: it is done when it wrote `checkpoint` since."""
    print("$", shlex.join(command), flush=True)
    started = time.perf_counter()
    with log.open("a") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            code = proc.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            while proc.poll() is None and not loop_started():
                time.sleep(1)
            signalled = time.time()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait()
            # Its exit status says less: 143 from maml-train, 1 from torchrun, which forwards
            # the signal to its workers and then reports them as failed.
            if checkpoint is not None and checkpoint.is_file() and (
                    checkpoint.stat().st_mtime >= signalled):
                code = 0
    if code:
        sys.exit(f"reproduce: {command[0]} exited {code}; see {log}")
    return time.perf_counter() - started


def train(row: dict, run_root: Path, machine: list[str], stop_after: int | None,
          time_limit: float | None = None, kept: Path | None = None, nproc: int = 1):
    """Train (or continue) the row until its schedule ends, `stop_after` or `time_limit`
    seconds; its segments. Without segments of its own, it continues from `kept` (a stopped
    row's resume.pt) where there is one."""
    run_root.mkdir(parents=True, exist_ok=True)
    limit = [f"trainer.stop_after={stop_after}"] if stop_after else []
    every = segments(run_root)
    done = [s for s in every if last_state(s) is not None]  # a segment killed before its
    source = done[-1] if done else kept                       # first checkpoint left nothing
    if source is not None:
        state = last_state(done[-1]) if done else torch.load(kept, weights_only=True)
        # A row whose command now plans more iterations extends its run: with the row's command
        # beside resume=, its trainer.iterations replaces the checkpoint's.
        target = next((int(o.split("=", 1)[1]) for o in row["train"]
                       if o.startswith("trainer.iterations=")),
                      state["config"]["trainer"]["iterations"])
        if state["iteration"] >= min(target, stop_after or target):
            if not done:
                sys.exit(f"reproduce: {kept} is already at iteration {state['iteration']:,}; "
                         "nothing to train (a later --stop-after, or none, goes on)")
            return done
        if not done:  # what the row's record says of the segments before resume.pt
            record = json.loads((kept.parent / "row.json").read_text())
            (run_root / "earlier.json").write_text(json.dumps(
                {k: record[k] for k in ("segments", "train_wall_s", "hardware")}
                | {"processes": segment_processes(record)}))
        command = ["resume=" + str(source), *row["train"]]
    else:
        command = list(row["train"])
    seg = run_root / f"seg{int(every[-1].name[3:]) + 1 if every else 1}"
    counts = run_root / PROCESSES
    files.write_json(counts, (json.loads(counts.read_text()) if counts.is_file() else {})
                     | {seg.name: nproc})
    run([*tool("train", nproc), *command, *machine, *limit, f"hydra.run.dir={seg}"],
        run_root / "train.log", time_limit, lambda: in_loop(seg), seg / "checkpoints" / "last.pt")
    return [s for s in segments(run_root) if last_state(s) is not None]


def validated_in_training(state: dict) -> bool:
    """Whether a run (its last checkpoint's `state`) validated after it began training. Its
    validation of the untrained network, at iteration 0, writes best.pt too, which a row
    stopped before its first scheduled validation must not report as its result."""
    trainer = state["config"]["trainer"]
    return bool(trainer["val_every"]) and (state["iteration"] >= trainer["val_every"]
                                           or state["iteration"] == trainer["iterations"])


def run_maml_eval(row: dict, done: list[Path], machine: list[str], out: Path,
                  validated: bool, kept_best: Path | None = None, nproc: int = 1) -> float:
    """maml-eval on a weights-only copy of the best checkpoint (`validated`: if the run
    validated in training, else its last), written beside it in `out`; `kept_best`: the best
    of the segments before `done` (a continued row's model.pt)."""
    # A resumed segment writes best.pt only when it improves on the best so far, so the newest
    # best.pt of all segments is the best.
    best = [s / "checkpoints" / "best.pt" for s in done] if validated else []
    best = [p for p in best if p.is_file()]
    source = best[-1] if best else kept_best or done[-1] / "checkpoints" / "last.pt"
    state = torch.load(source, map_location="cpu", weights_only=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: state[k] for k in EVAL_KEYS}, out / "model.pt")
    model = out / "model.pt"
    shown = model.relative_to(ROOT) if model.is_relative_to(ROOT) else model
    return run([*tool("eval", nproc), f"checkpoint={shown}",
                *row.get("eval", []), *machine], out / "eval.log")


def reproduce(name: str, row: dict, args) -> None:
    machine = [f"device={args.device}"]
    if args.threads:
        machine.append(f"device.threads={args.threads}")
    run_root = ROOT / Path(args.runs).expanduser() / name  # relative: to the project
    started = datetime.datetime.now(datetime.timezone.utc)
    out = Path(args.results) / name
    kept = out / "resume.pt"
    done = train(row, run_root, machine, args.stop_after, args.time_limit,
                 kept if kept.is_file() else None, args.nproc)
    # A row continued from resume.pt on a fresh clone: its segments before this run folder's.
    earlier = run_root / "earlier.json"
    earlier = json.loads(earlier.read_text()) if earlier.is_file() else {}
    validated = validated_in_training(last_state(done[-1]))
    eval_s = run_maml_eval(row, done, machine, out, validated,
                           out / "model.pt" if earlier and validated else None, args.nproc)
    (out / "eval.log").unlink(missing_ok=True)
    config = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    report = json.loads((out / "eval.json").read_text())
    record = {
        "row": name, "setting": row["setting"], "paper": row["paper"], "source": row["source"],
        "train_overrides": row["train"], "eval_overrides": row.get("eval", []),
        "commands": {
            "train": shlex.join(["maml-train", *row["train"]]),
            "eval": shlex.join(["maml-eval", "checkpoint=<run dir>", *row.get("eval", [])]),
            "reproduce": f"python benchmarks/reproduce.py {name}",
        },
        "iterations_planned": config["config"]["trainer"]["iterations"],
        "iterations_done": last_state(done[-1])["iteration"],
        "evaluated_iteration": report["iteration"],
        "meta_batch_size": config["config"]["trainer"]["meta_batch_size"],
        "segments": len(done) + earlier.get("segments", 0),
        "train_wall_s": round(sum(wall_seconds(s) for s in done)
                              + earlier.get("train_wall_s", 0), 1),
        "eval_wall_s": round(eval_s, 1),
        "hardware": joined(earlier.get("hardware"), hardware(args.device)),
        "device_threads": args.threads,
        "processes": earlier.get("processes", []) + processes(run_root, done, args.nproc),
        "torch": torch.__version__, "maml_cli": config["version"],
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "started": started.isoformat(timespec="seconds"),
        "show_steps": row["show_steps"],
    }
    (out / "row.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'row.json'}")
    keep_for_resume(done[-1] / "checkpoints" / "last.pt", kept,
                    record["iterations_done"] < record["iterations_planned"])


def processes(run_root: Path, done: list[Path], default: int) -> list[int]:
    """The processes that shared each meta-batch in each of `done`, as train() recorded them
    (`default` for a segment from before that record)."""
    counts = run_root / PROCESSES
    counts = json.loads(counts.read_text()) if counts.is_file() else {}
    return [counts.get(s.name, default) for s in done]


def segment_processes(record: dict) -> list[int]:
    """A row.json's processes per segment (rows from before --nproc ran in one; rows from
    before the per-segment record give one count for all)."""
    counts = record.get("processes", 1)
    return counts if isinstance(counts, list) else [counts] * record["segments"]


def processes_text(record: dict) -> str:
    """The table's note of a row that ran in more than one process: ", 2 processes (torchrun)",
    or ", 1 then 2 processes (torchrun)" where its segments differed."""
    counts = segment_processes(record)
    counts = [c for i, c in enumerate(counts) if i == 0 or c != counts[i - 1]]
    return f", {' then '.join(map(str, counts))} processes (torchrun)" if counts != [1] else ""


def joined(before: str | None, now: str) -> str:
    """The hardware of a row whose segments ran on more than one machine."""
    return now if before is None or before.endswith(now) else f"{before}, then {now}"


def keep_for_resume(last: Path, kept: Path, unfinished: bool) -> None:
    """A stopped row keeps its full last checkpoint beside its results (a finished one none)."""
    if not unfinished:
        kept.unlink(missing_ok=True)
    elif last.stat().st_size > RESUME_MAX_BYTES:
        kept.unlink(missing_ok=True)
        print(f"{last} is over {RESUME_MAX_BYTES // 2**20} MB: not kept beside the results; "
              "only its run folder continues the row")
    else:
        files.atomic_write(kept, lambda f: f.write(last.read_bytes()))


def fmt(metric: str, result: dict) -> str:
    if metric == "accuracy":
        return f"{100 * result['mean']:.2f} ± {100 * result['ci95']:.2f}%"
    if metric == "return":
        return f"{result['mean']:.2f} ± {result['ci95']:.2f}"
    return f"{result['mean']:.3f} ± {result['ci95']:.3f}"


def table(rows: dict[str, dict], results: Path) -> str:
    """The markdown table of every row: its result where one is stored, else its command."""
    lines = ["| row | setting | paper | ours: test, mean ± 95% CI (inner steps) | iterations | "
             "hardware, training time | command |", "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        folder = results / name
        command = f"`python benchmarks/reproduce.py {name}`"
        if not (folder / "row.json").is_file():
            lines.append(f"| {name} | {row['setting']} | {row['paper']} | not yet run | — | — | "
                         f"{command} |")
            continue
        record = json.loads((folder / "row.json").read_text())
        report = json.loads((folder / "eval.json").read_text())
        by_steps = {r["steps"]: r for r in report["results"]}
        ours = "; ".join(f"{fmt(report['metric'], by_steps[s])} ({s})"
                         for s in record["show_steps"] if s in by_steps)
        if report["tasks"] != EvalConfig.tasks:  # the table's stated default
            ours += f"; {report['tasks']} test tasks"
        planned, done = record["iterations_planned"], record["iterations_done"]
        iterations = (f"{done:,} of {planned:,} (**stopped early**)" if done < planned
                      else f"{done:,}")
        iterations += f", meta-batch {record['meta_batch_size']}"
        if record["evaluated_iteration"] != done:
            iterations += f"; best.pt from {record['evaluated_iteration']:,}"
        machine = f"{record['hardware']}{processes_text(record)}"
        lines.append(f"| {name} | {record['setting']} | {record['paper']} | {ours} | {iterations} "
                     f"| {machine}, {record['train_wall_s']:,.0f} s | {command} |")
    return "\n".join(lines)


def table_in(doc: Path) -> str:
    """The table between the markers of `doc`."""
    return doc.read_text().split(BEGIN, 1)[1].split(END, 1)[0].strip()


def write_table(doc: Path, rows: dict[str, dict], results: Path) -> None:
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{table(rows, results)}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="*", help="row names of benchmarks/rows.yaml")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, help="device.threads for maml-train/maml-eval")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes sharing each meta-batch (torchrun; on CPU with "
                             "--threads 1, one per core)")
    parser.add_argument("--stop-after", type=int,
                        help="train only up to this iteration now (the row says how far it got)")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="train for at most this long now, then stop with a checkpoint and "
                             "evaluate (the row says how far it got; run again to continue)")
    parser.add_argument("--runs", default="outputs/rows",
                        help="where the training runs go (outside the results; not in git)")
    parser.add_argument("--table", action="store_true", help="rewrite docs/results.md's table")
    parser.add_argument("--list", action="store_true", help="list the rows")
    # Other places than the project's own, for tests and for one's own sets of rows.
    parser.add_argument("--rows-file", type=Path, default=ROWS, help="the rows (rows.yaml)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where results are kept")
    parser.add_argument("--doc", type=Path, default=DOC, help="the document with the table")
    args = parser.parse_args()
    if args.nproc < 1:
        parser.error(f"--nproc must be at least 1 (got {args.nproc})")
    if args.time_limit is not None and args.time_limit <= 0:
        parser.error(f"--time-limit must be > 0 seconds (got {args.time_limit:g})")
    rows = load_rows(args.rows_file)
    unknown = [r for r in args.rows if r not in rows]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r} (choose from: {', '.join(rows)})")
    if args.list:
        for name, row in rows.items():
            state = "done" if (args.results / name / "row.json").is_file() else "not run"
            print(f"{name:28s} {state:8s} {row['setting']}")
    for name in args.rows:
        reproduce(name, rows[name], args)
    if args.table or args.rows:
        write_table(args.doc, rows, args.results)


if __name__ == "__main__":
    main()
