"""Importance: a score per unit (per weight for unstructured), higher = more worth keeping.

Scores are plain detached tensors keyed by layer name, shaped like the layer's weight for unstructured and
``(n_units,)`` for structured granularities. Strategies subclass :class:`Importance` and register a name:

>>> import torch
>>> from prunesweep.models import LeNet300
>>> from prunesweep.pruning.units import Channel, Unstructured
>>> model = LeNet300()
>>> {k: tuple(v.shape) for k, v in L1().score(model, ["fc1", "fc2"], Unstructured()).items()}
{'fc1': (300, 784), 'fc2': (100, 300)}
>>> tuple(L2().score(model, ["fc2"], Channel())["fc2"].shape)
(100,)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from prunesweep.pruning._util import (
    clone_model,
    effective_param,
    eval_mode,
    model_device,
    registrar,
    trainable_param,
)
from prunesweep.pruning.plan import MaskPlan, apply_masks
from prunesweep.pruning.spec import PruningConfigError, PruningSpec
from prunesweep.pruning.units import Granularity
from prunesweep.pruning.variational import log_alpha

Calibration = Iterable[tuple[torch.Tensor, torch.Tensor]]

IMPORTANCES: dict[str, type[Importance]] = {}


register_importance = registrar(IMPORTANCES, "pruning.importance")


class Importance:
    """Base class: ``score(model, layer_names, granularity, calib) -> {layer: scores}``."""

    name: ClassVar[str] = ""
    #: True when scores need data (``calib`` batches of ``(x, y)``).
    requires_calibration: ClassVar[bool] = False
    #: True when scores come from a model trained for them first (sparse variational dropout's noise levels):
    #: the instance holds that state, and ``from_spec`` alone cannot score.
    trained_from_dense: ClassVar[bool] = False
    #: Why :meth:`accepts` refuses some granularities (quoted in the config error).
    why_restricted: ClassVar[str] = ""

    @classmethod
    def accepts(cls, granularity: type[Granularity]) -> bool:
        """Whether scores are defined for units of ``granularity`` (read from its capabilities, not its name)."""
        return True

    @classmethod
    def from_spec(cls, spec: PruningSpec) -> Importance:
        return cls()

    def score(
        self,
        model: nn.Module,
        layer_names: Sequence[str],
        granularity: Granularity,
        calib: Calibration | None = None,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _need_calib(self, calib: Calibration | None) -> Calibration:
        if calib is None:
            raise PruningConfigError(
                f"pruning.importance={self.name} needs calibration batches: pass calib=<iterable of (x, y)>"
            )
        return calib


class CalibratedImportance(Importance):
    """Base for importances measured on data: they read up to ``calib_batches`` batches of ``calib``."""

    requires_calibration = True

    def __init__(self, calib_batches: int = 8) -> None:
        self.calib_batches = calib_batches

    @classmethod
    def from_spec(cls, spec: PruningSpec) -> CalibratedImportance:
        return cls(calib_batches=spec.calib_batches)


@register_importance("l1")
class L1(Importance):
    """Magnitude: ``|w|`` per weight, the L1 norm of the unit's weights per unit (Li et al. 2017)."""

    p: ClassVar[int] = 1

    def score(self, model, layer_names, granularity, calib=None):
        if granularity.coarse:
            return {layer: self._coarse(model, layer, granularity) for layer in layer_names}
        scores = {}
        for layer in layer_names:
            module = model.get_submodule(layer)
            weight = effective_param(module, "weight").detach()
            if not granularity.structured:
                # |w| itself (not (|w|^p)^(1/p)): ranks and ties bit-identical to torch.nn.utils.prune.
                scores[layer] = weight.abs()
            elif self.p == 1:
                scores[layer] = granularity.reduce(module, weight.abs())
            else:
                scores[layer] = granularity.reduce(module, weight.pow(2)).sqrt()
        return scores

    def _coarse(self, model: nn.Module, layer: str, granularity: Granularity) -> torch.Tensor:
        """Size-normalised magnitude of each unit's conv/linear weights: mean |w| (l1) or L2 / sqrt(n) (l2).

        Norm and bias parameters are left out: a BatchNorm scale near 1 would otherwise outweigh thousands of
        small conv weights. Normalising by size makes a 3×3 conv comparable with an attention head."""
        out = []
        for index in range(granularity.count_units(model, layer)):
            values = [
                effective_param(model.get_submodule(name), pname).detach()[~mask.to(model_device(model))]
                for name, params in granularity.unit_masks(model, layer, index).items()
                for pname, mask in params.items()
                if mask.dim() >= 2
            ]
            flat = torch.cat([v.flatten().float() for v in values])
            out.append(flat.abs().mean() if self.p == 1 else flat.pow(2).mean().sqrt())
        return torch.stack(out)


@register_importance("l2")
class L2(L1):
    """L2 norm of the unit's weights (for single weights this is ``|w|``, i.e. the same ranking as l1)."""

    p = 2


@register_importance("taylor")
class Taylor(CalibratedImportance):
    """First-order Taylor estimate of the loss change, ``|w · ∂L/∂w|`` (Molchanov et al. 2017/2019).

    Cross-entropy on up to ``calib_batches`` batches, run in eval mode (no dropout noise, no BatchNorm
    statistics updates). Per-batch ``|w·g|`` terms are summed; per unit they are summed over the unit.
    Gradients come from ``torch.autograd.grad`` so no ``.grad`` is left on the model.
    """

    def score(self, model, layer_names, granularity, calib=None):
        calib = self._need_calib(calib)
        if granularity.coarse:
            return self._coarse(model, layer_names, granularity, calib)
        modules = [model.get_submodule(layer) for layer in layer_names]
        params = [trainable_param(module, "weight") for module in modules]
        totals = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        for grads in self._gradients(model, params, calib):
            for total, module, grad in zip(totals, modules, grads, strict=True):
                # For a pruned weight, d/d(orig) = mask * d/d(effective); the masked entries have w=0,
                # so |w_eff * grad_orig| equals |w_eff * dL/dw_eff| everywhere.
                total += (effective_param(module, "weight").detach() * grad).abs().float()
        return {
            layer: granularity.reduce(module, total)
            for layer, module, total in zip(layer_names, modules, totals, strict=True)
        }

    def _gradients(
        self, model: nn.Module, params: list[torch.Tensor], calib: Calibration
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """∂(cross-entropy)/∂params for each calibration batch, in eval mode; requires_grad flags are restored."""
        flags = [p.requires_grad for p in params]
        device = model_device(model)
        n_batches = 0
        try:
            for p in params:
                p.requires_grad_(True)
            with eval_mode(model), torch.enable_grad():
                for x, y in itertools.islice(calib, self.calib_batches):
                    yield torch.autograd.grad(F.cross_entropy(model(x.to(device)), y.to(device)), params)
                    n_batches += 1
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
        if n_batches == 0:
            raise ValueError("taylor importance got an empty calibration iterable")

    def _coarse(self, model, layer_names, granularity, calib):
        """Per unit and batch ``|Σ w·∂L/∂w|`` over all the unit's parameters (the first-order loss change of
        zeroing the whole unit, Molchanov et al. 2019's group form), summed over batches. For a bypassed unit
        (a ResNet conv+BN) this estimates zeroing it, not bypassing it: use ``ablation`` for the exact effect."""
        units = [
            (layer, granularity.unit_masks(model, layer, i))
            for layer in layer_names
            for i in range(granularity.count_units(model, layer))
        ]
        keys = sorted({(name, pname) for _, masks in units for name, ps in masks.items() for pname in ps})
        params = [trainable_param(model.get_submodule(name), pname) for name, pname in keys]
        totals = [torch.zeros(()) for _ in units]
        for grads in self._gradients(model, params, calib):
            wg = {
                key: (effective_param(model.get_submodule(key[0]), key[1]).detach() * grad).float().cpu()
                for key, grad in zip(keys, grads, strict=True)
            }
            for u, (_, masks) in enumerate(units):
                change = sum(wg[(n, p)][~m].sum() for n, ps in masks.items() for p, m in ps.items())
                totals[u] += abs(float(change))
        scores: dict[str, list[torch.Tensor]] = {layer: [] for layer in layer_names}
        for (layer, _), total in zip(units, totals, strict=True):
            scores[layer].append(total)
        return {layer: torch.stack(values) for layer, values in scores.items()}


@register_importance("activation")
class Activation(CalibratedImportance):
    """Mean L2 norm (per sample) of each unit's contribution to the residual stream on calibration batches.

    A block's or layer's contribution is ``output - input`` (what replacing it by identity removes); a head's
    is its slice of the output projection applied to its own output. Small contributions go first.
    """

    why_restricted = "activation measures a unit's contribution to the residual stream"

    @classmethod
    def accepts(cls, granularity: type[Granularity]) -> bool:
        return granularity.coarse

    def score(self, model, layer_names, granularity, calib=None):
        calib = self._need_calib(calib)
        sums = {layer: torch.zeros(granularity.count_units(model, layer), dtype=torch.float64) for layer in layer_names}
        samples = 0

        def recorder(layer: str):
            def record(index: int, contribution: torch.Tensor) -> None:
                sums[layer][index] += float(contribution.detach().flatten(1).norm(dim=1).double().sum())

            return record

        handles = [h for layer in layer_names for h in granularity.watch(model, layer, recorder(layer))]
        device = model_device(model)
        try:
            with eval_mode(model), torch.inference_mode():
                for x, _ in itertools.islice(calib, self.calib_batches):
                    model(x.to(device))
                    samples += len(x)
        finally:
            for handle in handles:
                handle.remove()
        if samples == 0:
            raise ValueError("activation importance got an empty calibration iterable")
        return {layer: (total / samples).float() for layer, total in sums.items()}


@register_importance("ablation")
class Ablation(CalibratedImportance):
    """Measured increase of the calibration loss when the unit alone is removed (masked exactly as pruning
    would mask it, bypass included). Exact, and one evaluation per unit: fine for tens of coarse units."""

    why_restricted = "ablation removes whole units one at a time (one evaluation each)"

    @classmethod
    def accepts(cls, granularity: type[Granularity]) -> bool:
        return granularity.coarse

    def score(self, model, layer_names, granularity, calib=None):
        batches = list(itertools.islice(self._need_calib(calib), self.calib_batches))
        if not batches:
            raise ValueError("ablation importance got an empty calibration iterable")
        device = model_device(model)

        def loss(net: nn.Module) -> float:
            with eval_mode(net), torch.inference_mode():
                return sum(float(F.cross_entropy(net(x.to(device)), y.to(device), reduction="sum")) for x, y in batches)

        base = loss(model)
        scores = {}
        for layer in layer_names:
            deltas = []
            for index in range(granularity.count_units(model, layer)):
                keep = torch.ones(granularity.count_units(model, layer), dtype=torch.bool)
                keep[index] = False
                plan = MaskPlan(
                    masks=granularity.expand(model, layer, keep),
                    layers=[],
                    bypass=tuple(granularity.bypassed(model, layer, keep)),
                )
                ablated = clone_model(model)
                apply_masks(ablated, plan)
                deltas.append((loss(ablated) - base) / sum(len(y) for _, y in batches))
            scores[layer] = torch.tensor(deltas, dtype=torch.float32)
        return scores


@register_importance("entropy")
class Entropy(CalibratedImportance):
    """Entropy of each unit's activation distribution over the calibration data (Luo & Wu 2017).

    Conv outputs are reduced per sample to their spatial mean; each unit's values are histogrammed into
    ``bins`` equal-width bins over that unit's own [min, max]. A unit whose output barely varies carries
    little information, has low entropy and is pruned first. Constant units score 0.
    """

    why_restricted = "entropy scores a unit's activations"

    @classmethod
    def accepts(cls, granularity: type[Granularity]) -> bool:
        return granularity.structured and not granularity.coarse  # one output per unit: a channel or neuron

    def __init__(self, calib_batches: int = 8, bins: int = 32) -> None:
        super().__init__(calib_batches)
        self.bins = bins

    def score(self, model, layer_names, granularity, calib=None):
        calib = self._need_calib(calib)
        if not granularity.structured:
            raise ValueError(f"entropy importance needs a structured granularity, got {granularity.name}")
        outputs: dict[str, list[torch.Tensor]] = {layer: [] for layer in layer_names}

        def recorder(layer: str):
            def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
                # (N, C, *spatial) -> (N, C): per-sample spatial mean; linear (N, C) stays as is, and a linear
                # over tokens (N, T, C) is averaged over its tokens.
                if isinstance(module, nn.Linear):
                    values = output.flatten(1, -2).mean(dim=1) if output.dim() > 2 else output
                else:
                    values = output.flatten(2).mean(dim=2) if output.dim() > 2 else output
                outputs[layer].append(values.detach().float())

            return hook

        handles = [model.get_submodule(layer).register_forward_hook(recorder(layer)) for layer in layer_names]
        device = model_device(model)
        n_batches = 0
        try:
            with eval_mode(model), torch.inference_mode():
                for x, _ in itertools.islice(calib, self.calib_batches):
                    model(x.to(device))
                    n_batches += 1
        finally:
            for handle in handles:
                handle.remove()
        if n_batches == 0:
            raise ValueError("entropy importance got an empty calibration iterable")
        return {layer: self._entropy(torch.cat(outputs[layer])) for layer in layer_names}

    def _entropy(self, values: torch.Tensor) -> torch.Tensor:
        """Histogram entropy (nats) of each column of ``values`` (samples × units)."""
        lo, hi = values.min(dim=0).values, values.max(dim=0).values
        width = (hi - lo).clamp_min(torch.finfo(values.dtype).tiny)
        bins = ((values - lo) / width * self.bins).long().clamp_(0, self.bins - 1)  # max lands in the last bin
        counts = torch.zeros(self.bins, values.shape[1], device=values.device)
        counts.scatter_add_(0, bins, torch.ones_like(values))
        prob = counts / values.shape[0]
        entropy = -(prob * prob.clamp_min(1e-12).log()).sum(dim=0)
        # A constant unit has a single populated bin -> entropy exactly 0; clamp tiny negative round-off.
        return entropy.clamp_min(0.0)


@register_importance("random")
class Random(Importance):
    """Uniform scores from ``torch.Generator().manual_seed(seed)``: the baseline every method must beat."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @classmethod
    def from_spec(cls, spec: PruningSpec) -> Random:
        return cls(seed=spec.seed)

    def score(self, model, layer_names, granularity, calib=None):
        generator = torch.Generator().manual_seed(self.seed)
        scores = {}
        for layer in layer_names:
            module = model.get_submodule(layer)
            weight = next(iter(module.parameters())) if granularity.coarse else effective_param(module, "weight")
            shape = weight.shape if not granularity.structured else (granularity.count_units(model, layer),)
            # Drawn on CPU so the same seed gives the same ranking on every device.
            scores[layer] = torch.rand(shape, generator=generator).to(weight.device)
        return scores


@register_importance("variational")
class Variational(Importance):
    """``−log α`` of sparse variational dropout (Molchanov et al. 2017): a weight whose learned noise outweighs it
    goes first. ``log_sigma2`` (per layer, weight-shaped) comes from :func:`.variational.fit_variational` on the
    same model; prunesweep trains it from the dense model when ``pruning.importance=variational``
    (``pruning.variational``: epochs, lr, anneal_epochs, train_clip, lr_decay).

    >>> from torch import nn
    >>> from prunesweep.pruning.units import Unstructured
    >>> model = nn.Sequential(nn.Linear(2, 1))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
    >>> scores = Variational({"0": torch.tensor([[0.0, -4.0]])}).score(model, ["0"], Unstructured())
    >>> int(scores["0"].argmax())  # same magnitude, less noise: the second weight is kept first
    1

    A weight at zero has the largest log α, whatever its noise: every zero ties, and a cut that keeps some of
    them keeps the first in memory order (for LeNet-300-100, fc1's weights from the image's blank top-left
    pixels, which never get a gradient). ``fitted_log_alpha`` (the log α each weight had when its fit ended,
    unclipped, before a ``train_clip`` fit's :func:`.variational.detach` zeroed the noisiest) ranks the zeros
    instead, the least noisy first; the weights that are not zero are scored as they are now:

    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[0.0, 0.0]]))
    >>> fitted = {"0": torch.tensor([[5.0, 3.5]])}
    >>> ranked = Variational({"0": torch.zeros(1, 2)}, fitted).score(model, ["0"], Unstructured())["0"]
    >>> ranked.tolist()  # the second zero was less noisy when its fit ended: it is kept first
    [[-5.0, -3.5]]
    """

    why_restricted = "variational dropout learns one noise level per weight"
    trained_from_dense = True

    def __init__(
        self,
        log_sigma2: Mapping[str, torch.Tensor] | None = None,
        fitted_log_alpha: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.log_sigma2 = dict(log_sigma2 or {})
        self.fitted_log_alpha = dict(fitted_log_alpha or {})

    @classmethod
    def accepts(cls, granularity: type[Granularity]) -> bool:
        return not granularity.structured

    def score(self, model, layer_names, granularity, calib=None):
        missing = [layer for layer in layer_names if layer not in self.log_sigma2]
        if missing:
            raise PruningConfigError(
                f"pruning.importance=variational has no trained noise for {missing}: train it with "
                "prunesweep.pruning.variational.fit_variational (prunesweep does, from pruning.variational)"
            )
        return {layer: -self._log_alpha(model, layer) for layer in layer_names}

    def _log_alpha(self, model: nn.Module, layer: str) -> torch.Tensor:
        weight = effective_param(model.get_submodule(layer), "weight").detach()
        now = log_alpha(weight, self.log_sigma2[layer])
        fitted = self.fitted_log_alpha.get(layer)
        return now if fitted is None else torch.where(weight == 0, fitted.to(now.device), now)
