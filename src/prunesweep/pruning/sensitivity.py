"""Sensitivity analysis, and two allocations from its curves: the same loss in every layer, or the same marginal
cost per unit removed.

Han et al. (2015) chose their per-layer pruning rates by hand from curves like these: prune one layer at a
time (the others dense), watch the accuracy. :func:`measure_sensitivity` measures the curves on held-out
batches; :meth:`SensitivityCurves.allocate` turns them into per-layer unit counts for a global target by
finding the loss increase ``ε`` at which the layers, each pruned as far as ``ε`` allows, remove exactly the
target; the ``sensitivity`` threshold (:class:`Sensitivity`) prunes each layer's lowest scores to its count.

>>> curves = SensitivityCurves(
...     sparsities=(0.0, 0.5, 1.0),
...     loss={"big": [0.1, 0.1, 2.1], "small": [0.1, 1.1, 5.1]},   # "big" can lose half for free
...     accuracy={"big": [1.0, 1.0, 0.1], "small": [1.0, 0.6, 0.1]},
...     sizes={"big": 100, "small": 10},
... )
>>> curves.allocate(0.5)  # 55 of 110 units: the insensitive layer gives most of them
{'big': 54, 'small': 1}
>>> curves.allocate_marginal(0.5)  # the 5 units beyond big's free half cost less there than in small
{'big': 55, 'small': 0}
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from prunesweep.pruning._util import eval_mode, is_reparametrized
from prunesweep.pruning.thresholds import Allocation, Layerwise, Threshold, lowest, register_threshold
from prunesweep.pruning.units import Granularity

#: Fractions of a layer's units removed when measuring its curve: dense near 0, fine near 1 where the
#: frontier lives (a LeNet-5 fc1 at 99 % sparsity is still useful; at 99.8 % it is not).
DEFAULT_GRID: tuple[float, ...] = (
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 1.0
)  # fmt: skip


@dataclass
class SensitivityCurves:
    """Per layer, the loss and accuracy with only that layer pruned to each of ``sparsities`` (index 0 is 0.0).

    ``sizes`` counts the units of each layer (weights for unstructured, channels/neurons for channel).
    """

    sparsities: tuple[float, ...]
    loss: dict[str, list[float]]
    accuracy: dict[str, list[float]]
    sizes: dict[str, int]

    def rows(self) -> list[dict[str, float | str]]:
        """Long-format rows (layer, sparsity, loss, loss_increase, accuracy), ready for a DataFrame or CSV."""
        return [
            {
                "layer": layer,
                "sparsity": s,
                "loss": self.loss[layer][i],
                "loss_increase": self.loss[layer][i] - self.loss[layer][0],
                "accuracy": self.accuracy[layer][i],
            }
            for layer in self.loss
            for i, s in enumerate(self.sparsities)
        ]

    def _increase(self, layer: str) -> list[float]:
        """Loss increase over dense, made non-decreasing (pruning more never counts as helping)."""
        base, out, running = self.loss[layer][0], [], 0.0
        for value in self.loss[layer]:
            running = max(running, value - base)
            out.append(running)
        return out

    def _reach(self, layer: str, eps: float) -> float:
        """Largest sparsity whose (interpolated) loss increase is at most ``eps``."""
        inc, grid = self._increase(layer), self.sparsities
        last = max(i for i, v in enumerate(inc) if v <= eps)
        if last == len(grid) - 1:
            return grid[-1]
        lo, hi = inc[last], inc[last + 1]
        return grid[last] + (eps - lo) / (hi - lo) * (grid[last + 1] - grid[last])

    def allocate(self, target: float, min_keep: int = 0) -> dict[str, int]:
        """Units to prune per layer: ``round(target × all units)`` in total, equal loss increase per layer.

        Bisection on ``ε`` finds where the total first reaches the target; units left over by rounding, or
        by a layer whose curve is flat at ``ε`` (it can lose a range of units at no cost), are shared out in
        proportion to what each layer could still give at that ``ε``.
        """
        names = list(self.sizes)
        caps = {n: max(0, self.sizes[n] - min_keep) for n in names}
        total = round(target * sum(self.sizes.values()))
        total = min(total, sum(caps.values()))

        def counts(eps: float) -> dict[str, float]:
            return {n: min(caps[n], self._reach(n, eps) * self.sizes[n]) for n in names}

        lo, hi = 0.0, max(max(self._increase(n)) for n in names) + 1.0
        if sum(counts(lo).values()) >= total:
            below = dict.fromkeys(names, 0.0)  # no loss needed at all: share the zero-cost units
            above = counts(lo)
        else:
            for _ in range(100):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if sum(counts(mid).values()) < total else (lo, mid)
            below, above = counts(lo), counts(hi)
        chosen = {n: math.floor(below[n]) for n in names}
        room = {n: max(0.0, above[n] - chosen[n]) for n in names}
        left = total - sum(chosen.values())
        if left > 0 and sum(room.values()) > 0:
            share = {n: left * room[n] / sum(room.values()) for n in names}
            for n in names:
                chosen[n] += math.floor(share[n])
            # largest remainder first; ties go to the larger layer
            order = sorted(names, key=lambda n: (share[n] - math.floor(share[n]), self.sizes[n]), reverse=True)
            for n in order:
                if sum(chosen.values()) >= total:
                    break
                if chosen[n] < caps[n]:
                    chosen[n] += 1
        # anything still missing (every curve flat at the top) goes wherever there is room
        for n in sorted(names, key=lambda n: self.sizes[n], reverse=True):
            extra = min(caps[n] - chosen[n], total - sum(chosen.values()))
            if extra > 0:
                chosen[n] += extra
        return chosen

    def hull(self, layer: str) -> list[tuple[float, float]]:
        """The lower convex hull of ``(units removed, loss increase)`` from ``(0, 0)``: the cheapest measured way to
        remove any count, with costs per unit (the slopes) that only grow."""
        size = self.sizes[layer]
        hull: list[tuple[float, float]] = []
        for point in zip((s * size for s in self.sparsities), self._increase(layer), strict=True):
            while len(hull) >= 2 and _turn(hull[-2], hull[-1], point) <= 0:
                hull.pop()  # the last vertex lies on or above the chord: a mix of its neighbours is cheaper
            hull.append(point)
        return hull

    def allocate_marginal(self, target: float, min_keep: int = 0) -> dict[str, int]:
        """Units to prune per layer: ``round(target × all units)`` in total, at an equal marginal cost.

        The Lagrangian rule: take hull segments (see :meth:`hull`) across all layers, cheapest loss increase per
        unit first, until the target is reached. Every layer then stops where removing one more unit costs the
        same ``λ``, so no unit moved between layers could lower the summed loss increase; the equal-loss rule of
        :meth:`allocate` instead lets a cheap layer lose as much loss as the most expensive one must.
        """
        caps = {n: max(0, self.sizes[n] - min_keep) for n in self.sizes}
        total = min(round(target * sum(self.sizes.values())), sum(caps.values()))
        segments = []
        for name in self.sizes:
            hull = self.hull(name)
            for (x0, y0), (x1, y1) in itertools.pairwise(hull):
                end = min(x1, caps[name])
                if end > x0:
                    segments.append(((y1 - y0) / (x1 - x0), -self.sizes[name], name, x0, end))
        removed = dict.fromkeys(self.sizes, 0.0)
        left = float(total)
        for _slope, _, name, start, end in sorted(segments):  # ties: the larger layer first
            take = min(end - start, left)
            removed[name] += take
            left -= take
            if left <= 0:
                break
        return _rounded(removed, total, caps)


def _turn(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    """> 0 when o → a → b turns left (counter-clockwise): a lies below the chord o–b."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _rounded(counts: Mapping[str, float], total: int, caps: Mapping[str, int]) -> dict[str, int]:
    """Whole units summing to ``total`` (within ``caps``): floors, then the largest remainders one unit each."""
    chosen = {n: min(caps[n], math.floor(c + 1e-9)) for n, c in counts.items()}
    for name in sorted(counts, key=lambda n: counts[n] - math.floor(counts[n] + 1e-9), reverse=True):
        if sum(chosen.values()) >= total:
            break
        if chosen[name] < caps[name]:
            chosen[name] += 1
    for name in counts:  # float error left more than one unit: any layer with room
        chosen[name] += max(0, min(caps[name] - chosen[name], total - sum(chosen.values())))
    return chosen


@torch.no_grad()
def _loss_and_accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    loss = correct = count = 0.0
    for x, y in batches:
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(dim=1) == y).sum())
        count += len(y)
    if not count:
        raise ValueError("sensitivity analysis got no batches")
    return loss / count, correct / count


@torch.no_grad()
def measure_sensitivity(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    granularity: Granularity,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    sparsities: Iterable[float] = DEFAULT_GRID,
    min_keep: int = 0,
) -> SensitivityCurves:
    """Prune one layer at a time (lowest ``scores`` first) to each sparsity and measure loss and accuracy.

    The model is restored exactly afterwards (weights and every submodule's train/eval mode); ``granularity``
    must be bound. With ``min_keep`` (channels keep one), the top of the grid measures ``n - min_keep`` units
    removed.
    """
    grid = tuple(sorted({0.0, *(float(s) for s in sparsities)}))
    batches = list(batches)
    loss: dict[str, list[float]] = {}
    accuracy: dict[str, list[float]] = {}
    with eval_mode(model):
        base = _loss_and_accuracy(model, batches)
        for layer, score in scores.items():
            n = score.numel()
            loss[layer], accuracy[layer] = [base[0]], [base[1]]
            for s in grid[1:]:
                flat = score.float().cpu().reshape(-1)
                keep = (~lowest(flat, min(round(s * n), n - min_keep))).reshape(score.shape)
                result = _with_layer_pruned(model, granularity.expand(model, layer, keep), batches)
                loss[layer].append(result[0])
                accuracy[layer].append(result[1])
    return SensitivityCurves(grid, loss, accuracy, {layer: s.numel() for layer, s in scores.items()})


def _with_layer_pruned(
    model: nn.Module, masks: dict[str, dict[str, torch.Tensor]], batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, float]:
    """Loss and accuracy with ``masks`` multiplied into the weights, which are restored afterwards."""
    saved = []
    for module_name, params in masks.items():
        module = model.get_submodule(module_name)
        for pname, mask in params.items():
            tensor = module._parameters[f"{pname}_orig" if is_reparametrized(module, pname) else pname]
            saved.append((tensor, tensor.detach().clone()))
            tensor.mul_(mask.to(tensor.device, tensor.dtype))
    try:
        return _loss_and_accuracy(model, batches)
    finally:
        for tensor, value in reversed(saved):  # reversed: a tensor saved twice ends as it began
            tensor.copy_(value)


@register_threshold("sensitivity")
class Sensitivity(Threshold):
    """Per-layer counts from :meth:`SensitivityCurves.allocate` (equal loss increase), lowest scores first.

    The curves are measured once, by :meth:`calibrate` on held-out batches (``compute_masks`` does it on the
    first call it gets this object), and reused for every later target of an iterative or gradual schedule
    *when the caller passes the same object* (see :func:`.planner.make_threshold`); a fresh one would
    re-measure the partly pruned model. Per-layer counts come from rounding, so in a schedule a layer can be
    offered one unit fewer than it already lost; its pruned units stay pruned and the total overshoots by
    at most one unit per layer.
    """

    needs_calibration = True
    why_restricted = "its curves prune a growing fraction of one layer's units, and a group has only a handful"

    @classmethod
    def accepts(cls, granularity: type[Granularity]) -> bool:
        return not granularity.coarse

    def __init__(self, min_keep: int = 0) -> None:
        super().__init__(min_keep)
        self.curves: SensitivityCurves | None = None

    @property
    def calibrated(self) -> bool:
        return self.curves is not None

    def calibrate(
        self,
        model: nn.Module,
        scores: Mapping[str, torch.Tensor],
        granularity: Granularity,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    ) -> SensitivityCurves:
        self.curves = measure_sensitivity(model, scores, granularity, batches, min_keep=self.min_keep)
        return self.curves

    def promised(self, sizes: Mapping[str, int], sparsity: float) -> dict[tuple[str, ...], int]:
        total = sum(sizes.values())
        return {tuple(sizes): min(round(sparsity * total), total - self.min_keep * len(sizes))}

    def select(self, scores: Mapping[str, torch.Tensor], sparsity: float) -> Allocation:
        if self.curves is None:
            raise RuntimeError("threshold=sensitivity needs calibrate() (sensitivity curves) before select()")
        sizes = {n: s.numel() for n, s in scores.items()}
        if sizes != self.curves.sizes:
            raise ValueError(
                f"the sensitivity curves cover {self.curves.sizes} (layer: units) but the scores {sizes}: "
                "calibrate on the layers being pruned (a stale cached curve file is safe to delete)"
            )
        counts = self.allocate(self.curves, sparsity)
        per_layer = {n: counts[n] / scores[n].numel() for n in scores}
        alloc: Allocation = Layerwise(layer_sparsity=per_layer, min_keep=self.min_keep).select(scores, sparsity)
        for name in scores:
            alloc.info[name]["layer_target"] = per_layer[name]
        return alloc

    def allocate(self, curves: SensitivityCurves, sparsity: float) -> dict[str, int]:
        """Units to prune per layer at ``sparsity``: equal loss increase per layer."""
        return curves.allocate(sparsity, self.min_keep)


@register_threshold("marginal")
class Marginal(Sensitivity):
    """Per-layer counts from :meth:`SensitivityCurves.allocate_marginal` (equal loss increase per unit removed),
    lowest scores first; the same curves, measured and cached as for ``sensitivity``."""

    def allocate(self, curves: SensitivityCurves, sparsity: float) -> dict[str, int]:
        return curves.allocate_marginal(sparsity, self.min_keep)
