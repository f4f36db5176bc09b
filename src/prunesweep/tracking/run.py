"""One sweep point as one MLflow run: stable name, tags, params, metrics, artifacts, final status."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
import tempfile
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunTag

from prunesweep.tracking.store import Store

MAX_PARAM_BATCH = 100  # MLflow's limit on params per log_batch call
PACKAGES = ("prunesweep", "torch", "pytorch-lightning", "hydra-core", "mlflow", "torch-pruning")


def run_name(granularity: str, threshold: str, sparsity: float, seed: int, **extra: str) -> str:
    """``channel-global-s0.90-seed0``; non-default model, importance, schedule or distillation are appended.

    >>> run_name("channel", "global", 0.9, 0)
    'channel-global-s0.90-seed0'
    >>> run_name("unstructured", "layerwise", 0.5, 1, model="lenet300", importance="taylor")
    'unstructured-layerwise-s0.50-seed1-lenet300-taylor'
    >>> run_name("unstructured", "global", 0.9964, 0)  # finer targets keep their digits (not "s1.00")
    'unstructured-global-s0.9964-seed0'
    >>> run_name("unstructured", "global", 0.5, 0, distill="distill0.7-lenet5")
    'unstructured-global-s0.50-seed0-distill0.7-lenet5'
    """
    defaults = {"model": "lenet5", "importance": "l1", "schedule": "oneshot", "distill": "off"}
    level = f"{sparsity:.2f}" if round(sparsity, 2) == sparsity else f"{sparsity:.6f}".rstrip("0")
    name = f"{granularity}-{threshold}-s{level}-seed{seed}"
    for key in defaults:
        value = extra.get(key)
        if value and value != defaults[key]:
            name += f"-{value}"
    return name


@functools.cache
def git_commit() -> str:
    """Commit of the source tree this package runs from, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.cache
def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[f"version.{name}"] = "missing"
    return versions


@functools.cache
def machine_tags() -> dict[str, str]:
    """What of the machine decides a CPU run's floats: the SIMD level torch dispatches to, and the processor.

    The same code, packages, data and thread count give the same numbers bit for bit only on the same
    instruction set: AVX-512 and AVX2 kernels sum in other orders (``ATEN_CPU_CAPABILITY=default`` alone
    trains another LeNet-5 here).

    >>> sorted(machine_tags())
    ['cpu.capability', 'cpu.model']
    """
    return {"cpu.capability": torch.backends.cpu.get_cpu_capability(), "cpu.model": _cpu_model()}


def _cpu_model() -> str:
    """``AMD EPYC (family 25, model 1)``: the family and model tell generations apart where the name does not."""
    fallback = platform.processor() or platform.machine() or "unknown"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fallback
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():  # the first processor's fields; the others repeat them
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or fallback
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


class PointRun:
    """An open MLflow run; ``end()`` marks it FINISHED, FAILED or KILLED."""

    def __init__(
        self,
        store: Store,
        name: str,
        tags: Mapping[str, str],
        params: Mapping[str, str],
        parent_run_id: str | None = None,
    ) -> None:
        self.store = store
        self.client = store.client
        all_tags = {"git_commit": git_commit(), **package_versions(), **machine_tags(), **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(store.experiment_id, run_name=name, tags=all_tags)
        self.run_id = run.info.run_id
        self.name = name
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MAX_PARAM_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0, model_id: str | None = None) -> None:
        """``model_id`` links the values to an MLflow 3 logged model (its Models-tab columns)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step, model_id=model_id, run_id=self.run_id) for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_csv(self, frame: pd.DataFrame, artifact_file: str) -> None:
        self.log_text(frame.to_csv(index=False), artifact_file)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_bytes(self, payload: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(payload)
            parent = str(Path(artifact_file).parent)
            self.log_file(path, None if parent == "." else parent)

    def end(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        if error is not None:
            reason = f"{type(error).__name__}: {error}"
            self.set_tags({"error": reason[:5000]})
            self.log_text("".join(traceback.format_exception(error)), "error.txt")
        self.client.set_terminated(self.run_id, status)
