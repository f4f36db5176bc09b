"""The smoke sweep through ``sbatch`` on a real single-node SLURM, tracked on the shared server."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections import Counter

import pytest
from cluster_helpers import head_commit, run_timed, sweep_runs, worker_env
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_smoke_sweep_on_slurm(slurm_cluster, tracking_server, sweep_command, tmp_path, report_figure):
    experiment = "slurm-smoke"
    command = sweep_command(
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=20",
        f"tracking.uri={tracking_server}",
        f"tracking.experiment={experiment}",
    )
    elapsed, output = run_timed(command, worker_env())

    client = MlflowClient(tracking_uri=tracking_server)
    parents, children = sweep_runs(client, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["git_commit"] for c in children} == {head_commit()}, "the jobs ran this checkout's code"
    assert "config.yaml" in {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert not (tmp_path / "outputs" / "mlartifacts").exists(), "artifacts went to the server, not a local folder"

    # Slurm's own record: every job it ran for the sweep ended COMPLETED (submitit submits one array job).
    states = slurm_cluster.completed_jobs()
    assert len(states) >= 8, states
    assert set(states.values()) == {"COMPLETED"}, states
    report_figure(
        f"SLURM (1 node, 2 CPUs, cpus_per_task=1): smoke sweep 8/8 FINISHED in {elapsed:.0f} s; "
        f"Slurm recorded {len(states)} jobs COMPLETED; submitit's sacct warnings: {output.count('Bypassing sacct')}"
    )


def _running_children(client: MlflowClient, experiment: str) -> list[str]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")
    return [r.info.run_id for r in runs if "mlflow.parentRunId" in r.data.tags]


def _slurm_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split("\n") if out.stdout.strip() else []


def test_scancel_mid_point_then_relaunch_finishes_every_point_once(
    slurm_cluster, tracking_server, sweep_command, report_figure
):
    experiment = "slurm-fault"
    command = sweep_command(
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=20",
        f"tracking.uri={tracking_server}",
        f"tracking.experiment={experiment}",
        "pruning.threshold=global",
        "pruning.sparsity=0.5",
        "finetune.epochs=4",  # long enough points to cancel one in the middle
    )  # 2 points: unstructured and channel
    client = MlflowClient(tracking_uri=tracking_server)
    env = worker_env()
    launch = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        victims: list[str] = []
        deadline = time.monotonic() + 300
        while not victims and time.monotonic() < deadline and launch.poll() is None:
            victims = _running_children(client, experiment)
            time.sleep(0.5)
        assert victims, "no point started"
        time.sleep(1)  # inside the point
        array_ids = {line.split("_")[0] for line in _slurm_jobs() if line}
        # The sweep's array job, as a user cancels it: SIGTERM, then SIGKILL after slurm.conf's KillWait.
        subprocess.run(["scancel", *array_ids], check=True, timeout=30)
        deadline = time.monotonic() + 60
        while _slurm_jobs() and time.monotonic() < deadline:
            time.sleep(1)
        assert not _slurm_jobs(), "Slurm ended the cancelled jobs"
        # Without accounting (slurmdbd) submitit cannot see CANCELLED and would poll for ever: the user stops it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            launch.wait(timeout=20)
    finally:
        if launch.poll() is None:
            launch.send_signal(signal.SIGINT)
            try:
                launch.wait(timeout=30)
            except subprocess.TimeoutExpired:
                launch.kill()
                launch.wait(timeout=30)

    elapsed, _ = run_timed(command, env)
    _, children = sweep_runs(client, experiment)
    finished = Counter(c.data.tags["config_hash"] for c in children if c.info.status == "FINISHED")
    assert len(finished) == 2 and set(finished.values()) == {1}, finished
    reasons = []
    for run_id in victims:
        killed = client.get_run(run_id)
        # Lightning turns scancel's SIGTERM into SIGTERMException, and the point records it; a point killed
        # outright is marked "interrupted" by the relaunch. Either way: FAILED, with its reason.
        assert killed.info.status == "FAILED" and killed.data.tags.get("error"), killed.data.tags
        reasons.append(killed.data.tags["error"].split(":")[0])
    report_figure(
        f"SLURM scancel mid-point: launch exit {launch.returncode}, relaunch {elapsed:.0f} s; "
        f"2/2 points FINISHED once each, {len(victims)} killed attempt(s) FAILED with a reason ({', '.join(reasons)})"
    )
