"""Shared fixtures: config composition, a throwaway MLflow store, tiny real-MNIST overrides."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

from prunesweep.bench.settings import point_config

REPO = Path(__file__).resolve().parents[1]
#: Where MLflow puts artifacts of an experiment made without a location: the working directory, here the checkout.
STRAY_STORES = ("mlruns", "mlartifacts")


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_checkout() -> Iterator[None]:
    """Tests write under their tmp_path only; an experiment created without an artifact location would fill
    ./mlruns of the checkout (it did, from two tests, until 2026-11-30)."""
    before = {name for name in STRAY_STORES if (REPO / name).exists()}
    yield
    made = {name for name in STRAY_STORES if (REPO / name).exists()} - before
    assert not made, f"the tests wrote {sorted(made)} into the checkout {REPO}"


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def tiny_overrides(tmp_path: Path, store_uri: str) -> list[str]:
    """A real point on real MNIST that runs in seconds: 512 training images, one epoch each."""
    return [
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"tracking.uri={store_uri}",
        "data.train_subset=512",
        "train.epochs=1",
        "finetune.epochs=1",
        "trainer.enable_progress_bar=false",
    ]


@pytest.fixture
def sweep_command(tmp_path: Path) -> Callable[..., list[str]]:
    """`prunesweep +sweep=smoke` on 512 real MNIST images, writing only under tmp_path (store given by caller)."""

    def build(*overrides: str, sweep_dir: str = "sweep") -> list[str]:
        return [
            sys.executable, "-m", "prunesweep.cli", "+sweep=smoke",
            f"paths.output_dir={tmp_path / 'outputs'}",
            f"hydra.sweep.dir={tmp_path / sweep_dir}",
            "data.train_subset=512",
            "trainer.enable_progress_bar=false",
            *overrides,
        ]  # fmt: skip

    return build


@pytest.fixture
def smoke_sweep_command(sweep_command: Callable[..., list[str]], store_uri: str) -> Callable[..., list[str]]:
    """The same command on the test's own SQLite store."""

    def build(*overrides: str, sweep_dir: str = "sweep") -> list[str]:
        return sweep_command(f"tracking.uri={store_uri}", *overrides, sweep_dir=sweep_dir)

    return build


@pytest.fixture
def make_cfg() -> Callable[..., DictConfig]:
    """Compose conf/config.yaml with overrides, as the `prunesweep` command would (without running it);
    the bench composes its configs with the same function."""

    def _compose(*overrides: str, hydra_cfg: bool = False) -> DictConfig:
        return point_config(*overrides, return_hydra_config=hydra_cfg)

    return _compose


_FIGURES: list[str] = []


@pytest.fixture
def report_figure() -> Callable[[str], None]:
    """Record a measured figure (e.g. runs attempted / recorded / failed) for the end-of-session summary."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _FIGURES:
        terminalreporter.section("prunesweep load and fault figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """``--doctest-modules`` would also collect each conftest.py as a module, and tests/ and tests/cluster/ both
    have one named ``conftest`` (an import clash); they hold no doctests, and pytest loads them as conftests anyway."""
    return True if collection_path.name == "conftest.py" else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _served_mlflow(root: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite store and artifacts under ``root``) on a free loopback port; its URL."""
    port, mlflow = _free_port(), str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen(
        [mlflow, "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=(root / "server.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not start: " + (root / "server.log").read_text()[-2000:])
    try:
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def serve_mlflow() -> Callable[[Path], contextlib.AbstractContextManager[str]]:
    """``with serve_mlflow(folder) as uri:`` a real `mlflow server` for as long as the block runs."""
    return _served_mlflow


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A free TCP port on 127.0.0.1."""
    return _free_port
