"""The configs must ship in a built (non-editable) wheel and be found from there."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_built_wheel_carries_and_finds_the_configs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("maml_cli-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "maml_cli/configs/train.yaml" in names and "maml_cli/configs/task/sinusoid.yaml" in names
    assert "maml_cli/tasks/splits/omniglot.json" in names
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(tmp_path / "site"), str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    where = subprocess.run(
        [sys.executable, "-c", "import maml_cli.config as c; print(c.__file__, c.config_dir())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert where.split() == [str(tmp_path / "site/maml_cli/config.py"),
                             str(tmp_path / "site/maml_cli/configs")]
    job = subprocess.run([sys.executable, "-m", "maml_cli.train", "--cfg", "job",
                          "algorithm=fomaml"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "first_order: true" in job and "meta_batch_size: 25" in job
