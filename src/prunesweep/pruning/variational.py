"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017): every weight θ gets a learned noise variance σ²,
and a weight whose noise swamps it (a large ``log α = log σ² − log θ²``) carries no information and can go.

Plain PyTorch: :class:`VariationalLayer` wraps a ``Conv2d`` or ``Linear`` in place (its weight stays the same
``Parameter``), :func:`fit_variational` trains θ and log σ² from the dense model with the local reparameterisation
trick and an annealed KL term, and gives back log σ² per layer. Scores for a threshold are ``−log α``
(:class:`prunesweep.pruning.importance.Variational`), so any target is met exactly, not only the ``log α ≥ 3`` cut.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 3))
>>> wrapped = attach(model, ["0"])
>>> isinstance(model[0], VariationalLayer), model[0].layer.weight is wrapped["0"].layer.weight
(True, True)
>>> detach(model, wrapped)
>>> isinstance(model[0], nn.Linear)
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: Molchanov et al.'s fit of −KL(q ‖ log-uniform prior) as a function of log α (their eq. 14).
KL_K1, KL_K2, KL_K3 = 0.63576, 1.87320, 1.48695
#: The paper's pruning rule: log α ≥ 3 (a dropout rate above ~0.95) means the weight is noise.
LOG_ALPHA_PRUNE = 3.0
#: log α is clipped here, as in the paper's code: beyond it the KL fit is flat and the gradients only add noise.
LOG_ALPHA_CLIP = 8.0
#: log σ² of a fresh wrapper: tiny noise, so training starts from the dense model's function.
INITIAL_LOG_SIGMA2 = -10.0

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class VariationalRecipe:
    """``pruning.variational``: how sparse variational dropout trains from the dense model (Adam on θ and log σ²,
    the KL term's weight rising from 0 to 1 over ``anneal_epochs``).

    >>> VariationalRecipe.from_mapping({"epochs": 3})
    VariationalRecipe(epochs=3, lr=0.001, anneal_epochs=5.0)
    >>> VariationalRecipe(epochs=0)
    Traceback (most recent call last):
    ...
    ValueError: epochs must be an integer >= 1, got 0
    """

    epochs: int = 20
    lr: float = 1e-3
    anneal_epochs: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.anneal_epochs >= 0:
            raise ValueError(f"anneal_epochs must be >= 0, got {self.anneal_epochs!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> VariationalRecipe:
        """From a config mapping (None: the defaults); unknown keys are refused by name."""
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: epochs, lr, anneal_epochs")
        return cls(**values)


def log_alpha(weight: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """``log σ² − log θ²``, clipped to ±``LOG_ALPHA_CLIP``.

    >>> log_alpha(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])).tolist()
    [0.0, 8.0]
    """
    return (log_sigma2 - torch.log(weight.pow(2) + 1e-8)).clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)


def kl_divergence(log_alphas: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ log-uniform prior) summed over weights, by the paper's approximation (up to a constant: it is 0 where
    α → ∞, i.e. a weight that is pure noise costs nothing).

    >>> kl_divergence(torch.tensor([-8.0, 8.0])) > kl_divergence(torch.tensor([8.0, 8.0]))
    tensor(True)
    """
    negative_kl = KL_K1 * torch.sigmoid(KL_K2 + KL_K3 * log_alphas) - 0.5 * F.softplus(-log_alphas) - KL_K1
    return -negative_kl.sum()


class VariationalLayer(nn.Module):
    """A ``Conv2d`` or ``Linear`` with a learned per-weight noise variance.

    In training mode the output is sampled by the local reparameterisation trick: mean ``f(x, θ)``, variance
    ``f(x², σ²)``, one Gaussian draw per output. In eval mode it is deterministic, with the weights whose
    ``log α ≥ LOG_ALPHA_PRUNE`` set to zero (the paper's sparse network).
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear, init_log_sigma2: float = INITIAL_LOG_SIGMA2) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"variational dropout wraps Conv2d or Linear layers, not {type(layer).__name__}")
        self.layer = layer
        self.log_sigma2 = nn.Parameter(torch.full_like(layer.weight, init_log_sigma2))

    def log_alpha(self) -> torch.Tensor:
        return log_alpha(self.layer.weight, self.log_sigma2)

    def _apply_op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, bias)
        return self.layer._conv_forward(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.layer.weight
        if not self.training:
            return self._apply_op(x, weight * (self.log_alpha() < LOG_ALPHA_PRUNE), self.layer.bias)
        mean = self._apply_op(x, weight, self.layer.bias)
        variance = self._apply_op(x * x, torch.exp(self.log_sigma2), None)
        return mean + torch.sqrt(variance + 1e-8) * torch.randn_like(mean)


def attach(model: nn.Module, layers: Sequence[str]) -> dict[str, VariationalLayer]:
    """Wrap each named layer of ``model`` in place; the wrappers by name (θ stays the layer's own Parameter)."""
    wrappers = {}
    for name in layers:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapper = VariationalLayer(parent.get_submodule(child)).to(next(model.parameters()).device)
        setattr(parent, child, wrapper)
        wrappers[name] = wrapper
    return wrappers


def detach(model: nn.Module, wrappers: Mapping[str, VariationalLayer]) -> None:
    """Put the original layers back (holding the trained θ)."""
    for name, wrapper in wrappers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, wrapper.layer)


def kl_weight(step: int, anneal_steps: int) -> float:
    """The KL term's weight: from 0 up to 1 linearly over ``anneal_steps``, then 1 (0 steps: 1 from the start).

    >>> [kl_weight(s, 4) for s in (0, 2, 4, 9)]
    [0.0, 0.5, 1.0, 1.0]
    """
    return 1.0 if anneal_steps <= 0 else min(1.0, step / anneal_steps)


def fit_variational(
    model: nn.Module,
    wrappers: Mapping[str, VariationalLayer],
    batches: Batches,
    recipe: VariationalRecipe,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> None:
    """Train θ and log σ² of an :func:`attach`-ed model with Adam on ``CE + kl_weight · KL / N`` (the negative
    variational lower bound per example, N the examples in ``batches``); ``on_epoch(epoch, metrics)`` after each
    epoch (mean loss and KL per example, ``sparsity``: the share of wrapped weights at ``log α ≥ 3``)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    sizes = [len(y) for _, y in batches]
    steps_per_epoch, train_size = len(sizes), sum(sizes)
    anneal_steps = round(recipe.anneal_epochs * steps_per_epoch)
    device = next(model.parameters()).device
    step = 0
    model.train()
    for epoch in range(recipe.epochs):
        totals = {"loss": 0.0, "kl": 0.0}
        for x, y in batches:
            kl = sum(kl_divergence(w.log_alpha()) for w in wrappers.values()) / train_size
            loss = F.cross_entropy(model(x.to(device)), y.to(device)) + kl_weight(step, anneal_steps) * kl
            if not torch.isfinite(loss):
                raise FloatingPointError(f"variational loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals["loss"] += loss.item() / steps_per_epoch
            totals["kl"] += kl.item() / steps_per_epoch
            step += 1
        if on_epoch is not None:
            on_epoch(epoch, {**totals, "sparsity": noise_share(wrappers)})


@torch.no_grad()
def noise_share(wrappers: Mapping[str, VariationalLayer]) -> float:
    """The share of wrapped weights with ``log α ≥ LOG_ALPHA_PRUNE``: the sparsity the paper's rule would give."""
    noisy = sum(int((w.log_alpha() >= LOG_ALPHA_PRUNE).sum()) for w in wrappers.values())
    return noisy / sum(w.log_sigma2.numel() for w in wrappers.values())
