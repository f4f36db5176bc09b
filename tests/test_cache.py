"""Dense checkpoints: trained once, reused, hash-verified, retrained when corrupted, shared under a lock."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import torch

from prunesweep.cache import dense_or_train, load_verified
from prunesweep.models import LeNet300


def _fill(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_trains_once_then_loads(tmp_path: Path):
    calls = []
    first = LeNet300()
    assert dense_or_train(tmp_path, "k", first, lambda: (calls.append(1), _fill(first, 0.5)), log=lambda m: None)
    second = LeNet300()
    assert not dense_or_train(tmp_path, "k", second, lambda: calls.append(2), log=lambda m: None)
    assert calls == [1]
    assert all(torch.equal(p, torch.full_like(p, 0.5)) for p in second.parameters())


def test_corrupted_checkpoint_is_detected_and_replaced(tmp_path: Path):
    model = LeNet300()
    dense_or_train(tmp_path, "k", model, lambda: _fill(model, 0.25), log=lambda m: None)
    path = tmp_path / "k.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert load_verified(path) is None
    messages: list[str] = []
    again = LeNet300()
    assert dense_or_train(tmp_path, "k", again, lambda: _fill(again, 0.75), log=messages.append)
    assert any("checksum" in m for m in messages)
    restored = load_verified(path)
    assert restored is not None and torch.equal(restored["fc1.weight"], torch.full((300, 784), 0.75))
    truncated = path.read_bytes()[:100]
    path.write_bytes(truncated)
    assert load_verified(path) is None
    assert not list(tmp_path.glob("*.tmp")), "no temporary files are left behind"


def _worker(cache_dir: str, results: multiprocessing.Queue) -> None:
    model = LeNet300()

    def slow_train() -> None:
        time.sleep(1.0)
        _fill(model, 1.0)

    trained = dense_or_train(cache_dir, "shared", model, slow_train, log=lambda m: None)
    results.put((trained, float(model.fc1.weight[0, 0])))


def test_two_processes_share_one_training(tmp_path: Path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_worker, args=(str(tmp_path), results)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert outcomes == [(False, 1.0), (True, 1.0)], "exactly one process trains, the other loads its result"
