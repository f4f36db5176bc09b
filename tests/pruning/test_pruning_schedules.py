"""Every importance × threshold × schedule × granularity runs on both models, and masks hold under training.

The schedules are driven here the way the experiment drives them, in plain PyTorch: one shot, iterative
rounds with ``previous``, and the AGP sequence of targets.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prunesweep.models import LeNet5, LeNet300
from prunesweep.pruning import (
    PruningSpec,
    apply_masks,
    compute_masks,
    count_params,
    make_threshold,
    masked_nonzero,
)
from prunesweep.pruning.schedule import GradualSchedule, iterative_targets

IMPORTANCES = ["l1", "l2", "taylor", "entropy", "random"]
THRESHOLDS = ["global", "layerwise", "statistical", "sensitivity"]
TARGET = 0.8


def _batches(n: int = 2, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 1, 28, 28, generator=generator), torch.randint(0, 10, (size,), generator=generator))
            for _ in range(n)]  # fmt: skip


def _targets(schedule: str) -> list[float]:
    if schedule == "oneshot":
        return [TARGET]
    if schedule == "iterative":
        return iterative_targets(TARGET, 3)
    agp = GradualSchedule(final=TARGET, start_step=0, frequency=1, n=4)
    return [agp.target(t) for t in range(1, agp.end_step + 1)]


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch) -> None:
    x, y = batch
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


# entropy scores units' activations, so it has no unstructured form (its refusal is tested in test_pruning_spec)
COMBINATIONS = [
    (importance, granularity)
    for importance in IMPORTANCES
    for granularity in ("unstructured", "channel")
    if not (importance == "entropy" and granularity == "unstructured")
]


@pytest.mark.parametrize("model_cls", [LeNet5, LeNet300])
@pytest.mark.parametrize("schedule", ["oneshot", "iterative", "gradual"])
@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize(("importance", "granularity"), COMBINATIONS)
def test_combination(model_cls, schedule, threshold, importance, granularity):
    torch.manual_seed(0)
    model = model_cls()
    batches = _batches()
    spec = PruningSpec(sparsity=TARGET, granularity=granularity, importance=importance, threshold=threshold,
                       calib_batches=2)  # fmt: skip
    # one optimizer for the whole run: mask updates must keep training the same parameter objects
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    plan = None
    allocation = make_threshold(spec)  # one object for the schedule: sensitivity measures the model once
    for target in _targets(schedule):
        plan = compute_masks(
            model, dataclasses.replace(spec, sparsity=target), batches, previous=plan, threshold=allocation
        )
        apply_masks(model, plan)
        for batch in batches:
            _train_step(model, optimizer, batch)
        assert masked_nonzero(model, plan) == 0
    assert plan is not None
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if threshold != "statistical":
        # exact targets: within one unit per layer
        assert abs(plan.units_pruned - TARGET * plan.units_total) <= len(plan.layers)
    total, nonzero = count_params(model)
    assert nonzero < total
