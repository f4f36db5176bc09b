"""Content-addressed dense checkpoints: train once per (model, data, training recipe, seed), reuse after.

A sweep of N points costs one dense training plus N fine-tunes. Parallel jobs that need the same
dense model serialise on a file lock: the first trains and saves, the others wait and load.
Every file is written to a temporary name and renamed, and verified by its SHA-256 when read, so a
killed job or a corrupted file leads to retraining, never to a half-read model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import nn


def dense_or_train(
    cache_dir: str | Path,
    key: str,
    model: nn.Module,
    train: Callable[[], None],
    log: Callable[[str], None] = print,
    what: str = "dense model",
) -> bool:
    """Load the cached dense weights for ``key`` into ``model``, or call ``train()`` and cache the result.

    Returns True when it trained, False when it loaded. ``what`` names the model in the log lines.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.pt"
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"{what} {key}: another job is training it; waiting to load its result")
        lock.acquire()
    try:
        if path.exists():
            state = load_verified(path)
            if state is not None:
                model.load_state_dict(state)
                log(f"{what} {key}: loaded from {path}")
                return False
            log(f"{what} {key}: cached file {path} failed its checksum; retraining and replacing it")
        log(f"{what} {key}: training (cache miss)")
        train()
        save_verified(model.state_dict(), path)
        return True
    finally:
        lock.release()


def json_or_compute(
    cache_dir: str | Path,
    key: str,
    compute: Callable[[], dict[str, Any]],
    log: Callable[[str], None] = print,
    what: str = "result",
) -> tuple[dict[str, Any], bool]:
    """The cached JSON object for ``key``, or ``compute()`` cached now; ``(object, computed)``.

    Same guarantees as :func:`dense_or_train`: one computation under a file lock, atomic writes, SHA-256
    checked reads (a bad file is recomputed and replaced).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.json"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            payload = _read_verified(path)
            if payload is not None:
                log(f"{what} {key}: loaded from {path}")
                return json.loads(payload), False
            log(f"{what} {key}: cached file {path} failed its checksum; recomputing")
        value = compute()
        _write_verified(path, json.dumps(value).encode())
        return value, True


def save_verified(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` and a ``.sha256`` sidecar, each atomically (temp file + rename)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _write_verified(path, buffer.getvalue())


def load_verified(path: Path) -> dict[str, torch.Tensor] | None:
    """The state dict at ``path`` if its SHA-256 matches the sidecar, else None."""
    payload = _read_verified(path)
    if payload is None:
        return None
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def discard(path: Path) -> None:
    """Remove ``path`` and its sidecar, if there (a checkpoint that served its purpose)."""
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


def _write_verified(path: Path, payload: bytes) -> None:
    _atomic_write(path, payload)
    _atomic_write(_sidecar(path), hashlib.sha256(payload).hexdigest().encode())


def _read_verified(path: Path) -> bytes | None:
    """The bytes at ``path`` if they match their ``.sha256`` sidecar; None if either is missing or they differ."""
    try:
        payload = path.read_bytes()
        expected = _sidecar(path).read_text().strip()
    except OSError:
        return None
    return payload if hashlib.sha256(payload).hexdigest() == expected else None


def _sidecar(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".sha256")


def _atomic_write(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
