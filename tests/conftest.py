import os
from pathlib import Path

import pytest

from tests.helpers import ok, run_cli

# The suite's two workers (pytest-xdist) share two cores: one thread each, and one for every
# process they start, rather than torch's default of a thread per core each (oversubscribed,
# the suite took 14 min instead of 11.5 on 2 cores). Runs that ask for device.threads get them.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def threads():
    """torch.set_num_threads, for a test whose outcome depends on the thread count (engine=auto
    on the CPU); restored after it."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A short real training run shared by the end-to-end tests that only read it."""
    work = tmp_path_factory.mktemp("trained")
    run_dir = work / "run"
    ok(run_cli("maml-train", "trainer.iterations=60", "trainer.val_every=20",
               "trainer.checkpoint_every=30", "trainer.log_every=10", "trainer.val_tasks=20",
               f"hydra.run.dir={run_dir}", cwd=work))
    return run_dir


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets beside the project (../shared/data), as CI has them."""
    if not (SHARED_DATA / "omniglot").is_dir():
        pytest.skip(f"the real datasets are not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def data_env(shared_data, tmp_path_factory) -> dict:
    """Environment for console scripts: the shared data root and a session-wide cache."""
    import os

    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "MAML_DATA_ROOT": str(shared_data), "MAML_CACHE_DIR": str(cache)}


@pytest.fixture(scope="session")
def data_config(data_env):
    from omegaconf import OmegaConf

    return OmegaConf.create({"root": data_env["MAML_DATA_ROOT"], "download": False,
                             "cache_dir": data_env["MAML_CACHE_DIR"]})
