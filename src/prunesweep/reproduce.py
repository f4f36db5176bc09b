"""Re-run one recorded point from what MLflow holds of it, and say how the new run differs.

    prunesweep-reproduce <run_id>                          # store: $MLFLOW_TRACKING_URI or outputs/mlflow.db
    prunesweep-reproduce <run_id> --tracking-uri http://127.0.0.1:5000

The point's ``config.yaml`` artifact is run again as a new run in the same store and experiment, tagged
``prunesweep.reproduces=<run_id>``. Before it runs, a recorded git commit or package version that differs
from what is installed is warned about; after it, so are different data digests, and every metric both
runs hold is printed with its difference. The harness is deterministic on CPU: on one machine ``acc/*`` and
``params/nonzero`` come out identical, and on another with the same instruction set (``cpu.capability``, e.g.
AVX2); a different one is warned about first, as it changes the floats.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from prunesweep.tracking.run import git_commit, machine_tags, package_versions

log = logging.getLogger("prunesweep")

SOURCE_TAG = "prunesweep.reproduces"
EXACT = ("acc/", "params/nonzero", "sparsity/achieved")  # what a deterministic rerun must repeat exactly


def recorded_config(client: MlflowClient, run_id: str, tracking_uri: str) -> DictConfig:
    """The point's logged ``config.yaml``, pointed at ``tracking_uri`` (where the source run was found)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "config.yaml", tmp)
        cfg = OmegaConf.load(path)
    cfg.tracking.uri = tracking_uri
    cfg.tracking.experiment = client.get_experiment(client.get_run(run_id).info.experiment_id).name
    return cfg


def environment_differences(tags: Mapping[str, str]) -> list[str]:
    """Recorded git commit, package versions and CPU instruction set that differ from this machine's.

    >>> environment_differences({"version.prunesweep": "0.0.0-old"})[0].startswith("version.prunesweep: recorded")
    True
    >>> environment_differences({"cpu.capability": "SVE-9000"})[0].startswith("cpu.capability: recorded SVE-9000")
    True

    The processor's name (``cpu.model``) is recorded but not compared: the instruction set picks the kernels.
    """
    here = {"git_commit": git_commit(), **package_versions(), "cpu.capability": machine_tags()["cpu.capability"]}
    return [
        f"{key}: recorded {tags[key]}, installed {value}"
        for key, value in here.items()
        if key in tags and tags[key] != value
    ]


def data_differences(source: Run, new: Run) -> list[str]:
    """Split digests (``data.digest.<split>`` tags) that differ between the two runs."""
    keys = sorted(k for k in source.data.tags if k.startswith("data.digest."))
    return [
        f"{key}: recorded {source.data.tags[key]}, now {new.data.tags.get(key)}"
        for key in keys
        if source.data.tags[key] != new.data.tags.get(key)
    ]


def metric_differences(source: Mapping[str, float], new: Mapping[str, float]) -> list[dict[str, Any]]:
    """Every metric both runs hold: recorded, new, difference, and whether it must repeat exactly.

    >>> [d["metric"] for d in metric_differences({"acc/dense": 0.9, "x": 1.0}, {"acc/dense": 0.9})]
    ['acc/dense']
    """
    rows = []
    for key in sorted(set(source) & set(new)):
        diff = new[key] - source[key]
        rows.append(
            {"metric": key, "recorded": source[key], "new": new[key], "diff": diff, "exact": key.startswith(EXACT)}
        )
    return rows


def reproduce(client: MlflowClient, run_id: str, tracking_uri: str) -> tuple[Run, list[dict[str, Any]], list[str]]:
    """Re-run ``run_id``'s point; returns the new run, the metric differences and the warnings given."""
    from prunesweep import experiment

    source = client.get_run(run_id)
    cfg = recorded_config(client, run_id, tracking_uri)
    warnings = environment_differences(source.data.tags)
    for line in warnings:
        log.warning("reproducing %s: %s", run_id, line)
    result = experiment.run(cfg)
    client.set_tag(result["run_id"], SOURCE_TAG, run_id)
    new = client.get_run(result["run_id"])
    data = data_differences(source, new)
    for line in data:
        log.warning("reproducing %s: %s", run_id, line)
    return new, metric_differences(source.data.metrics, new.data.metrics), warnings + data


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prunesweep-reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_id", help="the MLflow run id of a recorded point")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///outputs/mlflow.db"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] %(message)s")
    client = MlflowClient(tracking_uri=args.tracking_uri)
    new, rows, warnings = reproduce(client, args.run_id, args.tracking_uri)
    changed = [r for r in rows if r["diff"] != 0 and not (math.isnan(r["recorded"]) and math.isnan(r["new"]))]
    print(f"new run {new.info.run_id} ({new.info.run_name}) reproduces {args.run_id}")
    for row in changed:
        mark = "  MUST MATCH" if row["exact"] else ""
        print(f"  {row['metric']:<32} {row['recorded']:>14.6g} -> {row['new']:>14.6g}  ({row['diff']:+.3g}){mark}")
    exact_changed = [r["metric"] for r in changed if r["exact"]]
    print(f"{len(rows)} metrics compared, {len(changed)} differ; exact ones differing: {exact_changed or 'none'}")
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if exact_changed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
