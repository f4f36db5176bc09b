"""The MLflow store as the UI expects it: a model-training experiment, created once, on a real SQLite file."""

from __future__ import annotations

import os

from mlflow.tracking import MlflowClient

from prunesweep.tracking import open_store
from prunesweep.tracking.models import scoped_tracking_uri
from prunesweep.tracking.store import EXPERIMENT_KIND


def test_experiment_is_created_as_a_model_training_experiment(store_uri):
    store = open_store(store_uri, "prunesweep")
    tags = MlflowClient(tracking_uri=store_uri).get_experiment(store.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert open_store(store_uri, "prunesweep").experiment_id == store.experiment_id


def test_an_older_experiment_gets_the_kind_tag_when_opened(store_uri, tmp_path):
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.create_experiment("made-before", artifact_location=(tmp_path / "mlartifacts").as_uri())
    assert "mlflow.experimentKind" not in client.get_experiment(experiment_id).tags
    assert open_store(store_uri, "made-before").experiment_id == experiment_id
    assert client.get_experiment(experiment_id).tags.items() >= EXPERIMENT_KIND.items()


def test_the_scoped_tracking_uri_leaves_no_trace(store_uri):
    """log_model needs MLflow's global URI; once the block ends, neither it nor the environment variable remains."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    with scoped_tracking_uri(store_uri):
        assert os.environ["MLFLOW_TRACKING_URI"] == store_uri
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
