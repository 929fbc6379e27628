import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from maml_cli.config import (
    RULES,
    config_dir,
    config_groups,
    from_checkpoint,
    register_configs,
    validate,
)
from maml_cli.errors import UserError

register_configs()


def compose_train(*overrides, name="train"):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def test_defaults_are_the_maml_papers_sinusoid_setup():
    cfg = compose_train()
    assert cfg.task.shots == 10 and cfg.task.queries == 10
    assert list(cfg.task.amplitude) == [0.1, 5.0] and list(cfg.task.x_range) == [-5.0, 5.0]
    assert list(cfg.model.hidden) == [40, 40]
    assert cfg.inner.lr == 0.01 and cfg.inner.steps == 1
    assert cfg.outer._target_ == "torch.optim.Adam" and cfg.outer.lr == 0.001
    assert cfg.trainer.meta_batch_size == 25
    assert cfg.algorithm.first_order is False
    assert compose_train("algorithm=fomaml").algorithm.first_order is True
    validate(cfg)


def test_groups_are_the_documented_ones():
    assert config_groups() == [
        "algorithm", "device", "experiment", "inner", "model", "outer", "task"]


@pytest.mark.parametrize("override, key", [
    ("inner.lr=-0.1", "inner.lr"), ("inner.lr=0", "inner.lr"), ("outer.lr=-1", "outer.lr"),
    ("inner.steps=-1", "inner.steps"), ("inner.eval_steps=-2", "inner.eval_steps"),
    ("trainer.meta_batch_size=0", "trainer.meta_batch_size"),
    ("trainer.iterations=-5", "trainer.iterations"), ("task.shots=0", "task.shots"),
    ("task.queries=0", "task.queries"), ("eval.tasks=1", "eval.tasks"),
    ("engine=fast", "engine"), ("device.name=tpu", "device.name"), ("inner.lr=nan", "inner.lr"),
])
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(UserError, match=rf"^{key} must be"):
        validate(compose_train(override))


def test_every_rule_names_a_key_of_the_default_config():
    cfg = compose_train()
    assert all(OmegaConf.select(cfg, key) is not None for key, _, _ in RULES)


def test_from_checkpoint_keeps_stored_config_and_applies_explicit_overrides():
    stored = OmegaConf.to_container(compose_train("inner.lr=0.05", "trainer.iterations=7"))
    stored["device"]["name"] = "cuda"
    cfg = compose_train("trainer.iterations=20", "eval.tasks=50", "checkpoint=x", name="eval")
    merged = from_checkpoint(stored, cfg, ["trainer.iterations=20", "eval.tasks=50",
                                           "checkpoint=x"])
    assert merged.inner.lr == 0.05  # from the checkpoint
    assert merged.trainer.iterations == 20  # overridden here
    assert merged.eval.tasks == 50 and merged.device.name == "auto"  # from this command


def test_from_checkpoint_refuses_a_group_change():
    stored = OmegaConf.to_container(compose_train())
    with pytest.raises(UserError, match="algorithm= cannot change"):
        from_checkpoint(stored, compose_train("algorithm=fomaml"), ["algorithm=fomaml"])


def test_paper_preset_composes():
    cfg = compose_train("+experiment=sinusoid_paper")
    assert cfg.trainer.iterations == 70000 and cfg.trainer.meta_batch_size == 25
    validate(cfg)
