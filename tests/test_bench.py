"""The benchmark harness on a small workload: every implementation (maml-cli's engines,
higher, learn2learn, the naive loop) computes the same meta-gradient, and the report has every
column; the GPU speed script runs through on the CPU."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from maml_cli.engine import EAGER_VMAP_MAX_FLOP_PER_THREAD
from tests.helpers import BIN, HANG_GUARD_S

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench  # noqa: E402

# A 10-iteration run: compile=auto never picks compiling for it, however slow the machine.
SMALL = bench.Workload("sinusoid MLP", tasks=4, steps=2, lr=0.01, repeats=2, run_iterations=10)
LABELS = {"naive loop", "higher", "learn2learn", "maml-cli vmap", "maml-cli loop"}


def test_report_of_a_small_second_order_workload():
    result = bench.bench("small", SMALL, torch.device("cpu"), first_order=False)
    assert set(result["rows"]) == LABELS - {"maml-cli vmap"} | {"maml-cli vmap (= default)"}
    for row in result["rows"].values():
        assert row["grad_rel_error"] < 1e-5 and len(row["times"]) == 2 and row["ms"] > 0
        assert row["x_naive"] > 0 and row["x_higher"] > 0 and row["x_learn2learn"] > 0
        assert row["peak_mb"] >= 0
    assert "| implementation | ms/iter | x naive | x higher | x learn2learn | peak MB |" in \
        bench.markdown({"results": [result]})


TINY_CONV = bench.Workload("tiny conv4", tasks=2, steps=2, lr=0.1, ways=3, shots=1, queries=2,
                           repeats=1)


@pytest.mark.parametrize("workload", [SMALL, TINY_CONV], ids=["mlp", "conv4"])
@pytest.mark.parametrize("first_order", [False, True])
def test_every_implementation_computes_the_reference_meta_gradient(workload, first_order):
    torch.manual_seed(0)
    model = workload.model().double()
    episode = workload.episode(torch.device("cpu"), torch.Generator().manual_seed(0))
    episode = bench.Episode(*(t.double() if t.is_floating_point() else t
                              for t in episode.tensors()))
    impls = bench.implementations(model, torch.device("cpu"))
    assert set(impls) == LABELS
    grads = {label: bench.meta_grad(fn, workload, model, episode, first_order)
             for label, fn in impls.items()}
    reference = grads.pop("naive loop")
    for label, grad in grads.items():
        assert (grad - reference).norm() <= 1e-9 * reference.norm(), label


def test_every_algorithm_is_timed_on_classification_and_protonet_skips_regression():
    tiny = bench.Workload("tiny conv4", tasks=2, steps=1, lr=0.1, ways=3, shots=1, queries=1,
                          repeats=1)
    for workload, has_protonet in ((tiny, True), (SMALL, False)):
        result = bench.bench_algorithms("tiny", workload, torch.device("cpu"))
        assert ("protonet" in result["rows"]) == has_protonet
        assert set(result["rows"]) | {"protonet"} == set(bench.ALGORITHMS)
        assert result["rows"]["maml"]["x_maml"] == 1
        assert all(row["it_per_s"] > 0 for row in result["rows"].values())


def test_the_rl_report_times_every_phase_and_renders():
    result = bench.bench_rl(torch.device("cpu"), tasks=3, rollouts=2, horizon=5, repeats=1)
    assert set(result["rows"]) == {"collect, lock-step", "collect, one task at a time",
                                   "meta-update, loop", "meta-update, vmap"}
    assert all(row["ms"] > 0 for row in result["rows"].values()) and result["x_lock_step"] > 0
    table = bench.markdown({"results": [], "rl": [result]})
    assert "| collect, lock-step |" in table and "lock-step collection" in table


def test_the_trainer_report_times_the_engine_inside_the_whole_trainer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = bench.bench_trainer(torch.device("cpu"), iterations=10)
    assert result["engine"] == "vmap" and 0 < result["engine_ms"] < result["trainer_ms"]
    assert result["overhead"] == pytest.approx(result["trainer_ms"] / result["engine_ms"] - 1)
    assert "| the trainer, ms/iteration |" in bench.markdown({"results": [],
                                                              "trainer": [result]})


def test_the_eval_report_times_both_strategies_and_marks_autos_choice(threads):
    threads(1)
    tiny = bench.Workload("tiny conv4", tasks=2, steps=1, lr=0.1, ways=3, shots=1, queries=1,
                          repeats=1, eval_steps=2)
    for workload, default in ((tiny, "maml-cli vmap"), (SMALL, "maml-cli vmap")):
        result = bench.bench_eval("E", workload, torch.device("cpu"))
        assert set(result["rows"]) == {"maml-cli loop", f"{default} (= default)"}
        assert all(row["tasks_per_s"] > 0 for row in result["rows"].values())
        assert result["rows"]["maml-cli loop"]["x_loop"] == 1
        assert result["task_forward_mflop"] > 0
    large = dataclasses.replace(tiny, queries=20)  # 63 images: over the limit
    result = bench.bench_eval("E", large, torch.device("cpu"))
    assert "maml-cli loop (= default)" in result["rows"]
    assert result["task_forward_mflop"] * 1e6 > EAGER_VMAP_MAX_FLOP_PER_THREAD
    table = bench.markdown({"results": [], "eval": [result]})
    assert "| E: tiny conv4, 2 steps, 2 tasks |" in table and "| loop | 1.00 |" in table


def test_the_default_row_is_what_compile_auto_chooses_for_the_runs_length():
    model, cpu = SMALL.model(), torch.device("cpu")
    ep = SMALL.episode(cpu, torch.Generator().manual_seed(0))
    rows = {label: {"ms": 1.0} for label in ("naive loop", "maml-cli vmap",
                                             "maml-cli vmap + compile")}
    long_run = bench.Workload("long", 4, 1, 0.01, run_iterations=10**9)  # 1 ms x 10**9
    assert "maml-cli vmap + compile (= default)" in bench.mark_default(rows, long_run, model, ep,
                                                                        cpu)
    assert "maml-cli vmap (= default)" in bench.mark_default(rows, SMALL, model, ep, cpu)
    assert "maml-cli vmap + compile (= default)" in bench.mark_default(
        rows, SMALL, model, ep, torch.device("cuda"))


def test_a_conv_nets_default_on_the_cpu_is_eager_vmap_for_small_tasks_and_the_compiled_loop(
        threads):
    threads(1)
    w6, cpu = bench.WORKLOADS["W6"], torch.device("cpu")
    model, ep = w6.model(), w6.episode(cpu, torch.Generator().manual_seed(0))
    rows = {label: {"ms": 1000.0} for label in ("maml-cli vmap", "maml-cli loop",
                                                "maml-cli loop + compile")}
    # 40,000 iterations of a second: compiled; 10 of them: eager, where small tasks take vmap
    assert "maml-cli loop + compile (= default)" in bench.mark_default(rows, w6, model, ep, cpu)
    short = dataclasses.replace(w6, run_iterations=10)
    assert "maml-cli vmap (= default)" in bench.mark_default(rows, short, model, ep, cpu)
    w2 = bench.WORKLOADS["W2"]  # 75 query images a task: the loop, compiled or not
    model, ep = w2.model(), w2.episode(cpu, torch.Generator().manual_seed(0))
    assert "maml-cli loop (= default)" in bench.mark_default(
        rows, dataclasses.replace(w2, run_iterations=10), model, ep, cpu)


def test_w5_is_w2_with_max_pooling_and_in_the_default_run():
    w2, w5 = bench.WORKLOADS["W2"], bench.WORKLOADS["W5"]
    assert (w5.tasks, w5.ways, w5.shots, w5.queries) == (w2.tasks, w2.ways, w2.shots, w2.queries)
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in w5.model().modules())
    assert "W5" in bench.DEFAULT_WORKLOADS


def test_w4_is_w2_with_resnet12_and_only_on_request():
    w2, w4 = bench.WORKLOADS["W2"], bench.WORKLOADS["W4"]
    assert (w4.tasks, w4.ways, w4.shots, w4.queries) == (w2.tasks, w2.ways, w2.shots, w2.queries)
    assert isinstance(w4.model(), bench.ResNet12) and "W4" not in bench.DEFAULT_WORKLOADS


def test_the_gpu_speed_script_times_each_run_without_and_with_cuda_graphs(tmp_path, data_env):
    """benchmarks/gpu_speed.sh, run on the CPU (DEVICE=cpu) with the shortest runs in a copy of
    benchmarks/, in its CUDA-graph mode only (the other differs only in its switches' values,
    which on the CPU change nothing): a lent GPU's few minutes must not be lost to it."""
    (tmp_path / "benchmarks").mkdir()
    for part in ("gpu_setup.sh", "gpu_speed.sh", "bench.py"):
        shutil.copy(Path(bench.__file__).parent / part, tmp_path / "benchmarks")
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "omniglot").symlink_to(Path(data_env["MAML_DATA_ROOT"]) / "omniglot")
    env = {**data_env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DEVICE": "cpu",
           "OUT": str(tmp_path / "out"), "MODES": "graphs", "WORKLOADS": "", "EVAL": "E1",
           "T1_ITERATIONS": "10", "SINUSOID_ITERATIONS": "20", "OMNIGLOT_ITERATIONS": "2",
           "OVERRIDES": "trainer.val_tasks=5 trainer.log_every=1"}
    proc = subprocess.run(["bash", str(tmp_path / "benchmarks" / "gpu_speed.sh")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0 and "0 of 3 runs failed" in proc.stdout, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary) == ["graphs"]
    trainer_ms, engine_ms = summary["graphs"]["T1 trainer, engine ms per iteration"]
    assert trainer_ms > engine_ms > 0
    assert set(summary["graphs"]["E1 evaluation, tasks/s"]) == {"maml-cli vmap (= default)",
                                                                "maml-cli loop"}
    assert summary["graphs"]["sinusoid tasks/s, median window"] > 0
    assert summary["graphs"]["omniglot tasks/s, median window"] > 0
    written = json.loads((tmp_path / "outputs" / "speed" / "bench-graphs.json").read_text())
    assert written["command"].startswith("python benchmarks/bench.py --device cpu --workloads ''")
    assert written["finished"].startswith("20") and written["machine"]["threads"] >= 1
    with tarfile.open(tmp_path / "out" / "speed.tgz") as packed:
        names = set(packed.getnames())
    runs = "outputs/speed"
    assert {f"{runs}/bench-graphs.json", f"{runs}/omniglot-graphs.log",
            f"{runs}/sinusoid-graphs/metrics.json", f"{runs}/omniglot-graphs/config.yaml"} <= names
    assert any(n.startswith(f"{runs}/sinusoid-graphs/tb/events.") for n in names), names


def test_w7_and_w8_straddle_the_eager_vmap_limit_at_one_thread_and_run_only_on_request(threads):
    cpu = torch.device("cpu")
    threads(1)
    for name, strategy in (("W7", "vmap"), ("W8", "loop")):
        w = bench.WORKLOADS[name]
        model, ep = w.model(), w.episode(cpu, torch.Generator().manual_seed(0))
        flop = bench.Engine(bench.MAML(model, w.loss, w.loss, bench.SGD(w.lr))).task_flop(
            dict(model.named_parameters()), dict(model.named_buffers()), ep)
        assert (flop <= EAGER_VMAP_MAX_FLOP_PER_THREAD) == (strategy == "vmap")
        assert bench.auto_strategy(w, model, ep) == strategy
        assert bench.auto_strategy(w, model, ep, compiled=True) == "loop"
        assert name not in bench.DEFAULT_WORKLOADS


def test_w6_is_the_omniglot_5w1s_presets_meta_batch_and_only_on_request():
    bench.register_configs()
    with bench.initialize_config_dir(bench.config_dir(), version_base="1.3"):
        cfg = bench.compose("train", overrides=["+experiment=omniglot_5w1s"])
    w6 = bench.WORKLOADS["W6"]
    assert (w6.tasks, w6.ways, w6.shots, w6.queries, w6.steps, w6.lr, w6.run_iterations) == (
        cfg.trainer.meta_batch_size, cfg.task.ways, cfg.task.shots, cfg.task.queries,
        cfg.inner.steps, cfg.inner.lr, cfg.trainer.iterations)
    assert "W6" not in bench.DEFAULT_WORKLOADS
