"""The pruned model as an MLflow 3 logged model: what the Models tab lists, compares and registers.

``mlflow.pytorch.log_model`` has no client argument: it resolves the tracking URI from MLflow's global
state. :func:`log_pruned_model` sets that URI only for the duration of the call and restores it, and passes
a pre-created logged model (source run: the point's), so no fluent "active run" is ever started (which would end
the point's run on exit).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import warnings
from collections.abc import Iterator, Mapping

import mlflow
import numpy as np
import torch
from mlflow.entities import LoggedModelOutput
from mlflow.models import infer_signature
from torch import nn

from prunesweep.export import OnnxExportError, export_onnx
from prunesweep.tracking.run import PointRun

log = logging.getLogger("prunesweep")

MODEL_NAME = "pruned_model"


def pip_requirements() -> list[str]:
    """Pinned requirements written with the model. Passed explicitly because MLflow's inference of them
    imports the model in a subprocess (seconds per point). ``prunesweep`` is listed since the rebuilt
    models' classes live in it."""
    names = ("torch", "mlflow", "numpy", "prunesweep")
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


@contextlib.contextmanager
def scoped_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for the block only (log_model reads nothing else)."""
    before = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        # None unsets it, and the MLFLOW_TRACKING_URI variable MLflow also set: restoring "" instead left an
        # empty variable behind, which every later config read as tracking.uri=''.
        mlflow.set_tracking_uri(before)


def log_pruned_model(point: PointRun, model: nn.Module, example: torch.Tensor, metrics: Mapping[str, float]) -> str:
    """Log ``model`` (eval mode, CPU) to the point's run, then ``metrics`` linked to it; return its model id.

    The final metrics are logged after the model, once each, with its id.

    ``example`` is a small input batch: the input example, and what the signature is inferred from.
    """
    model = model.eval().cpu()
    example = example[:2].detach().cpu().float()
    with torch.no_grad():
        output = model(example)
    signature = infer_signature(example.numpy(), output.numpy())
    # Created here, in the point's experiment: left to log_model, it would land in MLflow's global "active"
    # experiment (experiment 0, artifacts under the working directory).
    logged = point.client.create_logged_model(point.store.experiment_id, name=MODEL_NAME, source_run_id=point.run_id)
    with scoped_tracking_uri(point.store.uri), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on every model
        info = mlflow.pytorch.log_model(
            model,
            name=MODEL_NAME,
            model_id=logged.model_id,
            signature=signature,
            input_example=np.asarray(example.numpy()),
            pip_requirements=pip_requirements(),
        )
    # The run's output, recorded here rather than by log_model: given the run id, log_model also re-logs every
    # step-0 metric of the run (epoch 0 of the training curves among them) to link it, doubling those points.
    point.client.log_outputs(point.run_id, models=[LoggedModelOutput(info.model_id, step=0)])
    point.log_metrics(metrics, model_id=info.model_id)
    return info.model_id


def log_onnx(point: PointRun, model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """``model.onnx`` and its checks logged to the run; returns the ONNX metrics. A model that cannot be
    exported is refused for this point only: a warning and an ``onnx/refused`` tag, never a failed run."""
    try:
        export = export_onnx(model, example)
    except OnnxExportError as err:
        log.warning("ONNX export refused for %s: %s", point.name, err)
        point.set_tags({"onnx/refused": str(err)[:5000]})
        return {}
    point.log_bytes(export.payload, "model.onnx")
    return export.metrics


def log_point_model(
    point: PointRun, model: nn.Module, example: torch.Tensor, metrics: Mapping[str, float], onnx: bool = True
) -> str:
    """The point's deployable outputs: ONNX (when asked), then the logged model with every metric linked."""
    all_metrics = dict(metrics)
    if onnx:
        all_metrics.update(log_onnx(point, model, example))
    return log_pruned_model(point, model, example, all_metrics)
