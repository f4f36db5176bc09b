"""Faults and load with real processes: SIGKILL mid-sweep, a real `mlflow server`, parallel jobs, bad disks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from prunesweep import experiment
from prunesweep.config import ConfigError
from prunesweep.storage import ensure_writable

pytestmark = pytest.mark.slow

GRID = ["pruning.granularity=unstructured,channel", "pruning.sparsity=0.5,0.9", "pruning.threshold=global"]


def _children(client: MlflowClient) -> list:
    experiment_id = client.get_experiment_by_name("prunesweep").experiment_id
    return [r for r in client.search_runs([experiment_id]) if r.data.tags.get("prunesweep_role") != "parent"]


def test_sigkill_mid_sweep_then_rerun_keeps_finished_points(smoke_sweep_command, tmp_path, store_uri):
    client = MlflowClient(tracking_uri=store_uri)
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(smoke_sweep_command(*GRID), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            try:
                runs = _children(client)
            except Exception:  # the store may not exist yet
                runs = []
            statuses = sorted(r.info.status for r in runs)
            if statuses.count("FINISHED") == 2 and "RUNNING" in statuses:
                break
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("the sweep never reached its third point")
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    before = {r.info.run_id: (r.info.run_name, r.info.status) for r in _children(client)}
    assert sorted(s for _, s in before.values()) == ["FINISHED", "FINISHED", "RUNNING"]

    rerun = subprocess.run(smoke_sweep_command(*GRID, sweep_dir="sweep-2"), capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = _children(client)
    by_id = {r.info.run_id: r for r in after}
    for run_id, (name, status) in before.items():
        if status == "FINISHED":
            assert by_id[run_id].info.status == "FINISHED", f"finished point {name} was lost"
        else:
            assert by_id[run_id].info.status == "FAILED", "a killed point is not left RUNNING forever"
            assert "interrupted" in by_id[run_id].data.tags["error"]
    new = [r for r in after if r.info.run_id not in before]
    assert len(new) == 2, "only the killed point and the one never started run again"
    assert all(r.info.status == "FINISHED" for r in new)
    finished_names = sorted(r.info.run_name for r in after if r.info.status == "FINISHED")
    assert len(finished_names) == len(set(finished_names)) == 4


def test_four_parallel_jobs_on_one_sqlite_store(smoke_sweep_command, tmp_path, store_uri, report_figure):
    proc = subprocess.run(
        smoke_sweep_command(*GRID, "hydra/launcher=joblib", "hydra.launcher.n_jobs=4"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = _children(MlflowClient(tracking_uri=store_uri))
    recorded = [r for r in runs if r.info.status == "FINISHED" and "acc/finetuned" in r.data.metrics]
    failed = len(runs) - len(recorded)
    report_figure(f"joblib n_jobs=4 on SQLite: runs attempted 4, recorded {len(recorded)}, failed {failed}")
    assert len(recorded) == 4
    assert "database is locked" not in proc.stdout + proc.stderr


@pytest.fixture
def mlflow_server(tmp_path, serve_mlflow):
    """A real `mlflow server` on a free loopback port, stopped after the test."""
    with serve_mlflow(tmp_path) as uri:
        yield uri


def test_eight_concurrent_clients_against_a_real_mlflow_server(mlflow_server, report_figure):
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment_id = client.create_experiment("load")
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            own = MlflowClient(tracking_uri=mlflow_server)
            run = own.create_run(experiment_id, run_name=f"client-{index}")
            for step in range(10):
                own.log_metric(run.info.run_id, "acc/finetuned", 0.9 + step / 1000, step=step)
            own.log_param(run.info.run_id, "client", str(index))
            own.set_terminated(run.info.run_id, "FINISHED")
        except BaseException as err:  # recorded and asserted below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    runs = client.search_runs([experiment_id])
    complete = [r for r in runs if len(client.get_metric_history(r.info.run_id, "acc/finetuned")) == 10]
    report_figure(f"8 clients on mlflow server: runs attempted 8, recorded {len(complete)}, failed {len(errors)}")
    assert not errors
    assert len(complete) == 8
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_point_logs_to_a_tracking_server(make_cfg, tiny_overrides, mlflow_server):
    overrides = [o for o in tiny_overrides if not o.startswith("tracking.uri=")]
    result = experiment.run(make_cfg(*overrides, f"tracking.uri={mlflow_server}"))
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert "acc/finetuned" in run.data.metrics
    assert "layers.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_sparse_vd_model_is_trained_once_for_workers_that_share_no_disk(
    make_cfg, tiny_overrides, mlflow_server, tmp_path
):
    """Two points of one seed, each with its own dense cache (two nodes, no shared disk), one tracking server: the
    first trains the dense and the sparse VD model and publishes both; the second downloads them."""
    overrides = [o for o in tiny_overrides if not o.startswith("tracking.uri=")]
    vd = ("pruning.importance=variational", "pruning.threshold=global", "pruning.variational.epochs=1")
    runs = []
    for node, sparsity in (("node1", 0.9), ("node2", 0.95)):
        cfg = make_cfg(*overrides, *vd, f"pruning.sparsity={sparsity}", f"tracking.uri={mlflow_server}",
                       f"paths.dense_cache={tmp_path / node}")  # fmt: skip
        runs.append(MlflowClient(tracking_uri=mlflow_server).get_run(experiment.run(cfg)["run_id"]))
    first, second = runs
    assert (first.data.tags["dense_cached"], first.data.tags["variational_cached"]) == ("False", "False")
    assert (second.data.tags["dense_cached"], second.data.tags["variational_cached"]) == ("True", "True")
    assert second.data.metrics["variational/noise_share"] == first.data.metrics["variational/noise_share"]
    assert "variational/loss" in first.data.metrics and "variational/loss" not in second.data.metrics


def test_unreachable_tracking_server_fails_at_start(tmp_path, free_port):
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "prunesweep.cli", f"tracking.uri=http://127.0.0.1:{free_port()}",
         f"paths.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unreachable" in proc.stderr
    assert "training" not in proc.stderr, "nothing is trained before the store is known to work"
    assert time.time() - started < 60


def test_read_only_output_folder_is_refused_before_work(make_cfg, tiny_overrides):
    # /sys is a read-only file system even for root
    with pytest.raises(ConfigError, match=r"paths\.dense_cache=.* is not a writable folder"):
        experiment.run(make_cfg(*tiny_overrides, "paths.dense_cache=/sys/prunesweep-cache"))


def test_runs_starting_together_on_one_folder_all_pass_the_write_probe(tmp_path):
    # Jobs launched together (a joblib sweep, a SLURM array) probe one cache or store folder at the same moment;
    # with one shared probe name, one job deleted another's probe and failed with "No such file or directory".
    workers, calls = 8, 200
    start, errors = threading.Barrier(workers), []

    def probe_repeatedly() -> None:
        start.wait(timeout=30)
        try:
            for _ in range(calls):
                ensure_writable(tmp_path)
        except OSError as err:
            errors.append(err)

    threads = [threading.Thread(target=probe_repeatedly) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[:3]
    assert list(tmp_path.iterdir()) == [], "every probe is removed"


def test_disk_full_while_caching_leaves_no_half_written_checkpoint(make_cfg, tiny_overrides, tmp_path, store_uri):
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with pytest.raises(OSError, match="No space left"):
            experiment.run(make_cfg(*tiny_overrides, f"paths.dense_cache={full}"))
        assert not [p for p in full.iterdir() if p.suffix in (".pt", ".tmp") or p.name.endswith(".tmp")]
        run = _children(MlflowClient(tracking_uri=store_uri))[0]
        assert run.info.status == "FAILED"
        assert "No space left" in run.data.tags["error"]
    finally:
        subprocess.run(["umount", str(full)], check=False)
