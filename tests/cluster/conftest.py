"""Session fixtures for the real cluster services (tests/cluster/cluster_services.py) and the sweep command on them.

A missing binary skips these tests on a developer's machine, but fails them under ``CI=true``: CI installs
them (.ci/run), and a cluster test that quietly skips there would prove nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import cluster_services as services
from cluster_helpers import require, require_root


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    require(str(services.PG_BIN / "initdb"), str(services.PG_BIN / "pg_ctl"), "runuser")
    with services.postgres() as uri:
        yield uri


@pytest.fixture(scope="session")
def tracking_server(postgres_uri: str) -> Iterator[str]:
    """One PostgreSQL-backed ``mlflow server`` with served artifacts for the whole session."""
    with services.mlflow_server(postgres_uri) as url:
        yield url


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[services.Slurm]:
    require("munged", "slurmctld", "slurmd", "sbatch", "sinfo")
    require_root("SLURM")
    with services.slurm() as cluster:
        yield cluster


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
