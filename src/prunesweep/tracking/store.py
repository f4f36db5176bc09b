"""The MLflow store: open it, check it is reachable, find or create the experiment.

All MLflow calls go through an explicit ``MlflowClient`` and run id, never MLflow's global
"active run", so parallel jobs and threads cannot log into each other's runs.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from prunesweep.storage import ensure_writable, sqlite_path

log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The MLflow store cannot be used (unreachable server, unwritable database folder)."""


@dataclass
class Store:
    """An MLflow client bound to one experiment."""

    client: MlflowClient
    experiment_id: str
    uri: str

    def finished_point(self, config_hash: str, sweep_id: str) -> Run | None:
        """A FINISHED run of this sweep with this config hash, if any: a resumed sweep skips that point."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.config_hash = '{config_hash}' and tags.sweep_id = '{sweep_id}' "
                "and attributes.status = 'FINISHED'"
            ),
            max_results=1,
        )
        return runs[0] if runs else None


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail at start, not after an hour of training, when the store cannot be reached."""
    db = sqlite_path(uri)
    if db is not None:
        if db.exists() and not db.is_file():
            raise TrackingError(f"tracking.uri={uri!r}: {db} exists and is not a file")
        try:
            ensure_writable(db.parent)
        except OSError as err:
            raise TrackingError(f"tracking.uri={uri!r}: folder {db.parent} is not writable: {err}") from None
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
                response.read()
        except (urllib.error.URLError, OSError) as err:
            raise TrackingError(
                f"tracking.uri={uri!r} is unreachable ({err}); start it with "
                "`mlflow server --backend-store-uri sqlite:///outputs/mlflow.db --host 127.0.0.1` "
                "or point tracking.uri at a sqlite:/// file"
            ) from None


def open_store(uri: str, experiment: str, artifact_root: str | None = None) -> Store:
    """Client and experiment id; creates the experiment (with a local artifact folder) when missing."""
    check_reachable(uri)
    with _creation_lock(uri):
        # The client builds MLflow's store at once, and that creates and migrates the tables of a new
        # database: it must happen under the lock, or two sweeps started together race on the schema.
        client = MlflowClient(tracking_uri=uri)
        return _get_or_create(client, uri, experiment, artifact_root)


def _creation_lock(uri: str) -> contextlib.AbstractContextManager:
    """Serialise the first touch of a SQLite store: MLflow creates its tables then, and two processes doing
    it at once collide (``duplicate column name``). Servers and other databases handle this themselves."""
    db = sqlite_path(uri)
    if db is None:
        return contextlib.nullcontext()
    return FileLock(str(db) + ".lock")


# MLflow 3's UI opens an experiment by its kind; without this tag it shows the GenAI view (traces, agents)
# instead of the model-training runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _get_or_create(client: MlflowClient, uri: str, experiment: str, artifact_root: str | None) -> Store:
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        for key, value in EXPERIMENT_KIND.items():
            if key not in found.tags:  # stores made before the tag existed
                client.set_experiment_tag(found.experiment_id, key, value)
        return Store(client, found.experiment_id, uri)
    location = None
    if artifact_root and not uri.startswith(("http://", "https://")):
        # Artifacts next to the database, not in MLflow's CWD-relative default.
        location = Path(artifact_root).expanduser().resolve().as_uri()
    try:
        experiment_id = client.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:
        # Another process created it between our lookup and our create.
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        experiment_id = found.experiment_id
    return Store(client, experiment_id, uri)
