"""The shared store of a cluster: a real ``mlflow server`` on a real PostgreSQL, artifacts served over HTTP."""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from prunesweep.tracking.datasets import dataset_inputs, log_inputs_racing

pytestmark = pytest.mark.slow

WRITERS = 16
STEPS = 20
#: Three tiny splits, the attributes a datamodule's dataset inputs are read from.
SPLIT_TENSORS = {
    f"{prefix}_{split}": tensor
    for split, size in (("train", 8), ("val", 4), ("test", 6))
    for prefix, tensor in (("x", torch.zeros(size, 1, 2, 2)), ("y", torch.arange(size) % 2))
}


def _write_one(url: str, experiment_id: str, index: int) -> str:
    """One writer, in its own client as a worker on another machine would: a run, metrics, an artifact."""
    client = MlflowClient(tracking_uri=url)
    run = client.create_run(experiment_id, run_name=f"writer-{index:02d}", tags={"writer": str(index)})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (step + 1), now, step) for step in range(STEPS)])
    client.log_metric(run_id, "acc", index / 100)
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "payload.bin"
        payload.write_bytes(hashlib.sha256(str(index).encode()).digest() * 4096)
        client.log_artifact(run_id, str(payload), "data")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_sixteen_concurrent_writers_lose_nothing(tracking_server, report_figure):
    client = MlflowClient(tracking_uri=tracking_server)
    experiment_id = client.create_experiment("concurrent-writers")
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        futures = [pool.submit(_write_one, tracking_server, experiment_id, i) for i in range(WRITERS)]
        errors = [f.exception() for f in futures if f.exception() is not None]
    elapsed = time.monotonic() - start
    assert errors == []

    runs = client.search_runs([experiment_id], max_results=100)
    writers = sorted(int(r.data.tags["writer"]) for r in runs)
    assert writers == list(range(WRITERS)), "every writer exactly once: no run lost, none duplicated"
    complete = 0
    for run in runs:
        index = int(run.data.tags["writer"])
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(STEPS))
        assert run.data.metrics["acc"] == pytest.approx(index / 100)
        assert run.info.status == "FINISHED"
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run.info.run_id, "data/payload.bin", tmp)
            assert Path(local).read_bytes() == hashlib.sha256(str(index).encode()).digest() * 4096
        complete += 1
    report_figure(
        f"mlflow server on PostgreSQL: {WRITERS} concurrent writers, {complete}/{WRITERS} runs complete "
        f"({STEPS + 1} metric points and a 128 KiB artifact each), 0 duplicates, {len(errors)} errors, "
        f"{elapsed:.1f} s"
    )


def _log_same_dataset(url: str, experiment_id: str, index: int, start: threading.Barrier) -> list[str]:
    """One point's dataset inputs, logged the moment every writer is ready: all of them race for one new dataset."""
    client = MlflowClient(tracking_uri=url)
    run_id = client.create_run(experiment_id, run_name=f"point-{index:02d}").info.run_id
    inputs = dataset_inputs(SimpleNamespace(**SPLIT_TENSORS), "racing")
    start.wait(timeout=60)
    log_inputs_racing(client, run_id, inputs)
    return sorted(i.dataset.name for i in client.get_run(run_id).inputs.dataset_inputs)


def test_points_that_log_the_same_new_dataset_at_once_all_get_it(tracking_server):
    """CI saw a SLURM point fail here: MLflow inserts a new dataset after looking it up, so parallel points that
    log the same splits first race, and the losers hit the key (PostgreSQL UniqueViolation). Every point keeps its
    inputs, and the store holds each split once."""
    client = MlflowClient(tracking_uri=tracking_server)
    experiment_id = client.create_experiment("racing-datasets")
    start = threading.Barrier(WRITERS)
    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        futures = [pool.submit(_log_same_dataset, tracking_server, experiment_id, i, start) for i in range(WRITERS)]
        logged = [f.result(timeout=120) for f in futures]
    assert logged == [["racing-test", "racing-train", "racing-validation"]] * WRITERS
    runs = client.search_runs([experiment_id], max_results=100)
    digests = {i.dataset.digest for r in runs for i in r.inputs.dataset_inputs}
    assert len(digests) == 3, "one dataset per split, shared by every run"
