"""Measurements (params, MACs, bytes, latency), sparse export, and the modules' doctests."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from prunesweep.models import LeNet5, LeNet300
from prunesweep.pruning import (
    PruningSpec,
    apply_masks,
    compute_masks,
    count_macs,
    count_params,
    latency_ms,
    layer_sparsity,
    load_sparse_export,
    rebuild_channels,
    size_bytes,
    sparse_export,
)

EXAMPLE = torch.zeros(1, 1, 28, 28)


def _bias_ops(model: nn.Module) -> int:
    """One add per bias per output element: what Torch-Pruning counts on top of weight MACs."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if module.bias is not None:
            total += output[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model(EXAMPLE)
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("model_cls", [LeNet5, LeNet300])
def test_dense_and_rebuilt_macs_match_torch_pruning(model_cls) -> None:
    torch.manual_seed(0)
    model = model_cls()
    ops, params = tp.utils.count_ops_and_params(model, EXAMPLE)
    assert count_macs(model, sparse=False) + _bias_ops(model) == ops
    assert count_params(model) == (params, params)
    assert size_bytes(model) == 4 * params

    plan = compute_masks(model, PruningSpec(sparsity=0.5, granularity="channel", threshold="global"))
    apply_masks(model, plan)
    rebuilt = rebuild_channels(model, plan, EXAMPLE)
    ops, params = tp.utils.count_ops_and_params(rebuilt, EXAMPLE)
    assert count_macs(rebuilt) == count_macs(rebuilt, sparse=False)
    assert count_macs(rebuilt) + _bias_ops(rebuilt) == ops
    assert count_params(rebuilt) == (params, params)
    # A masked channel model runs its dead channels' zero weights only in dense counting.
    assert count_macs(model) == count_macs(rebuilt) < count_macs(model, sparse=False)


def test_sparse_macs_count_nonzero_weights() -> None:
    torch.manual_seed(0)
    model = LeNet300()  # linear only: one MAC per nonzero weight
    plan = compute_masks(model, PruningSpec(sparsity=0.9, threshold="layerwise"))
    apply_masks(model, plan)
    assert count_macs(model) == sum(int((model.get_submodule(n).weight != 0).sum()) for n in model.prunable_layers)
    assert count_macs(model) == pytest.approx(0.1 * count_macs(model, sparse=False), rel=1e-3)
    total, nonzero = count_params(model)
    assert total == 266_610 and nonzero == count_macs(model) + 410  # biases stay
    sparsity = layer_sparsity(model, model.prunable_layers, include_bias=False)
    assert sparsity == pytest.approx({"fc1": 0.9, "fc2": 0.9, "fc3": 0.9}, abs=1e-3)
    assert layer_sparsity(model, ["fc3"])["fc3"] == pytest.approx(900 / 1010)


def test_latency_is_positive_and_restores_mode() -> None:
    model = LeNet5().train()
    ms = latency_ms(model, batch_size=4, repeats=3, warmup=1)
    assert ms > 0 and model.training


@pytest.mark.parametrize("model_cls", [LeNet5, LeNet300])
def test_sparse_export_round_trip(model_cls) -> None:
    torch.manual_seed(0)
    model = model_cls()
    plan = compute_masks(model, PruningSpec(sparsity=0.9, threshold="global"))
    apply_masks(model, plan)
    state, sizes = sparse_export(model)
    assert sizes["dense_bytes"] == size_bytes(model)
    assert sizes["csr_bytes"] < 0.5 * sizes["dense_bytes"]
    assert 0 < sizes["compressed_bytes"] < sizes["dense_bytes"]
    assert state[f"{model.prunable_layers[0]}.weight"].layout == torch.sparse_csr
    assert state[f"{model.prunable_layers[0]}.bias"].layout == torch.strided
    restored = load_sparse_export(model_cls(), state)
    model.eval()
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(restored(x), model(x))


def test_sparse_export_of_dense_model_is_larger() -> None:
    _, sizes = sparse_export(LeNet300())
    assert sizes["csr_bytes"] > sizes["dense_bytes"]  # CSR only pays off once most weights are zero


def test_latency_budget_stops_the_timed_passes_once_spent() -> None:
    """A spent budget still times one pass (a median needs one), and no more: the cost per point is bounded."""
    model = nn.Linear(4, 2)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    assert latency_ms(model, 8, repeats=50, warmup=2, input_shape=(4,), budget_s=0.0) > 0
    assert len(calls) == 2 + 1
    calls.clear()
    latency_ms(model, 8, repeats=5, warmup=2, input_shape=(4,))  # no budget: every repeat
    assert len(calls) == 2 + 5
