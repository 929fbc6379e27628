"""Exact resume: a run SIGKILLed at any iteration and resumed from its last checkpoint ends
bit-identical to the same run left alone, and logs the same metrics."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import REPTILE_KEPT_STATE, ok, run_cli, with_fault

# Meta-SGD and a cosine schedule: the algorithm's own weights and the schedule resume too.
COMMON = ["algorithm=metasgd", "trainer.lr_schedule=cosine",
          "trainer.iterations=30", "trainer.log_every=5", "trainer.val_every=10",
          "trainer.val_tasks=10", "trainer.checkpoint_every=10"]


def logged(run_dir) -> dict[str, dict[int, float]]:
    """Every train/ and val/ scalar the run logged, by tag and step (timings left out)."""
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)}
            for tag in events.Tags()["scalars"] if tag.split("/")[0] in ("train", "val")}


def assert_same_state(a: dict, b: dict, path="state") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    work = tmp_path_factory.mktemp("full")
    ok(run_cli("maml-train", *COMMON, "hydra.run.dir=full", cwd=work))
    return work / "full"


@pytest.mark.parametrize("kill_at, checkpointed", [(14, 10), (27, 20)])
def test_sigkill_then_resume_is_bit_identical(uninterrupted, tmp_path, kill_at, checkpointed):
    killed = with_fault(f"kill-at:{kill_at}", *COMMON, "hydra.run.dir=killed", cwd=tmp_path)
    assert killed.returncode == -9, killed.stderr
    assert torch.load(tmp_path / "killed/checkpoints/last.pt",
                      weights_only=True)["iteration"] == checkpointed
    ok(run_cli("maml-train", "resume=killed", "hydra.run.dir=resumed", cwd=tmp_path))

    full = torch.load(uninterrupted / "checkpoints/last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    # Model, optimizer moments, every RNG stream, best-so-far, counters: all identical.
    assert_same_state({k: v for k, v in full.items() if k != "config"},
                      {k: v for k, v in resumed.items() if k != "config"})
    assert_same_state(full["config"] | {"resume": None}, resumed["config"] | {"resume": None})

    expected, before, after = logged(uninterrupted), logged(tmp_path / "killed"), \
        logged(tmp_path / "resumed")
    for tag, steps in expected.items():
        # The killed run logged up to its death, the resumed one from its checkpoint on:
        # together every step once, with the uninterrupted run's values.
        assert before[tag] == {s: v for s, v in steps.items() if s < kill_at}, tag
        assert after[tag] == {s: v for s, v in steps.items() if s > checkpointed}, tag


def test_stop_after_then_resume_with_the_original_command_is_bit_identical(tmp_path):
    # Reptile with its inner Adam's state kept across tasks: that state (algorithm buffers, not
    # parameters) resumes too. trainer.stop_after ends the process early on the full run's
    # schedule (cosine over 12), and the user's own command with resume= added continues it:
    # equal group choices are no change.
    args = [*REPTILE_KEPT_STATE, "trainer.lr_schedule=cosine", "trainer.iterations=12",
            "trainer.val_every=6", "trainer.val_tasks=5", "trainer.compile=false"]
    ok(run_cli("maml-train", *args, "hydra.run.dir=full", cwd=tmp_path))
    ok(run_cli("maml-train", *args, "trainer.stop_after=5", "hydra.run.dir=first", cwd=tmp_path))
    assert torch.load(tmp_path / "first/checkpoints/last.pt",
                      weights_only=True)["iteration"] == 5
    ok(run_cli("maml-train", *args, "resume=first", "hydra.run.dir=second", cwd=tmp_path))
    full = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "second/checkpoints/last.pt", weights_only=True)
    assert_same_state({k: v for k, v in full.items() if k != "config"},
                      {k: v for k, v in resumed.items() if k != "config"})
    steps = full["config"]["inner"]["steps"]
    assert full["algorithm"]["inner_state:0"].item() == 12 * steps  # Adam's step count, kept
