"""The ``prunesweep-bench`` command: run the comparisons, print one table, log everything to MLflow.

    prunesweep-bench                          # everything, about 10 minutes on 2 cores (smoke sweep end to end)
    prunesweep-bench --quick                  # a reduced version of each comparison (the test runs this)
    prunesweep-bench --e2e-sweep default      # end to end on the full default sweep (~8 more minutes)
    prunesweep-bench --only train,channel --out bench/

Each comparison runs both sides in this process, interleaved, after a warm-up, and reports medians: on shared
machines the ratios are the numbers to read, not the absolute times.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from matplotlib import pyplot as plt
from omegaconf import DictConfig

from prunesweep.bench.common import ForeignCPU, Result, format_table, host_tags, timed
from prunesweep.cli import CONF_DIR, register_sweeps
from prunesweep.data import InMemoryLoader
from prunesweep.storage import sqlite_path
from prunesweep.tracking import PointRun, open_store

SECTIONS = ("train", "data", "prune", "channel", "unstructured", "sweep", "e2e")
EXPERIMENT = "benchmarks"
TRAIN_IMAGES = 55_000  # one epoch of the sweep's training set
DISTURBED = 0.10  # other processes' share of the CPUs above which the numbers are not to be trusted


@dataclass(frozen=True)
class Settings:
    """Sizes of every comparison; ``QUICK`` shrinks them so the whole bench takes about a minute."""

    train_images: int = 20_480  # 80 batches of 256 per repeat
    train_repeats: int = 5
    data_images: int | None = None  # None: the whole 60k epoch
    data_repeats: int = 3
    calib_batches: int = 8  # pruning.calib_batches' default
    prune_repeats: int = 5
    channel_sparsities: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    latency_batches: tuple[int, ...] = (1, 256)
    latency_rounds: int = 7
    latency_inner: int = 10  # forwards per round; the round's median is one sample
    unstructured_sparsities: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95, 0.99)
    sweep_grid: tuple[str, ...] = (
        "pruning.granularity=unstructured,channel",
        "pruning.sparsity=0.5,0.9",
        "pruning.threshold=global",
    )
    sweep_train_subset: int = 20_000
    e2e_overrides: tuple[str, ...] = ()
    e2e_from_sweep_cost: bool = False  # report the reuse sweep of the sweep comparison instead of running another
    sweep_timeout_s: float = 400.0
    e2e_timeout_s: float = 600.0


QUICK = Settings(
    train_images=1_024,
    train_repeats=2,
    data_images=10_240,
    data_repeats=2,
    calib_batches=2,
    prune_repeats=2,
    channel_sparsities=(0.5, 0.9),
    latency_rounds=2,
    latency_inner=3,
    sweep_grid=("pruning.granularity=unstructured,channel", "pruning.sparsity=0.9", "pruning.threshold=global"),
    sweep_train_subset=256,
    e2e_overrides=("data.train_subset=256", "pruning.threshold=global", "pruning.sparsity=0.9"),  # with --only e2e
    e2e_from_sweep_cost=True,
    sweep_timeout_s=300.0,
    e2e_timeout_s=300.0,
)


def point_config(*overrides: str) -> DictConfig:
    """conf/config.yaml composed as the ``prunesweep`` command would, without running it."""
    register_sweeps()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def artifact_root(uri: str) -> str | None:
    """Artifacts next to a SQLite store (like the sweeps' ``outputs/mlartifacts``); a server keeps its own."""
    db = sqlite_path(uri)
    return str(db.parent / "mlartifacts") if db is not None else None


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_sections(settings: Settings, sections: Sequence[str], workdir: Path, e2e_sweep: str) -> list[Result]:
    """Every selected comparison in a fixed order; the slow subprocess sweeps come last."""
    from prunesweep.bench import data, pruning, sweeps, train  # heavy imports only once argparse is done

    cfg = point_config("trainer.enable_progress_bar=false", f"paths.output_dir={workdir / 'outputs'}")
    datamodule = instantiate(cfg.data, log=lambda _msg: None)
    datamodule.prepare_data()
    datamodule.setup()
    s = settings
    results: list[Result] = []
    epoch_s: list[float] = []
    sweep_runs: list[tuple[str, sweeps.SweepRun]] = []  # the sweep comparison's reuse run, for --quick's e2e
    sweep_base = (
        f"data.train_subset={s.sweep_train_subset}",
        "train.epochs=1",
        "finetune.epochs=1",
        "trainer.enable_progress_bar=false",
    )

    def sweep_section() -> Result:
        result, reuse = sweeps.sweep_cost(
            workdir / "sweep", point_config(*sweep_base), s.sweep_grid, sweep_base, s.sweep_timeout_s
        )
        sweep_runs.append(("+sweep=smoke, the sweep comparison's reuse run", reuse))
        return result

    def e2e_section() -> Result:
        if s.e2e_from_sweep_cost and e2e_sweep == "smoke" and sweep_runs:
            return sweeps.end_to_end_result(*sweep_runs[0])
        timeout = s.e2e_timeout_s if e2e_sweep == "smoke" else max(s.e2e_timeout_s, 1800.0)
        return sweeps.end_to_end(workdir / "e2e", e2e_sweep, s.e2e_overrides, timeout)

    def yardstick() -> float:
        """One bare training epoch: from the training comparison, or timed on a few batches when it was skipped."""
        if epoch_s:
            return epoch_s[0]
        images = min(2_560, len(datamodule.x_train))
        x, y = datamodule.x_train[:images], datamodule.y_train[:images]
        model = instantiate(cfg.model)
        loader = InMemoryLoader(x, y, int(cfg.train.batch_size))
        seconds = timed(lambda: train.bare_loop(model, loader, cfg.train))
        return TRAIN_IMAGES * seconds / images

    plan: list[tuple[str, Callable[[], Result]]] = [
        (
            "train",
            lambda: train.train_throughput(
                cfg, datamodule.x_train, datamodule.y_train, s.train_images, s.train_repeats, TRAIN_IMAGES
            ),
        ),
        ("data", lambda: data.data_path(datamodule, int(cfg.train.batch_size), s.data_repeats, s.data_images)),
        (
            "prune",
            lambda: pruning.pruning_overhead(
                datamodule.calibration_batches(s.calib_batches), yardstick(), s.prune_repeats
            ),
        ),
        (
            "channel",
            lambda: pruning.channel_speedup(s.channel_sparsities, s.latency_batches, s.latency_rounds, s.latency_inner),
        ),
        (
            "unstructured",
            lambda: pruning.unstructured_storage(s.unstructured_sparsities, s.latency_rounds, s.latency_inner),
        ),
        ("sweep", sweep_section),
        ("e2e", e2e_section),
    ]
    host = Result("host")
    overall = ForeignCPU()
    foreign = {}
    for name, run in plan:
        if name not in sections:
            continue
        _say(f"{name} ...")
        start, gauge = time.perf_counter(), ForeignCPU()
        result = run()
        foreign[name] = gauge.fraction()
        result.metrics[f"bench/{name}_s"] = time.perf_counter() - start
        host.metrics[f"host/foreign_cpu/{name}"] = foreign[name]
        if name == "train":
            epoch_s.append(result.metrics["train/bare_epoch_s"])
        _say(
            f"{name} done in {time.perf_counter() - start:.1f} s (other processes used {100 * foreign[name]:.0f}% CPU)"
        )
        results.append(result)
    share = overall.fraction()
    host.metrics["host/foreign_cpu"] = share
    host.add("CPU used by other processes, per section", "  ".join(f"{k} {100 * v:.0f}%" for k, v in foreign.items()))
    host.add(
        "... over the whole bench", f"{100 * share:.1f}%", f"< {100 * DISTURBED:.0f}% (undisturbed)", share < DISTURBED
    )
    return [*results, host]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prunesweep-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes and repeats (about a minute)")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///outputs/mlflow.db"),
        help="MLflow store for the bench run (default: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db)",
    )
    parser.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment (default: {EXPERIMENT})")
    parser.add_argument("--out", help="also write the figure, the table and the metrics (JSON) to this folder")
    parser.add_argument("--skip-e2e", action="store_true", help="leave out the end-to-end sweep")
    parser.add_argument("--e2e-sweep", default="smoke", help="sweep run end to end: smoke or default (~8 min)")
    parser.add_argument("--only", help=f"comma-separated sections, from: {','.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. all cores)")
    parser.add_argument("--workdir", help="keep the sweeps' outputs and logs here (default: a temporary folder)")
    args = parser.parse_args(argv)

    sections = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.skip_e2e:
        sections = tuple(s for s in sections if s != "e2e")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else Settings()

    store = open_store(args.tracking_uri, args.experiment, artifact_root(args.tracking_uri))
    tags = {f"host.{k}": v for k, v in host_tags().items()}
    tags.update({"bench.quick": str(args.quick), "bench.sections": ",".join(sections)})
    params = {k: str(v) for k, v in dataclasses.asdict(settings).items()}
    params.update({"quick": str(args.quick), "e2e_sweep": args.e2e_sweep, "threads": str(torch.get_num_threads())})
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run = PointRun(store, f"bench{'-quick' if args.quick else ''}-{stamp}", tags, params)
    _say(f"MLflow run {run.run_id} in experiment {args.experiment!r} of {store.uri}")

    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="prunesweep-bench-") as tmp:
            workdir = Path(args.workdir).expanduser().resolve() if args.workdir else Path(tmp)
            results = run_sections(settings, sections, workdir, args.e2e_sweep)
        wall = time.perf_counter() - start
        metrics = {k: v for result in results for k, v in result.metrics.items()}
        metrics["bench/wall_s"] = wall
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise RuntimeError(f"non-finite bench metrics: {bad}")
        run.log_metrics(metrics)
        load1, load5, _ = os.getloadavg()
        run.set_tags({"host.loadavg_end": f"{load1:.2f} {load5:.2f}"})
        table = format_table(results) + f"\n\nwall time {wall:.0f} s ({wall / 60:.1f} min)"
        run.log_text(table + "\n", "bench_table.txt")
        run.log_text(json.dumps(metrics, indent=1, sort_keys=True), "bench_metrics.json")
        out = Path(args.out).expanduser() if args.out else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "bench_table.txt").write_text(table + "\n")
            (out / "bench_metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        for result in results:
            for name, figure in result.figures.items():
                run.log_figure(figure, f"figures/{name}")
                if out is not None:
                    figure.savefig(out / name, dpi=120)
                plt.close(figure)
    except BaseException as err:
        run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", err)
        raise
    run.end("FINISHED")
    print(table)
    _say(f"logged to run {run.run_id}" + (f"; files in {out}" if out is not None else ""))


if __name__ == "__main__":
    main()
