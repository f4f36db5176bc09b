"""The smoke sweep through ``sbatch`` on a real single-node SLURM, tracked on the shared server."""

from __future__ import annotations

import pytest
from cluster_helpers import head_commit, job_errors, run_timed, sweep_runs, unfinished, worker_env
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
    assert len(children) == 8 and not unfinished(children), (unfinished(children), job_errors(tmp_path / "sweep"))
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
