"""InMemoryLoader: epoch coverage, determinism, per-epoch reshuffling, drop_last."""

from __future__ import annotations

import doctest

import pytest
import torch

from prunesweep.data import InMemoryLoader
from prunesweep.data import loaders as loaders_module


def make(n: int = 103) -> tuple[torch.Tensor, torch.Tensor]:
    # y is the row index, so a batch's y tells exactly which samples it holds.
    return torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 3), torch.arange(n)


def epoch_order(loader: InMemoryLoader) -> list[int]:
    return [i for x, y in loader for i in y.tolist()]


def test_doctests() -> None:
    assert doctest.testmod(loaders_module).failed == 0


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_sample_once_per_epoch(shuffle: bool) -> None:
    x, y = make()
    loader = InMemoryLoader(x, y, batch_size=10, shuffle=shuffle, seed=3)
    assert len(loader) == 11
    for _ in range(3):
        batches = list(loader)
        assert len(batches) == 11
        assert [len(b[1]) for b in batches] == [10] * 10 + [3]
        assert sorted(i for _, yb in batches for i in yb.tolist()) == list(range(103))
        for xb, yb in batches:  # x and y stay aligned
            assert torch.equal(xb[:, 0].long(), yb)


def test_unshuffled_is_in_order() -> None:
    x, y = make()
    assert epoch_order(InMemoryLoader(x, y, batch_size=7)) == list(range(103))


def test_same_seed_same_epoch_sequence_and_epochs_differ() -> None:
    x, y = make()
    a = InMemoryLoader(x, y, batch_size=16, shuffle=True, seed=5)
    b = InMemoryLoader(x, y, batch_size=16, shuffle=True, seed=5)
    seq_a = [epoch_order(a) for _ in range(3)]
    seq_b = [epoch_order(b) for _ in range(3)]
    assert seq_a == seq_b
    assert seq_a[0] != seq_a[1] != seq_a[2]
    assert seq_a[0] != list(range(103))
    other = InMemoryLoader(x, y, batch_size=16, shuffle=True, seed=6)
    assert epoch_order(other) != seq_a[0]


def test_set_epoch_replays_an_epoch() -> None:
    x, y = make()
    loader = InMemoryLoader(x, y, batch_size=16, shuffle=True, seed=5)
    first, second = epoch_order(loader), epoch_order(loader)
    loader.set_epoch(1)
    assert epoch_order(loader) == second
    loader.set_epoch(0)
    assert epoch_order(loader) == first


def test_shuffle_does_not_touch_global_rng() -> None:
    x, y = make()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(InMemoryLoader(x, y, batch_size=16, shuffle=True))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("shuffle", [False, True])
def test_drop_last(shuffle: bool) -> None:
    x, y = make()
    loader = InMemoryLoader(x, y, batch_size=10, shuffle=shuffle, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 10
    assert all(len(yb) == 10 for _, yb in batches)
    assert len({i for _, yb in batches for i in yb.tolist()}) == 100


def test_exact_multiple_and_oversized_batch() -> None:
    x, y = make(100)
    assert len(InMemoryLoader(x, y, 10)) == len(InMemoryLoader(x, y, 10, drop_last=True)) == 10
    assert len(InMemoryLoader(x, y, 1000)) == 1
    assert len(InMemoryLoader(x, y, 1000, drop_last=True)) == 0
    assert list(InMemoryLoader(x, y, 1000, drop_last=True)) == []


def test_bad_arguments() -> None:
    x, y = make()
    with pytest.raises(ValueError, match="batch_size"):
        InMemoryLoader(x, y, batch_size=0)
    with pytest.raises(ValueError, match="length"):
        InMemoryLoader(x, y[:-1], batch_size=4)
