"""The shared store of a cluster: a real ``mlflow server`` on a real PostgreSQL, artifacts served over HTTP."""

from __future__ import annotations

import hashlib
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

WRITERS = 16
STEPS = 20


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
