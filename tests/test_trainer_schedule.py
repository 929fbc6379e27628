"""What the trainer does on its own schedule, in-process: trainer.compile=auto's choice on the
CPU (eager while it times its first iterations, then compiled when the rest of the run would
repay it, that choice kept across resume), the validation figure's cadence, and how often the
NaN check reads its norms back.

torch.compile itself is replaced by a recorder here: compiling the MLP takes half a minute on
two cores, and the compiled engine's results are tested in test_engine.py."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maml_cli import engine
from maml_cli import trainer as trainer_module
from maml_cli.build import build
from maml_cli.config import config_dir, register_configs
from maml_cli.errors import UserError
from maml_cli.trainer import TIMED_ITERATIONS, Trainer

register_configs()


@pytest.fixture
def compiles(monkeypatch):
    """The functions torch.compile was asked to compile, returned uncompiled."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(fn) or fn)
    return calls


def train(run_dir, *overrides, resume=None):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["device=cpu", "trainer.iterations=10",
                                          "trainer.val_every=0", "trainer.log_every=5",
                                          *overrides])
    run = build(cfg)
    trainer = Trainer(run, run_dir, resume)
    trainer.fit()
    return run, torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def compile_after(monkeypatch, seconds: float) -> None:
    """trainer.compile=auto's thresholds on the CPU, both: the whole meta-iteration's (the
    default sinusoid run's) and the meta-batch forward's."""
    monkeypatch.setattr(engine, "CPU_COMPILE_AFTER_S", seconds)
    monkeypatch.setattr(engine, "CPU_WHOLE_COMPILE_AFTER_S", seconds)


def test_a_run_long_enough_compiles_after_its_timed_iterations(tmp_path, compiles,
                                                                monkeypatch):
    compile_after(monkeypatch, 0.0)
    run, last = train(tmp_path, "trainer.stop_after=7")
    assert run.engine.compile and last["compiled"] is True
    assert len(compiles) == 1

    # Resumed, the choice is the checkpoint's, however short the rest of the run now looks.
    compile_after(monkeypatch, float("inf"))
    compiles.clear()
    run, last = train(tmp_path, resume=last)
    assert run.engine.compile and last["compiled"] is True and last["iteration"] == 10
    assert len(compiles) == 1


def test_a_short_run_stays_eager_and_says_so_in_its_checkpoint(tmp_path, compiles):
    run, last = train(tmp_path)
    assert not run.engine.compile and last["compiled"] is False
    assert compiles == []


def test_a_run_stopped_before_choosing_chooses_when_resumed(tmp_path, compiles, monkeypatch):
    compile_after(monkeypatch, 0.0)
    _, last = train(tmp_path, f"trainer.stop_after={TIMED_ITERATIONS}")
    assert last["compiled"] is None and compiles == []
    run, last = train(tmp_path, resume=last)
    assert run.engine.compile and last["compiled"] is True


def test_an_explicit_setting_is_never_second_guessed(tmp_path, compiles, monkeypatch):
    compile_after(monkeypatch, 0.0)
    run, last = train(tmp_path, "trainer.compile=false")
    assert not run.engine.compile and last["compiled"] is False and compiles == []


@pytest.mark.parametrize(("overrides", "whole"), [((), True), (("algorithm=metasgd",), True),
                                                  (("outer=sgd",), False)])
def test_the_threshold_is_the_whole_iteration_s_where_it_compiles_as_one_graph(
        tmp_path, compiles, monkeypatch, overrides, whole):
    """The sinusoid run compiles its whole meta-iteration (Engine.meta_step), whose compiling
    repays itself in a shorter run, with Meta-SGD's learned rates too; an outer step other than
    Adam keeps it to the forward alone."""
    monkeypatch.setattr(engine, "CPU_WHOLE_COMPILE_AFTER_S", 0.0)
    monkeypatch.setattr(engine, "CPU_COMPILE_AFTER_S", float("inf"))
    steps = []
    monkeypatch.setattr(engine.Engine, "meta_step",
                        lambda self, *a: steps.append(1) or meta_step(self, *a))
    run, last = train(tmp_path, *overrides)
    assert last["compiled"] is whole and run.engine.compile is whole
    assert len(steps) == (10 - TIMED_ITERATIONS - 1 if whole else 0)


meta_step = engine.Engine.meta_step


def whole_and_eager(tmp_path, *overrides):
    """The parameters after the run with its whole meta-iteration compiled (the recorder
    leaves the compiled function eager), and eager."""
    return [train(tmp_path / setting, f"trainer.compile={setting}", *overrides)[1]["model"]
            for setting in ("true", "false")]


def test_the_whole_iteration_trains_as_the_eager_trainer_and_resumes_bit_for_bit(tmp_path,
                                                                                  compiles):
    whole, eager = whole_and_eager(tmp_path)
    assert len(compiles) == 1
    for k, value in eager.items():
        torch.testing.assert_close(whole[k], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(whole[k], value) for k, value in eager.items())  # another path
    _, stopped = train(tmp_path / "resumed", "trainer.compile=true", "trainer.stop_after=6")
    _, resumed = train(tmp_path / "resumed", resume=stopped)
    assert all(torch.equal(resumed["model"][k], value) for k, value in whole.items())
    assert resumed["optimizer"]["state"].keys() == stopped["optimizer"]["state"].keys()


def test_the_whole_iteration_stops_at_the_first_non_finite_meta_gradient(tmp_path, compiles):
    with pytest.raises(UserError, match="NaN or infinite at iteration 1 "):
        train(tmp_path, "trainer.compile=true", "inner.lr=1e38")


def test_the_figure_is_drawn_first_then_every_figure_every_iterations_and_last(tmp_path):
    train(tmp_path, "trainer.val_every=3", "trainer.figure_every=5")
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [e.step for e in events.Scalars("val/mse")] == [0, 3, 6, 9, 10]
    assert [e.step for e in events.Images("val/fit")] == [0, 6, 10]


def test_a_long_log_window_still_inspects_the_nan_norms_every_max_unchecked(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(trainer_module, "MAX_UNCHECKED", 3)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["device=cpu", "trainer.iterations=10",
                                          "trainer.val_every=0", "trainer.log_every=1000",
                                          "inner.lr=1e38"])
    trainer = Trainer(build(cfg), tmp_path)
    with pytest.raises(UserError, match="NaN or infinite at iteration 1 "):
        trainer.fit()
    assert trainer.progress.iteration == 3


def test_the_metrics_before_adaptation_come_from_each_log_window_s_first_meta_batch(
        tmp_path, monkeypatch):
    measured, iterations = {}, []  # iteration: the loss before adaptation it measured
    meta_backward, before = engine.Engine.meta_backward, engine.Engine.before

    def counted(self, *args):
        iterations.append(len(iterations) + 1)
        return meta_backward(self, *args)

    def recorded(self, params, buffers, episode):
        metrics = before(self, params, buffers, episode)
        measured[iterations[-1]] = metrics["loss_pre"].item()
        return metrics

    monkeypatch.setattr(engine.Engine, "meta_backward", counted)
    monkeypatch.setattr(engine.Engine, "before", recorded)
    _, windows = train(tmp_path / "windows")
    assert list(measured) == [1, 6]  # log_every=5: iterations 1-5 and 6-10
    events = EventAccumulator(str(tmp_path / "windows" / "tb")).Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/query_loss_pre")]
    assert [step for step, _ in logged] == [5, 10]
    assert [value for _, value in logged] == pytest.approx(list(measured.values()))
    assert len(events.Scalars("train/query_loss_post")) == 2

    # Measuring them every iteration trains the same meta-parameters: it has no side effects.
    iterations.clear()
    measured.clear()
    _, every = train(tmp_path / "every", "trainer.log_every=1")
    assert list(measured) == list(range(1, 11))
    for key, value in windows["model"].items():
        torch.testing.assert_close(every["model"][key], value, rtol=0, atol=0)
