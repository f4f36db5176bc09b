"""Threshold / allocation: given per-layer scores and a target sparsity, decide which units go.

A :class:`Threshold` maps ``{layer: scores}`` to ``{layer: keep}`` (bool, same shape as the scores). Units
with score ``-inf`` are *pinned*: already pruned by an earlier iterative step, they are always removed and
count towards the (cumulative) target. Structured granularities construct thresholds with ``min_keep=1``
so no layer is emptied.

>>> import torch
>>> scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20.0, 30.0, 40.0])}
>>> {k: v.tolist() for k, v in Global().select(scores, 0.5).keep.items()}   # 4 lowest overall
{'a': [False, False, False, False], 'b': [True, True, True, True]}
>>> {k: v.tolist() for k, v in Layerwise().select(scores, 0.5).keep.items()}  # 2 lowest in each layer
{'a': [False, False, True, True], 'b': [False, False, True, True]}
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from prunesweep.pruning._util import registrar
from prunesweep.pruning.spec import PruningSpec
from prunesweep.pruning.units import Granularity


# --------------------------------------------------------------------------------------------- normalisers
def _finite_apply(scores: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` to the finite entries only, so pinned ``-inf`` units stay ``-inf``."""
    out = scores.clone()
    finite = torch.isfinite(scores)
    if finite.any():
        out[finite] = fn(scores[finite])
    return out


def _lamp(x: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021): ``s_i² / Σ_{j ≥ i} s_j²`` with units sorted ascending by score.

    For per-weight ``|w|`` this is the paper's score; for per-unit norms the squared norm plays the role of
    ``w²`` (the unit's energy). Every layer's best unit scores exactly 1, which makes layers comparable.
    """
    order = torch.argsort(x, stable=True)
    sq = x[order].double().pow(2)
    suffix = sq.flip(0).cumsum(0).flip(0)
    out = torch.empty_like(x)
    out[order] = (sq / suffix.clamp_min(torch.finfo(torch.float64).tiny)).to(x.dtype)
    return out


def _safe(d: torch.Tensor) -> torch.Tensor:
    return d.clamp_min(torch.finfo(d.dtype).tiny)


NORMALIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "mean": lambda x: x / _safe(x.mean()),
    "max": lambda x: x / _safe(x.max()),
    "l2": lambda x: x / _safe(x.norm()),
    "lamp": _lamp,
}


# ------------------------------------------------------------------------------------------- distributions
@dataclass(frozen=True)
class Fit:
    """A location/scale fit. ``sigma`` is the standard deviation, so ``t = mu - k*sigma`` means the same
    thing for every family."""

    mu: float
    sigma: float


def _fit_normal(x: torch.Tensor) -> Fit:
    x = x.double()
    return Fit(mu=float(x.mean()), sigma=float(x.std(unbiased=False)))  # MLE, like the Laplace fit


def _normal_quantile(fit: Fit, q: float) -> float:
    return fit.mu + fit.sigma * statistics.NormalDist().inv_cdf(q)


def _fit_laplace(x: torch.Tensor) -> Fit:
    x = x.double()
    ordered, n = x.sort().values, x.numel()
    loc = float((ordered[(n - 1) // 2] + ordered[n // 2]) / 2)  # the median (mean of the middle two if n even)
    b = float((x - loc).abs().mean())  # MLE of the Laplace scale given the median
    return Fit(mu=loc, sigma=math.sqrt(2.0) * b)


def _laplace_quantile(fit: Fit, q: float) -> float:
    b = fit.sigma / math.sqrt(2.0)
    return fit.mu + b * math.log(2 * q) if q < 0.5 else fit.mu - b * math.log(2 - 2 * q)


#: name -> (fit, quantile function)
DISTRIBUTIONS: dict[str, tuple[Callable[[torch.Tensor], Fit], Callable[[Fit, float], float]]] = {
    "normal": (_fit_normal, _normal_quantile),
    "laplace": (_fit_laplace, _laplace_quantile),
}


# ---------------------------------------------------------------------------------------------- thresholds
@dataclass
class Allocation:
    """What a threshold decided.

    ``info[layer]`` holds ``threshold`` (cut value in the space scores were ranked in; ``None`` if nothing
    finite was pruned) and, for statistical, ``mu``, ``sigma``, ``k``. ``floored`` lists layers where the
    keep-at-least-``min_keep`` floor changed the result; ``adjusted`` lists layers whose count was changed by
    the floor or by pinned units, so exactness checks skip them.
    """

    keep: dict[str, torch.Tensor]
    info: dict[str, dict[str, float | None]] = field(default_factory=dict)
    floored: list[str] = field(default_factory=list)
    adjusted: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


THRESHOLDS: dict[str, type[Threshold]] = {}


register_threshold = registrar(THRESHOLDS, "pruning.threshold")


def _max_or_none(values: torch.Tensor) -> float | None:
    values = values[torch.isfinite(values)]
    return float(values.max()) if values.numel() else None


def lowest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` lowest entries, chosen with ``torch.topk(largest=False)`` exactly like
    ``torch.nn.utils.prune.L1Unstructured`` so ties break identically."""
    pruned = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        pruned[torch.topk(flat, k, largest=False).indices] = True
    return pruned


def resolved_normalize(normalize: str, granularity: type[Granularity]) -> str:
    """The normaliser actually used by the global threshold for ``pruning.normalize=normalize``.

    ``auto`` means ``none`` for unstructured (so global+l1 is *exactly* ``prune.global_unstructured``) and for
    coarse units (layer/block/head), and ``mean`` for channels. Raw per-channel norms are not comparable across
    layers: with PyTorch's default init a unit's L1 norm grows like sqrt(fan_in), so LeNet5's conv1 filters (fan_in
    25) would all go before any fc1 neuron (fan_in 800). Dividing by the layer mean makes scores scale-free per
    layer while keeping each layer's spread, is what Torch-Pruning's importances default to, and unlike ``max`` it
    is not driven by one outlier unit. LAMP stays available but was designed for per-weight scores.
    """
    if normalize != "auto":
        return normalize
    # Coarse scores are comparable across groups by construction (size-normalised magnitudes, loss deltas,
    # contribution norms), and a group of 2-4 units has no meaningful mean to divide by.
    return "mean" if granularity.structured and not granularity.coarse else "none"


class Threshold:
    """Base class: ``select(scores, sparsity) -> Allocation``."""

    name: ClassVar[str] = ""
    #: True for methods that must measure the model (``calibrate``) before they can ``select``.
    needs_calibration: ClassVar[bool] = False
    #: True when ``pruning.normalize`` changes what this method does (otherwise a set value is noted as ignored).
    uses_normalize: ClassVar[bool] = False
    #: True when ``pruning.layer_sparsity`` changes what this method does.
    uses_layer_sparsity: ClassVar[bool] = False
    #: Why :meth:`accepts` refuses some granularities (quoted in the config error).
    why_restricted: ClassVar[str] = ""

    def __init__(self, min_keep: int = 0) -> None:
        self.min_keep = min_keep

    @classmethod
    def accepts(cls, granularity: type[Granularity]) -> bool:
        """Whether this method is defined for units of ``granularity`` (read from its capabilities)."""
        return True

    @classmethod
    def from_spec(cls, spec: PruningSpec, granularity: type[Granularity]) -> Threshold:
        """Set up for ``spec``; structured granularities keep at least one unit per layer or group."""
        return cls(min_keep=1 if granularity.structured else 0)

    def layer_target(self, layer: str, sparsity: float) -> float:
        """The fraction of ``layer``'s units this method aims to remove (reported per layer)."""
        return sparsity

    @property
    def calibrated(self) -> bool:
        return not self.needs_calibration

    def calibrate(
        self,
        model: nn.Module,
        scores: Mapping[str, torch.Tensor],
        granularity: Granularity,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    ) -> object:
        """Measure whatever ``select`` needs from the model; a no-op for score-only methods."""
        return None

    def select(self, scores: Mapping[str, torch.Tensor], sparsity: float) -> Allocation:
        raise NotImplementedError

    def promised(self, sizes: Mapping[str, int], sparsity: float) -> dict[tuple[str, ...], int] | None:
        """Units this method promises to prune per group of layers (``None`` = no exact promise)."""
        return None

    def _floor(self, name: str, scores: torch.Tensor, pruned: torch.Tensor, alloc: Allocation) -> torch.Tensor:
        """Un-prune the best ``min_keep`` units if the method would leave fewer."""
        if self.min_keep and int((~pruned).sum()) < self.min_keep:
            pruned = pruned.clone()
            pruned[torch.topk(scores, min(self.min_keep, scores.numel())).indices] = False
            alloc.floored.append(name)
            alloc.adjusted.add(name)
        return pruned


@register_threshold("global")
class Global(Threshold):
    """One cut across all layers: the ``round(s × total)`` lowest (normalised) scores go.

    With ``normalize="none"`` and |w| scores this is exactly ``prune.global_unstructured(L1Unstructured)``.
    """

    uses_normalize = True

    def __init__(self, normalize: str = "none", min_keep: int = 0) -> None:
        super().__init__(min_keep)
        self.normalize = normalize

    @classmethod
    def from_spec(cls, spec: PruningSpec, granularity: type[Granularity]) -> Global:
        return cls(
            normalize=resolved_normalize(spec.normalize, granularity), min_keep=1 if granularity.structured else 0
        )

    def promised(self, sizes, sparsity):
        return {tuple(sizes): round(sparsity * sum(sizes.values()))}

    def select(self, scores, sparsity):
        names = list(scores)
        norm = NORMALIZERS[self.normalize]
        flats = [_finite_apply(scores[n].reshape(-1).float(), norm) for n in names]
        sizes = [f.numel() for f in flats]
        cat = torch.cat(flats)
        alloc = Allocation(keep={})
        k = round(sparsity * cat.numel())  # Python round, like torch.nn.utils.prune
        pinned = int(torch.isneginf(cat).sum())
        if k < pinned:
            alloc.notes.append(f"{pinned} units were already pruned, more than the target {k}: kept them pruned")
            alloc.adjusted.update(n for n, f in zip(names, flats, strict=True) if torch.isneginf(f).any())
            k = pinned
        pruned = lowest(cat, k)
        per_layer = list(torch.split(pruned, sizes))
        emptied = [n for n, p in zip(names, per_layer, strict=True) if int((~p).sum()) < self.min_keep]
        if emptied:
            # Protect each layer's best min_keep units and re-cut, so the other layers make up the difference
            # and the global count still holds whenever it can.
            protected = cat.clone()
            offset = 0
            for f in flats:
                top = torch.topk(f, min(self.min_keep, f.numel())).indices
                protected[offset + top] = math.inf
                offset += f.numel()
            capacity = cat.numel() - sum(min(self.min_keep, s) for s in sizes)
            if k > capacity:
                alloc.adjusted.update(names)
                k = capacity
            pruned = lowest(protected, k)
            per_layer = list(torch.split(pruned, sizes))
            alloc.floored.extend(emptied)
        cut = _max_or_none(cat[pruned])
        for name, p in zip(names, per_layer, strict=True):
            alloc.keep[name] = (~p).reshape(scores[name].shape)
            alloc.info[name] = {"threshold": cut}
        return alloc


@register_threshold("layerwise")
class Layerwise(Threshold):
    """Every layer loses ``round(s_layer × n_units)`` of its lowest-scored units.

    ``s_layer = layer_sparsity.get(layer, s)``. With |w| scores this is exactly ``prune.l1_unstructured``.
    """

    uses_layer_sparsity = True

    def __init__(self, layer_sparsity: Mapping[str, float] | None = None, min_keep: int = 0) -> None:
        super().__init__(min_keep)
        self.layer_sparsity = dict(layer_sparsity or {})

    @classmethod
    def from_spec(cls, spec: PruningSpec, granularity: type[Granularity]) -> Layerwise:
        return cls(layer_sparsity=spec.layer_sparsity, min_keep=1 if granularity.structured else 0)

    def layer_target(self, layer: str, sparsity: float) -> float:
        return float(self.layer_sparsity.get(layer, sparsity))

    def promised(self, sizes, sparsity):
        return {(n,): round(self.layer_target(n, sparsity) * size) for n, size in sizes.items()}

    def select(self, scores, sparsity):
        alloc = Allocation(keep={})
        for name, score in scores.items():
            flat = score.reshape(-1)
            n = flat.numel()
            k = round(self.layer_target(name, sparsity) * n)
            pinned = int(torch.isneginf(flat).sum())
            if k < pinned:
                alloc.notes.append(f"{name}: {pinned} units already pruned, more than the target {k}")
                alloc.adjusted.add(name)
                k = pinned
            if k > n - self.min_keep:
                alloc.floored.append(name)
                alloc.adjusted.add(name)
                k = n - self.min_keep
            pruned = lowest(flat, k)
            alloc.keep[name] = (~pruned).reshape(score.shape)
            alloc.info[name] = {"threshold": _max_or_none(flat[pruned])}
        return alloc


@register_threshold("statistical")
class Statistical(Threshold):
    """Per layer, fit a distribution to the scores and prune ``score < t`` with ``t = μ − k·σ``.

    ``k`` fixed (``stat_k``), or derived so the fitted CDF at ``t`` equals the target (``k`` may then be
    negative). Pinned units are excluded from the fit; in target mode the remaining units are cut at the
    quantile that makes the layer's cumulative fraction hit the target. The achieved sparsity is whatever the
    data gives: it is deliberately *not* forced onto the target.

    >>> import torch
    >>> x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    >>> alloc = Statistical(distribution="normal").select({"w": x}, 0.3)
    >>> round(1 - alloc.keep["w"].float().mean().item(), 2), round(alloc.info["w"]["k"], 2)
    (0.3, 0.52)
    """

    why_restricted = "it fits a distribution to each group's scores, and a group has only a handful of units"

    def __init__(self, distribution: str = "normal", k: float | None = None, min_keep: int = 0) -> None:
        super().__init__(min_keep)
        self.distribution = distribution
        self.k = k

    @classmethod
    def accepts(cls, granularity: type[Granularity]) -> bool:
        return not granularity.coarse

    @classmethod
    def from_spec(cls, spec: PruningSpec, granularity: type[Granularity]) -> Statistical:
        min_keep = 1 if granularity.structured else 0
        return cls(distribution=spec.stat_distribution, k=spec.stat_k, min_keep=min_keep)

    def select(self, scores, sparsity):
        fit_fn, quantile = DISTRIBUTIONS[self.distribution]
        alloc = Allocation(keep={})
        for name, score in scores.items():
            flat = score.reshape(-1)
            pinned = torch.isneginf(flat)
            finite = flat[torch.isfinite(flat)]
            if finite.numel() == 0:
                alloc.keep[name] = torch.zeros_like(score, dtype=torch.bool)
                alloc.info[name] = {"threshold": None, "mu": None, "sigma": None, "k": None}
                continue
            fit = fit_fn(finite)
            if self.k is not None:
                t = fit.mu - self.k * fit.sigma
            else:
                p0 = float(pinned.float().mean())
                q = (sparsity - p0) / (1.0 - p0)
                # q <= 0: the pinned units already meet the target; cut below the smallest score (prune none).
                t = quantile(fit, q) if q > 0 else float(finite.min())
            k = (fit.mu - t) / fit.sigma if fit.sigma > 0 else 0.0
            # Compared in the scores' own dtype, so `scores < t` reproduces the mask exactly.
            pruned = (flat < t) | pinned
            pruned = self._floor(name, flat, pruned, alloc)
            alloc.keep[name] = (~pruned).reshape(score.shape)
            alloc.info[name] = {
                "threshold": t,
                "mu": fit.mu,
                "sigma": fit.sigma,
                "k": float(self.k) if self.k is not None else k,
            }
        return alloc
