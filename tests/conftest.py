"""Shared fixtures: config composition, a throwaway MLflow store, tiny real-MNIST overrides."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from prunesweep.bench.settings import point_config

REPO = Path(__file__).resolve().parents[1]


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
def smoke_sweep_command(tmp_path: Path, store_uri: str) -> Callable[..., list[str]]:
    """Builds the `prunesweep +sweep=smoke` command line on 512 real MNIST images, writing only under tmp_path."""

    def build(*overrides: str, sweep_dir: str = "sweep") -> list[str]:
        return [
            sys.executable, "-m", "prunesweep.cli", "+sweep=smoke",
            f"tracking.uri={store_uri}",
            f"paths.output_dir={tmp_path / 'outputs'}",
            f"hydra.sweep.dir={tmp_path / sweep_dir}",
            "data.train_subset=512",
            "trainer.enable_progress_bar=false",
            *overrides,
        ]  # fmt: skip

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
