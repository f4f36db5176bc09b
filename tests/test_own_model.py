"""Your own model and data: any ``_target_``, refused by key when it cannot work, and a model from the test tree
that declares nothing run through the CLI on a folder of real MNIST PNGs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from data.test_data_folder import write_mnist_pngs
from mlflow.tracking import MlflowClient

from prunesweep.config import ConfigError, validate
from prunesweep.targets import TargetError, accepted_kwargs, build_model

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model._target_=no_such_pkg.models.Net"], "model._target_='no_such_pkg.models.Net' cannot be imported"),
        (["model._target_=own_model.tiny.Missing"], "own_model.tiny has no attribute 'Missing'"),
        (["model._target_=own_model.tiny.NotAModule"], "built a NotAModule, which is not a torch.nn.Module"),
        (["model._target_=own_model.tiny.three_outputs"], "has 3 outputs but model.num_classes=10"),
        (["model._target_=own_model.tiny.TinyNet", "data._target_=no_such_pkg.Data"], "data._target_='no_such_pkg"),
    ],
)
def test_bad_targets_are_refused_by_key(make_cfg, tiny_overrides, overrides, message):
    cfg = make_cfg(*tiny_overrides, "model=custom", *overrides)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(cfg)


@pytest.mark.parametrize(("option", "key"), [("model=custom", "model._target_"), ("data=image_folder", "data.path")])
def test_an_option_without_its_own_value_names_the_key(make_cfg, option, key):
    with pytest.raises(ConfigError, match=rf"{key} has no value"):
        validate(make_cfg(option))


def test_custom_model_label_is_the_class_name_and_is_not_passed(make_cfg, tiny_overrides):
    cfg = make_cfg(
        *tiny_overrides, "model=custom", "model._target_=own_model.tiny.TinyNet", "pruning.granularity=channel"
    )
    validate(cfg)
    assert cfg.model.name == "TinyNet"
    assert accepted_kwargs(build_model, {}) == {}
    model = build_model(cfg.model, num_classes=10)
    assert model.channel_layers == ("stem", "conv1", "hidden")
    with pytest.raises(TargetError, match="has 10 outputs but the data has 3 classes"):
        build_model(cfg.model, num_classes=3)


@pytest.mark.parametrize("model", ["torchvision_resnet18", "mobilenet_v2"])
def test_ready_torchvision_configs_validate_at_every_found_granularity(make_cfg, tiny_overrides, model):
    for granularity in ("unstructured", "channel", "block"):
        validate(make_cfg(*tiny_overrides, f"model={model}", f"pruning.granularity={granularity}"))


def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    # The user's package (here: tests/own_model) is importable the ordinary way, through PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    command = [
        sys.executable, "-m", "prunesweep.cli",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_cli_refuses_a_missing_model_module_by_key(tmp_path):
    proc = _cli(tmp_path, "model=custom", "model._target_=my_missing_package.Net")
    assert proc.returncode == 2
    assert "model._target_='my_missing_package.Net' cannot be imported" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_own_model_on_an_image_folder_runs_through_the_cli_unstructured_and_channel(tmp_path):
    write_mnist_pngs(tmp_path / "digits", 2000)
    proc = _cli(
        tmp_path,
        "+sweep=smoke",  # a multirun; the command line narrows its grid to the two granularities
        "pruning.threshold=layerwise",
        "model=custom",
        "model._target_=own_model.tiny.TinyNet",
        "data=image_folder",
        f"data.path={tmp_path / 'digits'}",
        "data.train_subset=512",
        "pruning.sparsity=0.5",
        "pruning.granularity=unstructured,channel",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("prunesweep").experiment_id
    runs = {
        r.data.tags.get("granularity"): r for r in client.search_runs([experiment_id]) if r.data.tags.get("granularity")
    }
    assert set(runs) == {"unstructured", "channel"}
    for granularity, run in runs.items():
        metrics = run.data.metrics
        assert run.info.status == "FINISHED" and run.info.run_name.endswith("-TinyNet"), run.info.run_name
        assert metrics["flops/remaining"] < metrics["flops/dense"], granularity
        assert 0.0 < metrics["acc/finetuned"] <= 1.0
        assert run.data.tags["dataset"] == "image_folder"
        figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
        assert "figures/hidden_weights.png" in figures  # the largest prunable layer, not a hard-coded fc1
    assert runs["channel"].data.metrics["rebuild/max_abs_diff"] <= 1e-4
    assert runs["channel"].data.metrics["params/nonzero"] < runs["channel"].data.metrics["params/total"]


def test_a_dataset_target_is_wrapped_and_anything_else_refused_by_key():
    from prunesweep.targets import build_datamodule

    quiet = {"log": lambda message: None}
    cfg = {"_target_": "torchvision.datasets.FakeData", "size": 100, "image_size": [1, 28, 28], "num_classes": 4}
    data = build_datamodule({**cfg, "batch_size": 16, "name": "fake"}, **quiet)
    data.setup()
    assert (
        data.num_classes <= 4
        and data.input_shape == (1, 28, 28)
        and next(iter(data.train_dataloader()))[0].shape[0] == 16
    )
    with pytest.raises(TargetError, match=r"data\._target_='builtins\.object' built a object, which is neither"):
        build_datamodule({"_target_": "builtins.object"}, **quiet)
