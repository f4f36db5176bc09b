"""ONNX export: what ONNX Runtime computes matches PyTorch, and a model that cannot be exported is refused for
its point only (a tag and a warning), on a real SQLite store."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from prunesweep.export import MAX_ABS_DIFF, OnnxExportError, export_onnx
from prunesweep.models.lenet5 import LeNet5
from prunesweep.tracking import PointRun, open_store
from prunesweep.tracking.models import log_onnx


class Unexportable(nn.Module):
    """An operator no ONNX opset has."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x.flatten(1))


def test_lenet5_exports_and_matches_pytorch():
    torch.manual_seed(0)
    export = export_onnx(LeNet5(), torch.randn(64, 1, 28, 28), batches=(1, 8))
    assert 0 <= export.metrics["onnx/max_abs_diff"] <= MAX_ABS_DIFF
    assert export.metrics["size/onnx_bytes"] == len(export.payload) > 100_000
    assert export.metrics["latency/onnx_ms_b1"] > 0 and export.metrics["latency/onnx_ms_b8"] > 0
    graph = onnx.load_from_string(export.payload).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]


def test_unexportable_model_is_refused_by_name():
    with pytest.raises(OnnxExportError, match="bessel_j0"):
        export_onnx(Unexportable(), torch.randn(2, 1, 28, 28))


def test_refusal_tags_the_point_and_logs_no_onnx(tmp_path, store_uri):
    store = open_store(store_uri, "export", str(tmp_path / "artifacts"))
    point = PointRun(store, "refused", {}, {})
    assert log_onnx(point, Unexportable(), torch.randn(2, 1, 28, 28)) == {}
    run = store.client.get_run(point.run_id)
    assert "bessel_j0" in run.data.tags["onnx/refused"]
    assert "model.onnx" not in {a.path for a in store.client.list_artifacts(point.run_id)}
    exported = PointRun(store, "exported", {}, {})
    assert log_onnx(exported, LeNet5(), torch.randn(2, 1, 28, 28))["onnx/max_abs_diff"] <= MAX_ABS_DIFF
    assert "model.onnx" in {a.path for a in store.client.list_artifacts(exported.run_id)}
