"""Importance strategies: shapes, finiteness, no side effects on the model."""

from __future__ import annotations

import pytest
import torch

from prunesweep.models import LeNet5, LeNet300
from prunesweep.pruning import GRANULARITIES, IMPORTANCES, PruningSpec, apply_masks, compute_masks
from prunesweep.pruning.importance import Entropy, Random, Taylor
from prunesweep.pruning.units import Channel, Unstructured


def _calib(n: int = 3, batch: int = 8):
    generator = torch.Generator().manual_seed(0)
    for _ in range(n):  # a one-shot generator, like iterating a DataLoader once
        yield (
            torch.randn(batch, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (batch,), generator=generator),
        )


def _no_grads(model: torch.nn.Module) -> bool:
    return all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("model_cls", [LeNet5, LeNet300])
@pytest.mark.parametrize("training", [True, False])
def test_taylor_scores_and_leaves_no_trace(model_cls, training: bool) -> None:
    torch.manual_seed(0)
    model = model_cls().train(training)
    layers = list(model.prunable_layers)
    for granularity in (Unstructured(), Channel()):
        scores = Taylor(calib_batches=2).score(model, layers, granularity, _calib())
        for layer in layers:
            weight = model.get_submodule(layer).weight
            expected = weight.shape if not granularity.structured else (weight.shape[0],)
            assert scores[layer].shape == expected
            assert torch.isfinite(scores[layer]).all() and (scores[layer] >= 0).all()
            assert scores[layer].sum() > 0
        assert _no_grads(model)
        assert all(m.training == training for m in model.modules())
        assert all(p.requires_grad for p in model.parameters())


def test_taylor_is_w_times_grad_on_one_batch() -> None:
    torch.manual_seed(0)
    model = LeNet300()
    x, y = next(_calib(1))
    model.eval()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    expected = (model.fc2.weight * model.fc2.weight.grad).abs()
    model.zero_grad(set_to_none=True)
    scores = Taylor(calib_batches=1).score(model, ["fc2"], Unstructured(), [(x, y)])
    assert torch.allclose(scores["fc2"], expected, atol=1e-7)
    channel = Taylor(calib_batches=1).score(model, ["fc2"], Channel(), [(x, y)])
    assert torch.allclose(channel["fc2"], expected.sum(dim=1), atol=1e-6)


def test_taylor_on_masked_model_scores_pruned_weights_zero() -> None:
    torch.manual_seed(0)
    model = LeNet5()
    plan = compute_masks(model, PruningSpec(sparsity=0.7, threshold="global"))
    apply_masks(model, plan)
    scores = Taylor(calib_batches=2).score(model, ["conv2", "fc1"], Unstructured(), _calib())
    for layer in ("conv2", "fc1"):
        assert torch.all(scores[layer][~plan.masks[layer]["weight"]] == 0)
    assert _no_grads(model)


@pytest.mark.parametrize("model_cls", [LeNet5, LeNet300])
def test_entropy_scores_units(model_cls) -> None:
    torch.manual_seed(0)
    model = model_cls().train()
    layers = [layer for layer in model.prunable_layers if layer != model.classifier]
    scores = Entropy(calib_batches=3).score(model, layers, Channel(), _calib())
    for layer in layers:
        n = model.get_submodule(layer).weight.shape[0]
        assert scores[layer].shape == (n,)
        assert torch.isfinite(scores[layer]).all()
        assert (scores[layer] >= 0).all() and (scores[layer] <= torch.log(torch.tensor(32.0)) + 1e-5).all()
    assert _no_grads(model) and model.training


def test_entropy_prefers_informative_units() -> None:
    # unit 0 is constant, unit 1 takes two values, unit 2 is spread: entropies 0 < log 2 < ...
    values = torch.stack([torch.ones(1000), (torch.arange(1000) % 2).float(), torch.linspace(0, 1, 1000)], 1)
    entropy = Entropy(bins=32)._entropy(values)
    assert entropy[0] == 0
    assert entropy[1] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)
    assert entropy[2] == pytest.approx(torch.log(torch.tensor(32.0)).item(), abs=1e-3)


def test_random_is_seeded() -> None:
    model = LeNet5()
    a = Random(seed=3).score(model, ["conv1", "fc1"], Channel())
    b = Random(seed=3).score(model, ["conv1", "fc1"], Channel())
    c = Random(seed=4).score(model, ["conv1", "fc1"], Channel())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1"], c["fc1"])
    assert a["fc1"].shape == (500,)
    assert Random().score(model, ["conv1"], Unstructured())["conv1"].shape == (20, 1, 5, 5)


def test_registry_declares_calibration_needs() -> None:
    calibrated = {name for name, cls in IMPORTANCES.items() if cls.requires_calibration}
    assert calibrated == {"taylor", "entropy", "activation", "ablation"}
    accepted = {name: {g for g, cls in GRANULARITIES.items() if imp.accepts(cls)} for name, imp in IMPORTANCES.items()}
    assert accepted["entropy"] == {"channel"}
    for coarse_only in ("activation", "ablation"):
        assert accepted[coarse_only] == {"layer", "block", "head"}
    for general in ("l1", "l2", "taylor", "random"):
        assert accepted[general] == set(GRANULARITIES)
    assert accepted["variational"] == {"unstructured"}
    assert {name for name, cls in IMPORTANCES.items() if cls.trained_from_dense} == {"variational"}
