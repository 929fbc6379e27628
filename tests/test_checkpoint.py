import pickle

import pytest
import torch

from maml_cli import checkpoint, files
from maml_cli.errors import UserError
from tests.helpers import Exploit


def test_roundtrip_loads_with_plain_weights_only_torch_load(tmp_path):
    path = tmp_path / "c" / "last.pt"
    checkpoint.save(path, {"iteration": 3, "model": {"w": torch.ones(2)}, "config": {"a": [1]}})
    plain = torch.load(path, weights_only=True)
    assert plain["iteration"] == 3 and plain["format"] == checkpoint.FORMAT
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


def test_saved_state_keeps_its_structure_with_tensors_detached_on_the_cpu(tmp_path):
    """(On a GPU, on_cpu is what lets a CPU machine read the file without map_location.)"""
    weight = torch.ones(2, requires_grad=True)
    state = {"model": {"w": weight * 2}, "rng": [torch.zeros(3, dtype=torch.uint8), (1, (2, 3))],
             "best": None}
    moved = checkpoint.on_cpu(state)
    assert moved["rng"][1] == (1, (2, 3)) and moved["best"] is None
    assert moved["model"]["w"].device.type == "cpu" and not moved["model"]["w"].requires_grad
    assert torch.equal(moved["model"]["w"], torch.full((2,), 2.0))


def test_failed_write_keeps_the_previous_file_intact(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"iteration": 1})

    def crash(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.atomic_write(path, crash)
    assert checkpoint.load(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "payload": Exploit(marker)}, path)
    with pytest.raises(UserError, match=r"refusing to load .*posix.system"):
        checkpoint.load(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoint.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04garbage"])
def test_foreign_or_truncated_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoint.load(path)


def test_a_torch_file_that_is_not_ours_is_rejected(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a maml-cli checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_locate_prefers_the_named_checkpoint_of_a_run_dir(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ("last.pt", "best.pt"):
        checkpoint.save(tmp_path / "checkpoints" / name, {})
    assert checkpoint.locate(tmp_path, prefer="best.pt").name == "best.pt"
    assert checkpoint.locate(tmp_path).name == "last.pt"
    with pytest.raises(UserError, match="not found"):
        checkpoint.locate(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="no checkpoint in"):
        checkpoint.locate(tmp_path / "checkpoints" / ".." / "..")
