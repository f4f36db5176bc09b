"""Unstructured masks: parity with torch.nn.utils.prune, hand-computed cases, training, export, iteration."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from prunesweep.models import LeNet5, LeNet300
from prunesweep.pruning import (
    THRESHOLDS,
    MaskPlan,
    PruningSpec,
    apply_masks,
    compute_masks,
    count_params,
    export_state_dict,
    make_permanent,
    masked_nonzero,
)
from prunesweep.pruning.thresholds import Allocation, Layerwise


def _model(cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


def _weight_masks(plan: MaskPlan) -> dict[str, torch.Tensor]:
    return {name: params["weight"] for name, params in plan.masks.items()}


# ------------------------------------------------------------------ parity with torch.nn.utils.prune
@pytest.mark.parametrize("model_cls", [LeNet5, LeNet300])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.77, 0.95])
def test_layerwise_l1_equals_l1_unstructured(model_cls, sparsity: float) -> None:
    model = _model(model_cls)
    reference = copy.deepcopy(model)
    plan = compute_masks(model, PruningSpec(sparsity=sparsity, threshold="layerwise", importance="l1"))
    for layer in model.prunable_layers:
        prune.l1_unstructured(reference.get_submodule(layer), "weight", amount=sparsity)
        expected = reference.get_submodule(layer).weight_mask.bool()
        assert torch.equal(plan.masks[layer]["weight"], expected), layer
        assert "bias" not in plan.masks[layer]  # biases are never pruned in unstructured mode


def test_layerwise_overrides_equal_l1_unstructured() -> None:
    model = _model(LeNet5)
    overrides = {"conv1": 0.2, "fc1": 0.97}
    spec = PruningSpec(sparsity=0.6, threshold="layerwise", layer_sparsity=overrides)
    plan = compute_masks(model, spec)
    for layer in model.prunable_layers:
        module = copy.deepcopy(model.get_submodule(layer))
        prune.l1_unstructured(module, "weight", amount=overrides.get(layer, 0.6))
        assert torch.equal(plan.masks[layer]["weight"], module.weight_mask.bool()), layer
    assert {r.layer: r.target for r in plan.layers} == {"conv1": 0.2, "conv2": 0.6, "fc1": 0.97, "fc2": 0.6}


@pytest.mark.parametrize("model_cls", [LeNet5, LeNet300])
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.99])
def test_global_l1_equals_global_unstructured(model_cls, sparsity: float) -> None:
    model = _model(model_cls, seed=1)
    reference = copy.deepcopy(model)
    plan = compute_masks(model, PruningSpec(sparsity=sparsity, threshold="global", importance="l1"))
    prune.global_unstructured(
        [(reference.get_submodule(layer), "weight") for layer in model.prunable_layers],
        pruning_method=prune.L1Unstructured,
        amount=sparsity,
    )
    for layer in model.prunable_layers:
        expected = reference.get_submodule(layer).weight_mask.bool()
        assert torch.equal(plan.masks[layer]["weight"], expected), layer
    total = sum(r.units_total for r in plan.layers)
    assert plan.units_pruned == round(sparsity * total)


def test_l2_unstructured_ranks_like_l1() -> None:
    model = _model(LeNet300)
    a = compute_masks(model, PruningSpec(sparsity=0.7, importance="l1", threshold="global"))
    b = compute_masks(model, PruningSpec(sparsity=0.7, importance="l2", threshold="global"))
    assert all(torch.equal(a.masks[k]["weight"], b.masks[k]["weight"]) for k in a.masks)


# ------------------------------------------------------------------------------ hand-computed
class Tiny(nn.Module):
    """Two linear layers with integer weights whose magnitudes are all distinct.

    |a| = [[1, 4], [6, 9], [10, 12]]   |b| = [[2, 3, 20], [5, 30, 40]]
    """

    prunable_layers = ("a", "b")
    classifier = "b"

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.b = nn.Linear(3, 2)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[1.0, -4.0], [6.0, -9.0], [10.0, 12.0]]))
            self.b.weight.copy_(torch.tensor([[2.0, -3.0, 20.0], [-5.0, 30.0, 40.0]]))
            self.a.bias.fill_(0.5)
            self.b.bias.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _pruned(mask: torch.Tensor) -> list[list[int]]:
    return (~mask).int().tolist()


def test_tiny_global_vs_layerwise_by_hand() -> None:
    model = Tiny()
    # Global 25%: round(0.25 * 12) = 3 smallest overall -> |1| in a, |2|, |3| in b.
    plan = compute_masks(model, PruningSpec(sparsity=0.25, threshold="global"))
    assert _pruned(plan.masks["a"]["weight"]) == [[1, 0], [0, 0], [0, 0]]
    assert _pruned(plan.masks["b"]["weight"]) == [[1, 1, 0], [0, 0, 0]]
    assert [r.units_pruned for r in plan.layers] == [1, 2]
    assert plan.layers[0].threshold == 3.0  # the global cut: the largest pruned |w|

    # Layerwise 25%: round(0.25 * 6) = round(1.5) = 2 per layer (Python's round, like torch.nn.utils.prune).
    plan = compute_masks(model, PruningSpec(sparsity=0.25, threshold="layerwise"))
    assert _pruned(plan.masks["a"]["weight"]) == [[1, 1], [0, 0], [0, 0]]
    assert _pruned(plan.masks["b"]["weight"]) == [[1, 1, 0], [0, 0, 0]]
    assert [r.threshold for r in plan.layers] == [4.0, 3.0]

    # Global 2/3: 8 smallest = 1, 2, 3, 4, 5, 6, 9, 10 -> a loses 5 of 6, b loses 3.
    plan = compute_masks(model, PruningSpec(sparsity=2 / 3, threshold="global"))
    assert _pruned(plan.masks["a"]["weight"]) == [[1, 1], [1, 1], [1, 0]]
    assert _pruned(plan.masks["b"]["weight"]) == [[1, 1, 0], [1, 0, 0]]
    # params: a has 6 weights + 3 biases, 5 pruned; biases never pruned.
    assert (plan.layers[0].params_total, plan.layers[0].params_pruned) == (9, 5)
    assert plan.layers[0].sparsity == pytest.approx(5 / 9)


def test_tiny_layer_collapse_is_noted_not_prevented() -> None:
    # Global 50%: the 6 smallest are 1, 2, 3, 4, 5, 6 -> a loses {1, 4, 6}, b loses {2, 3, 5}.
    plan = compute_masks(Tiny(), PruningSpec(sparsity=0.5, threshold="global"))
    assert [r.units_pruned for r in plan.layers] == [3, 3]
    # 10/12: a loses everything; torch.nn.utils.prune would too, so it is reported, not changed.
    plan = compute_masks(Tiny(), PruningSpec(sparsity=10 / 12, threshold="global"))
    assert plan.layers[0].units_pruned == 6
    assert any("a: all 6 weights pruned" in note for note in plan.notes)


def test_tiny_channel_by_hand() -> None:
    # Neuron L1 norms of a: [5, 15, 22]; b is the classifier. Layerwise 34% of 3 -> 1 neuron: a's row 0,
    # its bias, and b's input column 0.
    model = Tiny()
    plan = compute_masks(model, PruningSpec(sparsity=0.34, granularity="channel"), example_inputs=torch.zeros(1, 2))
    assert _pruned(plan.masks["a"]["weight"]) == [[1, 1], [0, 0], [0, 0]]
    assert _pruned(plan.masks["a"]["bias"]) == [1, 0, 0]
    assert _pruned(plan.masks["b"]["weight"]) == [[1, 0, 0], [1, 0, 0]]
    assert plan.kept_units["a"].tolist() == [1, 2]
    assert "b" not in plan.kept_units
    report = {r.layer: r for r in plan.layers}
    assert (report["a"].units_total, report["a"].units_pruned, report["a"].params_pruned) == (3, 1, 3)
    assert (report["b"].units_total, report["b"].params_pruned) == (0, 2)


# ------------------------------------------------------------------------- apply / train / export
def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    model.train()
    for _ in range(steps):
        x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize(
    "spec",
    [
        PruningSpec(sparsity=0.8, threshold="global"),
        PruningSpec(sparsity=0.5, granularity="channel", threshold="global"),
    ],
    ids=["unstructured", "channel"],
)
def test_masks_hold_through_training_and_export(spec: PruningSpec) -> None:
    torch.manual_seed(0)
    model = LeNet5()
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    plan = compute_masks(model, spec)
    apply_masks(model, plan)  # after the optimizer exists: parameter identity must survive
    _train(model, sgd, 3)
    _train(model, torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3), 3)
    model(torch.zeros(1, 1, 28, 28))  # refresh module.weight from weight_orig * mask
    for name, params in plan.masks.items():
        module = model.get_submodule(name)
        for pname, mask in params.items():
            assert torch.all(getattr(module, pname)[~mask] == 0.0), (name, pname)
            # weight_orig did move (it is trained), so the masks, not luck, keep the zeros.
            assert not torch.all(getattr(module, f"{pname}_orig")[~mask] == 0.0) or pname == "bias"
    assert masked_nonzero(model) == 0
    assert masked_nonzero(model, plan) == 0

    state = export_state_dict(model)
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    assert hasattr(model.conv1, "weight_orig")  # the live model is untouched
    fresh = LeNet5()
    fresh.load_state_dict(state, strict=True)
    model.eval()
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(fresh(x), model(x))

    total, nonzero = count_params(model)
    make_permanent(model)
    assert not any(n.endswith(("_orig", "_mask")) for n, _ in model.state_dict().items())
    assert count_params(model) == (total, nonzero)
    assert masked_nonzero(model, plan) == 0
    assert torch.equal(model(x), fresh(x))


def test_compute_masks_does_not_touch_the_model() -> None:
    model = _model(LeNet5)
    before = copy.deepcopy(model.state_dict())
    compute_masks(model, PruningSpec(sparsity=0.5, granularity="channel", threshold="global"))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------------------- iterative
@pytest.mark.parametrize("threshold", ["global", "layerwise"])
@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_iterative_keeps_pruned_units_and_reaches_cumulative_target(threshold: str, granularity: str) -> None:
    torch.manual_seed(0)
    model = LeNet5()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    previous = None
    for sparsity in (0.3, 0.6, 0.8):
        spec = PruningSpec(sparsity=sparsity, granularity=granularity, threshold=threshold)
        plan = compute_masks(model, spec, previous=previous)
        if previous is not None:
            for name, params in previous.masks.items():
                for pname, old in params.items():
                    new = plan.masks[name][pname]
                    assert not torch.any(new & ~old), f"{name}.{pname} revived pruned entries"
        for report in plan.layers:
            if report.units_total:
                target = round(sparsity * report.units_total)
                if threshold == "layerwise":
                    assert report.units_pruned == target
        if threshold == "global":
            assert plan.units_pruned == round(sparsity * plan.units_total)
        apply_masks(model, plan)
        _train(model, optimizer, 2)
        assert masked_nonzero(model, plan) == 0
        previous = plan


def test_iterative_with_lower_target_keeps_previous_and_notes() -> None:
    model = _model(LeNet300)
    first = compute_masks(model, PruningSpec(sparsity=0.8, threshold="layerwise"))
    apply_masks(model, first)
    second = compute_masks(model, PruningSpec(sparsity=0.5, threshold="layerwise"), previous=first)
    assert [r.units_pruned for r in second.layers] == [r.units_pruned for r in first.layers]
    assert any("already pruned" in note for note in second.notes)


def test_broken_threshold_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    class KeepsEverything(Layerwise):
        def select(self, scores, sparsity):
            return Allocation(keep={k: torch.ones_like(v, dtype=torch.bool) for k, v in scores.items()})

    monkeypatch.setitem(THRESHOLDS, "layerwise", KeepsEverything)
    with pytest.raises(RuntimeError, match="promised to prune"):
        compute_masks(_model(LeNet300), PruningSpec(sparsity=0.5, threshold="layerwise"))


def test_masks_keep_a_channels_last_model_channels_last_and_compute_what_contiguous_does():
    """conv1 has one input channel, so ``mask * weight`` would come out laid out as contiguous, and every
    convolution after it would take the slow kernels; HeldMask keeps the strides (also once made permanent)."""
    contiguous = _model(LeNet5)
    spec = PruningSpec(sparsity=0.75, granularity="unstructured", threshold="global")
    plan = compute_masks(contiguous, spec)
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    for model in (contiguous, channels_last):
        apply_masks(model, plan)
    x = torch.randn(8, 1, 28, 28)
    layout = torch.channels_last
    assert channels_last.conv1.weight.stride() == channels_last.conv1.weight_orig.stride()
    assert channels_last.conv1(x).is_contiguous(memory_format=layout)
    assert not contiguous.conv1(x).is_contiguous(memory_format=layout)
    torch.testing.assert_close(channels_last(x), contiguous(x), atol=1e-5, rtol=0)
    assert masked_nonzero(channels_last, plan) == 0
    make_permanent(channels_last)
    assert channels_last.conv1(x).is_contiguous(memory_format=layout)
    assert int((channels_last.conv1.weight == 0).sum()) == int((~plan.masks["conv1"]["weight"]).sum())
