"""The Hydra callback that turns a multirun into one MLflow parent run with its children.

In the launching process, before any job starts (``on_multirun_start``) it:
  * expands the sweep and validates every point, so a bad combination fails in seconds, not an hour in;
  * creates the store and the experiment once (avoiding SQLite creation races between parallel jobs);
  * opens the parent run, or reopens it when the same sweep is launched again (resume), and marks runs
    that a killed launch left RUNNING as FAILED;
  * writes ``sweep.json`` in the sweep directory, where every job finds the parent run id.
Each job prints ``point i/N`` with the elapsed time when it starts (serial launchers only) and one line when it
ends (``prunesweep.progress``). At the end the report (figure, table, curve
metrics) is logged to the parent run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from prunesweep.progress import finished_line, runs_in_parallel
from prunesweep.tracking.store import open_store

log = logging.getLogger("prunesweep")

SWEEP_FILE = "sweep.json"
# The parent run's copy of the sweep directory's name: how a worker that cannot read sweep.json finds its sweep.
SWEEP_DIR_TAG = "sweep_dir"


def _is_multirun(config: DictConfig) -> bool:
    return config.hydra.mode is not None and str(config.hydra.mode) == "RunMode.MULTIRUN"


def _swept_overrides(config: DictConfig, info: dict[str, Any]) -> str:
    """The point's overrides of the keys the sweep varies (all of them when unknown)."""
    swept = set(info.get("swept_keys") or [])
    return " ".join(o for o in config.hydra.overrides.task if not swept or o.split("=", 1)[0] in swept)


def sweep_file(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / SWEEP_FILE


def read_sweep_file(sweep_dir: str | Path) -> dict[str, Any] | None:
    path = sweep_file(sweep_dir)
    return json.loads(path.read_text()) if path.exists() else None


def find_sweep(sweep_dir: str | Path, tracking_uri: str, experiment: str) -> dict[str, Any] | None:
    """The sweep's ids from ``sweep.json``, or, on a worker that does not share the launching machine's disk
    (a Ray node elsewhere), from the parent run tagged with the same sweep directory; None outside a sweep."""
    info = read_sweep_file(sweep_dir)
    if info is not None:
        return info
    store = open_store(tracking_uri, experiment)
    parents = store.client.search_runs(
        [store.experiment_id],
        filter_string=f"tags.prunesweep_role = 'parent' and tags.{SWEEP_DIR_TAG} = '{sweep_dir}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        return None
    return {"sweep_id": parents[0].data.tags["sweep_id"], "parent_run_id": parents[0].info.run_id}


def sweeper_params(config: DictConfig) -> dict[str, Any]:
    """The sweeper's ``params`` (a ``+sweep=`` file's grid) as a plain dict; empty for a plain ``-m`` grid,
    where Hydra leaves it an empty dict rather than a config node."""
    params = config.hydra.sweeper.get("params")
    return OmegaConf.to_container(params, resolve=False) if isinstance(params, DictConfig) else dict(params or {})


def sweep_id_of(config: DictConfig) -> str:
    """Same command line (and sweep definition) -> same id, so a re-launch resumes the same sweep."""
    task = sorted(o for o in config.hydra.overrides.task if not o.startswith("hydra."))
    digest = hashlib.sha256(
        json.dumps([task, sweeper_params(config)], sort_keys=True, default=str).encode()
    ).hexdigest()
    return f"sweep-{digest[:10]}"


def expand_points(config: DictConfig) -> list[list[str]] | None:
    """Override lists of every job of a basic-sweeper multirun; None for sweepers that decide as they go.

    The sweep file's grid comes first and the command line after it, as Hydra's basic sweeper orders them,
    so a key typed on the command line overrides the same key of a ``+sweep=`` file.
    """
    basic_sweeper = _basic_sweeper()
    if config.hydra.sweeper.get("_target_") != f"{basic_sweeper.__module__}.{basic_sweeper.__name__}":
        return None
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    params = [f"{k}={v}" for k, v in sweeper_params(config).items()]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(params + list(config.hydra.overrides.task))
    return [list(job) for batch in basic_sweeper.split_arguments(parsed, None) for job in batch]


def _basic_sweeper() -> type:
    """Hydra's basic sweeper, the one private Hydra API this project uses: it expands a grid exactly as the
    launch will, so every point is validated before the first runs. ``tests/tracking`` fails if it moves."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper


def validate_points(config: DictConfig, points: list[list[str]]) -> None:
    """Compose and validate every point of the sweep before the first one starts."""
    from hydra.core.global_hydra import GlobalHydra

    from prunesweep.config import ConfigError, validate

    loader = GlobalHydra.instance().config_loader()
    for index, overrides in enumerate(points):
        job_cfg = loader.load_sweep_config(config, overrides)
        try:
            validate(job_cfg)
        except ConfigError as err:
            raise ConfigError(
                f"sweep point {index + 1}/{len(points)} ({' '.join(overrides)}) is invalid: {err}. "
                "Nothing was run; fix the sweep definition or drop that combination."
            ) from None


def _swept_keys(points: list[list[str]]) -> list[str]:
    """Keys whose value changes between points: what the progress line shows."""
    values: dict[str, set[str]] = {}
    for overrides in points:
        for override in overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return sorted(k for k, v in values.items() if len(v) > 1)


class SweepCallback(Callback):
    """Parent MLflow run, validation up front, progress and the closing report for a Hydra multirun."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and launches the jobs anyway; a sweep that
        # cannot be validated or tracked must not start, so stop the process instead.
        from prunesweep.config import ConfigError
        from prunesweep.tracking.store import TrackingError

        try:
            self._start(config)
        except (ConfigError, TrackingError) as err:
            print(f"prunesweep: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except Exception:
            log.exception("could not start the sweep; nothing was run")
            raise SystemExit(1) from None

    def _start(self, config: DictConfig) -> None:
        points = expand_points(config)
        if points is not None:
            validate_points(config, points)
        store = open_store(
            str(config.tracking.uri), str(config.tracking.experiment), config.tracking.get("artifact_root")
        )
        sweep_id = sweep_id_of(config)
        parents = store.client.search_runs(
            [store.experiment_id],
            filter_string=f"tags.sweep_id = '{sweep_id}' and tags.prunesweep_role = 'parent'",
            max_results=1,
        )
        if parents:
            parent_id = parents[0].info.run_id
            store.client.update_run(parent_id, status="RUNNING")
            self._fail_stale_children(store, parent_id)
            log.info("resuming sweep %s (parent run %s)", sweep_id, parent_id)
        else:
            overrides = " ".join(config.hydra.overrides.task)
            parent = store.client.create_run(
                store.experiment_id,
                run_name=f"sweep-{config.hydra.job.name}-{sweep_id.removeprefix('sweep-')}",
                tags={
                    "sweep_id": sweep_id,
                    "prunesweep_role": "parent",
                    "sweep.overrides": overrides[:5000],
                    "sweep.points": str(len(points) if points is not None else "unknown"),
                },
            )
            parent_id = parent.info.run_id
        store.client.set_tag(parent_id, SWEEP_DIR_TAG, str(config.hydra.sweep.dir))  # this launch's directory
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        info = {
            "sweep_id": sweep_id,
            "parent_run_id": parent_id,
            "experiment_id": store.experiment_id,
            "tracking_uri": store.uri,
            "points": len(points) if points is not None else None,
            "swept_keys": _swept_keys(points or []),
            "started": time.time(),
        }
        sweep_file(sweep_dir).write_text(json.dumps(info, indent=2))
        total = info["points"] or "?"
        print(f"[prunesweep] sweep {sweep_id}: {total} points; parent run {parent_id}", flush=True)

    @staticmethod
    def _fail_stale_children(store: Any, parent_id: str, when: str = "the sweep was relaunched") -> None:
        """Runs a killed launch or a lost worker left RUNNING can never finish: mark them FAILED, to be redone."""
        stale = store.client.search_runs(
            [store.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'",
        )
        for run in stale:
            store.client.set_tag(run.info.run_id, "error", f"interrupted: still RUNNING when {when}")
            store.client.set_terminated(run.info.run_id, "FAILED")
            log.warning("run %s was left RUNNING by a lost attempt; marked FAILED", run.info.run_name)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._job_started = time.monotonic()
        # Parallel jobs print only when they finish (on_job_end): their start lines would interleave.
        if not _is_multirun(config) or runs_in_parallel(config.hydra):
            return
        info = read_sweep_file(config.hydra.sweep.dir) or {}
        elapsed = time.time() - float(info.get("started", time.time()))
        total = info.get("points") or "?"
        print(
            f"[prunesweep] point {config.hydra.job.num + 1}/{total} (elapsed {elapsed / 60:.1f} min): "
            f"{_swept_overrides(config, info)}",
            flush=True,
        )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        info = read_sweep_file(config.hydra.sweep.dir) or {}
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, dict):
            result = job_return.return_value
        else:
            result = {"status": "failed", "error": repr(job_return._return_value)}
        seconds = time.monotonic() - getattr(self, "_job_started", time.monotonic())
        number, total = config.hydra.job.num + 1, info.get("points") or "?"
        print(finished_line(number, total, seconds, result, _swept_overrides(config, info)), flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._finish(config)
        except Exception:
            log.exception("the sweep's report failed; rerun it with `prunesweep-report` (the runs are safe)")

    def _finish(self, config: DictConfig) -> None:
        from prunesweep.report import log_sweep_report

        info = read_sweep_file(config.hydra.sweep.dir)
        if info is None:
            return
        store = open_store(info["tracking_uri"], str(config.tracking.experiment))
        # A launcher that retries a point itself (Ray, after a node died) leaves the lost attempt RUNNING.
        self._fail_stale_children(store, info["parent_run_id"], when="the sweep ended (its worker was lost)")
        summary = log_sweep_report(store.client, store.experiment_id, info["parent_run_id"])
        store.client.set_terminated(info["parent_run_id"], "FINISHED")
        elapsed = time.time() - float(info["started"])
        print(
            f"[prunesweep] sweep {info['sweep_id']} done in {elapsed / 60:.1f} min: {summary}. "
            f"Parent run {info['parent_run_id']}; look with: "
            f"mlflow ui --backend-store-uri {info['tracking_uri']} --host 127.0.0.1",
            flush=True,
        )
