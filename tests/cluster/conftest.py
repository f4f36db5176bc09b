"""Session fixtures for the real cluster services (tests/cluster/cluster_services.py); the sweep
command they run is tests/conftest.py's `sweep_command`.

A missing binary skips these tests on a developer's machine, but fails them under ``CI=true``: CI installs
them (.ci/run), and a cluster test that quietly skips there would prove nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
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
