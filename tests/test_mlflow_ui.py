"""MLflow as its UI and registry expect (issue #13), over the REST API of a real `mlflow server`.

One small sweep (an unstructured and a channel point on 512 real MNIST images) is logged to the server; the
tests then read it back as the UI would: experiment kind, logged models with linked metrics, dataset inputs,
descriptions; load the models (pytorch, pyfunc, ``models:/``) and the ONNX exports and predict the test set;
report three times, register twice, and reproduce a point.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow.tracking import MlflowClient

from prunesweep.experiment import setup_data

pytestmark = pytest.mark.slow

REGISTERED = "lenet5-pruned"


@pytest.fixture(scope="module")
def server(tmp_path_factory, serve_mlflow) -> str:
    """A real `mlflow server` on a free loopback port for this module, stopped after it."""
    with serve_mlflow(tmp_path_factory.mktemp("ui-server")) as uri:
        yield uri


def _python(*argv: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory) -> dict:
    """A two-point multirun (unstructured and channel, 50%) logged to the server: ids of the sweep's runs."""
    root = tmp_path_factory.mktemp("ui-sweep")
    proc = _python(
        "-m", "prunesweep.cli", "-m", "pruning.granularity=unstructured,channel", "pruning.sparsity=0.5",
        f"tracking.uri={server}", f"paths.output_dir={root / 'outputs'}", f"hydra.sweep.dir={root / 'sweep'}",
        "data.train_subset=512", "train.epochs=1", "finetune.epochs=1", "trainer.enable_progress_bar=false",
    )  # fmt: skip
    started = re.search(r"\[prunesweep\] sweep (sweep-\w+): (\d+) points; parent run (\w+)", proc.stdout)
    assert started, proc.stdout[-2000:]
    client = MlflowClient(tracking_uri=server)
    experiment_id = client.get_experiment_by_name("prunesweep").experiment_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{started.group(3)}'")
    return {
        "uri": server,
        "client": client,
        "experiment_id": experiment_id,
        "sweep_id": started.group(1),
        "parent": started.group(3),
        "children": {r.data.tags["granularity"]: r for r in children},
        "root": root,
    }


def test_experiment_opens_as_model_training(sweep):
    experiment = sweep["client"].get_experiment(sweep["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_one_logged_model_per_finished_point_with_linked_metrics(sweep):
    client, children = sweep["client"], sweep["children"]
    assert sorted(children) == ["channel", "unstructured"]
    assert all(r.info.status == "FINISHED" for r in children.values())
    models = client.search_logged_models([sweep["experiment_id"]])
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in children.values())
    for model in models:
        linked = {m.key: m.value for m in model.metrics}
        run = client.get_run(model.source_run_id)
        assert run.data.tags["model_id"] == model.model_id
        for key in ("acc/finetuned", "sparsity/achieved", "flops/remaining", "latency/pruned_ms", "params/nonzero"):
            assert linked[key] == pytest.approx(run.data.metrics[key]), key


def test_children_have_dataset_inputs_and_a_description(sweep):
    for run in sweep["children"].values():
        inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
        assert sorted(inputs) == ["mnist-test", "mnist-train", "mnist-validation"]
        assert {i.tags[0].value for i in inputs.values()} == {"train", "validation", "test"}
        assert '"num_rows": 512' in inputs["mnist-train"].dataset.profile
        assert all(len(i.dataset.digest) == 16 for i in inputs.values())
        note = run.data.tags["mlflow.note.content"]
        assert "remaining" in note and "fc1" in note and "fine-tuned" in note


def test_parent_description_has_the_command_and_summary(sweep):
    note = sweep["client"].get_run(sweep["parent"]).data.tags["mlflow.note.content"]
    assert "pruning.granularity=unstructured,channel" in note
    assert "max_sparsity_within_0.5" in note and "2 finished" in note


def _test_set(sweep) -> tuple[np.ndarray, np.ndarray]:
    from prunesweep.bench.settings import point_config

    cfg = point_config(f"paths.output_dir={sweep['root'] / 'outputs'}", "data.train_subset=512")
    data = setup_data(cfg, log_fn=lambda _: None)
    return data.x_test.numpy().astype(np.float32), data.y_test.numpy()


@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_logged_model_loads_and_reproduces_accuracy(sweep, granularity):
    run = sweep["children"][granularity]
    model_id = run.data.tags["model_id"]
    x, y = _test_set(sweep)
    mlflow.set_tracking_uri(sweep["uri"])  # models:/ URIs resolve through MLflow's global tracking URI
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{model_id}")
        module = mlflow.pytorch.load_model(f"models:/{model_id}")
    finally:
        mlflow.set_tracking_uri("")
    logits = np.asarray(pyfunc.predict(x))
    expected = run.data.metrics["acc/finetuned"]
    assert float((logits.argmax(1) == y).mean()) == pytest.approx(expected, abs=1e-4)
    with torch.no_grad():
        torch_logits = module(torch.from_numpy(x)).numpy()
    assert float((torch_logits.argmax(1) == y).mean()) == pytest.approx(expected, abs=1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = sweep["client"].download_artifacts(run.info.run_id, "model.onnx", tmp)
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        onnx_logits = session.run(None, {"input": x[:1000]})[0]
    assert float(np.abs(onnx_logits - torch_logits[:1000]).max()) <= 1e-4
    assert run.data.metrics["onnx/max_abs_diff"] <= 1e-4
    assert run.data.metrics["size/onnx_bytes"] > 1000
    assert run.data.metrics["latency/onnx_ms_b1"] > 0 and run.data.metrics["latency/onnx_ms_b256"] > 0
    artifacts = {a.path for a in sweep["client"].list_artifacts(run.info.run_id, "model")}
    assert ("model/sparse_state.pt" in artifacts) == (granularity == "unstructured")
    if granularity == "channel":  # the logged model is the physically smaller one
        assert sum(p.numel() for p in module.parameters()) == run.data.metrics["params/nonzero"]


def test_report_three_times_then_register_twice(sweep):
    client, parent = sweep["client"], sweep["parent"]
    for _ in range(2):  # the sweep's end reported once already
        _python("-m", "prunesweep.report", sweep["sweep_id"], "--tracking-uri", sweep["uri"])
    curves = [k for k in client.get_run(parent).data.metrics if k.startswith("curve/")]
    assert len(curves) == 2
    for key in curves:
        steps = Counter(m.step for m in client.get_metric_history(parent, key))
        assert set(steps.values()) == {1}, (key, steps)

    register = ["-m", "prunesweep.report", sweep["sweep_id"], "--tracking-uri", sweep["uri"]]
    first = _python(*register, "--register", REGISTERED, "--tolerance", "100")  # every point qualifies
    assert first.stdout.count("(registered)") == 2
    second = _python(*register, "--register", REGISTERED, "--tolerance", "100")
    assert second.stdout.count("(already registered)") == 2
    versions = client.search_model_versions(f"name = '{REGISTERED}'")
    assert len(versions) == 2
    model = client.get_registered_model(REGISTERED)
    threshold = sweep["children"]["channel"].data.tags["threshold"]
    assert sorted(model.aliases) == [f"channel-{threshold}", f"unstructured-{threshold}"]
    by_alias = client.get_model_version_by_alias(REGISTERED, f"channel-{threshold}")
    # the version's source is the logged model (its model_id field is not sent back over REST)
    assert by_alias.source == f"models:/{sweep['children']['channel'].data.tags['model_id']}"


def test_points_record_the_instruction_set_their_floats_depend_on(sweep):
    for run in sweep["children"].values():
        assert run.data.tags["cpu.capability"] == torch.backends.cpu.get_cpu_capability()
        assert run.data.tags["cpu.model"] not in ("", "unknown")


def test_reproduce_a_finished_point(sweep):
    source = sweep["children"]["channel"]
    proc = _python("-m", "prunesweep.reproduce", source.info.run_id, "--tracking-uri", sweep["uri"])
    assert "exact ones differing: none" in proc.stdout
    client = sweep["client"]
    new = client.search_runs([sweep["experiment_id"]], f"tags.`prunesweep.reproduces` = '{source.info.run_id}'")
    assert len(new) == 1 and new[0].info.status == "FINISHED"
    for key in ("acc/dense", "acc/pruned", "acc/finetuned", "params/nonzero"):
        assert new[0].data.metrics[key] == source.data.metrics[key], key
