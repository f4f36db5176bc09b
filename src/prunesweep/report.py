"""Accuracy-vs-sparsity report of a sweep: reads its runs from MLflow and logs the report to its parent run.

It reads nothing but MLflow, so it works on any store, and it writes only to the sweep's parent run.

    prunesweep-report                         # the latest sweep of experiment "prunesweep"
    prunesweep-report sweep-1a2b3c4d5e        # a sweep id, a parent run id, or an experiment name
    prunesweep-report --out figures/          # also write the figures and the table to a folder

The same function runs at the end of every multirun and logs to the parent run: the figures, the
points table (CSV and an MLflow table), the mean-over-seeds table per target (``report/by_target.csv``),
``curve/<granularity>/<threshold>/acc_finetuned`` metrics with step = round(1000 × target sparsity), and
summary metrics per series. Running it again overwrites the artifacts and logs no metric twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from prunesweep import plots
from prunesweep.distillation import distill_label

SERIES = ("granularity", "threshold")
# Also split series by these when a sweep varies them (a seed sweep averages only over seeds).
SPLIT_WHEN_VARIED = ("model", "importance", "schedule", "distill")
TOLERANCES = (0.1, 0.5, 1.0)  # accuracy points below dense
METRIC_COLUMNS = {
    "acc/dense": "acc_dense",
    "acc/pruned": "acc_pruned",
    "acc/finetuned": "acc_finetuned",
    "sparsity/achieved": "sparsity_achieved",
    "sparsity/units": "sparsity_units",
    "sparsity/weights": "sparsity_weights",
    "params/nonzero": "params_nonzero",
    "params/total": "params_total",
    "params/weights_nonzero": "weights_nonzero",
    "params/weights_total": "weights_total",
    "flops/dense": "flops_dense",
    "flops/remaining": "flops_remaining",
    "latency/dense_ms": "latency_dense_ms",
    "latency/pruned_ms": "latency_pruned_ms",
}
TAG_COLUMNS = ("model", "granularity", "threshold", "importance", "schedule", "seed", "config_hash", "model_id")


def load_points(client: MlflowClient, experiment_id: str, parent_run_id: str) -> pd.DataFrame:
    """One row per child run of ``parent_run_id`` (every status), with the report's columns."""
    rows = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        rows.extend(_point_row(run) for run in page)
        token = page.token
        if not token:
            break
    columns = [
        "run_id",
        "run_name",
        "status",
        "start_time",
        *TAG_COLUMNS,
        "sparsity_target",
        "distill",
        *METRIC_COLUMNS.values(),
        "error",
    ]
    layer_columns = sorted({c for row in rows for c in row if c.startswith("layer_sparsity/")})
    frame = pd.DataFrame(rows, columns=[*columns, *layer_columns])
    if len(frame):
        frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce")
        frame["flops_ratio"] = frame["flops_dense"] / frame["flops_remaining"]
        frame["compression"] = 1.0 / (1.0 - frame["sparsity_achieved"])
        # The papers' basis: weights only (runs logged before the weight counts existed show NaN).
        frame["compression_weights"] = frame["weights_total"] / frame["weights_nonzero"]
        frame["speedup"] = frame["latency_dense_ms"] / frame["latency_pruned_ms"]
    else:
        frame["flops_ratio"] = frame["compression"] = frame["compression_weights"] = frame["speedup"] = []
    return frame.sort_values([*SERIES, "sparsity_target", "seed"]).reset_index(drop=True)


def _point_row(run: Run) -> dict[str, Any]:
    """One point's row: what it is (tags, params), what it measured, and its per-layer sparsity."""
    row = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
    }
    row.update({tag: run.data.tags.get(tag) for tag in TAG_COLUMNS})
    row["sparsity_target"] = float(run.data.tags.get("sparsity_target", "nan"))
    row["distill"] = _distill(run.data.params)
    row.update({col: run.data.metrics.get(key, np.nan) for key, col in METRIC_COLUMNS.items()})
    # per-layer sparsity (sparsity/<layer>): the allocation each method chose
    row.update(
        {
            f"layer_sparsity/{key.removeprefix('sparsity/')}": value
            for key, value in run.data.metrics.items()
            if key.startswith("sparsity/") and key not in METRIC_COLUMNS and key != "sparsity/target"
        }
    )
    row["error"] = run.data.tags.get("error", "")
    return row


def _distill(params: dict[str, str]) -> str:
    """``off``, or ``distill<weight>`` for a point fine-tuned with distillation, ``distill<weight>-<teacher>`` when
    it distilled from another model than its own dense one (read from its logged params, so runs logged before
    the setting existed read as off).

    >>> _distill({}), _distill({"finetune.distill.weight": "0.0"}), _distill({"finetune.distill.weight": "0.7"})
    ('off', 'off', 'distill0.7')
    >>> _distill({"finetune.distill.weight": "0.7", "finetune.distill.teacher.name": "lenet5"})
    'distill0.7-lenet5'
    """
    prefix = "finetune.distill.teacher."
    teacher = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
    return distill_label(float(params.get("finetune.distill.weight") or 0.0), teacher)


def series_columns(points: pd.DataFrame) -> list[str]:
    """Columns that name a curve: granularity and threshold, plus model/importance/schedule where they vary.

    >>> series_columns(pd.DataFrame({"model": ["lenet5", "lenet5"], "importance": ["l1", "taylor"],
    ...                              "schedule": ["oneshot", "oneshot"]}))
    ['granularity', 'threshold', 'importance']
    """
    return [*SERIES, *(c for c in SPLIT_WHEN_VARIED if c in points and points[c].nunique(dropna=True) > 1)]


def _label(key: object) -> str:
    return "/".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))


def summarize(points: pd.DataFrame) -> pd.DataFrame:
    """Per series: the highest sparsity within 0.1 / 0.5 / 1.0 points of dense, and the area under the curve.

    Seeds are averaged per target first; the area is trapezoidal over achieved sparsity from the dense model
    (sparsity 0, dense accuracy) to the sparsest point, in accuracy × sparsity units.
    """
    finished = points[points["status"] == "FINISHED"]
    columns = series_columns(finished)
    rows = []
    for key, group in finished.groupby(columns):
        mean = group.groupby("sparsity_target")[["sparsity_achieved", "acc_finetuned", "acc_dense"]].mean()
        mean = mean.sort_values("sparsity_achieved")
        dense = float(group["acc_dense"].mean())
        row = {"series": _label(key), **dict(zip(columns, key, strict=True))}
        row["points"] = len(mean)
        row["dense_acc"] = dense
        for tol in TOLERANCES:
            ok = mean[mean["acc_finetuned"] >= dense - tol / 100]
            row[f"max_sparsity_within_{tol}"] = float(ok["sparsity_achieved"].max()) if len(ok) else 0.0
        # the curve starts at the dense model (sparsity 0), so series with different ranges compare fairly
        xs = np.concatenate([[0.0], mean["sparsity_achieved"].to_numpy()])
        ys = np.concatenate([[dense], mean["acc_finetuned"].to_numpy()])
        row["auc"] = float(np.trapezoid(ys, xs)) if len(xs) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(points: pd.DataFrame) -> pd.DataFrame:
    """One row per series and target sparsity, averaged over seeds: the numbers a results table quotes.

    Accuracies are fractions; ``drop`` (dense minus fine-tuned accuracy, paired per seed: each run against its
    own dense model) and ``error_pct`` (top-1 test error) are in percentage points. ``*_std`` are standard
    deviations over seeds (NaN with one seed: no estimate). A seed with several finished runs of the same
    point (a rerun) counts once, with its latest run.
    """
    finished = points[points["status"] == "FINISHED"].copy()
    if not len(finished):
        return pd.DataFrame()
    columns = [*series_columns(finished), "sparsity_target"]
    if "start_time" in finished:
        finished = finished.sort_values("start_time", kind="stable")
    finished = finished.drop_duplicates([*columns, "seed"], keep="last")
    finished["drop"] = 100 * (finished["acc_dense"] - finished["acc_finetuned"])
    finished["error_pct"] = 100 * (1 - finished["acc_finetuned"])
    layer_columns = [c for c in finished if c.startswith("layer_sparsity/")]
    rows = []
    for key, group in finished.groupby(columns):
        row = dict(zip(columns, key, strict=True))
        row["seeds"] = int(group["seed"].nunique())
        row["sparsity_achieved"] = float(group["sparsity_achieved"].mean())
        row["compression"] = 1.0 / (1.0 - row["sparsity_achieved"])
        # weights-only: the kept weights averaged over seeds, the ratio taken of the mean (as for all parameters)
        row["weights_nonzero"] = float(group["weights_nonzero"].mean())
        row["compression_weights"] = float(group["weights_total"].mean()) / row["weights_nonzero"]
        for name in ("flops_ratio", "speedup", "acc_dense", "acc_finetuned", "drop", "error_pct"):
            row[name] = float(group[name].mean())
        for name in ("acc_finetuned", "drop"):
            row[f"{name}_std"] = float(group[name].std(ddof=1)) if len(group) > 1 else float("nan")
        row.update({c: float(group[c].mean()) for c in layer_columns if group[c].notna().any()})
        rows.append(row)
    return pd.DataFrame(rows)


def log_sweep_report(
    client: MlflowClient, experiment_id: str, parent_run_id: str, out_dir: str | Path | None = None
) -> str:
    """Build and log the report of one sweep to its parent run; returns a one-line summary."""
    points = load_points(client, experiment_id, parent_run_id)
    counts = points["status"].value_counts().to_dict()
    summary = ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items())) or "no runs"
    finished = points[points["status"] == "FINISHED"]
    client.log_text(parent_run_id, points.to_csv(index=False), "report/points.csv")
    if len(points):
        client.log_table(parent_run_id, data=points.drop(columns=["error"]), artifact_file="report/points.json")
    if not len(finished):
        return summary
    table = summarize(points)
    client.log_text(parent_run_id, table.to_csv(index=False), "report/summary.csv")
    by_target = aggregate(points)
    client.log_text(parent_run_id, by_target.to_csv(index=False), "report/by_target.csv")

    _log_figures(client, parent_run_id, finished, out_dir)
    if out_dir is not None:
        for name, frame in (("points", points), ("summary", table), ("by_target", by_target)):
            frame.to_csv(Path(out_dir) / f"{name}.csv", index=False)
    metrics = unlogged(client, parent_run_id, _curve_metrics(finished, table))
    for start in range(0, len(metrics), 1000):
        client.log_batch(parent_run_id, metrics=metrics[start : start + 1000])
    client.set_tag(parent_run_id, "sweep.summary", summary)
    client.set_tag(parent_run_id, "mlflow.note.content", describe_sweep(client, parent_run_id, summary, table))
    return summary


def _log_figures(client: MlflowClient, parent_run_id: str, finished: pd.DataFrame, out_dir: str | Path | None) -> None:
    """Accuracy against compression (and against FLOPs reduction, where counted) to the run and ``out_dir``."""
    figures = {"acc_vs_sparsity.png": _figure(finished, "compression", "compression: parameters dense / remaining")}
    if finished["flops_ratio"].notna().any():
        figures["acc_vs_flops.png"] = _figure(finished, "flops_ratio", "FLOPs reduction: dense / remaining")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        client.log_figure(parent_run_id, fig, name)
        if out_dir is not None:
            fig.savefig(Path(out_dir) / name, dpi=120)
        plt.close(fig)


def _curve_metrics(finished: pd.DataFrame, table: pd.DataFrame) -> list[Metric]:
    """Each series' curve (step = 1000 × target sparsity) and its summary, as parent-run metrics."""
    metrics = []
    now = int(time.time() * 1000)
    for key, group in finished.groupby(series_columns(finished)):
        series = _label(key)
        curve = group.groupby("sparsity_target")["acc_finetuned"].mean()
        metrics += [
            Metric(f"curve/{series}/acc_finetuned", float(acc), now, round(1000 * target))
            for target, acc in curve.items()
        ]
    for row in table.to_dict("records"):
        series = row["series"]
        metrics.append(Metric(f"summary/{series}/auc", row["auc"], now, 0))
        metrics += [
            Metric(f"summary/{series}/max_sparsity_within_{tol}", row[f"max_sparsity_within_{tol}"], now, 0)
            for tol in TOLERANCES
        ]
    return metrics


def describe_sweep(client: MlflowClient, parent_run_id: str, summary: str, table: pd.DataFrame) -> str:
    """The parent run's description: the command that made the sweep, its counts, and the summary table."""
    tags = client.get_run(parent_run_id).data.tags
    command = f"prunesweep {tags.get('sweep.overrides', '')}".strip()
    shown = table.drop(columns=[c for c in ("series",) if c in table]).to_string(
        index=False, float_format=lambda v: f"{v:.4f}"
    )
    return f"Command:\n\n    {command}\n\nPoints: {summary}\n\nSummary per series:\n\n```\n{shown}\n```\n"


def unlogged(client: MlflowClient, run_id: str, metrics: list[Metric]) -> list[Metric]:
    """The metrics whose (step, value) the run's history does not hold yet: reporting twice logs nothing twice,
    while a value that changed (a resumed sweep finished more points) is logged at its step again."""
    logged: dict[str, set[tuple[int, float]]] = {}
    fresh = []
    for metric in metrics:
        if metric.key not in logged:
            logged[metric.key] = {(m.step, m.value) for m in client.get_metric_history(run_id, metric.key)}
        if (metric.step, metric.value) not in logged[metric.key]:
            fresh.append(metric)
    return fresh


def _figure(finished: pd.DataFrame, x: str, label: str) -> plt.Figure:
    # one dense reference line only when every series shares the dense model (same model and seed set)
    dense = float(finished["acc_dense"].mean()) if finished["model"].nunique() <= 1 else None
    return plots.accuracy_vs(finished, x=x, series=series_columns(finished), dense_acc=dense, xlabel=label)


def find_parent(client: MlflowClient, target: str | None, experiment: str) -> tuple[str, str]:
    """(experiment id, parent run id) for: nothing (latest sweep of ``experiment``), an experiment name
    (its latest sweep), a sweep id, or a parent run id."""
    latest = "tags.prunesweep_role = 'parent'"
    lookups: list[tuple[str, str]] = []
    if target is None:
        lookups.append((experiment, latest))
    else:
        lookups += [(target, latest), (experiment, f"{latest} and tags.sweep_id = '{target}'")]
    for name, filter_string in lookups:
        found = client.get_experiment_by_name(name)
        if found is None:
            continue
        runs = client.search_runs(
            [found.experiment_id], filter_string, order_by=["attributes.start_time DESC"], max_results=1
        )
        if runs:
            return found.experiment_id, runs[0].info.run_id
    if target is not None:
        try:
            run = client.get_run(target)
            return run.info.experiment_id, run.info.run_id
        except Exception:  # MLflow raises its own RestException/MlflowException for unknown ids
            pass
    raise SystemExit(
        f"prunesweep-report: no sweep found for {target or 'the latest sweep'} in experiment {experiment!r}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prunesweep-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", help="sweep id, parent run id or experiment name (default: latest sweep)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///outputs/mlflow.db"))
    parser.add_argument("--experiment", default="prunesweep")
    parser.add_argument("--out", help="also write figures and tables to this folder")
    parser.add_argument("--register", metavar="NAME", help="register each series' best model under NAME (aliased)")
    parser.add_argument(
        "--tolerance", type=float, default=0.5, help="accuracy points below dense a registered model may lose"
    )
    args = parser.parse_args(argv)
    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment_id, parent = find_parent(client, args.target, args.experiment)
    summary = log_sweep_report(client, experiment_id, parent, args.out)
    points = load_points(client, experiment_id, parent)
    shown = [
        "run_name",
        "status",
        "sparsity_achieved",
        "compression",
        "compression_weights",
        "acc_dense",
        "acc_pruned",
        "acc_finetuned",
        "flops_ratio",
    ]
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(points[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        table = summarize(points)
        if len(table):
            print()
            print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            by_target = aggregate(points)
            shown = [c for c in by_target if not c.startswith("layer_sparsity/") and c != "acc_dense"]
            print("\nmean over seeds (drop and error in accuracy points):")
            print(by_target[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\n{summary}; report logged to parent run {parent}", file=sys.stderr)
    if args.register:
        _register(client, points, args.register, args.tolerance)


def _register(client: MlflowClient, points: pd.DataFrame, name: str, tolerance: float) -> None:
    from prunesweep.registry import best_per_series, register_best

    best = best_per_series(points, series_columns(points[points["status"] == "FINISHED"]), tolerance)
    if not len(best):
        print(f"no point is within {tolerance} accuracy points of dense: nothing registered", file=sys.stderr)
    for row in register_best(client, name, best):
        state = "registered" if row["new"] == "True" else "already registered"
        print(f"{name}@{row['alias']} -> version {row['version']} ({state})")


if __name__ == "__main__":
    main()
