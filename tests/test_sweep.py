"""Real Hydra multiruns in subprocesses: parent and child runs, report, resume, failures, parallel jobs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

GRID = ["pruning.granularity=unstructured,channel", "pruning.sparsity=0.5,0.9"]


@pytest.fixture
def run_sweep(smoke_sweep_command):
    """Run the smoke sweep with extra overrides in a subprocess; it must exit 0."""

    def run(*overrides: str, sweep_dir: str = "sweep") -> subprocess.CompletedProcess:
        command = smoke_sweep_command(*overrides, sweep_dir=sweep_dir)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    return run


def _children(client: MlflowClient, parent_id: str) -> list:
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def _parent(client: MlflowClient) -> str:
    experiment_id = client.get_experiment_by_name("prunesweep").experiment_id
    parents = client.search_runs([experiment_id], "tags.prunesweep_role = 'parent'")
    assert len(parents) == 1
    return parents[0].info.run_id


def test_smoke_sweep_logs_children_and_a_report_then_resumes(run_sweep, tmp_path, store_uri):
    proc = run_sweep(*GRID, "pruning.threshold=global")
    assert "point 4/4" in proc.stdout, "the launching terminal shows progress"
    client = MlflowClient(tracking_uri=store_uri)
    parent = _parent(client)
    children = _children(client, parent)
    assert sorted(r.info.run_name for r in children) == [
        "channel-global-s0.50-seed0", "channel-global-s0.90-seed0",
        "unstructured-global-s0.50-seed0", "unstructured-global-s0.90-seed0",
    ]  # fmt: skip
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweep_id"].startswith("sweep-")
        for key in ("acc/dense", "acc/pruned", "acc/finetuned", "sparsity/achieved", "flops/remaining"):
            assert key in run.data.metrics
    # one dense training for the whole sweep
    assert sorted(r.data.tags["dense_cached"] for r in children) == ["False", "True", "True", "True"]

    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"acc_vs_sparsity.png", "acc_vs_flops.png", "report"} <= artifacts
    steps = {m.step for m in client.get_metric_history(parent, "curve/channel/global/acc_finetuned")}
    assert steps == {500, 900}
    assert "summary/unstructured/global/auc" in parent_run.data.metrics

    # resume: delete one finished point, launch the same sweep again: exactly that point runs again
    deleted = next(r for r in children if r.info.run_name == "channel-global-s0.90-seed0")
    client.delete_run(deleted.info.run_id)
    run_sweep(*GRID, "pruning.threshold=global", sweep_dir="sweep-again")
    assert _parent(client) == parent
    again = _children(client, parent)
    assert len(again) == 4
    assert sorted(r.info.run_name for r in again) == sorted(r.info.run_name for r in children)
    new = [r for r in again if r.info.run_id not in {c.info.run_id for c in children}]
    assert [r.info.run_name for r in new] == ["channel-global-s0.90-seed0"]


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(run_sweep, tmp_path, store_uri):
    # lr=1e12 makes the loss NaN within a few steps: a real fault, not a mock
    proc = run_sweep("train.lr=0.01,1e12", "pruning.sparsity=0.5", "pruning.granularity=unstructured",
                  "pruning.threshold=layerwise")  # fmt: skip
    client = MlflowClient(tracking_uri=store_uri)
    children = _children(client, _parent(client))
    statuses = sorted(r.info.status for r in children)
    assert statuses == ["FAILED", "FINISHED"]
    failed = next(r for r in children if r.info.status == "FAILED")
    assert "FloatingPointError" in failed.data.tags["error"]
    assert "1 failed" in proc.stdout and "1 finished" in proc.stdout
    # A serial sweep announces each point, then says how it ended: here once finished, once FAILED with the reason.
    assert "point 1/2 (elapsed" in proc.stdout and "point 2/2 (elapsed" in proc.stdout
    assert re.search(r"point [12]/2 FAILED after \d+ s \(FloatingPointError", proc.stdout), proc.stdout[-3000:]
    assert re.search(r"point [12]/2 finished in \d+ s: acc ", proc.stdout), proc.stdout[-3000:]


def test_invalid_point_stops_the_sweep_before_anything_runs(smoke_sweep_command, tmp_path):
    proc = subprocess.run(smoke_sweep_command("pruning.sparsity=0.5,1.5"), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "pruning.sparsity=1.5" in output
    assert "Nothing was run" in output
    assert "point 1/" not in output
    assert not (tmp_path / "mlflow.db").exists()


def test_two_parallel_jobs_on_one_sqlite_store_lose_nothing(run_sweep, tmp_path, store_uri, report_figure):
    proc = run_sweep(*GRID, "pruning.threshold=layerwise", "hydra/launcher=joblib",
                  "hydra.launcher.n_jobs=2")  # fmt: skip
    client = MlflowClient(tracking_uri=store_uri)
    children = _children(client, _parent(client))
    assert len(children) == 4
    assert all(r.info.status == "FINISHED" for r in children)
    assert "database is locked" not in proc.stdout + proc.stderr
    failed = sum(r.info.status != "FINISHED" for r in children)
    report_figure(f"joblib n_jobs=2 on SQLite: runs attempted 4, recorded {len(children)}, failed {failed}")


def test_submitit_local_launcher_runs_every_point(run_sweep, tmp_path, store_uri):
    """The SLURM launcher's plugin with its local executor: jobs in separate processes, one parent run."""
    run_sweep("pruning.granularity=unstructured", "pruning.sparsity=0.5,0.9",
           "pruning.threshold=global", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1")  # fmt: skip
    client = MlflowClient(tracking_uri=store_uri)
    children = _children(client, _parent(client))
    assert sorted(r.info.run_name for r in children) == [
        "unstructured-global-s0.50-seed0", "unstructured-global-s0.90-seed0"
    ]  # fmt: skip
    assert all(r.info.status == "FINISHED" for r in children)


def _plain_grid_command(tmp_path, store_uri, *overrides: str, sweep_dir: str) -> list[str]:
    """`prunesweep -m ...` without any `+sweep=` file: Hydra's sweeper params are then empty."""
    return [
        sys.executable, "-m", "prunesweep.cli", "-m",
        f"tracking.uri={store_uri}",
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"hydra.sweep.dir={tmp_path / sweep_dir}",
        "data.train_subset=512", "train.epochs=1", "finetune.epochs=1",
        *overrides,
    ]  # fmt: skip


def test_plain_grid_with_joblib_gets_a_parent_and_a_report(tmp_path, store_uri):
    """A bare `-m` grid (the first thing a Hydra user types) through joblib: one parent, every point, a report;
    the terminal shows one line per finished point, and no job's progress bar or epoch lines."""
    grid = ["pruning.granularity=unstructured", "pruning.sparsity=0.5,0.9", "pruning.threshold=global"]
    command = _plain_grid_command(tmp_path, store_uri, *grid, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                  sweep_dir="grid")  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=store_uri)
    parent = _parent(client)
    children = _children(client, parent)
    every_run = [(r.info.run_name, r.data.tags.get("mlflow.parentRunId")) for r in client.search_runs(
        [client.get_run(parent).info.experiment_id])]  # fmt: skip
    why = f"runs (name, parent) {every_run}; launcher output:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    assert sorted(r.info.run_name for r in children) == ["unstructured-global-s0.50-seed0",
                                                         "unstructured-global-s0.90-seed0"], why  # fmt: skip
    assert all(r.info.status == "FINISHED" for r in children)
    assert client.get_run(parent).info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(parent, "curve/unstructured/global/acc_finetuned")}
    assert steps == {500, 900}
    terminal = proc.stdout + proc.stderr
    finished = [line for line in terminal.splitlines() if re.match(r"\[prunesweep\] point [12]/2 finished in ", line)]
    assert len(finished) == 2, terminal[-3000:]
    for noise in ("it/s]", "Epoch 0:", "epoch 1/1", "GPU available", "`srun` command", "LeafSpec"):
        assert noise not in terminal, f"{noise!r} printed by a parallel job:\n{terminal[-3000:]}"


def test_two_sweeps_started_together_on_one_store_both_finish(smoke_sweep_command, store_uri, report_figure):
    """Two different sweeps launched at the same moment: first against a new store (MLflow creates its schema
    then), then against the existing one. Both finish with every point and their own parent run."""
    grid = ["pruning.granularity=unstructured", "pruning.sparsity=0.5"]  # x threshold global,layerwise: 2 points
    for case, seeds in (("fresh", (0, 1)), ("existing", (2, 3))):
        commands = [smoke_sweep_command(*grid, f"seed={seed}", sweep_dir=f"{case}-{seed}") for seed in seeds]
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
        for proc, output in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, f"{case}: {output[-4000:]}"
            assert "database is locked" not in output
        client = MlflowClient(tracking_uri=store_uri)  # only now: the sweeps themselves must create the store
        experiment_id = client.get_experiment_by_name("prunesweep").experiment_id
        parents = client.search_runs([experiment_id], "tags.prunesweep_role = 'parent'")
        assert len(parents) == (2 if case == "fresh" else 4)  # the second case adds two to the same store
        for parent in parents:
            statuses = sorted(r.info.status for r in _children(client, parent.info.run_id))
            assert statuses == ["FINISHED", "FINISHED"], case
        report_figure(f"two sweeps started together on a {case} SQLite store: both finished, 2 points each")


def test_the_one_private_hydra_api_is_where_the_sweep_callback_expects_it():
    """`expand_points` reuses Hydra's basic sweeper to expand grids exactly as the launch will. It is Hydra's
    private API: when an upgrade moves it, this fails by name instead of every sweep failing at start."""
    from prunesweep.tracking.sweep import _basic_sweeper

    sweeper = _basic_sweeper()
    assert callable(getattr(sweeper, "split_arguments", None)), "hydra._internal...BasicSweeper.split_arguments moved"
