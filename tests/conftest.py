from pathlib import Path

import pytest

from tests.helpers import ok, run_cli


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A short real training run shared by the end-to-end tests that only read it."""
    work = tmp_path_factory.mktemp("trained")
    run_dir = work / "run"
    ok(run_cli("maml-train", "trainer.iterations=60", "trainer.val_every=20",
               "trainer.checkpoint_every=30", "trainer.log_every=10", "trainer.val_tasks=20",
               f"hydra.run.dir={run_dir}", cwd=work))
    return run_dir
