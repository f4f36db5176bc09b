"""Model measurements that respect prune masks: parameters, MACs, bytes, latency, per-layer sparsity.

>>> from prunesweep.models import LeNet5
>>> model = LeNet5()
>>> count_params(model)[0], count_macs(model), size_bytes(model)
(431080, 2293000, 1724320)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from prunesweep.pruning._util import (
    DEFAULT_INPUT_SHAPE,
    effective_named_params,
    effective_param,
    eval_mode,
    is_reparametrized,
    model_device,
)


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(total, nonzero)`` over all parameters, using the *effective* (masked) values."""
    total = nonzero = 0
    for _, value in effective_named_params(model):
        total += value.numel()
        nonzero += int((value.detach() != 0).sum())
    return total, nonzero


def count_weights(model: nn.Module) -> tuple[int, int]:
    """``(total, nonzero)`` over the weights only, as pruning papers count them: every parameter of two or more
    dimensions (conv kernels, linear matrices), without biases and normalisation scales.

    >>> from prunesweep.models import LeNet5
    >>> count_weights(LeNet5())  # Han et al.'s LeNet-5: 430K weights (and 580 biases)
    (430500, 430500)
    """
    total = nonzero = 0
    for _, value in effective_named_params(model):
        if value.dim() >= 2:
            total += value.numel()
            nonzero += int((value.detach() != 0).sum())
    return total, nonzero


def count_macs(model: nn.Module, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE, sparse: bool = True) -> int:
    """Multiply-accumulates of every conv/linear layer for one input (bias adds and activations excluded).

    ``sparse=True`` counts only nonzero weights (what a sparse kernel would execute); a rebuilt model has no
    zeros, so its sparse and dense counts agree. ``input_shape`` includes the batch dim; the count is per
    sample. Torch-Pruning's ``count_ops_and_params`` additionally counts one op per bias per output element.
    """
    macs = 0

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal macs
        weight = effective_param(module, "weight").detach()
        weights = int((weight != 0).sum()) if sparse else weight.numel()
        if isinstance(module, nn.modules.conv._ConvNd):
            positions = output[0, 0].numel()  # each weight is used once per output position
        else:  # Linear: once per row of the (possibly >2-D) input
            positions = output[0].numel() // output.shape[-1]
        macs += weights * positions

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    try:
        with eval_mode(model), torch.inference_mode():
            x = torch.zeros(tuple(input_shape), device=model_device(model))
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return macs


def size_bytes(model: nn.Module) -> int:
    """Bytes to store every parameter densely as float32 (masks and buffers excluded)."""
    return 4 * count_params(model)[0]


def latency_ms(
    model: nn.Module,
    batch_size: int,
    repeats: int = 20,
    warmup: int = 3,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE[1:],
    budget_s: float | None = None,
) -> float:
    """Median wall-clock milliseconds of one forward pass on a ``batch_size`` batch (inference mode).

    ``budget_s`` caps the wall time: the timed passes stop once it is spent (at least one is always timed), so a
    slow model costs a fixed time per measurement, not ``repeats`` times its latency. On CUDA each pass is timed
    between device synchronisations.
    """
    device = model_device(model)
    x = torch.randn(batch_size, *input_shape, device=device)
    times: list[float] = []
    began = time.perf_counter()
    with eval_mode(model), torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
            if budget_s is not None and times and time.perf_counter() - began >= budget_s:
                break
    return statistics.median(times)


def layer_sparsity(model: nn.Module, layer_names: Sequence[str], include_bias: bool = True) -> dict[str, float]:
    """Fraction of zero entries of each layer's effective weight (+ bias by default, like ``LayerReport``)."""
    out = {}
    for layer in layer_names:
        module = model.get_submodule(layer)
        total = zeros = 0
        for pname in ("weight", "bias") if include_bias else ("weight",):
            if getattr(module, pname, None) is None and not is_reparametrized(module, pname):
                continue
            value = effective_param(module, pname).detach()
            total += value.numel()
            zeros += int((value == 0).sum())
        out[layer] = zeros / total if total else 0.0
    return out
