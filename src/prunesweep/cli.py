"""The ``prunesweep`` command: compose the config with Hydra, then run one sweep point.

prunesweep                                   # one point with conf/config.yaml
prunesweep +experiment=seed_lenet5           # the seed article's example
prunesweep +sweep=default                    # a multirun from sweeps/default.yaml
prunesweep -m pruning.sparsity=0.5,0.9 pruning.threshold=global,layerwise
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from prunesweep import experiment
from prunesweep.config import ConfigError
from prunesweep.data import DataError
from prunesweep.progress import quiet_parallel_job, runs_in_parallel
from prunesweep.targets import TargetError
from prunesweep.tracking import TrackingError
from prunesweep.tracking.sweep import find_sweep

log = logging.getLogger("prunesweep")

USER_ERRORS = (ConfigError, DataError, TargetError, TrackingError)


def _locate(name: str) -> Path:
    """conf/ and sweeps/ ship inside the wheel; an editable install reads them from the repository."""
    packaged = Path(__file__).parent / name
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / name


CONF_DIR = _locate("conf")
SWEEPS_DIR = _locate("sweeps")


def register_sweeps(sweeps_dir: Path = SWEEPS_DIR) -> None:
    """Make every ``sweeps/<name>.yaml`` selectable as ``+sweep=<name>``."""
    store = ConfigStore.instance()
    for path in sorted(sweeps_dir.glob("*.yaml")):
        store.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def _sweep_context(cfg: DictConfig) -> experiment.SweepContext:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return experiment.SweepContext()
    info = find_sweep(hydra_cfg.sweep.dir, str(cfg.tracking.uri), str(cfg.tracking.experiment)) or {}
    return experiment.SweepContext(parent_run_id=info.get("parent_run_id"), sweep_id=info.get("sweep_id"))


def _ray_task_cpus() -> int | None:
    """CPUs Ray gave the task this point runs in; None outside a Ray worker.

    Ray's runtime must be asked: a cluster may grant fewer (or fractional) CPUs than the config requested.
    Ray is looked up, never imported, so a run without the `[ray]` extra pays nothing.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return max(1, int(cpus)) if cpus else None


def _threads_per_job(cfg: DictConfig) -> int:
    """All cores for a serial run; cores shared out evenly among parallel joblib workers; a submitit job's cpus;
    a Ray task's CPUs."""
    if cfg.get("threads"):
        return int(cfg.threads)
    ray_cpus = _ray_task_cpus()
    if ray_cpus:
        return ray_cpus
    hydra_cfg = HydraConfig.get()
    cpus_per_task = OmegaConf.select(hydra_cfg, "launcher.cpus_per_task", default=None)
    if cpus_per_task:
        return int(cpus_per_task)
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=1) or 1
    cores = os.cpu_count() or 1
    if n_jobs < 0:  # joblib's -1 = one job per core
        n_jobs = cores
    return max(1, cores // int(n_jobs))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> dict[str, Any]:
    with open_dict(cfg):
        cfg.threads = _threads_per_job(cfg)
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and runs_in_parallel(hydra_cfg):
        quiet_parallel_job(cfg, hydra_cfg.overrides.task)
    sweep = _sweep_context(cfg)
    try:
        return experiment.run(cfg, sweep)
    except USER_ERRORS as err:
        if sweep.sweep_id is None:
            # Hydra's log goes to stdout; a refusal belongs on stderr, without a traceback.
            print(f"prunesweep: error: {err}", file=sys.stderr)
            sys.exit(2)
        log.error("%s", err)
        return {"status": "failed", "error": str(err)}
    except Exception as err:
        if sweep.sweep_id is None:
            raise
        # One failing point must not stop a sweep: its run is already marked FAILED with the reason.
        log.exception("point failed; the sweep goes on")
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}


def main() -> None:
    register_sweeps()
    app()


if __name__ == "__main__":
    main()
