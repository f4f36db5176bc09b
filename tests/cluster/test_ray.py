"""The smoke sweep on a real 2-node Ray cluster that shares no dense cache, tracked on the shared server.

Each node has its own ``PRUNESWEEP_DENSE_CACHE``, so a point placed on the node that did not train the dense
model can only get it from the server: a missing download would show up as a second dense training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cluster_services as services
import pytest
from cluster_helpers import head_commit, require, run_timed, sweep_runs, unfinished, worker_env
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_nodes(tmp_path_factory) -> Iterator[tuple[services.RayCluster, list[Path]]]:
    require(str(Path(sys.executable).with_name("ray")))  # the `[ray]` extra, in this interpreter's venv
    caches = [tmp_path_factory.mktemp("head-cache"), tmp_path_factory.mktemp("worker-cache")]
    envs = [worker_env(PRUNESWEEP_DENSE_CACHE=str(cache)) for cache in caches]
    with services.ray_cluster(envs) as cluster:
        yield cluster, caches


def _ray_command(sweep_command, address: str, server: str, experiment: str, *extra: str) -> list[str]:
    # Exactly as a user types it: no override of the plugin's ray.init beyond the address.
    return sweep_command(
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={address}",
        f"tracking.uri={server}",
        f"tracking.experiment={experiment}",
        *extra,
    )


def _dense_runs(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(f"{experiment}-dense")
    return [] if found is None else client.search_runs([found.experiment_id])


def test_smoke_sweep_on_ray_trains_one_dense_model_and_resumes(
    ray_nodes, tracking_server, sweep_command, report_figure
):
    cluster, caches = ray_nodes
    experiment = "ray-smoke"
    command = _ray_command(sweep_command, cluster.address, tracking_server, experiment)
    elapsed, _ = run_timed(command, worker_env())

    client = MlflowClient(tracking_uri=tracking_server)
    parents, children = sweep_runs(client, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8 and not unfinished(children), unfinished(children)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.data.tags["git_commit"] for c in children} == {head_commit()}, "the nodes ran this checkout's code"
    # Each point's torch threads follow the 1 CPU its Ray task was given (this machine has 2 cores).
    assert {c.data.params["threads"] for c in children} == {"1"}
    # Both nodes ran points, each with its own cache folder.
    placed = Counter(c.data.params["paths.dense_cache"] for c in children)
    assert set(placed) == {str(c) for c in caches}, placed
    # Exactly one dense training in total: one published dense run, one point that trained it.
    dense = _dense_runs(client, experiment)
    assert [(r.info.status, r.data.tags["prunesweep_role"]) for r in dense] == [("FINISHED", "dense")]
    trained = [c for c in children if c.data.tags["dense_cached"] == "False"]
    assert len(trained) == 1
    assert all(list(cache.glob("*.pt")) for cache in caches), "the other node downloaded the model into its cache"

    elapsed_again, _ = run_timed(command, worker_env())
    _, children_again = sweep_runs(client, experiment)
    assert len(children_again) == 8, "a relaunch adds no run"
    report_figure(
        f"Ray (2 nodes x 1 CPU): smoke sweep 8/8 FINISHED in {elapsed:.0f} s, "
        f"points per node {sorted(placed.values())}, "
        f"dense trainings 1; relaunch added 0 runs in {elapsed_again:.0f} s"
    )


def _running_on(client: MlflowClient, experiment: str, cache: Path) -> str | None:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")
    on_node = [r for r in runs if r.data.params.get("paths.dense_cache") == str(cache)]
    # Kill mid-point: only once its training has visibly started.
    on_node = [r for r in on_node if "mlflow.parentRunId" in r.data.tags and r.data.params]
    return on_node[0].info.run_id if on_node else None


def test_a_killed_worker_node_loses_no_point(ray_nodes, tracking_server, sweep_command, report_figure):
    """Runs last in this module: it kills the worker node. Every point still ends FINISHED exactly once."""
    cluster, caches = ray_nodes
    experiment = "ray-fault"
    command = _ray_command(sweep_command, cluster.address, tracking_server, experiment, "pruning.sparsity=0.5")
    client = MlflowClient(tracking_uri=tracking_server)
    env = worker_env()
    launch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and launch.poll() is None:
        victim = _running_on(client, experiment, caches[1])
        time.sleep(0.5)
    assert victim is not None, "no point started on the worker node"
    time.sleep(3)  # well inside the point
    os.killpg(cluster.workers[0].pid, signal.SIGKILL)
    launch.communicate(timeout=600)

    # The same command again: whatever the first launch could not finish is redone, nothing twice.
    elapsed, _ = run_timed(command, env)
    parents, children = sweep_runs(client, experiment)
    assert len(parents) == 1
    finished = Counter(c.data.tags["config_hash"] for c in children if c.info.status == "FINISHED")
    assert len(finished) == 4 and set(finished.values()) == {1}, finished
    killed = client.get_run(victim)
    assert killed.info.status == "FAILED"
    assert "interrupted" in killed.data.tags["error"]
    failed = [c for c in children if c.info.status == "FAILED"]
    report_figure(
        f"Ray worker node killed mid-point: first launch exit {launch.returncode}, relaunch {elapsed:.0f} s; "
        f"4/4 points FINISHED once each, {len(failed)} attempt(s) FAILED with a reason, "
        f"{len(children)} child runs in all"
    )
