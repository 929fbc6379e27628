"""The results pipeline (benchmarks/reproduce.py): rows trained, continued and evaluated end to
end; docs/results.md's table is what the stored rows say; a stored row's checkpoint gives its
numbers again through maml-eval."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from tests.helpers import BIN, HANG_GUARD_S, ok, run_cli

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import reproduce  # noqa: E402

TINY = """
tiny:
  setting: a tiny sinusoid run
  paper: "—"
  source: none
  train: [trainer.iterations=40, trainer.val_every=20, trainer.val_tasks=10, trainer.log_every=10]
  eval: [eval.tasks=20]
  show_steps: [1, 10]
later:
  setting: a row not run
  paper: "—"
  source: none
  train: [trainer.iterations=40]
  show_steps: [1]
"""
# The tiny row with no end in sight, for the tests that stop it by a time limit.
ENDLESS = TINY.replace("trainer.iterations=40,",
                       "trainer.iterations=1000000, trainer.compile=false,", 1)


def test_the_results_table_is_generated_from_the_stored_rows():
    stored = reproduce.table(reproduce.load_rows(), reproduce.RESULTS)
    assert reproduce.table_in(reproduce.DOC) == stored, (
        "docs/results.md's table differs from benchmarks/results/rows: run "
        "`python benchmarks/reproduce.py --table`")


def test_every_stored_row_is_a_row_with_its_files():
    rows = reproduce.load_rows()
    for folder in reproduce.RESULTS.glob("*"):
        assert folder.name in rows, f"{folder} is not a row of benchmarks/rows.yaml"
        record = json.loads((folder / "row.json").read_text())
        report = json.loads((folder / "eval.json").read_text())
        assert record["row"] == folder.name and report["split"] == "test"
        assert (folder / "model.pt").stat().st_size < 2 * 2**20
        if (folder / "resume.pt").exists():  # only a row stopped early keeps what continues it
            assert record["iterations_done"] < record["iterations_planned"]
            assert (folder / "resume.pt").stat().st_size <= reproduce.RESUME_MAX_BYTES


@pytest.mark.parametrize("record, text", [
    ({"segments": 2}, ""),  # a row from before --nproc
    ({"segments": 2, "processes": 2}, ", 2 processes (torchrun)"),  # before the per-segment list
    ({"segments": 3, "processes": [1, 1, 1]}, ""),
    ({"segments": 4, "processes": [1, 2, 2, 2]}, ", 1 then 2 processes (torchrun)"),
])
def test_the_table_gives_each_rows_processes_as_its_segments_ran(record, text):
    assert reproduce.processes_text(record) == text


def reproduce_tiny(tmp_path, *args):
    return ok(subprocess.run(
        [sys.executable, str(Path(reproduce.__file__)), "tiny", "--threads", "1",
         "--rows-file", str(tmp_path / "rows.yaml"), "--results", str(tmp_path / "results"),
         "--doc", str(tmp_path / "doc.md"), "--runs", str(tmp_path / "runs"), *args],
        capture_output=True, text=True, timeout=HANG_GUARD_S))


def test_a_row_stopped_early_says_so_then_continues_with_resume(tmp_path):
    (tmp_path / "rows.yaml").write_text(TINY)
    (tmp_path / "doc.md").write_text(f"# r\n{reproduce.BEGIN}\n{reproduce.END}\nafter\n")
    reproduce_tiny(tmp_path, "--stop-after", "20")
    row = tmp_path / "results" / "tiny"
    record = json.loads((row / "row.json").read_text())
    assert (record["iterations_done"], record["iterations_planned"]) == (20, 40)
    doc = (tmp_path / "doc.md").read_text()
    assert "20 of 40 (**stopped early**)" in doc
    assert "| later | a row not run | — | not yet run |" in doc

    # A stopped row keeps its full state beside its results, so that a fresh clone, whose run
    # folders are gone, continues it.
    kept = torch.load(row / "resume.pt", weights_only=True)
    assert kept["iteration"] == 20 and "optimizer" in kept
    reproduce_tiny(tmp_path, "--stop-after", "30")  # from its run folder
    assert torch.load(row / "resume.pt", weights_only=True)["iteration"] == 30
    before = json.loads((row / "row.json").read_text())
    shutil.rmtree(tmp_path / "runs")

    proc = reproduce_tiny(tmp_path)
    assert f"resume={row / 'resume.pt'}" in proc.stdout
    record = json.loads((row / "row.json").read_text())
    assert (record["iterations_done"], record["segments"]) == (40, 3)
    assert record["processes"] == [1, 1, 1]
    assert record["train_wall_s"] > before["train_wall_s"]
    assert not (row / "resume.pt").exists()
    doc = (tmp_path / "doc.md").read_text()
    assert "stopped early" not in doc and doc.endswith("after\n")
    assert reproduce.table_in(tmp_path / "doc.md") == reproduce.table(
        reproduce.load_rows(tmp_path / "rows.yaml"), tmp_path / "results")

    # The kept checkpoint holds weights only, and maml-eval gives the row's numbers from it.
    state = torch.load(row / "model.pt", weights_only=True)
    assert "optimizer" not in state and state["iteration"] == record["evaluated_iteration"]
    copy = tmp_path / "again"
    copy.mkdir()
    shutil.copy(row / "model.pt", copy)
    ok(run_cli("maml-eval", f"checkpoint={copy / 'model.pt'}", "eval.tasks=20", cwd=tmp_path))
    stored = json.loads((row / "eval.json").read_text())["results"]
    again = json.loads((copy / "eval.json").read_text())["results"]
    assert means(again) == pytest.approx(means(stored))


def test_a_row_stopped_before_its_first_validation_reports_its_last_checkpoint(tmp_path):
    """Not best.pt, which then holds the untrained network (validated at iteration 0)."""
    (tmp_path / "rows.yaml").write_text(TINY)
    (tmp_path / "doc.md").write_text(f"# r\n{reproduce.BEGIN}\n{reproduce.END}\n")
    reproduce_tiny(tmp_path, "--stop-after", "10")  # validation every 20
    assert torch.load(tmp_path / "runs/tiny/seg1/checkpoints/best.pt",
                      weights_only=True)["iteration"] == 0
    record = json.loads((tmp_path / "results" / "tiny" / "row.json").read_text())
    assert record["iterations_done"] == record["evaluated_iteration"] == 10
    assert "best.pt from" not in (tmp_path / "doc.md").read_text()


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_time_limit_stops_the_training_with_a_checkpoint_and_evaluates_it(tmp_path, nproc):
    """With --nproc 2 the signal goes through torchrun, which forwards it to its workers."""
    (tmp_path / "rows.yaml").write_text(ENDLESS)
    (tmp_path / "doc.md").write_text(f"# r\n{reproduce.BEGIN}\n{reproduce.END}\n")
    proc = reproduce_tiny(tmp_path, "--time-limit", "1", "--nproc", str(nproc))
    record = json.loads((tmp_path / "results" / "tiny" / "row.json").read_text())
    assert 0 < record["iterations_done"] < record["iterations_planned"] == 1000000, proc.stdout
    assert record["processes"] == [nproc]
    assert record["evaluated_iteration"] <= record["iterations_done"]
    assert f"{record['iterations_done']:,} of 1,000,000 (**stopped early**)" in (
        tmp_path / "doc.md").read_text()
    assert "stopped by SIGTERM" in (tmp_path / "runs" / "tiny" / "train.log").read_text()


def test_the_gpu_session_script_trains_its_rows_side_by_side_and_packs_them(tmp_path):
    """benchmarks/gpu_session.sh, run on the CPU (DEVICE=cpu) in a copy of the project's
    benchmarks/ and docs/ holding a tiny row: a lent GPU's few minutes must not be lost to it."""
    (tmp_path / "benchmarks").mkdir()
    for part in ("gpu_setup.sh", "gpu_session.sh", "reproduce.py"):
        shutil.copy(Path(reproduce.__file__).parent / part, tmp_path / "benchmarks")
    (tmp_path / "benchmarks" / "rows.yaml").write_text(ENDLESS)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text(f"{reproduce.BEGIN}\n{reproduce.END}\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DEVICE": "cpu",
           "LIMIT": "2", "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(tmp_path / "benchmarks" / "gpu_session.sh"), "tiny",
                           "no_such_row"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 1 and "1 of 2 rows failed" in proc.stdout, proc.stdout + proc.stderr
    assert "unknown row 'no_such_row'" in (tmp_path / "outputs/rows/no_such_row.log").read_text()
    with tarfile.open(tmp_path / "out" / "rows.tgz") as packed:
        names = set(packed.getnames())
    kept = "benchmarks/results/rows/tiny"
    assert {f"{kept}/{f}" for f in ("row.json", "eval.json", "model.pt", "resume.pt")} <= names
    run = "outputs/rows/tiny"
    assert {"outputs/rows/tiny.log", f"{run}/train.log", f"{run}/seg1/config.yaml",
            f"{run}/seg1/checkpoints/last.pt"} <= names, names
    assert any(n.startswith(f"{run}/seg1/tb/events.") for n in names), names
    record = json.loads((tmp_path / kept / "row.json").read_text())
    assert 0 < record["iterations_done"] < record["iterations_planned"]
    assert "stopped early" in (tmp_path / "docs" / "results.md").read_text()


def means(results: list[dict]) -> list[float]:
    return [value for r in results for value in (r["mean"], r["ci95"])]


def stored_row(name: str) -> Path:
    folder = reproduce.RESULTS / name
    if not (folder / "row.json").is_file():
        pytest.skip(f"row {name} has no stored result")
    return folder


def test_a_stored_row_reevaluates_to_its_numbers_and_within_its_interval(tmp_path):
    folder = stored_row("sinusoid_k10_maml")
    shutil.copy(folder / "model.pt", tmp_path)
    stored = json.loads((folder / "eval.json").read_text())
    ok(run_cli("maml-eval", f"checkpoint={tmp_path / 'model.pt'}", cwd=tmp_path))
    again = json.loads((tmp_path / "eval.json").read_text())
    assert means(again["results"]) == pytest.approx(means(stored["results"]), rel=1e-4)

    ok(run_cli("maml-eval", f"checkpoint={tmp_path / 'model.pt'}", "eval.seed=99", cwd=tmp_path))
    other = json.loads((tmp_path / "eval.json").read_text())
    for s in (1, 10):
        low = stored["results"][s]["mean"] - stored["results"][s]["ci95"]
        high = stored["results"][s]["mean"] + stored["results"][s]["ci95"]
        assert low <= other["results"][s]["mean"] <= high


@pytest.mark.parametrize("option, message", [
    (["--time-limit", "0"], "--time-limit must be > 0 seconds (got 0)"),
    (["--nproc", "0"], "--nproc must be at least 1 (got 0)")])
def test_a_limit_or_process_count_out_of_range_is_refused_before_any_work(tmp_path, option,
                                                                           message):
    proc = subprocess.run([sys.executable, str(Path(reproduce.__file__)), "tiny", *option,
                           "--runs", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"reproduce.py: error: {message}"
    assert not (tmp_path / "runs").exists()
