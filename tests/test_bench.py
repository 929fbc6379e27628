"""The benchmark harness on its smallest workload: every implementation (maml-cli's engines,
higher, the naive loop) computes the same meta-gradient, and the report has every column."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench  # noqa: E402


@pytest.mark.parametrize("first_order", [False, True])
def test_every_implementation_agrees_with_the_float64_reference(first_order):
    workload = bench.Workload("sinusoid MLP", tasks=4, steps=2, lr=0.01, repeats=2)
    result = bench.bench("W1", workload, torch.device("cpu"), first_order)
    rows = result["rows"]
    assert {"naive loop", "higher", "maml-cli vmap (= auto)", "maml-cli loop"} == set(rows)
    for row in rows.values():
        assert row["grad_rel_error"] < 1e-5 and len(row["times"]) == 2 and row["ms"] > 0
        assert row["x_naive"] > 0 and row["x_higher"] > 0
