"""Sensitivity curves (one layer pruned at a time) and the equal-loss allocation built on them."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch.nn.utils import prune

from prunesweep.models import LeNet5, ResNet
from prunesweep.pruning import (
    PruningConfigError,
    PruningSpec,
    SensitivityCurves,
    apply_masks,
    compute_masks,
    make_threshold,
    measure_sensitivity,
)
from prunesweep.pruning.sensitivity import Sensitivity
from prunesweep.pruning.units import Channel, Unstructured


def _batches(n: int = 2, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 1, 28, 28, generator=generator), torch.randint(0, 10, (size,), generator=generator))
            for _ in range(n)]  # fmt: skip


def _loss(model: torch.nn.Module, batches) -> float:
    model.eval()
    with torch.no_grad():
        total = sum(float(torch.nn.functional.cross_entropy(model(x), y, reduction="sum")) for x, y in batches)
    return total / sum(len(y) for _, y in batches)


def _linear_curves(slopes: dict[str, float], sizes: dict[str, int]) -> SensitivityCurves:
    grid = tuple(i / 10 for i in range(11))
    return SensitivityCurves(
        sparsities=grid,
        loss={n: [1.0 + slopes[n] * s for s in grid] for n in slopes},
        accuracy={n: [1.0 - 0.1 * slopes[n] * s for s in grid] for n in slopes},
        sizes=sizes,
    )


@pytest.mark.parametrize("target", [0.0, 0.05, 0.3, 0.5, 0.77, 0.95, 0.999])
def test_allocation_hits_the_target_exactly(target):
    curves = _linear_curves({"a": 1.0, "b": 4.0, "c": 0.5}, {"a": 1000, "b": 37, "c": 20_000})
    counts = curves.allocate(target)
    assert sum(counts.values()) == round(target * 21_037)
    assert all(0 <= counts[n] <= curves.sizes[n] for n in counts)


def test_allocation_equalises_the_loss_increase():
    # linear curves: loss increase = slope × sparsity, so equal loss means sparsity ∝ 1 / slope
    curves = _linear_curves({"a": 1.0, "b": 2.0, "c": 4.0}, {"a": 10_000, "b": 10_000, "c": 10_000})
    counts = curves.allocate(0.35)
    increase = {n: {"a": 1.0, "b": 2.0, "c": 4.0}[n] * counts[n] / 10_000 for n in counts}
    assert max(increase.values()) - min(increase.values()) < 1e-3
    assert counts["a"] > counts["b"] > counts["c"]


def test_allocation_grows_monotonically_with_the_target():
    curves = _linear_curves({"a": 1.0, "b": 3.0}, {"a": 500, "b": 300})
    previous = {"a": 0, "b": 0}
    for step in range(1, 20):
        counts = curves.allocate(step / 20)
        assert all(counts[n] >= previous[n] for n in counts)  # a schedule never un-prunes
        previous = counts


def test_free_units_go_first_and_min_keep_is_honoured():
    curves = SensitivityCurves(
        sparsities=(0.0, 0.5, 1.0),
        loss={"flat": [0.1, 0.1, 0.1], "steep": [0.1, 3.0, 9.0]},
        accuracy={"flat": [1.0, 1.0, 1.0], "steep": [1.0, 0.5, 0.1]},
        sizes={"flat": 10, "steep": 10},
    )
    assert curves.allocate(0.4) == {"flat": 8, "steep": 0}
    assert curves.allocate(1.0, min_keep=1) == {"flat": 9, "steep": 9}


def test_curves_match_pruning_each_layer_by_hand_and_leave_the_model_untouched():
    torch.manual_seed(0)
    model = LeNet5()
    before = copy.deepcopy(model.state_dict())
    batches = _batches()
    scores = {name: model.get_submodule(name).weight.detach().abs() for name in ("conv2", "fc1")}
    curves = measure_sensitivity(model, scores, Unstructured(), batches, sparsities=(0.5, 0.9))
    assert curves.sparsities == (0.0, 0.5, 0.9)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training  # mode restored
    for name in scores:
        for index, amount in enumerate(curves.sparsities):
            reference = copy.deepcopy(model)
            prune.l1_unstructured(reference.get_submodule(name), "weight", amount=amount)
            assert curves.loss[name][index] == pytest.approx(_loss(reference, batches), rel=1e-5)
    rows = curves.rows()
    assert len(rows) == 2 * 3 and {r["layer"] for r in rows} == {"conv2", "fc1"}
    assert all(r["loss_increase"] == pytest.approx(r["loss"] - curves.loss[r["layer"]][0]) for r in rows)


def test_channel_curves_remove_coupled_inputs_too():
    torch.manual_seed(0)
    model = LeNet5()
    batches = _batches(1)
    granularity = Channel().bind(model, torch.zeros(1, 1, 28, 28))
    scores = {"conv2": model.conv2.weight.detach().abs().sum(dim=(1, 2, 3))}
    curves = measure_sensitivity(model, scores, granularity, batches, sparsities=(1.0,), min_keep=1)
    # 49 of 50 conv2 filters gone: the same as zeroing them and their fc1 columns by hand
    keep = torch.zeros(50, dtype=torch.bool)
    keep[scores["conv2"].argmax()] = True
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.conv2.weight[~keep] = 0
        reference.conv2.bias[~keep] = 0
    assert curves.loss["conv2"][-1] == pytest.approx(_loss(reference, batches), rel=1e-5)


@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_sensitivity_threshold_prunes_the_exact_total_and_measures_once(granularity):
    torch.manual_seed(0)
    model = LeNet5()
    spec = PruningSpec(sparsity=0.9, granularity=granularity, threshold="sensitivity")
    threshold = make_threshold(spec)
    assert isinstance(threshold, Sensitivity) and not threshold.calibrated
    plan = compute_masks(model, spec, previous=None, threshold=threshold, threshold_batches=_batches(1))
    curves = threshold.curves
    assert curves is not None
    assert plan.units_pruned == round(0.9 * plan.units_total)
    targets = {r.layer: r.target for r in plan.layers if r.units_total}
    assert len(set(targets.values())) > 1  # layers get their own rates
    if granularity == "channel":  # the keep-one floor: no layer emptied
        assert all(r.units_pruned < r.units_total for r in plan.layers if r.units_total)
    apply_masks(model, plan)
    again = compute_masks(model, PruningSpec(sparsity=0.95, granularity=granularity, threshold="sensitivity"),
                          previous=plan, threshold=threshold)  # fmt: skip
    assert threshold.curves is curves  # reused, not re-measured (no batches were given this time)
    assert again.units_pruned == round(0.95 * again.units_total)


def test_sensitivity_threshold_needs_held_out_batches():
    spec = PruningSpec(sparsity=0.5, threshold="sensitivity")
    with pytest.raises(ValueError, match="threshold_batches"):
        compute_masks(LeNet5(), spec)
    with pytest.raises(RuntimeError, match="calibrate"):
        Sensitivity().select({"a": torch.ones(3)}, 0.5)


def test_sensitivity_threshold_is_refused_for_coarse_units():
    spec = PruningSpec(sparsity=0.5, granularity="block", threshold="sensitivity")
    with pytest.raises(PruningConfigError, match=r"sensitivity is not defined for pruning\.granularity=block"):
        compute_masks(ResNet(), spec, threshold_batches=_batches(1))


def _curves(loss: dict[str, list[float]], sizes: dict[str, int], grid=(0.0, 0.25, 0.5, 0.75, 1.0)) -> SensitivityCurves:
    return SensitivityCurves(grid, loss, {n: [1.0] * len(grid) for n in loss}, sizes)


def _hull_cost(curves: SensitivityCurves, layer: str, units: float) -> float:
    """The loss increase the hull prices ``units`` removed at (linear between its vertices)."""
    hull = curves.hull(layer)
    for (x0, y0), (x1, y1) in itertools.pairwise(hull):
        if units <= x1:
            return y0 + (units - x0) / (x1 - x0) * (y1 - y0)
    return hull[-1][1]


def test_hull_is_convex_lies_on_or_below_every_measured_point_and_starts_at_zero():
    curves = _curves({"a": [1.0, 1.5, 1.6, 1.65, 3.0]}, {"a": 8})  # concave middle: (2, .5) and (4, .6) leave
    hull = curves.hull("a")
    assert hull[0] == (0.0, 0.0) and hull[-1] == (8.0, 2.0)
    slopes = [(y1 - y0) / (x1 - x0) for (x0, y0), (x1, y1) in itertools.pairwise(hull)]
    assert slopes == sorted(slopes)
    for s, increase in zip(curves.sparsities, curves._increase("a"), strict=True):
        assert _hull_cost(curves, "a", s * 8) <= increase + 1e-12


@pytest.mark.parametrize("target", [0.1, 0.3, 0.5, 0.8, 0.95])
def test_marginal_allocation_hits_the_target_and_no_other_split_is_cheaper(target):
    """Brute force over every split of the units between two layers: none costs less on the hull."""
    curves = _curves({"a": [0.0, 0.1, 0.5, 2.0, 6.0], "b": [0.0, 0.4, 0.6, 0.9, 4.0]}, {"a": 40, "b": 24})
    counts = curves.allocate_marginal(target)
    total = round(target * 64)
    assert sum(counts.values()) == total
    chosen = _hull_cost(curves, "a", counts["a"]) + _hull_cost(curves, "b", counts["b"])
    best = min(
        _hull_cost(curves, "a", a) + _hull_cost(curves, "b", total - a)
        for a in range(max(0, total - 24), min(40, total) + 1)
    )
    assert chosen <= best + 1e-9  # the equal-loss rule misses this at every target here (e.g. 0.1 vs 0.06)


def test_marginal_allocation_differs_from_equal_loss_where_a_layer_is_expensive_to_cut():
    # "big" must lose most of its units anyway; equal loss then lets "small" lose as much loss, marginal does not
    curves = _curves({"big": [0.0, 0.0, 0.1, 0.3, 5.0], "small": [0.0, 0.2, 0.4, 0.6, 5.0]}, {"big": 1000, "small": 10})
    equal, marginal = curves.allocate(0.75), curves.allocate_marginal(0.75)
    assert sum(equal.values()) == sum(marginal.values()) == round(0.75 * 1010)
    assert marginal["small"] < equal["small"]


def test_marginal_allocation_honours_min_keep():
    curves = _curves({"a": [0.0, 0.0, 0.0, 0.0, 0.0], "b": [0.0, 1.0, 2.0, 3.0, 4.0]}, {"a": 4, "b": 4})
    counts = curves.allocate_marginal(0.75, min_keep=1)
    assert counts == {"a": 3, "b": 3}


def test_marginal_threshold_prunes_the_exact_total_on_a_real_model():
    model = LeNet5()
    threshold = make_threshold(PruningSpec(sparsity=0.9, threshold="marginal"))
    plan = compute_masks(model, PruningSpec(sparsity=0.9, threshold="marginal"), threshold=threshold,
                         threshold_batches=_batches())  # fmt: skip
    weights = sum(model.get_submodule(n).weight.numel() for n in LeNet5.prunable_layers)
    pruned = sum(
        int((~mask).sum()) for params in plan.masks.values() for name, mask in params.items() if name == "weight"
    )
    assert pruned == round(0.9 * weights)
