"""Every config group composes; bad values are refused with a message naming the key before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunesweep.cli import CONF_DIR, SWEEPS_DIR
from prunesweep.config import (
    ConfigError,
    config_hash,
    dense_key,
    flatten,
    plain,
    pruning_spec,
    sensitivity_key,
    validate,
    variational_key,
    variational_lineage,
)
from prunesweep.models import MODELS
from prunesweep.pruning import count_params, count_weights

# Options with a ??? the user fills in (their own model class, their image folder); see tests/test_own_model.py.
NEEDS_A_VALUE = {("model", "custom"), ("data", "image_folder")}
GROUP_OPTIONS = [
    (group.name, option.stem)
    for group in sorted(CONF_DIR.iterdir())
    if group.is_dir() and group.name not in ("hydra", "experiment", "model_unit", "frontier")
    for option in sorted(group.glob("*.yaml"))
    if (group.name, option.stem) not in NEEDS_A_VALUE
]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_group_option_composes_and_validates(make_cfg, group, option):
    cfg = make_cfg(f"{group}={option}")
    validate(cfg)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_validates(make_cfg, experiment):
    validate(make_cfg(f"+experiment={experiment}"))


@pytest.mark.parametrize("pair", sorted(p.stem for p in (CONF_DIR / "model_unit").glob("*.yaml")))
def test_every_model_unit_pair_selects_its_model_and_granularity(make_cfg, pair):
    cfg = make_cfg(f"+model_unit={pair}")
    validate(cfg)
    assert f"{cfg.model.name}_{cfg.pruning.granularity}" == pair


@pytest.mark.parametrize("sweep", sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
def test_every_sweep_is_a_multirun(make_cfg, sweep):
    cfg = make_cfg(f"+sweep={sweep}", hydra_cfg=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params, "a sweep must sweep something"
    validate(cfg)


@pytest.mark.parametrize("point", sorted(p.stem for p in (CONF_DIR / "frontier").glob("*.yaml")))
def test_every_frontier_point_delivers_the_compression_its_name_states(make_cfg, point):
    """Names read ``[model_]granularity_threshold_level[_method]``. ``..._100x`` means 100x of *all* parameters,
    though biases (LeNet-5: 580 of 431,080) are never pruned; ``..._285xw`` means 285x of the weights only (the
    papers' basis); a bare number is the percentage of units removed. A method suffix names the setting it turns on
    (distill: finetune.distill; variational: pruning.importance)."""
    cfg = make_cfg("+sweep=frontier", f"+frontier={point}")
    validate(cfg)
    assert (cfg.pruning.schedule, cfg.train.epochs, cfg.finetune.epochs) == ("gradual", 12, 16)
    parts = point.split("_")
    model = parts.pop(0) if parts[0] in MODELS else "lenet5"
    granularity, threshold, level, *method = parts
    assert (cfg.model.name, cfg.pruning.granularity, cfg.pruning.threshold) == (model, granularity, threshold)
    assert (cfg.finetune.distill.weight > 0) == (method == ["distill"])
    assert (cfg.pruning.importance == "variational") == (method == ["variational"])
    weights, params = count_weights(MODELS[model]())[0], count_params(MODELS[model]())[0]
    kept_weights = weights - round(cfg.pruning.sparsity * weights)
    if level.endswith("xw"):
        stated, compression = int(level[:-2]), weights / kept_weights
    elif level.endswith("x"):
        stated, compression = int(level[:-1]), params / (kept_weights + params - weights)
    else:
        assert cfg.pruning.sparsity == int(level) / 100
        return
    if threshold == "statistical":  # no exact promise and the fit falls short, so it must ask for more
        assert compression > stated
    else:
        assert stated <= compression < 1.02 * stated  # at least, and within 2 %


def test_reduced_frontier_is_a_subset_of_the_frontier(make_cfg):
    full = make_cfg("+sweep=frontier", hydra_cfg=True)
    reduced = make_cfg("+sweep=frontier_reduced", hydra_cfg=True)
    points = str(reduced.hydra.sweeper.params["+frontier"]).split(",")
    assert len(points) == 5 and all((CONF_DIR / "frontier" / f"{p}.yaml").exists() for p in points)
    assert str(full.hydra.sweeper.params["+frontier"]) == "glob(*)"
    assert len(str(reduced.hydra.sweeper.params.seed).split(",")) >= 3
    full, reduced = plain(make_cfg("+sweep=frontier")), plain(make_cfg("+sweep=frontier_reduced"))
    assert all(reduced[group] == full[group] for group in ("train", "finetune", "pruning"))


def test_seed_experiment_matches_the_article(make_cfg):
    cfg = make_cfg("+experiment=seed_lenet5")
    assert cfg.model.name == "lenet5"
    assert list(cfg.pruning.layers) == ["conv1", "conv2", "fc1", "fc2"]
    assert (cfg.pruning.sparsity, cfg.pruning.threshold, cfg.pruning.granularity) == (
        0.5,
        "layerwise",
        "unstructured",
    )
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size, cfg.train.momentum) == (10, 0.01, 256, 0.9)
    assert (cfg.finetune.epochs, cfg.finetune.lr) == (5, 0.001)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pruning.sparsity=1.5", "pruning.sparsity=1.5"),
        ("pruning.sparsity=1.0", "pruning.sparsity=1.0"),
        ("pruning.sparsity=-0.1", "pruning.sparsity=-0.1"),
        ("pruning.sparsity=abc", "pruning.sparsity='abc' must be a number"),
        ("pruning.threshold=bogus", "pruning.threshold"),
        ("pruning.granularity=bogus", "pruning.granularity"),
        ("pruning.importance=bogus", "pruning.importance"),
        ("pruning.schedule=bogus", "pruning.schedule='bogus'"),
        ("pruning.layers=[conv1,nope]", "nope"),
        ("pruning.stat.k=-1", "pruning.stat.k"),
        ("pruning.importance=entropy", "entropy"),  # with the default unstructured granularity
        ("data.name=bogus", "data.name='bogus'"),
        ("data.train_subset=0", "data.train_subset=0"),
        ("data.train_subset=60000", "data.train_subset=60000"),
        ("train.epochs=0", "train.epochs=0"),
        ("finetune.lr=0", "finetune.lr=0"),
        ("finetune.lr=-0.1", "finetune.lr=-0.1"),
        ("train.optimizer=rmsprop", "train.optimizer='rmsprop'"),
        ("model.name=alexnet", "model.name='alexnet'"),
        ("tracking.uri=./mlruns", "tracking.uri='./mlruns'"),
        ("pruning.rewind=10", "pruning.rewind=10 is not allowed"),
        ("pruning.rewind=late", "pruning.rewind='late' is not allowed"),
        # any importable callable may be named (configs are code, see prunesweep.targets); what cannot work is refused
        ("model._target_=torch.nn.Identity", "model._target_='torch.nn.Identity' must return (batch, classes) logits"),
        ("data._target_=no_such_pkg.Data", "data._target_='no_such_pkg.Data' cannot be imported"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(make_cfg, override, message):
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(override))
    assert message in str(info.value)


def test_data_root_that_is_a_file_is_refused(make_cfg, tmp_path: Path):
    file = tmp_path / "not-a-dir"
    file.write_text("x")
    with pytest.raises(ConfigError, match=r"data\.root=.* is a file"):
        validate(make_cfg(f"data.root={file}"))


def test_config_hash_ignores_where_results_go_but_not_what_they_are(make_cfg):
    base = make_cfg()
    assert config_hash(base) == config_hash(make_cfg("tracking.uri=sqlite:///elsewhere.db", "paths.output_dir=/x"))
    assert config_hash(base) != config_hash(make_cfg("pruning.sparsity=0.9"))
    # the dense model does not depend on pruning or fine-tuning, only on model, data, training and seed
    assert dense_key(base) == dense_key(make_cfg("pruning.sparsity=0.9", "finetune.epochs=2"))
    assert dense_key(base) != dense_key(make_cfg("seed=1"))
    assert dense_key(base) != dense_key(make_cfg("train.lr=0.02"))


def test_pruning_spec_and_flatten(make_cfg):
    cfg = make_cfg("pruning.stat.k=1.5", "pruning.layer_sparsity={fc2:0.25}", "pruning.threshold=statistical")
    spec = pruning_spec(cfg)
    assert spec.stat_k == 1.5
    assert dict(spec.layer_sparsity) == {"fc2": 0.25}
    flat = flatten({"pruning": {"sparsity": 0.5, "stat": {"k": None}}})
    assert flat == {"pruning.sparsity": "0.5", "pruning.stat.k": "None"}


def test_rewind_to_an_epoch_needs_a_constant_lr(make_cfg):
    validate(make_cfg("train=resnet", "model=resnet", "pruning.rewind=init"))
    with pytest.raises(ConfigError, match=r"needs train\.lr_schedule=constant"):
        validate(make_cfg("train=resnet", "model=resnet", "pruning.rewind=2"))


def test_lr_schedule_is_optional_and_checked(make_cfg):
    assert "lr_schedule" not in make_cfg().train  # absent = constant, so existing dense-model hashes stand
    validate(make_cfg("model=resnet", "train=resnet"))
    with pytest.raises(ConfigError, match=r"train.lr_schedule='step' is not allowed; choose one of: constant, cosine"):
        validate(make_cfg("train=resnet", "train.lr_schedule=step"))


def test_rewind_is_refused_by_name_where_a_schedule_cannot_rewind(make_cfg):
    """gradual prunes during training: there is no moment to rewind at, so the option is refused, not ignored
    (an ignored option would also give two identical points different config hashes)."""
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("pruning.schedule=gradual", "pruning.rewind=init"))
    message = str(info.value)
    assert "pruning.rewind='init'" in message and "pruning.schedule=gradual" in message
    assert "oneshot, iterative" in message  # where it does apply
    for schedule in ("oneshot", "iterative"):
        validate(make_cfg(f"pruning.schedule={schedule}", "pruning.rewind=init"))
    validate(make_cfg("pruning.schedule=gradual"))  # without rewind, gradual is fine


def test_schedule_names_come_from_the_registry(make_cfg):
    from prunesweep import config, schedules

    assert config.SCHEDULES == tuple(schedules.SCHEDULES) == ("oneshot", "iterative", "gradual", "splicing")
    with pytest.raises(ConfigError, match="choose one of: oneshot, iterative, gradual, splicing"):
        validate(make_cfg("pruning.schedule=agp"))


def test_data_limits_come_from_the_dataset_spec(make_cfg):
    from prunesweep.data import DATASETS

    images = DATASETS["mnist"].train_images
    validate(make_cfg(f"data.train_subset={images - 5000}"))  # everything but the default validation split
    with pytest.raises(ConfigError, match=rf"data.train_subset={images - 4999} is out of range"):
        validate(make_cfg(f"data.train_subset={images - 4999}"))
    with pytest.raises(ConfigError, match=rf"data.val_size={images} is out of range"):
        validate(make_cfg(f"data.val_size={images}"))


def test_finetune_rebuilt_keeps_the_hashes_of_points_finished_before_it(make_cfg):
    """At its default (true) the key is left out of the hash: a sweep resumed after the upgrade still finds its
    finished points (they trained the masked model, which computes the same). false is another point."""
    new = make_cfg()
    assert new.finetune.rebuilt is True
    old = make_cfg("~finetune.rebuilt")  # the config as it was before the key existed
    assert config_hash(new) == config_hash(old)
    assert config_hash(new) != config_hash(make_cfg("finetune.rebuilt=false"))
    with pytest.raises(ConfigError, match=r"finetune.rebuilt='yes' must be true or false"):
        validate(make_cfg("finetune.rebuilt=yes"))


def test_channels_last_keys_points_and_dense_models_but_false_keeps_the_old_ones(make_cfg):
    """channels_last (default true) computes float-equal, not bit-equal numbers: a point and a dense model made
    in it are new ones; false is what every run before the key computed, so it keeps their hashes and caches."""
    new = make_cfg()
    assert new.channels_last is True
    old = make_cfg("~channels_last")  # the config as it was before the key existed
    contiguous = make_cfg("channels_last=false")
    assert config_hash(contiguous) == config_hash(old) != config_hash(new)
    assert dense_key(contiguous) == dense_key(old) != dense_key(new)
    assert config_hash(make_cfg("+sweep=frontier")) == config_hash(make_cfg("+sweep=frontier", "~channels_last"))
    with pytest.raises(ConfigError, match=r"channels_last='yes' must be true or false"):
        validate(make_cfg("channels_last=yes"))


def test_trainer_precision_keys_points_and_dense_models_but_full_precision_keeps_the_old_ones(make_cfg):
    """The trainer group only says where a run executes, except its precision: a 16-mixed point or dense model is
    another one. Full precision, however spelled, keeps the hashes of every run before the key was read."""
    cpu, gpu = make_cfg(), make_cfg("trainer=gpu")
    assert gpu.trainer.precision == "32-true"
    assert config_hash(gpu) == config_hash(cpu) == config_hash(make_cfg("trainer=gpu", "trainer.precision=32"))
    assert dense_key(gpu) == dense_key(cpu)
    mixed = make_cfg("trainer=gpu", "trainer.precision=16-mixed")
    assert config_hash(mixed) != config_hash(cpu)
    assert dense_key(mixed) != dense_key(cpu)
    assert config_hash(mixed) == config_hash(make_cfg("trainer=gpu", "trainer.precision=16"))
    assert config_hash(make_cfg("trainer=gpu", "trainer.precision=bf16-mixed")) != config_hash(mixed)


def test_pruning_variational_keeps_old_hashes_and_keys_its_trained_model(make_cfg):
    """At its defaults pruning.variational is left out of the hash (finished points still match); a changed recipe
    is another point and another trained model, and the sensitivity curves of a variational model are its own."""
    new = make_cfg("pruning.importance=variational")
    assert config_hash(new) == config_hash(make_cfg("pruning.importance=variational", "~pruning.variational"))
    longer = make_cfg("pruning.importance=variational", "pruning.variational.epochs=40")
    assert config_hash(longer) != config_hash(new)
    assert variational_key(longer) != variational_key(new)
    assert variational_key(new) == variational_key(make_cfg("pruning.importance=variational", "pruning.sparsity=0.9"))
    sensitivity = ("pruning.threshold=sensitivity",)
    assert sensitivity_key(make_cfg(*sensitivity, "pruning.importance=variational")) != sensitivity_key(
        make_cfg(*sensitivity, "pruning.importance=variational", "pruning.variational.epochs=40")
    )
    with pytest.raises(ConfigError, match=r"pruning\.variational=.*lr must be > 0"):
        validate(make_cfg("pruning.variational.lr=0"))


def test_data_train_on_val_keeps_old_hashes_off_and_keys_its_own_dense_model_on(make_cfg):
    """data.train_on_val came after many finished points and cached dense models: off (or absent) it leaves their
    hashes and keys as they were; on, the dense model trains on other images, so it is another point and model."""
    old, off, on = (
        make_cfg("~data.train_on_val"),
        make_cfg("data.train_on_val=false"),
        make_cfg("data.train_on_val=true"),
    )
    assert (config_hash(off), dense_key(off)) == (config_hash(old), dense_key(old))
    assert config_hash(on) != config_hash(off) and dense_key(on) != dense_key(off)
    validate(make_cfg("data.train_on_val=true", "data.train_subset=60000"))
    with pytest.raises(ConfigError, match=r"data\.train_subset"):
        validate(make_cfg("data.train_subset=60000"))
    with pytest.raises(ConfigError, match=r"data\.train_on_val='yes' must be true or false"):
        validate(make_cfg("data.train_on_val=yes"))


def test_variational_recipe_keys_added_later_keep_the_old_identities_at_their_old_values(make_cfg):
    """train_clip and lr_decay came after the first sparse VD results: at false / constant a point's hash, its trained
    model's key and its lineage are what they were without them; at the paper's values they are other ones. With a
    constant lr a fit's length is out of its lineage (a longer fit continues a shorter one); with a decaying lr in."""
    vd, longer = ("pruning.importance=variational", "pruning.variational.epochs=30"), "pruning.variational.epochs=40"
    old = make_cfg(*vd, "~pruning.variational.train_clip", "~pruning.variational.lr_decay")
    legacy = make_cfg(*vd, "pruning.variational.train_clip=false", "pruning.variational.lr_decay=constant")
    assert (config_hash(legacy), variational_key(legacy)) == (config_hash(old), variational_key(old))
    for paper in ("pruning.variational.train_clip=true", "pruning.variational.lr_decay=linear"):
        assert config_hash(make_cfg(*vd, paper)) != config_hash(old)
        assert variational_key(make_cfg(*vd, paper)) != variational_key(old)
    assert variational_lineage(make_cfg(*vd, longer)) == variational_lineage(old)
    decayed = "pruning.variational.lr_decay=linear"
    assert variational_lineage(make_cfg(*vd, decayed, longer)) != variational_lineage(make_cfg(*vd, decayed))
    with pytest.raises(ConfigError, match=r"lr_decay must be constant or linear"):
        validate(make_cfg("pruning.variational.lr_decay=cosine"))
