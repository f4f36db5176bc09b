"""Whole sweeps as a user runs them (``python -m prunesweep.cli``, in a subprocess): dense-model reuse, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from prunesweep.bench.common import PeakRSS, Result
from prunesweep.bench.train import quiet_lightning, restored_determinism
from prunesweep.config import pruning_spec
from prunesweep.experiment import setup_data
from prunesweep.lit import evaluate, fit, in_layout
from prunesweep.schedules import SCHEDULES, ScheduleJob, masking_prune
from prunesweep.storage import SQLITE_PREFIX

MODEL_TOLERANCE = 0.10  # "close to the model": within 10 % of the predicted ratio


@dataclass(frozen=True)
class SweepRun:
    wall_s: float
    peak_rss: int  # bytes, the whole process tree
    peak_rss_single: int  # bytes, the largest single process
    durations_s: list[float]  # per finished point, in launch order (MLflow start -> end)
    dense_cached: list[bool]  # per finished point, in launch order


def run_sweep(workdir: Path, overrides: Sequence[str], timeout_s: float) -> SweepRun:
    """``prunesweep <overrides>`` as a multirun in its own process, with its own store and output folder."""
    workdir.mkdir(parents=True, exist_ok=True)
    uri = f"{SQLITE_PREFIX}{workdir / 'mlflow.db'}"
    command = [
        sys.executable, "-m", "prunesweep.cli",
        *overrides,
        f"tracking.uri={uri}",
        f"paths.output_dir={workdir / 'outputs'}",
        f"hydra.sweep.dir={workdir / 'multirun'}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # it would win over tracking.uri
    log_path = workdir / "sweep.log"
    with log_path.open("w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        with PeakRSS(proc.pid) as memory:
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"sweep took over {timeout_s:.0f} s; log: {log_path}") from None
        wall = time.perf_counter() - start
    if code != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"sweep exited with {code}: {' '.join(command)}\n... {tail}")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("prunesweep")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    points = [r for r in runs if "mlflow.parentRunId" in r.data.tags and r.info.status == "FINISHED"]
    return SweepRun(
        wall_s=wall,
        peak_rss=memory.peak,
        peak_rss_single=memory.peak_single,
        durations_s=[(r.info.end_time - r.info.start_time) / 1e3 for r in points],
        dense_cached=[r.data.tags.get("dense_cached") == "True" for r in points],
    )


def time_dense_and_finetune(cfg: DictConfig) -> tuple[float, float]:
    """T and F of one point, timed directly: :func:`~prunesweep.lit.fit` of the dense recipe, then the one-shot
    schedule's fine-tune with masks held (validation included, as in a sweep)."""
    datamodule = setup_data(cfg, log_fn=lambda _msg: None)
    model = in_layout(instantiate(cfg.model), bool(cfg.get("channels_last", False)))  # as the points run
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"enable_progress_bar": False})
    finetune_s: list[float] = []

    def finetune(callbacks: Sequence[pl.Callback], steps: int | None = None, prefix: str = "") -> int:
        start = time.perf_counter()
        train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
        trainer = fit(model, train, val, cfg.finetune, trainer_cfg, max_steps=steps, callbacks=callbacks)
        finetune_s.append(time.perf_counter() - start)
        return trainer.global_step

    with quiet_lightning(), restored_determinism():
        start = time.perf_counter()
        fit(model, datamodule.train_dataloader(), datamodule.val_dataloader(), cfg.train, trainer_cfg)
        dense_s = time.perf_counter() - start
        job = ScheduleJob(
            model=model,
            sparsity=float(cfg.pruning.sparsity),
            prune=masking_prune(model, pruning_spec(cfg)),
            evaluate=lambda _model=None: evaluate(model, datamodule.test_dataloader()),  # masked only: no rebuild
            finetune=finetune,
            epochs=int(cfg.finetune.epochs),
            steps_per_epoch=len(datamodule.train_dataloader()),
        )
        SCHEDULES["oneshot"](job)
    return dense_s, finetune_s[0]


def sweep_cost(
    workdir: Path, cfg: DictConfig, grid: Sequence[str], base: Sequence[str], timeout_s: float
) -> tuple[Result, SweepRun]:
    """Wall time of the same N-point multirun with one shared dense model vs one dense training per point.

    The naive side gives every point its own dense cache folder, so each point trains its own dense model.
    The pure cost model is (T + N·F) / (N·(T + F)); the sweep also pays per point for evaluation, measuring and
    logging (O) and once for process start-up and the report (S), so the bench also predicts
    (S + T + N·(F + O)) / (S + N·(T + F + O)) from the reuse run's own logs and checks the naive run against it.
    Returns the result and the reuse run (itself a sweep from an empty cache, which ``--quick`` reports as its
    end-to-end measurement).
    """
    reuse = run_sweep(workdir / "reuse", ["+sweep=smoke", *grid, *base], timeout_s)
    # Interpolated per point by Hydra: every point gets an empty cache of its own.
    own_cache = workdir / "naive" / "dense" / "${pruning.granularity}-${pruning.threshold}-${pruning.sparsity}"
    naive = run_sweep(workdir / "naive", ["+sweep=smoke", *grid, *base, f"paths.dense_cache='{own_cache}'"], timeout_s)
    n = len(reuse.durations_s)
    if n < 2 or len(naive.durations_s) != n:
        raise RuntimeError(f"expected the same N >= 2 finished points on both sides: {n} vs {len(naive.durations_s)}")
    if sum(reuse.dense_cached) != n - 1 or any(naive.dense_cached):
        raise RuntimeError(f"dense reuse is not what was asked: reuse {reuse.dense_cached}, naive {naive.dense_cached}")
    dense_s, finetune_s = time_dense_and_finetune(cfg)
    return _cost_result(cfg, reuse, naive, dense_s, finetune_s), reuse


def _cost_result(cfg: DictConfig, reuse: SweepRun, naive: SweepRun, dense_s: float, finetune_s: float) -> Result:
    """The cost model (pure, and with the per-point and per-sweep overheads) held against the measured ratio."""
    n = len(reuse.durations_s)
    measured = reuse.wall_s / naive.wall_s
    pure = (dense_s + n * finetune_s) / (n * (dense_s + finetune_s))
    cached = [d for d, hit in zip(reuse.durations_s, reuse.dense_cached, strict=True) if hit]
    point_overhead = max(sum(cached) / len(cached) - finetune_s, 0.0)
    process_overhead = max(reuse.wall_s - sum(reuse.durations_s), 0.0)
    naive_predicted = process_overhead + n * (dense_s + finetune_s + point_overhead)
    reuse_predicted = process_overhead + dense_s + n * (finetune_s + point_overhead)
    with_overhead = reuse_predicted / naive_predicted
    saved = (naive.wall_s - reuse.wall_s) / (n - 1)

    result = Result("sweep")
    result.metrics = {
        "sweep/points": n,
        "sweep/reuse_s": reuse.wall_s,
        "sweep/naive_s": naive.wall_s,
        "sweep/reuse_over_naive": measured,
        "sweep/dense_train_s": dense_s,
        "sweep/finetune_s": finetune_s,
        "sweep/point_overhead_s": point_overhead,
        "sweep/process_overhead_s": process_overhead,
        "sweep/model_ratio": pure,
        "sweep/model_ratio_with_overhead": with_overhead,
        "sweep/naive_predicted_s": naive_predicted,
        "sweep/saved_per_point_s": saved,
    }
    close = abs(measured / with_overhead - 1) <= MODEL_TOLERANCE
    images = OmegaConf.select(cfg, "data.train_subset") or "all"
    result.add(
        f"{n} points, {images} training images, {cfg.train.epochs} dense + {cfg.finetune.epochs} fine-tune epoch(s)",
        f"reuse {reuse.wall_s:.1f} s, naive {naive.wall_s:.1f} s",
    )
    result.add("reuse / naive, measured", f"{measured:.3f}")
    result.add("T dense fit | F fine-tune fit (direct timing)", f"{dense_s:.2f} s | {finetune_s:.2f} s")
    result.add("model (T + N F) / (N (T + F))", f"{pure:.3f}")
    result.add(
        "O per point (eval, measure, log) | S per sweep (start-up, report)",
        f"{point_overhead:.2f} s | {process_overhead:.2f} s",
    )
    result.add(
        "model with O and S (from the reuse run)",
        f"{with_overhead:.3f} (naive predicted {naive_predicted:.1f} s)",
        f"measured within {100 * MODEL_TOLERANCE:.0f}%",
        close,
    )
    result.add("saved per extra point (naive - reuse) / (N - 1) vs T", f"{saved:.2f} s vs {dense_s:.2f} s")
    return result


def end_to_end(workdir: Path, sweep: str, extra: Sequence[str], timeout_s: float) -> Result:
    """Wall time and peak resident memory (process tree) of ``prunesweep +sweep=<sweep>`` from an empty cache."""
    return end_to_end_result(
        " ".join([f"+sweep={sweep}", *extra]), run_sweep(workdir, [f"+sweep={sweep}", *extra], timeout_s)
    )


def end_to_end_result(label: str, run: SweepRun) -> Result:
    n = len(run.durations_s)
    result = Result("e2e")
    result.metrics = {
        "e2e/points": n,
        "e2e/wall_s": run.wall_s,
        "e2e/s_per_point": run.wall_s / max(n, 1),
        "e2e/peak_rss_mb": run.peak_rss / 2**20,
        "e2e/peak_rss_single_mb": run.peak_rss_single / 2**20,
    }
    result.add(f"{label}: {n} points, wall", f"{run.wall_s:.1f} s ({run.wall_s / max(n, 1):.1f} s/point)")
    result.add(
        "peak RSS, whole process tree (largest process)",
        f"{run.peak_rss / 2**20:,.0f} MiB ({run.peak_rss_single / 2**20:,.0f} MiB)",
    )
    return result
