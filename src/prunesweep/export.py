"""ONNX export of a (pruned) model, checked against PyTorch with ONNX Runtime, and timed there.

Pure PyTorch/ONNX: no MLflow here (``tracking/models.py`` logs what this returns).
"""

from __future__ import annotations

import io
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

MAX_ABS_DIFF = 1e-4  # an export whose outputs differ more than this from PyTorch's is refused


class OnnxExportError(RuntimeError):
    """This model cannot be exported to ONNX, or its export does not compute what the model does."""


@dataclass
class OnnxExport:
    """The serialized model and what was measured on it (``onnx/max_abs_diff``, ``size/onnx_bytes``, latency)."""

    payload: bytes
    metrics: dict[str, float] = field(default_factory=dict)


def export_onnx(model: nn.Module, example: torch.Tensor, batches: Sequence[int] = (1, 256)) -> OnnxExport:
    """``model`` exported with a dynamic batch axis, checked on ``example`` with ONNX Runtime, timed per batch."""
    import onnx
    import onnxruntime as ort

    model = model.eval().cpu()
    example = example.detach().cpu().float()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript exporter: ~0.15 s for LeNet-5 against ~3 s for the torch.export-based one.
            torch.onnx.export(
                model,
                (example[:1],),
                buffer,
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
    except Exception as err:  # each exporter raises its own types; all mean "not exportable"
        raise OnnxExportError(f"{type(err).__name__}: {str(err)[:300]}") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads PyTorch's latency used
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example).numpy()
    got = session.run(None, {"input": example.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= MAX_ABS_DIFF:
        raise OnnxExportError(f"ONNX Runtime outputs differ from PyTorch's by {diff:.3g} (> {MAX_ABS_DIFF})")
    metrics = {"onnx/max_abs_diff": diff, "size/onnx_bytes": float(len(buffer.getvalue()))}
    for batch in batches:
        metrics[f"latency/onnx_ms_b{batch}"] = _ort_latency_ms(session, (batch, *example.shape[1:]))
    return OnnxExport(buffer.getvalue(), metrics)


def _ort_latency_ms(session: object, shape: tuple[int, ...], repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of one ONNX Runtime run, measured like ``pruning.latency_ms``."""
    x = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        session.run(None, x)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
