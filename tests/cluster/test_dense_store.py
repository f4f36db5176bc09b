"""Dense models through the real tracking server: trained once among concurrent claimants, verified on download."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from prunesweep.tracking.dense_store import SharedDense
from prunesweep.tracking.store import open_store

pytestmark = pytest.mark.slow

CLAIMANTS = 4


def _trainer(model: nn.Module, counter: list[int], lock: threading.Lock):
    def train() -> None:
        with lock:
            counter.append(1)
        time.sleep(1.0)  # long enough for every other claimant to arrive while it trains
        with torch.no_grad():
            model.weight.fill_(0.25)
            model.bias.fill_(-1.0)

    return train


def test_concurrent_claimants_train_once_and_all_get_the_weights(tracking_server):
    experiment = "dense-claims"
    counter: list[int] = []
    lock = threading.Lock()

    def worker(_: int) -> tuple[bool, nn.Module]:
        store = open_store(tracking_server, experiment)  # one client per worker, as on separate machines
        model = nn.Linear(8, 2)
        shared = SharedDense(store, "key-claims", model, _trainer(model, counter, lock), log=lambda _: None)
        shared()
        return shared.trained, model

    with ThreadPoolExecutor(max_workers=CLAIMANTS) as pool:
        results = list(pool.map(worker, range(CLAIMANTS)))

    assert len(counter) == 1, "exactly one claimant trained"
    assert sorted(trained for trained, _ in results) == [False] * (CLAIMANTS - 1) + [True]
    for _, model in results:
        assert torch.all(model.weight == 0.25) and torch.all(model.bias == -1.0)
    client = MlflowClient(tracking_uri=tracking_server)
    dense = client.search_runs([client.get_experiment_by_name(f"{experiment}-dense").experiment_id])
    assert [r.info.status for r in dense] == ["FINISHED"], "losing claims are deleted, the winner published"
    assert dense[0].data.tags["prunesweep_role"] == "dense" and "mlflow.parentRunId" not in dense[0].data.tags


def test_a_copy_that_fails_its_checksum_is_marked_failed_and_retrained(tracking_server, tmp_path):
    experiment = "dense-tampered"
    store = open_store(tracking_server, experiment)
    first = nn.Linear(8, 2)
    SharedDense(store, "key-tampered", first, lambda: None, log=lambda _: None)()
    client = MlflowClient(tracking_uri=tracking_server)
    dense_id = client.get_experiment_by_name(f"{experiment}-dense").experiment_id
    published = client.search_runs([dense_id])[0]
    client.set_tag(published.info.run_id, "sha256", "0" * 64)  # the stored file no longer matches its hash

    counter: list[int] = []
    second = nn.Linear(8, 2)
    shared = SharedDense(store, "key-tampered", second, _trainer(second, counter, threading.Lock()), log=print)
    shared()
    assert shared.trained and counter == [1]
    assert client.get_run(published.info.run_id).info.status == "FAILED"
    assert "sha256 mismatch" in client.get_run(published.info.run_id).data.tags["error"]
    statuses = sorted(r.info.status for r in client.search_runs([dense_id]))
    assert statuses == ["FAILED", "FINISHED"]
