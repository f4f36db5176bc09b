"""Helpers of the cluster tests: required binaries, the environment of launched processes, reading sweeps back."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"


def require(*binaries: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None and not Path(b).is_file()]
    if not missing:
        return
    message = f"missing {', '.join(missing)} (install: apt-get install slurm-wlm munge postgresql; see .ci/run)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_root(what: str) -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} needs root (it writes /etc/slurm and starts daemons)")
    pytest.skip(f"{what} needs root")


# Ray turns token authentication on for a new cluster as soon as ~/.ray/auth_token exists (any earlier
# `ray get-auth-token --generate` leaves one), and then refuses clients without it. The test clusters live on
# 127.0.0.1 only, so they run without tokens, whatever an earlier session left in the home folder.
RAY_NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of every process a test launches: this checkout's code first on the path."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **RAY_NO_TOKEN, **extra}


def run_timed(command: list[str], env: dict[str, str], timeout_s: int = 600) -> tuple[float, str]:
    """Run a sweep; it must exit 0. Returns (wall seconds, combined output)."""
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    return time.monotonic() - start, output


def sweep_runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    """(parents, children) of an experiment; children are the runs with a parent."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("prunesweep_role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def unfinished(children: list) -> dict[str, str]:
    """{run name: status and error tag} of the children that did not finish: what a failed assertion shows."""
    return {
        c.info.run_name: f"{c.info.status}: {c.data.tags.get('error', 'no error tag')}"
        for c in children
        if c.info.status != "FINISHED"
    }


def job_errors(sweep_dir: Path, lines: int = 40) -> dict[str, str]:
    """{log file: its last lines} for every submitit job log under ``sweep_dir`` (stdout, where a point's failure
    line goes, and stderr) that holds an error."""
    found = {}
    for path in sorted(sweep_dir.glob(".submitit/**/*_log.*")):
        text = path.read_text(errors="replace")
        if "Traceback" in text or "Error" in text or "FAILED" in text:
            found[path.name] = "\n".join(text.splitlines()[-lines:])
    return found


def head_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    return out.stdout.strip()
