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
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib import pyplot as plt

from prunesweep.bench.common import DEVICES, ForeignCPU, Result, bench_device, device_name, format_table, host_tags
from prunesweep.bench.settings import QUICK, Settings
from prunesweep.storage import sqlite_path
from prunesweep.tracking import PointRun, open_store

SECTIONS = ("train", "data", "prune", "channel", "unstructured", "finetune", "sweep", "e2e")
EXPERIMENT = "benchmarks"
DISTURBED = 0.10  # other processes' share of the CPUs above which the numbers are not to be trusted


def artifact_root(uri: str) -> str | None:
    """Artifacts next to a SQLite store (like the sweeps' ``outputs/mlartifacts``); a server keeps its own."""
    db = sqlite_path(uri)
    return str(db.parent / "mlartifacts") if db is not None else None


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_sections(
    settings: Settings, sections: Sequence[str], workdir: Path, e2e_sweep: str, device: str = "cpu"
) -> list[Result]:
    """Every selected comparison in a fixed order (the slow subprocess sweeps last), each with the share of the
    CPU that other processes took while it ran; a last ``host`` result sums that up."""
    from prunesweep.bench.sections import Sections  # heavy imports only once argparse is done

    host = Result("host")
    host.add("device (points and sweeps run here)", device_name(device))
    overall = ForeignCPU()
    foreign: dict[str, float] = {}
    results: list[Result] = []
    for name, run in Sections(settings, workdir, e2e_sweep, device).plan():
        if name not in sections:
            continue
        _say(f"{name} ...")
        start, gauge = time.perf_counter(), ForeignCPU()
        result = run()
        foreign[name] = gauge.fraction()
        result.metrics[f"bench/{name}_s"] = time.perf_counter() - start
        host.metrics[f"host/foreign_cpu/{name}"] = foreign[name]
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


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--device", default="auto", choices=DEVICES, help="where points and sweeps run (auto: the GPU when present)"
    )
    parser.add_argument("--workdir", help="keep the sweeps' outputs and logs here (default: a temporary folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
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
    try:
        device = bench_device(args.device)
    except ValueError as err:
        parser.error(str(err))

    store = open_store(args.tracking_uri, args.experiment, artifact_root(args.tracking_uri))
    tags = {f"host.{k}": v for k, v in host_tags().items()}
    tags.update({"bench.quick": str(args.quick), "bench.sections": ",".join(sections), "bench.device": device})
    tags["host.device_name"] = device_name(device)
    params = {k: str(v) for k, v in dataclasses.asdict(settings).items()}
    params.update({"quick": str(args.quick), "e2e_sweep": args.e2e_sweep, "threads": str(torch.get_num_threads())})
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run = PointRun(store, f"bench{'-quick' if args.quick else ''}-{stamp}", tags, params)
    _say(f"MLflow run {run.run_id} in experiment {args.experiment!r} of {store.uri}")
    _say(f"device: {device_name(device)}")
    out = Path(args.out).expanduser() if args.out else None

    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="prunesweep-bench-") as tmp:
            workdir = Path(args.workdir).expanduser().resolve() if args.workdir else Path(tmp)
            results = run_sections(settings, sections, workdir, args.e2e_sweep, device)
        table = _record(run, results, time.perf_counter() - start, out)
    except BaseException as err:
        run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", err)
        raise
    run.end("FINISHED")
    print(table)
    _say(f"logged to run {run.run_id}" + (f"; files in {out}" if out is not None else ""))


def _record(run: PointRun, results: Sequence[Result], wall: float, out: Path | None) -> str:
    """Log the metrics, the table and the figures to the bench run (and to ``out``); return the table."""
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
    return table


if __name__ == "__main__":
    main()
