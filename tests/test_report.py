"""prunesweep-report on a store it did not create: the table, the curves, the summary metrics."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from prunesweep.report import aggregate, find_parent, load_points, log_sweep_report, main, summarize

DENSE = 0.99
# (granularity, threshold, target, achieved, acc_finetuned, seed)
POINTS = [
    ("unstructured", "global", 0.5, 0.499, 0.9905, 0),
    ("unstructured", "global", 0.9, 0.898, 0.9895, 0),
    ("unstructured", "global", 0.99, 0.987, 0.9700, 0),
    ("unstructured", "global", 0.5, 0.499, 0.9895, 1),
    ("channel", "layerwise", 0.5, 0.70, 0.9880, 0),
    ("channel", "layerwise", 0.9, 0.97, 0.9500, 0),
]


def _artifacts(tmp_path: Path) -> str:
    """Artifacts under the test's folder: an experiment made without a location writes to ./mlruns of the CWD."""
    return (tmp_path / "mlartifacts").as_uri()


@pytest.fixture
def built_store(store_uri: str, tmp_path: Path) -> tuple[MlflowClient, str, str]:
    """A sweep written with plain MLflow calls, the way any other tool could have written it."""
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.create_experiment("elsewhere", artifact_location=_artifacts(tmp_path))
    parent = client.create_run(experiment_id, tags={"prunesweep_role": "parent", "sweep_id": "sweep-abc"})
    for granularity, threshold, target, achieved, acc, seed in POINTS:
        run = client.create_run(
            experiment_id,
            run_name=f"{granularity}-{threshold}-s{target:.2f}-seed{seed}",
            tags={
                "mlflow.parentRunId": parent.info.run_id,
                "granularity": granularity,
                "threshold": threshold,
                "sparsity_target": str(target),
                "seed": str(seed),
            },
        )
        for key, value in {
            "acc/dense": DENSE,
            "acc/pruned": acc - 0.05,
            "acc/finetuned": acc,
            "sparsity/achieved": achieved,
            "flops/dense": 2.3e6,
            "flops/remaining": 2.3e6 * (1 - achieved),
        }.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FINISHED")
    failed = client.create_run(
        experiment_id,
        tags={
            "mlflow.parentRunId": parent.info.run_id,
            "granularity": "channel",
            "threshold": "global",
            "sparsity_target": "0.5",
            "error": "boom",
        },
    )
    client.set_terminated(failed.info.run_id, "FAILED")
    return client, experiment_id, parent.info.run_id


def test_points_table_and_summary(built_store):
    client, experiment_id, parent = built_store
    points = load_points(client, experiment_id, parent)
    assert len(points) == len(POINTS) + 1
    assert (points["status"] == "FAILED").sum() == 1
    assert points.loc[points["status"] == "FAILED", "error"].item() == "boom"
    table = summarize(points).set_index(["granularity", "threshold"])
    unstructured = table.loc[("unstructured", "global")]
    # seeds averaged at s=0.5: (0.9905 + 0.9895) / 2 = 0.99 → within 0.1 points; 0.9895 at 0.898 also within
    assert unstructured["max_sparsity_within_0.1"] == pytest.approx(0.898)
    assert unstructured["max_sparsity_within_1.0"] == pytest.approx(0.898)  # 0.97 is 2 points below
    assert unstructured["points"] == 3
    channel = table.loc[("channel", "layerwise")]
    assert channel["max_sparsity_within_0.1"] == 0.0  # 0.988 is 0.2 points below dense
    assert channel["max_sparsity_within_0.5"] == pytest.approx(0.70)
    # trapezoids from the dense point (0, 0.99) through (0.70, 0.988) to (0.97, 0.95)
    expected_auc = 0.70 * (0.99 + 0.988) / 2 + (0.97 - 0.70) * (0.988 + 0.95) / 2
    assert channel["auc"] == pytest.approx(expected_auc)


def test_report_command_logs_curves_and_is_safe_to_rerun(built_store, store_uri, tmp_path: Path, capsys):
    client, experiment_id, parent = built_store
    assert find_parent(client, "sweep-abc", "elsewhere") == (experiment_id, parent)
    assert find_parent(client, "elsewhere", "prunesweep") == (experiment_id, parent)
    for _ in range(3):
        main(
            [
                "sweep-abc",
                "--tracking-uri",
                store_uri,
                "--experiment",
                "elsewhere",
                "--out",
                str(tmp_path / "fig"),
            ]
        )
    out = capsys.readouterr().out
    assert "unstructured-global-s0.90-seed0" in out and "FAILED" in out
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"acc_vs_sparsity.png", "acc_vs_flops.png", "report"} <= artifacts
    report = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/points.csv", "report/points.json", "report/summary.csv"} <= report
    history = client.get_metric_history(parent, "curve/unstructured/global/acc_finetuned")
    steps = sorted({(m.step, round(m.value, 6)) for m in history})
    assert steps == [(500, 0.99), (900, 0.9895), (990, 0.97)]
    # three reports, yet every curve and summary history holds one point per step
    for key in client.get_run(parent).data.metrics:
        steps_logged = [m.step for m in client.get_metric_history(parent, key)]
        assert len(steps_logged) == len(set(steps_logged)), key
    assert (tmp_path / "fig" / "acc_vs_sparsity.png").stat().st_size > 10_000
    written = pd.read_csv(tmp_path / "fig" / "points.csv")
    assert len(written) == len(POINTS) + 1


def test_series_split_by_what_the_sweep_varies(store_uri, tmp_path: Path):
    """Two importances in one sweep are two curves, not one curve averaged as if they were seeds."""
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.create_experiment("prunesweep", artifact_location=_artifacts(tmp_path))
    parent = client.create_run(experiment_id, tags={"prunesweep_role": "parent", "sweep_id": "sweep-imp"})
    for importance, acc in (("l1", 0.99), ("taylor", 0.95)):
        tags = {"granularity": "unstructured", "threshold": "global", "importance": importance, "model": "lenet5",
                "schedule": "oneshot", "sparsity_target": "0.9", "seed": "0"}  # fmt: skip
        run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent.info.run_id, **tags})
        for key, value in {
            "acc/dense": 0.99,
            "acc/pruned": 0.5,
            "acc/finetuned": acc,
            "sparsity/achieved": 0.9,
        }.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FINISHED")
    log_sweep_report(client, experiment_id, parent.info.run_id)
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert metrics["curve/unstructured/global/l1/acc_finetuned"] == pytest.approx(0.99)
    assert metrics["curve/unstructured/global/taylor/acc_finetuned"] == pytest.approx(0.95)


def test_by_target_table_pairs_each_seed_with_its_own_dense(store_uri, tmp_path: Path):
    """The results table: mean over seeds, drop paired per seed, speedup and per-layer sparsity carried."""
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.create_experiment("prunesweep", artifact_location=_artifacts(tmp_path))
    parent = client.create_run(experiment_id, tags={"prunesweep_role": "parent", "sweep_id": "sweep-seeds"})
    # (seed, dense, finetuned, fc1 sparsity, pruned latency); seed 1's first run is superseded by a rerun
    runs = (
        (0, 0.9930, 0.9925, 0.99, 2.0, 1500),
        (1, 0.9910, 0.9800, 0.50, 9.0, 9000),
        (1, 0.9910, 0.9900, 0.98, 4.0, 1600),
    )
    for seed, dense, acc, fc1, latency, weights in runs:
        tags = {"granularity": "unstructured", "threshold": "sensitivity", "sparsity_target": "0.99", "seed": str(seed)}
        run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent.info.run_id, **tags})
        for key, value in {
            "acc/dense": dense,
            "acc/pruned": 0.5,
            "acc/finetuned": acc,
            "sparsity/achieved": 0.985,
            "sparsity/target": 0.99,
            "sparsity/fc1": fc1,
            "latency/dense_ms": 8.0,
            "latency/pruned_ms": latency,
            "params/weights_total": 430_500,
            "params/weights_nonzero": weights,
            "sparsity/weights": 1 - weights / 430_500,
        }.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FINISHED")
    log_sweep_report(client, experiment_id, parent.info.run_id, out_dir=tmp_path)
    table = aggregate(load_points(client, experiment_id, parent.info.run_id))
    row = table.iloc[0]
    assert len(table) == 1 and row["seeds"] == 2  # the rerun replaced seed 1's first run, not added to it
    assert row["drop"] == pytest.approx((0.05 + 0.10) / 2)  # points, each seed against its own dense
    assert row["drop_std"] == pytest.approx(pd.Series([0.05, 0.10]).std())
    assert row["error_pct"] == pytest.approx(100 * (1 - 0.99125))
    assert row["compression"] == pytest.approx(1 / 0.015)
    # the papers' basis: weights only, kept weights averaged over the two seeds (the rerun's 1600, not 9000)
    assert row["weights_nonzero"] == pytest.approx(1550)
    assert row["compression_weights"] == pytest.approx(430_500 / 1550)
    assert row["speedup"] == pytest.approx((4.0 + 2.0) / 2)
    assert row["layer_sparsity/fc1"] == pytest.approx(0.985)
    assert "layer_sparsity/target" not in table  # the target is not a layer
    assert "layer_sparsity/weights" not in table  # nor is the weights-only sparsity
    written = pd.read_csv(tmp_path / "by_target.csv")
    assert written["drop"].item() == pytest.approx(row["drop"])
    assert "report/by_target.csv" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_distilled_points_are_their_own_series(store_uri, tmp_path: Path):
    """The same target with and without distillation is two rows, told apart by the logged param."""
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.create_experiment("prunesweep", artifact_location=_artifacts(tmp_path))
    parent = client.create_run(experiment_id, tags={"prunesweep_role": "parent", "sweep_id": "sweep-kd"})
    for weight, acc in (("0.0", 0.97), ("0.7", 0.99)):
        tags = {"granularity": "unstructured", "threshold": "global", "sparsity_target": "0.99", "seed": "0"}
        run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent.info.run_id, **tags})
        client.log_param(run.info.run_id, "finetune.distill.weight", weight)
        for key, value in {"acc/dense": 0.99, "acc/finetuned": acc, "sparsity/achieved": 0.99}.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FINISHED")
    table = aggregate(load_points(client, experiment_id, parent.info.run_id))
    assert dict(zip(table["distill"], table["acc_finetuned"], strict=True)) == {"off": 0.97, "distill0.7": 0.99}
