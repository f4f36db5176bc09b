"""One sweep point end to end on real MNIST (a small subset), read back from a real SQLite MLflow store."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from prunesweep import experiment
from prunesweep.config import ConfigError
from prunesweep.lit import fit, in_layout
from prunesweep.models import LeNet5

pytestmark = pytest.mark.slow


def _only_run(store_uri: str, name: str | None = None):
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.get_experiment_by_name("prunesweep").experiment_id
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"])
    if name is not None:
        runs = [r for r in runs if r.info.run_name == name]
    return client, runs[0]


def _download(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(tmp_path)))


# Enough real training for accuracies well above chance (0.1 on 10 classes): 2 epochs of 4096 images give
# about 0.78 dense and 0.83 after fine-tuning on the seed's recipe.
TRAINED = ("data.train_subset=4096", "train.epochs=2")
WELL_ABOVE_CHANCE = 0.5


@pytest.fixture(scope="module")
def shared_dense(tmp_path_factory) -> str:
    """One dense cache for a module's points: the TRAINED dense model is trained once, not once per test."""
    return f"paths.dense_cache={tmp_path_factory.mktemp('dense')}"


def _assert_half_of_each_layer_pruned(metrics: dict[str, float]) -> None:
    """50 % of every LeNet-5 layer's weights pruned; its 580 biases kept and counted in the total."""
    assert metrics["params/total"] == 431_080
    pruned_weights = sum(round(0.5 * n) for n in (500, 25_000, 400_000, 5_000))
    assert metrics["params/nonzero"] == 431_080 - pruned_weights
    assert metrics["sparsity/achieved"] == pytest.approx(pruned_weights / 431_080)
    assert metrics["sparsity/target"] == 0.5
    # the papers' basis: weights only
    assert metrics["params/weights_total"] == 430_500
    assert metrics["params/weights_nonzero"] == 430_500 - pruned_weights
    assert metrics["sparsity/weights"] == pytest.approx(pruned_weights / 430_500)
    for layer, weights, biases in (
        ("conv1", 500, 20),
        ("conv2", 25_000, 50),
        ("fc1", 400_000, 500),
        ("fc2", 5_000, 10),
    ):
        assert metrics[f"sparsity/{layer}"] == pytest.approx(round(0.5 * weights) / (weights + biases))


def test_seed_pipeline_logs_everything_and_holds_masks(make_cfg, tiny_overrides, store_uri, tmp_path, shared_dense):
    cfg = make_cfg(*tiny_overrides, "+experiment=seed_lenet5", *TRAINED, shared_dense, "finetune.epochs=2")
    result = experiment.run(cfg)
    assert result["status"] == "finished"

    client, run = _only_run(store_uri)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "unstructured-layerwise-s0.50-seed0"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["pruning.sparsity"] == "0.5" and params["train.lr"] == "0.01" and params["finetune.lr"] == "0.001"
    assert tags["granularity"] == "unstructured" and tags["threshold"] == "layerwise" and tags["config_hash"]

    _assert_half_of_each_layer_pruned(metrics)
    for key in ("acc/dense", "acc/pruned", "acc/finetuned"):
        assert WELL_ABOVE_CHANCE < metrics[key] <= 1.0, key
    assert metrics["finetune/steps"] == 2 * 4096 // 256
    assert metrics["flops/remaining"] < metrics["flops/dense"]
    # CSR costs ~8 bytes per nonzero (float32 value + int32 column), so at 50% it saves nothing; gzip does
    assert metrics["size/pruned_bytes"] == pytest.approx(8 * metrics["params/nonzero"], rel=0.01)
    assert metrics["size/compressed_bytes"] < metrics["size/dense_bytes"]
    assert metrics["latency/dense_ms"] > 0 and metrics["latency/pruned_ms"] > 0

    # per-epoch curves of dense training and fine-tuning
    dense_epochs = 0 if tags["dense_cached"] == "True" else 2  # the module's dense model is trained once
    assert len(client.get_metric_history(run.info.run_id, "dense/train/loss")) == dense_epochs
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [0, 1]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "layers.csv", "figures", "model"} <= artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/stage_accuracy.png", "figures/parameter_counts.png", "figures/fc1_weights.png"}
    layers_csv = _download(client, run.info.run_id, "layers.csv", tmp_path).read_text()
    assert layers_csv.splitlines()[0].startswith("layer,") and "threshold" in layers_csv.splitlines()[0]

    # the exported weights load into a plain LeNet-5; pruned weights are exactly zero after fine-tuning
    state_path = _download(client, run.info.run_id, "model/pruned_state_dict.pt", tmp_path)
    state = torch.load(io.BytesIO(state_path.read_bytes()), weights_only=True)
    plain = LeNet5()
    plain.load_state_dict(state, strict=True)
    nonzero = sum(int((p != 0).sum()) for p in plain.parameters())
    assert nonzero == metrics["params/nonzero"]


def test_second_point_reuses_the_dense_model(make_cfg, tiny_overrides, store_uri):
    experiment.run(make_cfg(*tiny_overrides, "pruning.sparsity=0.5"))
    experiment.run(make_cfg(*tiny_overrides, "pruning.sparsity=0.9", "pruning.threshold=global"))
    client = MlflowClient(tracking_uri=store_uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("prunesweep").experiment_id])}
    assert runs["unstructured-layerwise-s0.50-seed0"].data.tags["dense_cached"] == "False"
    reused = runs["unstructured-global-s0.90-seed0"]
    assert reused.data.tags["dense_cached"] == "True"
    assert reused.data.metrics["acc/dense"] == runs["unstructured-layerwise-s0.50-seed0"].data.metrics["acc/dense"]
    # the dense model's accuracy, FLOPs and latency are measured once, by the first point, and cached beside it
    assert runs["unstructured-layerwise-s0.50-seed0"].data.tags["dense_measures_cached"] == "False"
    assert reused.data.tags["dense_measures_cached"] == "True"
    for key in ("latency/dense_ms_b1", "latency/dense_ms_b256", "flops/dense"):
        assert reused.data.metrics[key] == runs["unstructured-layerwise-s0.50-seed0"].data.metrics[key] > 0
    assert "dense/train/loss" not in reused.data.metrics
    assert reused.data.metrics["sparsity/achieved"] == pytest.approx(0.9 * 430_500 / 431_080, abs=1e-6)


def test_sensitivity_points_share_cached_curves_and_log_the_heatmap(make_cfg, tiny_overrides, store_uri, tmp_path):
    """threshold=sensitivity: curves measured once per dense model on the validation split, then reused."""
    small_val = ("data.val_size=500", "pruning.schedule=gradual", "pruning.gradual.frequency=1")
    experiment.run(make_cfg(*tiny_overrides, *small_val, "pruning.threshold=sensitivity", "pruning.sparsity=0.9"))
    experiment.run(make_cfg(*tiny_overrides, *small_val, "pruning.threshold=sensitivity", "pruning.sparsity=0.95"))
    client = MlflowClient(tracking_uri=store_uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("prunesweep").experiment_id])}
    first = runs["unstructured-sensitivity-s0.90-seed0-gradual"]
    second = runs["unstructured-sensitivity-s0.95-seed0-gradual"]
    assert first.data.tags["sensitivity_cached"] == "False"
    assert second.data.tags["sensitivity_cached"] == "True"
    # the exact total, split unevenly across layers by the curves
    assert second.data.metrics["sparsity/achieved"] == pytest.approx(0.95 * 430_500 / 431_080, abs=1e-5)
    rates = {layer: second.data.metrics[f"sparsity/{layer}"] for layer in ("conv1", "conv2", "fc1", "fc2")}
    assert max(rates.values()) - min(rates.values()) > 0.01
    curves_first = pd.read_csv(_download(client, first.info.run_id, "sensitivity.csv", tmp_path / "a"))
    curves_second = pd.read_csv(_download(client, second.info.run_id, "sensitivity.csv", tmp_path / "b"))
    pd.testing.assert_frame_equal(curves_first, curves_second)
    assert set(curves_first["layer"]) == {"conv1", "conv2", "fc1", "fc2"}
    assert (curves_first.loc[curves_first["sparsity"] == 0, "loss_increase"] == 0).all()
    assert _download(client, second.info.run_id, "figures/sensitivity.png", tmp_path / "c").stat().st_size > 10_000


def test_channel_point_is_physically_smaller(make_cfg, tiny_overrides, store_uri):
    experiment.run(make_cfg(*tiny_overrides, "pruning.granularity=channel", "pruning.sparsity=0.5"))
    _, run = _only_run(store_uri)
    metrics, tags = run.data.metrics, run.data.tags
    assert tags["arch/dense"] == "20-50-500-10"
    assert tags["arch/pruned"] == "10-25-250-10"
    assert metrics["rebuild/max_abs_diff"] <= 1e-5
    assert metrics["sparsity/units"] == pytest.approx(0.5, abs=0.01)
    # half the units of conv1, conv2 and fc1 go, and with them the next layer's matching inputs
    conv1, conv2, fc1, fc2 = 10 * 1 * 25 + 10, 25 * 10 * 25 + 25, 250 * 25 * 16 + 250, 10 * 250 + 10
    assert metrics["params/nonzero"] == conv1 + conv2 + fc1 + fc2
    assert metrics["params/weights_nonzero"] == conv1 + conv2 + fc1 + fc2 - (10 + 25 + 250 + 10)  # biases out
    assert metrics["flops/remaining"] < 0.4 * metrics["flops/dense"]


@pytest.mark.parametrize(
    "overrides",
    [
        ("pruning.schedule=iterative", "pruning.rounds=2", "finetune.epochs=2", "pruning.sparsity=0.75"),
        ("pruning.schedule=gradual", "pruning.sparsity=0.75", "pruning.gradual.frequency=1"),
        ("pruning.importance=taylor", "pruning.threshold=global", "pruning.sparsity=0.75", "finetune.optimizer=adam"),
        ("pruning.granularity=channel", "pruning.importance=entropy", "pruning.threshold=statistical"),
        ("model=lenet300", "pruning.threshold=statistical", "pruning.stat.k=1.0"),
    ],
    ids=["iterative", "gradual", "taylor-adam", "entropy-statistical", "lenet300-k"],
)
def test_schedules_and_methods_finish_with_masks_held(make_cfg, tiny_overrides, store_uri, overrides, shared_dense):
    result = experiment.run(make_cfg(*tiny_overrides, *TRAINED, shared_dense, *overrides))
    assert result["status"] == "finished"
    _, run = _only_run(store_uri)
    metrics = run.data.metrics
    if "pruning.threshold=statistical" not in overrides:
        expected = 0.75 if "pruning.sparsity=0.75" in overrides else 0.5
        prunable = metrics["params/total"] - (580 if "model=lenet300" not in overrides else 410)
        assert metrics["sparsity/achieved"] == pytest.approx(expected * prunable / metrics["params/total"], abs=2e-3)
    else:
        assert 0.0 < metrics["sparsity/achieved"] < 1.0
    assert WELL_ABOVE_CHANCE < metrics["acc/finetuned"] <= 1.0


def test_same_config_twice_gives_identical_results(make_cfg, tiny_overrides, tmp_path, store_uri):
    results = []
    for attempt in ("a", "b"):
        # separate dense caches, so the dense model is trained twice
        cfg = make_cfg(*tiny_overrides, f"paths.dense_cache={tmp_path / attempt}", "pruning.importance=taylor")
        results.append(experiment.run(cfg))
    for key in ("acc/dense", "acc/pruned", "acc/finetuned", "params/nonzero"):
        assert results[0][key] == results[1][key], key


def test_nan_loss_marks_the_run_failed_with_the_reason(make_cfg, tiny_overrides, store_uri):
    with pytest.raises(FloatingPointError):
        experiment.run(make_cfg(*tiny_overrides, "train.lr=1e12"))
    _, run = _only_run(store_uri)
    assert run.info.status == "FAILED"
    assert "FloatingPointError" in run.data.tags["error"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pruning.sparsity=1.5", "pruning.sparsity=1.5 is out of range"),
        ("pruning.threshold=bogus", "pruning.threshold"),
        ("data.name=bogus", "data.name='bogus'"),
    ],
)
def test_cli_refuses_bad_input_before_any_work(tmp_path, override, message):
    db = tmp_path / "mlflow.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prunesweep.cli",
            override,
            f"tracking.uri=sqlite:///{db}",
            f"paths.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert not db.exists(), "nothing is opened in MLflow for a config that fails validation"


def test_rewind_to_epoch_k_replays_the_first_k_epochs_exactly(make_cfg, tiny_overrides, store_uri, tmp_path):
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from prunesweep.tracking import PointRun, open_store

    cfg = make_cfg(*tiny_overrides, "train.epochs=2", f"paths.dense_cache={tmp_path / 'cache'}")
    datamodule = instantiate(cfg.data, log=print)
    datamodule.setup()
    point = PointRun(open_store(store_uri, "prunesweep", str(tmp_path / "mlartifacts")), "rewind-check", {}, {})
    snapshots: dict[int, dict] = {}

    class Snapshot(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

    pl.seed_everything(0, verbose=False)
    model = in_layout(instantiate(cfg.model), cfg.channels_last)  # the run's layout: another one sums differently
    fit(
        model,
        datamodule.train_dataloader(),
        datamodule.val_dataloader(),
        cfg.train,
        cfg.trainer,
        callbacks=[Snapshot()],
    )
    replayed = experiment.rewind_state(
        make_cfg(*tiny_overrides, "train.epochs=2", "pruning.rewind=1", f"paths.dense_cache={tmp_path / 'cache'}"),
        datamodule,
        point,
    )
    for name, tensor in replayed.items():
        assert torch.equal(tensor, snapshots[0][name]), name

    result = experiment.run(make_cfg(*tiny_overrides, "train.epochs=2", "pruning.rewind=1"))
    client = MlflowClient(tracking_uri=store_uri)
    tags = client.get_run(result["run_id"]).data.tags
    assert tags["rewind1_cached"] == "False" and tags["dense_cached"] == "False"


def _exported_weights(store_uri: str, run_id: str, into: Path) -> dict[str, torch.Tensor]:
    path = MlflowClient(tracking_uri=store_uri).download_artifacts(run_id, "model/pruned_state_dict.pt", str(into))
    return torch.load(io.BytesIO(Path(path).read_bytes()), weights_only=True)


@pytest.mark.parametrize("schedule", ["oneshot", "iterative"])
def test_rewind_init_leaves_the_surviving_weights_at_their_initial_values(
    make_cfg, tiny_overrides, store_uri, schedule, tmp_path
):
    """With a fine-tune lr far below float32 resolution, the exported weights are exactly the rewound ones: the
    initialisation where a weight survived, zero where it was pruned (after every round, for iterative)."""
    from hydra.utils import instantiate

    overrides = (*tiny_overrides, f"pruning.schedule={schedule}", "pruning.rounds=2", "finetune.lr=1e-30")
    cfg = make_cfg(*overrides, "pruning.rewind=init")
    rewound = experiment.run(cfg)
    assert MlflowClient(tracking_uri=store_uri).get_run(rewound["run_id"]).data.tags["rewind"] == "init"
    assert rewound["sparsity/achieved"] == pytest.approx(0.5 * 430_500 / 431_080, abs=1e-6)  # half of each layer
    torch.manual_seed(int(cfg.seed))
    initial = instantiate(cfg.model).state_dict()
    for name, tensor in _exported_weights(store_uri, rewound["run_id"], tmp_path / "rewound").items():
        assert torch.equal(tensor, torch.where(tensor != 0, initial[name], 0.0)), name

    # the same point without rewinding keeps the trained values, so the check above can tell the two apart
    kept = experiment.run(make_cfg(*overrides))
    assert "rewind" not in MlflowClient(tracking_uri=store_uri).get_run(kept["run_id"]).data.tags
    fc1 = _exported_weights(store_uri, kept["run_id"], tmp_path / "kept")["fc1.weight"]
    assert not torch.equal(fc1, torch.where(fc1 != 0, initial["fc1.weight"], 0.0))


def test_iterative_rounds_share_one_shots_fine_tune_steps(make_cfg, tiny_overrides, store_uri):
    """3 rounds over finetune.epochs=2 of 2 batches: 2 + 1 + 1 = 4 optimizer steps, as one-shot takes (not 3 x 2)."""
    oneshot = experiment.run(make_cfg(*tiny_overrides, "finetune.epochs=2"))
    iterative = experiment.run(make_cfg(*tiny_overrides, "finetune.epochs=2", "pruning.schedule=iterative"))
    assert oneshot["finetune/steps"] == iterative["finetune/steps"] == 2 * 512 // 256
    client = MlflowClient(tracking_uri=store_uri)
    per_round = [client.get_metric_history(iterative["run_id"], f"round{r}/val/acc") for r in (1, 2, 3)]
    assert [len(history) for history in per_round] == [1, 1, 1]  # every round validated once (epoch 0)


@pytest.mark.parametrize("schedule", ["oneshot", "iterative", "gradual", "splicing"])
def test_rebuilt_fine_tune_gives_the_masked_results_on_a_smaller_model(make_cfg, tiny_overrides, store_uri, schedule):
    """finetune.rebuilt trains the physically smaller model; it must land where the masked path lands."""
    common = (*tiny_overrides, "pruning.granularity=channel", "pruning.sparsity=0.75", f"pruning.schedule={schedule}")
    rebuilt = experiment.run(make_cfg(*common))
    masked = experiment.run(make_cfg(*common, "finetune.rebuilt=false"))
    assert rebuilt["acc/pruned"] == pytest.approx(masked["acc/pruned"], abs=1e-3)  # measured on the rebuilt model
    assert rebuilt["acc/finetuned"] == pytest.approx(masked["acc/finetuned"], abs=2e-3)  # float sums in other orders
    assert rebuilt["params/nonzero"] == masked["params/nonzero"]
    assert rebuilt["finetune/steps"] == masked["finetune/steps"]
    for result in (rebuilt, masked):
        assert result["rebuild/max_abs_diff"] <= 1e-4
        assert 0 < result["time/finetune_s"] < result["time/point_s"]
    client = MlflowClient(tracking_uri=store_uri)
    logged = client.get_run(rebuilt["run_id"]).data.metrics
    assert {"time/finetune_s", "time/export_s", "time/point_s", "rebuild/max_abs_diff"} <= set(logged)
    state = torch.load(_download(client, rebuilt["run_id"], "model/pruned_state_dict.pt", Path(store_uri[10:]).parent))
    assert state["conv1.weight"].shape[0] == 5  # the logged model is the fine-tuned rebuilt one (20 -> 5 filters)


@pytest.mark.parametrize(
    "overrides",
    [
        ("finetune.distill.weight=0.7", "pruning.schedule=gradual", "pruning.gradual.frequency=1"),
        ("finetune.distill.weight=0.7", "pruning.granularity=channel", "pruning.threshold=global"),
        ("pruning.threshold=marginal", "pruning.schedule=gradual", "pruning.gradual.frequency=1"),
        ("pruning.threshold=global", "pruning.schedule=splicing", "pruning.gradual.frequency=1"),
    ],
    ids=["distill-gradual", "distill-channel-rebuilt", "marginal-gradual", "splicing"],
)
def test_new_methods_end_with_masks_held_and_the_target_met(
    make_cfg, tiny_overrides, store_uri, overrides, shared_dense
):
    """Distillation, the marginal-cost allocation and splicing keep the harness's guarantees on real MNIST: the
    exact target, masks held through fine-tuning (the run fails otherwise), and a rebuilt model equal to the masked
    one; splicing brings pruned weights back before its last update."""
    small_val = ("data.val_size=1000",)  # marginal measures its curves on the validation split
    cfg = make_cfg(*tiny_overrides, *TRAINED, shared_dense, *small_val, *overrides, "pruning.sparsity=0.75")
    result = experiment.run(cfg)
    assert result["status"] == "finished"
    metrics = _only_run(store_uri)[1].data.metrics
    if "pruning.granularity=channel" in overrides:
        assert metrics["sparsity/units"] == pytest.approx(0.75, abs=0.02)
        assert metrics["rebuild/max_abs_diff"] < 1e-4
    else:
        assert metrics["params/weights_nonzero"] == round(0.25 * metrics["params/weights_total"])
    if "pruning.schedule=splicing" in overrides:
        assert metrics["splicing/returned"] > 0
    assert WELL_ABOVE_CHANCE < metrics["acc/finetuned"] <= 1.0


def test_a_point_distils_from_another_models_dense_model_trained_by_the_same_recipe(
    make_cfg, tiny_overrides, store_uri, shared_dense
):
    """finetune.distill.teacher: a LeNet-300-100 point distils from a dense LeNet-5 that it trains (logged under
    teacher/) and caches; a LeNet-5 point of the same recipe and seed then finds that very model as its own."""
    common = (*tiny_overrides, *TRAINED, shared_dense, "data.val_size=1000", "seed=1", "pruning.threshold=global")
    student = (
        "model=lenet300",
        "+model@finetune.distill.teacher=lenet5",
        "finetune.distill.weight=0.7",
        "pruning.sparsity=0.9",
    )
    client = MlflowClient(tracking_uri=store_uri)
    run_id = experiment.run(make_cfg(*common, *student))["run_id"]
    distilled = client.get_run(run_id).data
    assert client.get_run(run_id).info.run_name == "unstructured-global-s0.90-seed1-lenet300-distill0.7-lenet5"
    assert distilled.tags["teacher_cached"] == "False" and distilled.tags["dense_cached"] == "False"
    assert len(client.get_metric_history(run_id, "teacher/val/acc")) == 2  # its two training epochs
    assert distilled.params["finetune.distill.teacher.name"] == distilled.tags["teacher"] == "lenet5"
    assert distilled.metrics["params/weights_total"] == 266_200  # the student is LeNet-300-100
    assert distilled.metrics["params/weights_nonzero"] == round(0.1 * 266_200)
    assert WELL_ABOVE_CHANCE < distilled.metrics["acc/finetuned"] <= 1.0
    lenet5 = client.get_run(experiment.run(make_cfg(*common, "pruning.sparsity=0.5"))["run_id"]).data
    assert lenet5.tags["dense_cached"] == "True"
    assert lenet5.metrics["acc/dense"] == distilled.metrics["acc/teacher"]
    assert distilled.metrics["acc/teacher"] > distilled.metrics["acc/dense"]  # LeNet-5 beats LeNet-300-100 here


def test_variational_dropout_trains_once_and_every_target_is_met(make_cfg, tiny_overrides, store_uri, shared_dense):
    """pruning.importance=variational trains sparse VD from the dense model once (its epochs logged), caches it
    beside the dense model, and every target then prunes its θ by −log α exactly, masks held; a longer fit of
    the same recipe continues the finished one instead of starting over."""
    common = (
        *tiny_overrides,
        *TRAINED,
        shared_dense,
        "data.val_size=1000",
        "pruning.importance=variational",
        "pruning.threshold=global",
        "pruning.variational.epochs=2",
        "pruning.variational.anneal_epochs=1",
    )
    runs = [experiment.run(make_cfg(*common, f"pruning.sparsity={s}")) for s in (0.9, 0.5)]
    client = MlflowClient(tracking_uri=store_uri)
    logged = [client.get_run(r["run_id"]).data for r in runs]
    assert [d.tags["variational_cached"] for d in logged] == ["False", "True"]
    assert len(client.get_metric_history(runs[0]["run_id"], "variational/val_acc")) == 2
    assert logged[0].metrics["variational/noise_share"] == logged[1].metrics["variational/noise_share"]
    cache_dir = Path(shared_dense.split("=", 1)[1])
    assert list(cache_dir.glob("variational-*.pt")) and not list(cache_dir.glob("*.partial.pt*"))  # checkpoint gone
    assert len(list(cache_dir.glob("variational-lineage-*-e2.fit.pt"))) == 1  # the finished fit's end state
    longer = experiment.run(make_cfg(*common, "pruning.sparsity=0.9", "pruning.variational.epochs=3"))
    history = client.get_metric_history(longer["run_id"], "variational/val_acc")
    assert client.get_run(longer["run_id"]).data.tags["variational_continued_from"] == "2"
    assert [m.step for m in history] == [2]  # only its third epoch was trained
    logged.append(client.get_run(longer["run_id"]).data)
    paper = ("pruning.variational.train_clip=true", "pruning.variational.lr_decay=linear")  # the paper's code
    clipped = client.get_run(experiment.run(make_cfg(*common, *paper, "pruning.sparsity=0.9"))["run_id"]).data
    assert clipped.tags["variational_cached"] == "False" and "variational_continued_from" not in clipped.tags
    logged.append(clipped)
    for target, data in zip((0.9, 0.5, 0.9, 0.9), logged, strict=True):
        metrics = data.metrics
        assert metrics["params/weights_nonzero"] == round((1 - target) * metrics["params/weights_total"])
        assert WELL_ABOVE_CHANCE < metrics["acc/finetuned"] <= 1.0
    with pytest.raises(ConfigError, match=r"pruning\.variational=.*epochs must be an integer"):
        experiment.run(make_cfg(*common, "pruning.variational.epochs=0"))
