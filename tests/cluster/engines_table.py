"""The README's "Scaling out" table: the smoke and default sweeps on joblib, a local Ray cluster and a local SLURM.

    .venv/bin/python tests/cluster/engines_table.py smoke default      # ~35 min on 2 cores; SLURM needs root

Each engine gets 2 one-CPU slots on this machine (joblib ``n_jobs=2``; a Ray head and one more node, 1 CPU each;
a 2-CPU SLURM node with ``cpus_per_task=1``) and every sweep starts from a cold dense cache. All of them track to
one PostgreSQL-backed ``mlflow server`` started here, exactly as the cluster tests start them. Prints one JSON
line per sweep: wall time, runs, the points' summed ``time/point_s``, the overhead per point, and every point's
accuracy (to compare engines).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import cluster_services as services
from cluster_helpers import REPO, worker_env
from mlflow.tracking import MlflowClient

SLOTS = 2


def run_sweep(root: Path, server: str, engine: str, sweep: str, launcher: Sequence[str]) -> dict[str, Any]:
    """``prunesweep +sweep=<sweep>`` on one engine; its row of the table."""
    name = f"{engine}-{sweep}"
    command = [
        sys.executable, "-m", "prunesweep.cli", f"+sweep={sweep}", f"paths.output_dir={root / name}",
        f"hydra.sweep.dir={root / name / 'sweep'}", f"tracking.uri={server}", f"tracking.experiment={name}",
        *launcher,
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env=worker_env(), cwd=REPO, timeout=3600)
    wall = time.monotonic() - start
    (root / f"{name}.log").write_text(proc.stdout + proc.stderr)
    return _row(MlflowClient(server), engine, sweep, proc.returncode, wall)


def _row(client: MlflowClient, engine: str, sweep: str, returncode: int, wall: float) -> dict[str, Any]:
    experiment_id = client.get_experiment_by_name(f"{engine}-{sweep}").experiment_id
    runs = [r for r in client.search_runs([experiment_id], max_results=1000) if "mlflow.parentRunId" in r.data.tags]
    done = [r for r in runs if r.info.status == "FINISHED"]
    point_s = sum(r.data.metrics.get("time/point_s", 0.0) for r in done)
    return {
        "engine": engine,
        "sweep": sweep,
        "rc": returncode,
        "wall_s": round(wall, 1),
        "finished": len(done),
        "runs": len(runs),
        "sum_point_s": round(point_s, 1),
        "overhead_per_point_s": round((SLOTS * wall - point_s) / max(len(done), 1), 2),
        "acc": {r.info.run_name: r.data.metrics["acc/finetuned"] for r in done},
        "date": time.strftime("%F %T UTC", time.gmtime()),
    }


def main(sweeps: Sequence[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="prunesweep-engines-"))
    slurm = ("hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=60")  # fmt: skip
    joblib = ("hydra/launcher=joblib", f"hydra.launcher.n_jobs={SLOTS}")
    with services.postgres() as database, services.mlflow_server(database) as server:
        for sweep in sweeps:
            _print(run_sweep(root, server, "joblib2", sweep, joblib))
        node_envs = [{**worker_env(), "PRUNESWEEP_DENSE_CACHE": str(root / f"ray-node{i}")} for i in range(SLOTS)]
        with services.ray_cluster(node_envs) as cluster:
            ray = ("hydra/launcher=ray", f"hydra.launcher.ray.init.address={cluster.address}")
            for sweep in sweeps:
                _print(run_sweep(root, server, "ray2", sweep, ray))
        with services.slurm(cpus=SLOTS):
            for sweep in sweeps:
                _print(run_sweep(root, server, "slurm", sweep, slurm))
    print(f"logs in {root}", file=sys.stderr)


def _print(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["smoke", "default"])
