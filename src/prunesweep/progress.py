"""What a sweep prints in the launching terminal: with parallel jobs, one line per finished point and nothing else.

Jobs that run side by side (joblib, submitit, Ray) share the launching terminal; their progress bars and
per-epoch log lines would interleave into noise. A parallel job therefore turns off its progress bar (unless
the command set ``trainer.enable_progress_bar`` itself), sends only warnings to the console (the job's log file
keeps everything) and silences Lightning's banner; the sweep callback prints the finished-point lines.

>>> finished_line(3, 36, 75.0, {"status": "finished", "acc/finetuned": 0.98123, "sparsity/achieved": 0.9}, "s=0.9")
'[prunesweep] point 3/36 finished in 75 s: acc 98.12 %, sparsity 90.0 %: s=0.9'
>>> finished_line(4, "?", 5.0, {"status": "failed", "error": "ValueError: bad"}, "s=0.5")
'[prunesweep] point 4/? FAILED after 5 s (ValueError: bad): s=0.5'
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

SERIAL_LAUNCHERS = ("BasicLauncher",)
LIGHTNING_LOGGERS = ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric")


def runs_in_parallel(hydra_cfg: DictConfig) -> bool:
    """Whether the sweep's launcher runs several points at once (joblib with n_jobs != 1, submitit, Ray)."""
    target = str(OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "")
    if target.endswith(SERIAL_LAUNCHERS):
        return False
    return OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None) != 1


def quiet_parallel_job(cfg: DictConfig, task_overrides: Sequence[str]) -> None:
    """Progress bar off (unless overridden on the command line), console at warnings, Lightning's banner off."""
    if not any(o.lstrip("+~").startswith("trainer.enable_progress_bar=") for o in task_overrides):
        with open_dict(cfg):
            cfg.trainer.enable_progress_bar = False
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # the console; a FileHandler is a subclass and keeps INFO
            handler.setLevel(logging.WARNING)
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning's note that srun exists (SLURM is installed) while the job was not started by srun: noise here.
    warnings.filterwarnings("ignore", message=r".*`srun` command is available on your system")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)


def finished_line(number: int, total: int | str, seconds: float, result: Mapping[str, Any], overrides: str) -> str:
    """One line for a point that ended: its accuracy and sparsity, or why it failed."""
    took, point = _duration(seconds), f"[prunesweep] point {number}/{total}"
    status = str(result.get("status", "finished"))
    if status == "failed":
        return f"{point} FAILED after {took} ({result.get('error')}): {overrides}"
    if status == "skipped":
        return f"{point} already finished (run {result.get('run_id')}): {overrides}"
    acc = result.get("acc/finetuned")
    sparsity = result.get("sparsity/achieved")
    measured = ", ".join(
        part
        for part in (
            f"acc {100 * acc:.2f} %" if acc is not None else "",
            f"sparsity {100 * sparsity:.1f} %" if sparsity is not None else "",
        )
        if part
    )
    return f"{point} finished in {took}: {measured}: {overrides}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
