"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017): every weight θ gets a learned noise variance σ²,
and a weight whose noise swamps it (a large ``log α = log σ² − log θ²``) carries no information and can go.

Plain PyTorch: :class:`VariationalLayer` wraps a ``Conv2d`` or ``Linear`` in place (its weight stays the same
``Parameter``), :class:`VariationalFit` trains θ and log σ² from the dense model with the local
reparameterisation trick and an annealed KL term (resumable between epochs; :func:`fit_variational` runs it in one
go). Scores for a threshold are ``−log α`` (:class:`prunesweep.pruning.importance.Variational`), so any target is
met exactly, not only the ``log α ≥ 3`` cut.

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
    the KL term's weight rising from 0 to 1 over ``anneal_epochs``). ``train_clip``: the weights at
    ``log α ≥ 3`` are left out of the training forward pass (the paper's code does this; the network then learns
    without the weights its cut will remove). ``clipped_noise`` (with ``train_clip``): the clipped weights still
    add their noise ``α θ²`` to the training forward, as in the paper's code's Linear layers, so the data term keeps
    pulling their σ² down and a weight whose noise hurts comes back below ``log α = 3``; without it they add
    nothing, and a weight once clipped stays clipped. ``lr_decay``: ``constant``, or ``linear`` to 0 at the last
    epoch (per epoch, as the paper's code).

    >>> VariationalRecipe.from_mapping({"epochs": 3})
    VariationalRecipe(epochs=3, lr=0.001, anneal_epochs=5.0, train_clip=False, clipped_noise=False, lr_decay='constant')
    >>> [round(VariationalRecipe(epochs=4, lr_decay="linear").lr_at(e), 6) for e in range(4)]
    [0.001, 0.00075, 0.0005, 0.00025]
    >>> VariationalRecipe(epochs=0)
    Traceback (most recent call last):
    ...
    ValueError: epochs must be an integer >= 1, got 0
    >>> VariationalRecipe(clipped_noise=True)
    Traceback (most recent call last):
    ...
    ValueError: clipped_noise needs train_clip: without it no weight is clipped
    """

    epochs: int = 20
    lr: float = 1e-3
    anneal_epochs: float = 5.0
    train_clip: bool = False
    clipped_noise: bool = False
    lr_decay: str = "constant"

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.anneal_epochs >= 0:
            raise ValueError(f"anneal_epochs must be >= 0, got {self.anneal_epochs!r}")
        for flag in ("train_clip", "clipped_noise"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.clipped_noise and not self.train_clip:
            raise ValueError("clipped_noise needs train_clip: without it no weight is clipped")
        if self.lr_decay not in ("constant", "linear"):
            raise ValueError(f"lr_decay must be constant or linear, got {self.lr_decay!r}")

    @property
    def continuable(self) -> bool:
        """Whether a longer fit may continue this one's end state: nothing in it depends on its length (a constant
        lr; the KL annealing counts steps, not the share of the fit)."""
        return self.lr_decay == "constant"

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based)."""
        return self.lr if self.lr_decay == "constant" else self.lr * (self.epochs - epoch) / self.epochs

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> VariationalRecipe:
        """From a config mapping (None: the defaults); unknown keys are refused by name."""
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: {', '.join(f.name for f in fields(cls))}")
        return cls(**values)


def log_alpha(weight: torch.Tensor, log_sigma2: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """``log σ² − log θ²``, clipped to ±``LOG_ALPHA_CLIP`` (the training's range) unless ``clip`` is false.

    >>> log_alpha(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])).tolist()
    [0.0, 8.0]
    >>> round(log_alpha(torch.tensor([1e-3]), torch.tensor([0.0]), clip=False).item(), 2)
    13.81
    """
    ratio = log_sigma2 - torch.log(weight.pow(2) + 1e-8)
    return ratio.clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP) if clip else ratio


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
    ``f(x², σ²)``, one Gaussian draw per output; with ``train_clip`` the weights at ``log α ≥ LOG_ALPHA_PRUNE``
    are left out of the mean, and the variance is ``f(x², α θ²)`` with the clipped α over the kept weights (over
    all of them with ``clipped_noise``: the paper's code, in its Linear layers). In eval mode
    it is deterministic, with the weights whose ``log α ≥ LOG_ALPHA_PRUNE`` set to zero (the paper's sparse
    network).
    """

    def __init__(
        self,
        layer: nn.Conv2d | nn.Linear,
        init_log_sigma2: float = INITIAL_LOG_SIGMA2,
        train_clip: bool = False,
        clipped_noise: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"variational dropout wraps Conv2d or Linear layers, not {type(layer).__name__}")
        self.layer = layer
        self.log_sigma2 = nn.Parameter(torch.full_like(layer.weight, init_log_sigma2))
        self.train_clip, self.clipped_noise = train_clip, clipped_noise

    def log_alpha(self, clip: bool = True) -> torch.Tensor:
        return log_alpha(self.layer.weight, self.log_sigma2, clip)

    def _apply_op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, bias)
        return self.layer._conv_forward(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.layer.weight
        if not self.training:
            return self._apply_op(x, weight * (self.log_alpha() < LOG_ALPHA_PRUNE), self.layer.bias)
        if self.train_clip:
            log_alphas = self.log_alpha()
            kept = weight * (log_alphas < LOG_ALPHA_PRUNE)
            noisy = weight if self.clipped_noise else kept
            noise_variance = torch.exp(log_alphas) * noisy * noisy
            weight = kept
        else:
            noise_variance = torch.exp(self.log_sigma2)
        mean = self._apply_op(x, weight, self.layer.bias)
        variance = self._apply_op(x * x, noise_variance, None)
        return mean + torch.sqrt(variance + 1e-8) * torch.randn_like(mean)


def attach(
    model: nn.Module, layers: Sequence[str], train_clip: bool = False, clipped_noise: bool = False
) -> dict[str, VariationalLayer]:
    """Wrap each named layer of ``model`` in place; the wrappers by name (θ stays the layer's own Parameter)."""
    wrappers = {}
    for name in layers:
        parent, child = _parent_of(model, name)
        wrapper = VariationalLayer(parent.get_submodule(child), train_clip=train_clip, clipped_noise=clipped_noise)
        wrapper = wrapper.to(next(model.parameters()).device)
        setattr(parent, child, wrapper)
        wrappers[name] = wrapper
    return wrappers


def detach(model: nn.Module, wrappers: Mapping[str, VariationalLayer]) -> None:
    """Put the original layers back (holding the trained θ). A ``train_clip`` layer comes back without its
    weights at ``log α ≥ LOG_ALPHA_PRUNE``: its fit trained the network without them, and their θ, moved by the KL
    term alone, were never checked by a forward pass (left in, they break the network)."""
    for name, wrapper in wrappers.items():
        if wrapper.train_clip:
            with torch.no_grad():
                wrapper.layer.weight.mul_(wrapper.log_alpha() < LOG_ALPHA_PRUNE)
        parent, child = _parent_of(model, name)
        setattr(parent, child, wrapper.layer)


def _parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding ``name`` and the attribute it is held under."""
    parent_name, _, child = name.rpartition(".")
    return model.get_submodule(parent_name), child


def kl_weight(step: int, anneal_steps: int) -> float:
    """The KL term's weight: from 0 up to 1 linearly over ``anneal_steps``, then 1 (0 steps: 1 from the start).

    >>> [kl_weight(s, 4) for s in (0, 2, 4, 9)]
    [0.0, 0.5, 1.0, 1.0]
    """
    return 1.0 if anneal_steps <= 0 else min(1.0, step / anneal_steps)


class VariationalFit:
    """Trains θ and log σ² of an :func:`attach`-ed model with Adam on ``CE + kl_weight · KL / N`` (the negative
    variational lower bound per example, N the training examples), and can stop and resume between epochs:
    :meth:`state_dict` holds the weights, the optimizer, the epoch reached and the random state, and a fit
    resumed from it ends bit for bit where an uninterrupted one does (a loader that counts its passes, such as
    :class:`prunesweep.data.loaders.InMemoryLoader`, is set back to the pass it had reached).
    """

    def __init__(
        self, model: nn.Module, wrappers: Mapping[str, VariationalLayer], recipe: VariationalRecipe, train_size: int
    ) -> None:
        self.model, self.wrappers, self.recipe, self.train_size = model, wrappers, recipe, train_size
        self.optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        self.epoch = self.step = 0
        self.loader_pass: int | None = None  # the batches' pass counter after the last epoch, where it has one

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": torch.get_rng_state(),
            "loader_pass": -1 if self.loader_pass is None else self.loader_pass,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        torch.set_rng_state(state["rng"])
        self.loader_pass = None if int(state["loader_pass"]) < 0 else int(state["loader_pass"])

    def run(self, batches: Batches, on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> None:
        """The epochs left; ``on_epoch(epoch, metrics)`` after each (mean loss and KL per example, ``sparsity``:
        the share of wrapped weights at ``log α ≥ 3``), when :meth:`state_dict` is that epoch's end."""
        self.model.train()
        if self.loader_pass is not None and hasattr(batches, "set_epoch"):
            batches.set_epoch(self.loader_pass)  # resumed: the next epoch sees the order it would have seen
        while self.epoch < self.recipe.epochs:
            for group in self.optimizer.param_groups:
                group["lr"] = self.recipe.lr_at(self.epoch)
            metrics = self._epoch(batches)
            self.epoch += 1
            self.loader_pass = getattr(batches, "epoch", None)
            if on_epoch is not None:
                on_epoch(self.epoch - 1, {**metrics, "sparsity": noise_share(self.wrappers)})

    def _epoch(self, batches: Batches) -> dict[str, float]:
        device = next(self.model.parameters()).device
        # batches: a list or a loader, re-iterable and sized
        anneal_steps = round(self.recipe.anneal_epochs * len(batches))  # type: ignore[arg-type]
        totals, steps = {"loss": 0.0, "kl": 0.0}, 0
        for x, y in batches:
            kl = sum(kl_divergence(w.log_alpha()) for w in self.wrappers.values()) / self.train_size
            logits = self.model(x.to(device))
            loss = F.cross_entropy(logits, y.to(device)) + kl_weight(self.step, anneal_steps) * kl
            if not torch.isfinite(loss):
                raise FloatingPointError(f"variational loss became {loss.item()} at step {self.step}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            totals["loss"] += loss.item()
            totals["kl"] += kl.item()
            steps += 1
            self.step += 1
        return {k: v / max(steps, 1) for k, v in totals.items()}


def fit_variational(
    model: nn.Module,
    wrappers: Mapping[str, VariationalLayer],
    batches: Batches,
    recipe: VariationalRecipe,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> None:
    """:class:`VariationalFit` in one go, N counted from ``batches`` (one extra pass)."""
    train_size = sum(len(y) for _, y in batches)
    VariationalFit(model, wrappers, recipe, train_size).run(batches, on_epoch)


@torch.no_grad()
def noise_share(wrappers: Mapping[str, VariationalLayer]) -> float:
    """The share of wrapped weights with ``log α ≥ LOG_ALPHA_PRUNE``: the sparsity the paper's rule would give."""
    noisy = sum(int((w.log_alpha() >= LOG_ALPHA_PRUNE).sum()) for w in wrappers.values())
    return noisy / sum(w.log_sigma2.numel() for w in wrappers.values())
