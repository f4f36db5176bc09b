"""Threshold strategies on synthetic scores: statistical fits, normalisers, floors."""

from __future__ import annotations

import math

import pytest
import torch

from prunesweep.pruning import GRANULARITIES, NORMALIZERS, THRESHOLDS
from prunesweep.pruning.thresholds import Global, Layerwise, Statistical, lowest

N = 100_000


def _samples(family: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if family == "normal":
        return 0.3 + 1.7 * torch.randn(N, generator=generator)
    u = torch.rand(N, generator=generator) - 0.5  # inverse-CDF Laplace(loc=-0.2, b=0.8)
    return -0.2 - 0.8 * torch.sign(u) * torch.log1p(-2 * u.abs())


def _fit(family: str, x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    if family == "normal":
        return float(x.mean()), float(x.std(unbiased=False))
    med = float(x.sort().values[(N - 1) // 2 : N // 2 + 1].mean())
    return med, math.sqrt(2) * float((x - med).abs().mean())


@pytest.mark.parametrize("family", ["normal", "laplace"])
@pytest.mark.parametrize("k", [0.0, 0.5, 1.0, 2.0])
def test_fixed_k_cuts_at_mu_minus_k_sigma(family: str, k: float) -> None:
    x = _samples(family)
    alloc = Statistical(distribution=family, k=k).select({"w": x}, sparsity=0.5)  # target ignored
    mu, sigma = _fit(family, x)
    info = alloc.info["w"]
    assert info["mu"] == pytest.approx(mu, rel=1e-9, abs=1e-12)
    assert info["sigma"] == pytest.approx(sigma, rel=1e-9)
    assert info["k"] == k
    assert info["threshold"] == pytest.approx(mu - k * sigma, rel=1e-9, abs=1e-12)
    assert torch.equal(~alloc.keep["w"], x < info["threshold"])


@pytest.mark.parametrize("family", ["normal", "laplace"])
@pytest.mark.parametrize("target", [0.1, 0.3, 0.5, 0.8, 0.95])
def test_target_mode_lands_near_target(family: str, target: float) -> None:
    x = _samples(family, seed=1)
    alloc = Statistical(distribution=family).select({"w": x}, sparsity=target)
    achieved = 1 - alloc.keep["w"].float().mean().item()
    assert achieved == pytest.approx(target, abs=0.02)
    info = alloc.info["w"]
    assert info["threshold"] == pytest.approx(info["mu"] - info["k"] * info["sigma"], rel=1e-9, abs=1e-9)
    assert (info["k"] < 0) == (target > 0.5)  # above the median the cut is above the mean: negative k


def test_target_mode_does_not_force_the_target() -> None:
    # Uniform scores fitted with a normal: the fitted CDF is off, and the achieved sparsity shows it.
    x = torch.rand(N, generator=torch.Generator().manual_seed(0))
    alloc = Statistical(distribution="normal").select({"w": x}, sparsity=0.05)
    achieved = 1 - alloc.keep["w"].float().mean().item()
    assert abs(achieved - 0.05) > 0.02


def test_statistical_excludes_pinned_from_fit_and_counts_them() -> None:
    x = _samples("normal")
    x[:20_000] = -math.inf  # 20% already pruned
    alloc = Statistical(distribution="normal").select({"w": x}, sparsity=0.5)
    assert not alloc.keep["w"][:20_000].any()
    achieved = 1 - alloc.keep["w"].float().mean().item()
    assert achieved == pytest.approx(0.5, abs=0.02)


def test_structured_floor_keeps_one_unit() -> None:
    scores = {"a": torch.tensor([1.0, 1.0, 1.0, 5.0]), "b": torch.tensor([3.0, 4.0, 5.0])}
    alloc = Statistical(k=-100.0, min_keep=1).select(scores, 0.5)  # t far above every score
    assert alloc.keep["a"].tolist() == [False, False, False, True]
    assert alloc.keep["b"].tolist() == [False, False, True]
    assert alloc.floored == ["a", "b"]
    alloc = Layerwise(min_keep=1).select(scores, 0.99)
    assert [int(v.sum()) for v in alloc.keep.values()] == [1, 1] and alloc.floored == ["a", "b"]


def test_global_floor_moves_the_cut_to_other_layers() -> None:
    scores = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([10.0, 20.0, 30.0, 40.0])}
    alloc = Global(min_keep=1).select(scores, 0.5)  # 3 lowest would empty a
    assert alloc.keep["a"].tolist() == [False, True]
    assert alloc.keep["b"].tolist() == [False, False, True, True]
    assert alloc.floored == ["a"]
    assert sum(int((~v).sum()) for v in alloc.keep.values()) == 3  # the count still holds


def test_lamp_by_hand() -> None:
    # ascending 1, 2, 3 -> squares 1, 4, 9 -> 1/14, 4/13, 9/9; order of the input is preserved.
    out = NORMALIZERS["lamp"](torch.tensor([3.0, 1.0, 2.0]))
    assert out.tolist() == pytest.approx([1.0, 1 / 14, 4 / 13])


@pytest.mark.parametrize("normalize", sorted(NORMALIZERS))
def test_normalizers_keep_pinned_units_pinned(normalize: str) -> None:
    scores = {"a": torch.tensor([-math.inf, 1.0, 2.0, 3.0]), "b": torch.tensor([5.0, -math.inf, 50.0, 60.0])}
    alloc = Global(normalize=normalize, min_keep=1).select(scores, 0.5)
    assert not alloc.keep["a"][0] and not alloc.keep["b"][1]
    assert sum(int((~v).sum()) for v in alloc.keep.values()) == 4


def test_global_normalisation_changes_allocation() -> None:
    # Layer b's scores are 100x larger: raw global prunes only a; mean-normalised prunes both alike.
    a = torch.arange(1.0, 11.0)
    scores = {"a": a, "b": 100 * a}
    raw = Global(normalize="none").select(scores, 0.5)
    assert int((~raw.keep["a"]).sum()) == 10 and int((~raw.keep["b"]).sum()) == 0
    for normalize in ("mean", "max", "l2", "lamp"):
        alloc = Global(normalize=normalize).select(scores, 0.5)
        assert int((~alloc.keep["a"]).sum()) == int((~alloc.keep["b"]).sum()) == 5, normalize


def test_capabilities_say_where_each_threshold_applies() -> None:
    coarse = {name for name, cls in THRESHOLDS.items() if cls.accepts(GRANULARITIES["head"])}
    assert coarse == {"global", "layerwise"}
    assert all(cls.accepts(GRANULARITIES["channel"]) for cls in THRESHOLDS.values())
    assert {name for name, cls in THRESHOLDS.items() if cls.uses_normalize} == {"global"}
    assert {name for name, cls in THRESHOLDS.items() if cls.uses_layer_sparsity} == {"layerwise"}
    assert {name for name, cls in THRESHOLDS.items() if cls.needs_calibration} == {"sensitivity", "marginal"}


def test_lowest_breaks_ties_like_torch_prune() -> None:
    flat = torch.tensor([1.0, 0.5, 0.5, 2.0, 0.5])
    expected = torch.topk(flat, 2, largest=False).indices
    assert lowest(flat, 2).nonzero().flatten().sort().values.tolist() == expected.sort().values.tolist()
    assert not lowest(flat, 0).any()
