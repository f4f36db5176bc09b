"""Channel pruning: every importance x threshold, couplings, floors, and physical reconstruction."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp

from prunesweep.models import LeNet5, LeNet300
from prunesweep.pruning import (
    PruningSpec,
    apply_masks,
    architecture,
    compute_masks,
    count_params,
    masked_nonzero,
    rebuild_channels,
)

EXAMPLE = torch.zeros(1, 1, 28, 28)


def _calib(n: int = 2, batch: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (batch,), generator=generator),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("model_cls", [LeNet5, LeNet300])
@pytest.mark.parametrize("threshold", ["global", "layerwise", "statistical"])
@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "entropy", "random"])
def test_every_combination_masks_and_rebuilds(model_cls, threshold: str, importance: str) -> None:
    torch.manual_seed(0)
    model = model_cls()
    spec = PruningSpec(sparsity=0.6, granularity="channel", importance=importance, threshold=threshold, calib_batches=2)
    plan = compute_masks(model, spec, calib=_calib())
    classifier = model.get_submodule(model.classifier)

    # the classifier keeps all its outputs: no row of its weight and no bias entry is fully removed
    cls_masks = plan.masks[model.classifier]
    assert cls_masks["weight"].any(dim=1).all()
    assert "bias" not in cls_masks or cls_masks["bias"].all()
    assert model.classifier not in plan.kept_units
    assert set(plan.kept_units) == set(model.prunable_layers) - {model.classifier}
    if threshold == "global":
        assert plan.units_pruned == round(0.6 * plan.units_total)
    if threshold == "layerwise":
        assert all(r.units_pruned == round(0.6 * r.units_total) for r in plan.layers)
    for report in plan.layers:
        if report.units_total:
            assert 0 < report.units_total - report.units_pruned == len(plan.kept_units[report.layer])

    apply_masks(model, plan)
    rebuilt = rebuild_channels(model, plan, EXAMPLE)
    assert not any(name.endswith("_orig") for name, _ in rebuilt.named_parameters())
    model.eval()
    rebuilt.eval()
    x = torch.randn(8, 1, 28, 28)
    assert (model(x) - rebuilt(x)).abs().max().item() <= 1e-5

    widths = [len(plan.kept_units[layer]) for layer in model.prunable_layers[:-1]]
    assert architecture(rebuilt) == "-".join(map(str, [*widths, classifier.out_features]))
    n_rebuilt = sum(p.numel() for p in rebuilt.parameters())
    _, tp_params = tp.utils.count_ops_and_params(rebuilt, EXAMPLE)
    assert n_rebuilt == count_params(model)[1] == tp_params
    assert count_params(rebuilt) == (n_rebuilt, n_rebuilt)


def test_conv_channel_couples_through_flatten() -> None:
    torch.manual_seed(0)
    model = LeNet5()
    spec = PruningSpec(sparsity=0.1, granularity="channel", layers=("conv2",))
    plan = compute_masks(model, spec)
    pruned = sorted(set(range(50)) - set(plan.kept_units["conv2"].tolist()))
    assert len(pruned) == 5
    # conv2 loses 5 filters and their bias entries ...
    assert (~plan.masks["conv2"]["weight"]).all(dim=(1, 2, 3)).nonzero().flatten().tolist() == pruned
    assert (~plan.masks["conv2"]["bias"]).nonzero().flatten().tolist() == pruned
    # ... and fc1 (not in layers) loses the 16 flattened 4x4 columns of each, in every row.
    dead_cols = (~plan.masks["fc1"]["weight"]).all(dim=0).nonzero().flatten().tolist()
    assert dead_cols == [c * 16 + i for c in pruned for i in range(16)]
    assert plan.masks["fc1"]["weight"].sum() == 500 * (800 - 80)
    assert "bias" not in plan.masks["fc1"]
    # The pruned filters are the 5 smallest by L1 norm.
    norms = model.conv2.weight.detach().abs().sum(dim=(1, 2, 3))
    assert pruned == sorted(torch.topk(norms, 5, largest=False).indices.tolist())


@pytest.mark.parametrize("threshold", ["global", "layerwise", "statistical"])
def test_floor_keeps_one_unit_and_says_so(threshold: str) -> None:
    torch.manual_seed(0)
    model = LeNet5()
    spec = PruningSpec(sparsity=0.99, granularity="channel", threshold=threshold)
    plan = compute_masks(model, spec)
    for layer in ("conv1", "conv2", "fc1"):
        assert len(plan.kept_units[layer]) >= 1
    if threshold == "layerwise":
        assert "conv1: kept 1 of 20 channels (target would remove all)" in plan.notes
        assert "fc1: kept 5 of 500 neurons (target would remove all)" not in plan.notes  # round(4.95)=5 kept
        assert [len(plan.kept_units[k]) for k in ("conv1", "conv2", "fc1")] == [1, 1, 5]
    elif threshold == "global":
        assert plan.units_pruned == round(0.99 * plan.units_total)
    floored = [n for n in plan.notes if "target would remove all" in n]
    if floored:
        assert all(len(plan.kept_units[n.split(":")[0]]) == 1 for n in floored)
    apply_masks(model, plan)
    rebuilt = rebuild_channels(model, plan, EXAMPLE)
    x = torch.randn(4, 1, 28, 28)
    assert (model(x) - rebuilt(x)).abs().max().item() <= 1e-5


def test_statistical_channel_records_fit() -> None:
    plan = compute_masks(
        LeNet300(), PruningSpec(sparsity=0.4, granularity="channel", threshold="statistical", stat_k=1.0)
    )
    for report in plan.layers:
        if report.units_total:
            assert report.k == 1.0
            assert report.threshold == pytest.approx(report.mu - report.sigma)
        else:
            assert report.k is None and report.threshold is None


def test_rebuild_after_training_and_unstructured_zeros() -> None:
    torch.manual_seed(0)
    model = LeNet5()
    unstructured = compute_masks(model, PruningSpec(sparsity=0.5, threshold="global"))
    apply_masks(model, unstructured)
    plan = compute_masks(
        model, PruningSpec(sparsity=0.5, granularity="channel", threshold="global"), previous=unstructured
    )
    apply_masks(model, plan)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        x, y = _calib(1)[0]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert masked_nonzero(model, plan) == 0
    rebuilt = rebuild_channels(model, plan, EXAMPLE)
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    assert (model(x) - rebuilt(x)).abs().max().item() <= 1e-5
    # unstructured zeros survive inside the smaller dense model
    assert count_params(rebuilt)[1] == count_params(model)[1]
    assert count_params(rebuilt)[0] < count_params(model)[0]


def test_unstructured_plan_cannot_be_rebuilt() -> None:
    model = LeNet5()
    plan = compute_masks(model, PruningSpec(sparsity=0.5))
    with pytest.raises(ValueError, match="not structured"):
        rebuild_channels(model, plan, EXAMPLE)
