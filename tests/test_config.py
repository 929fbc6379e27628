import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from maml_cli import config
from maml_cli.config import (
    config_dir,
    config_groups,
    from_checkpoint,
    register_configs,
    split_onto_checkpoint,
)
from maml_cli.errors import UserError
from maml_cli.schemas import RULES, check_values

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
    assert cfg.outer._target_ == "maml_cli.optim.Adam" and cfg.outer.lr == 0.001
    assert cfg.trainer.meta_batch_size == 25
    assert cfg.algorithm.first_order is False
    assert compose_train("algorithm=fomaml").algorithm.first_order is True
    check_values(cfg)


def test_groups_are_the_documented_ones():
    assert config_groups() == [
        "algorithm", "device", "experiment", "hparams_search", "inner", "model", "outer", "task"]


OUT_OF_RANGE = [
    ("seed=-1", "seed"), ("engine=fast", "engine"), ("device.name=tpu", "device.name"),
    ("device.threads=0", "device.threads"),
    ("inner.lr=-0.1", "inner.lr"), ("inner.lr=0", "inner.lr"), ("inner.lr=nan", "inner.lr"),
    ("inner.steps=-1", "inner.steps"), ("inner.eval_steps=-2", "inner.eval_steps"),
    ("outer.lr=-1", "outer.lr"),
    ("trainer.iterations=-5", "trainer.iterations"), ("trainer.amp=fp8", "trainer.amp"),
    ("trainer.compile=yes", "trainer.compile"),
    ("trainer.meta_batch_size=0", "trainer.meta_batch_size"),
    ("trainer.val_every=-1", "trainer.val_every"), ("trainer.val_tasks=0", "trainer.val_tasks"),
    ("trainer.figure_every=-1", "trainer.figure_every"),
    ("trainer.checkpoint_every=-1", "trainer.checkpoint_every"),
    ("trainer.keep_last=-1", "trainer.keep_last"), ("trainer.log_every=0", "trainer.log_every"),
    ("trainer.nan_policy=ignore", "trainer.nan_policy"),
    ("trainer.stop_after=0", "trainer.stop_after"),
    ("trainer.lr_schedule=exponential", "trainer.lr_schedule"),
    ("trainer.min_lr=-1", "trainer.min_lr"),
    ("trainer.lr_decay_every=0", "trainer.lr_decay_every"),
    ("trainer.lr_decay=1", "trainer.lr_decay"),
    ("algorithm.adapt=body", "algorithm.adapt"), ("algorithm.lr_mode=learned", "algorithm.lr_mode"),
    ("algorithm.head_init=random", "algorithm.head_init"),
    ("algorithm.first_order_until=-1", "algorithm.first_order_until"),
    ("algorithm.msl_iterations=-1", "algorithm.msl_iterations"),
    ("algorithm.inner_batch_size=0", "algorithm.inner_batch_size"),
    ("algorithm=relationnet algorithm.filters=0", "algorithm.filters"),
    ("algorithm=relationnet algorithm.hidden=0", "algorithm.hidden"),
    ("inner=adam inner.betas=[0.9,1.0]", "inner.betas"), ("inner=adam inner.eps=0", "inner.eps"),
    ("eval.tasks=1", "eval.tasks"), ("eval.batch_size=0", "eval.batch_size"),
    ("task.shots=0", "task.shots"), ("task.queries=0", "task.queries"),
    ("+experiment=omniglot_5w1s task.ways=1", "task.ways"),
    ("+experiment=omniglot_5w1s task.eval_queries=0", "task.eval_queries"),
    ("+experiment=omniglot_5w1s task.eval_shots=0", "task.eval_shots"),
    ("+experiment=omniglot_5w1s task.image_size=4", "task.image_size"),
    ("+experiment=omniglot_5w1s task.augment=[hflip,blur]", "task.augment"),
    ("task=movielens task.max_queries=0", "task.max_queries"),
    ("task=folder task.path=x task.channels=2", "task.channels"),
    ("inner.later_lr=0", "inner.later_lr"),
    ("+experiment=navigation2d_maml task.horizon=0", "task.horizon"),
    ("+experiment=navigation2d_maml task.discount=1.5", "task.discount"),
    ("+experiment=navigation2d_maml task.max_step=0", "task.max_step"),
    ("+experiment=navigation2d_maml task.tolerance=-1", "task.tolerance"),
    ("+experiment=navigation2d_maml task.goal_range=[0.5,-0.5]", "task.goal_range"),
    ("+experiment=navigation2d_maml model.init_std=0", "model.init_std"),
    ("+experiment=halfcheetah_vel_maml task.ctrl_cost=-0.1", "task.ctrl_cost"),
    ("+experiment=navigation2d_maml outer.max_kl=0", "outer.max_kl"),
    ("+experiment=navigation2d_maml outer.damping=-1", "outer.damping"),
    ("+experiment=navigation2d_maml outer.cg_iters=0", "outer.cg_iters"),
    ("+experiment=navigation2d_maml outer.backtrack=1", "outer.backtrack"),
    ("+experiment=navigation2d_maml outer.line_search_steps=0", "outer.line_search_steps"),
]


@pytest.mark.parametrize("override, key", OUT_OF_RANGE)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(UserError, match=rf"^{key} must be"):
        check_values(compose_train(*override.split()))


def test_a_switch_takes_only_a_boolean():
    with pytest.raises(Exception, match=r"override trainer\.cuda_graphs=maybe"):
        compose_train("trainer.cuda_graphs=maybe")
    assert compose_train("trainer.cuda_graphs=false").trainer.cuda_graphs is False


def test_a_step_schedule_without_its_interval_is_one_line():
    with pytest.raises(UserError, match=r"^trainer.lr_schedule=step needs trainer.lr_decay_every"):
        check_values(compose_train("trainer.lr_schedule=step"))
    check_values(compose_train("trainer.lr_schedule=step", "trainer.lr_decay_every=100"))


def test_every_rule_is_tried_and_documented():
    keys = [key for key, _, _ in RULES]
    assert {key for _, key in OUT_OF_RANGE} == set(keys)
    docs = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
    assert [key for key in keys if f"`{key}`" not in docs] == []


def test_every_rule_names_a_real_key():
    configs = (compose_train(), compose_train("+experiment=omniglot_5w1s"),
               compose_train("inner=adam"), compose_train("+experiment=navigation2d_maml"),
               compose_train("+experiment=halfcheetah_vel_maml"),
               compose_train("task=folder", "task.path=x", "task.channels=3"),
               compose_train("+experiment=relationnet_omniglot_5w1s"), compose_train("task=table"),
               compose_train("task=movielens"))
    for key, _, _ in RULES:
        assert any(OmegaConf.select(cfg, key, default="<absent>") != "<absent>"
                   for cfg in configs), key


def test_from_checkpoint_keeps_stored_config_and_applies_explicit_overrides():
    stored = OmegaConf.to_container(compose_train("inner.lr=0.05", "trainer.iterations=7"))
    stored["device"]["name"] = "cuda"
    del stored["trainer"]["compile"], stored["trainer"]["amp"]  # as before they existed
    cfg = compose_train("trainer.iterations=20", "eval.tasks=50", "checkpoint=x", name="eval")
    merged = from_checkpoint(stored, cfg, ["trainer.iterations=20", "eval.tasks=50",
                                           "checkpoint=x"])
    assert merged.inner.lr == 0.05  # from the checkpoint
    assert merged.trainer.iterations == 20  # overridden here
    assert merged.eval.tasks == 50 and merged.device.name == "auto"  # from this command
    assert merged.trainer.compile == "auto" and merged.trainer.amp is None  # the defaults


def test_from_checkpoint_refuses_a_group_change_naming_both_values():
    stored = OmegaConf.to_container(compose_train())
    with pytest.raises(UserError, match="algorithm=fomaml would change algorithm.first_order "
                                        "from the checkpoint's False to True"):
        from_checkpoint(stored, compose_train("algorithm=fomaml"), ["algorithm=fomaml"])


def test_from_checkpoint_accepts_the_original_command():
    original = ["task=sinusoid", "device=cpu", "trainer.iterations=400", "seed=7",
                "+experiment=sinusoid_paper", "task.shots=5"]
    stored = OmegaConf.to_container(compose_train(*original), resolve=True)
    merged = from_checkpoint(stored, compose_train(*original, "resume=x"), [*original, "resume=x"])
    assert merged.seed == 7 and merged.task.shots == 5 and merged.trainer.iterations == 400
    # Another preset changes the experiment: refused.
    with pytest.raises(UserError, match="model=conv4 would change model._target_"):
        from_checkpoint(stored, compose_train(*original, "model=conv4"),
                        [*original, "model=conv4"])


def test_paper_preset_composes():
    cfg = compose_train("+experiment=sinusoid_paper")
    assert cfg.trainer.iterations == 70000 and cfg.trainer.meta_batch_size == 25
    check_values(cfg)


EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_preset_composes_and_validates(name):
    check_values(compose_train(f"+experiment={name}"))


@pytest.mark.parametrize("name, ways, shots, batch, lr, steps, first_order", [
    ("omniglot_5w1s", 5, 1, 32, 0.4, 1, False),
    ("omniglot_5w5s", 5, 5, 32, 0.4, 1, False),
    ("omniglot_20w1s", 20, 1, 16, 0.1, 5, False),
    ("omniglot_20w5s", 20, 5, 16, 0.1, 5, False),
    ("miniimagenet_5w1s", 5, 1, 4, 0.01, 5, False),
    ("miniimagenet_5w5s", 5, 5, 2, 0.01, 5, False),
    ("miniimagenet_5w1s_fomaml", 5, 1, 4, 0.01, 5, True),
    ("miniimagenet_5w5s_fomaml", 5, 5, 2, 0.01, 5, True),
])
def test_paper_presets_carry_the_papers_hyperparameters(name, ways, shots, batch, lr, steps,
                                                        first_order):
    cfg = compose_train(f"+experiment={name}")
    assert (cfg.task.ways, cfg.task.shots, cfg.trainer.meta_batch_size) == (ways, shots, batch)
    assert (cfg.inner.lr, cfg.inner.steps, cfg.inner.eval_steps) == (lr, steps, 10)
    assert cfg.algorithm.first_order is first_order
    assert cfg.task.loss_scale == ways  # the reference code's loss: ways x mean cross-entropy
    assert cfg.model._target_.endswith("Conv4")
    if name.startswith("miniimagenet"):
        assert (cfg.model.filters, cfg.model.downsample, cfg.task.queries) == (32, "maxpool", 15)
    else:
        assert (cfg.model.filters, cfg.model.downsample) == (64, "stride")


def test_the_fomaml_preset_trains_on_15_queries_and_tests_on_the_papers_one():
    # Its row's setting (docs/results.md, "FOMAML"): 15 training queries per class, validation
    # and test on one, as the paper's rows are tested.
    cfg = compose_train("+experiment=omniglot_5w1s_fomaml")
    assert cfg.algorithm.first_order and cfg.algorithm.head_init == "zero"
    assert (cfg.task.ways, cfg.task.shots, cfg.task.queries, cfg.task.eval_queries) == (5, 1, 15, 1)
    assert (cfg.inner.lr, cfg.inner.steps, cfg.inner.eval_steps) == (0.1, 5, 10)
    assert (cfg.trainer.iterations, cfg.trainer.meta_batch_size) == (10000, 32)
    assert (cfg.trainer.lr_schedule, cfg.trainer.min_lr) == ("cosine", 1e-5)


def test_family_presets_carry_their_papers_settings():
    mamlpp = compose_train("+experiment=mamlpp_omniglot_5w1s")
    assert (mamlpp.trainer.meta_batch_size, mamlpp.trainer.iterations) == (16, 150 * 500)
    assert (mamlpp.inner.lr, mamlpp.inner.steps, mamlpp.inner.eval_steps) == (0.4, 5, 5)
    assert mamlpp.algorithm.first_order_until == 80 * 500 and mamlpp.algorithm.per_step_norm
    assert (mamlpp.algorithm.lr_mode, mamlpp.trainer.lr_schedule) == ("per_layer_step", "cosine")
    assert (mamlpp.model.downsample, mamlpp.task.loss_scale) == ("maxpool", 1.0)
    reptile = compose_train("+experiment=reptile_omniglot_5w1s")
    assert reptile.inner._target_.endswith("Adam") and list(reptile.inner.betas) == [0.0, 0.999]
    assert (reptile.inner.lr, reptile.inner.steps, reptile.inner.eval_steps) == (0.001, 5, 50)
    assert (reptile.outer._target_, reptile.outer.lr) == ("torch.optim.SGD", 1.0)
    assert (reptile.trainer.lr_schedule, reptile.trainer.min_lr) == ("linear", 0.0)
    assert (reptile.task.shots, reptile.algorithm.inner_batch_size) == (10, 10)
    assert reptile.algorithm.keep_inner_state
    assert (reptile.task.eval_shots, reptile.task.eval_queries) == (1, None)
    # Snell et al.'s ProtoNet settings; Sung et al.'s Relation Networks: one episode per update,
    # Adam at 1e-3 halved every 2,000 / 100,000 episodes.
    for name, shots, task in [("protonet_cifar_fs_5w1s", 1, "CIFARFS"),
                              ("protonet_cifar_fs_5w5s", 5, "CIFARFS"),
                              ("protonet_fc100_5w1s", 1, "FC100"),
                              ("protonet_fc100_5w5s", 5, "FC100")]:
        proto = compose_train(f"+experiment={name}")
        assert (proto.task._target_.split(".")[-1], proto.task.shots) == (task, shots)
        assert (proto.task.ways, proto.task.queries, proto.algorithm._target_) == (
            5, 15, "maml_cli.algorithms.protonet.ProtoNet")
        assert (proto.model.filters, proto.model.downsample, proto.model.spatial_mean) == (
            64, "maxpool", False)
        assert (proto.outer.lr, proto.trainer.meta_batch_size, proto.trainer.lr_schedule,
                proto.trainer.lr_decay_every, proto.trainer.lr_decay) == (1e-3, 1, "step", 2000,
                                                                          0.5)
    for name, shots, queries in [("relationnet_omniglot_5w1s", 1, 19),
                                 ("relationnet_omniglot_5w5s", 5, 15)]:
        relation = compose_train(f"+experiment={name}")
        assert (relation.task.ways, relation.task.shots, relation.task.queries) == (
            5, shots, queries)
        assert (relation.model.downsample, relation.model.downsample_blocks) == ("maxpool", 2)
        assert (relation.trainer.meta_batch_size, relation.trainer.lr_decay_every) == (1, 100000)


def test_a_checkpoints_own_task_keys_are_set_onto_it_not_composed_by_hydra(monkeypatch):
    argv = ["checkpoint=run", "task.horizon=20", "inner.eval_steps=5", "model=mlp",
            "model.hidden=[8]", "+task.extra=1", "eval.tasks=4"]
    assert split_onto_checkpoint(argv) == (
        ["checkpoint=run", "model=mlp", "model.hidden=[8]", "+task.extra=1", "eval.tasks=4"],
        ["task.horizon=20", "inner.eval_steps=5"])
    for other in (argv[1:], ["-m", *argv], ["checkpoint=", "task.horizon=20"]):
        assert split_onto_checkpoint(other) == (other, [])  # not from a checkpoint, or a sweep
    stored = OmegaConf.to_container(compose_train("+experiment=navigation2d_maml"), resolve=True)
    cfg = compose_train("checkpoint=x", name="eval")
    monkeypatch.setattr(config, "onto_checkpoint", ["task.horizon=20", "task.goal_range=[0,1]"])
    merged = from_checkpoint(stored, cfg, ["checkpoint=x"])
    assert merged.task.horizon == 20 and list(merged.task.goal_range) == [0, 1]
    for bad, message in ((["task.horizn=20"], "task.horizn is not a key of the checkpoint's "
                                              "task config"),
                         (["task.horizon=abc"], "task.horizon=abc: the checkpoint's "
                                                "task.horizon is int")):
        monkeypatch.setattr(config, "onto_checkpoint", bad)
        with pytest.raises(UserError, match=message):
            from_checkpoint(stored, cfg, ["checkpoint=x"])
    # A key the task's class takes that the checkpoint predates (written before it existed).
    del stored["task"]["horizon"]
    monkeypatch.setattr(config, "onto_checkpoint", ["task.horizon=30"])
    assert from_checkpoint(stored, cfg, ["checkpoint=x"]).task.horizon == 30


def documented_train_commands() -> list[str]:
    """Every maml-train command line in the README's and docs/'s bash blocks."""
    root = Path(__file__).parents[1]
    text = "".join(p.read_text() for p in [root / "README.md", *(root / "docs").glob("*.md")])
    lines = [line.split(" #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if "maml-train" in line and not line.startswith("#")]


def test_every_documented_maml_train_command_composes_and_validates():
    """A key renamed or a value ruled out later fails here, not in a reader's shell. A sweep is
    checked at the first value of each swept key; a command with a placeholder (<...>), resume=
    or a --flag is left to the end-to-end tests."""
    checked = 0
    for line in documented_train_commands():
        words = shlex.split(line)
        args = words[next(i for i, w in enumerate(words) if w.endswith("maml-train")) + 1:]
        if any(a.startswith(("resume=", "--")) or "<" in a for a in args):
            continue
        overrides = [f"{o.get_key_element()}={next(o.sweep_string_iterator())}"
                     if o.is_sweep_override() else o.input_line
                     for o in OverridesParser.create().parse_overrides(
                         [a for a in args if a != "-m"])]
        try:
            check_values(compose_train(*overrides))
        except Exception as e:
            pytest.fail(f"{line}: {type(e).__name__}: {e}")
        checked += 1
    assert checked >= 20  # the README's and docs' commands were found
