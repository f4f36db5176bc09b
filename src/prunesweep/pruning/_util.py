"""Small helpers shared by the pruning modules: effective (masked) parameters and mode guards.

``torch.nn.utils.prune`` reparametrises ``weight`` as ``weight_orig * weight_mask`` and only refreshes the
``module.weight`` attribute in a forward pre-hook, so after an optimizer step that attribute is stale.
Everything that *measures* a model therefore recomputes the product here instead of reading it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import prune

# LeNet5 / LeNet300 read MNIST-sized images; callers with other inputs pass example_inputs explicitly.
DEFAULT_INPUT_SHAPE: tuple[int, ...] = (1, 1, 28, 28)


def is_reparametrized(module: nn.Module, name: str) -> bool:
    """True when ``module.<name>`` is reparametrised by ``torch.nn.utils.prune`` (``<name>_orig`` + mask)."""
    return f"{name}_orig" in module._parameters and f"{name}_mask" in module._buffers


def effective_param(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor the module's forward uses for ``name`` (freshly ``orig * mask`` when pruned)."""
    if is_reparametrized(module, name):
        return module._parameters[f"{name}_orig"] * module._buffers[f"{name}_mask"]
    return getattr(module, name)


def trainable_param(module: nn.Module, name: str) -> nn.Parameter:
    """The leaf Parameter behind ``name``: ``<name>_orig`` when pruned, else ``<name>`` itself."""
    param = module._parameters.get(f"{name}_orig") if is_reparametrized(module, name) else None
    return param if param is not None else module._parameters[name]


def effective_named_params(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Like ``named_parameters()`` but with pruned parameters under their plain name and masks applied."""
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for pname, param in module._parameters.items():
            if param is None:
                continue
            if pname.endswith("_orig") and is_reparametrized(module, pname[: -len("_orig")]):
                base = pname[: -len("_orig")]
                yield prefix + base, param * module._buffers[f"{base}_mask"]
            else:
                yield prefix + pname, param


def pruned_tensor_names(module: nn.Module) -> list[str]:
    """Names of the tensors of ``module`` that carry a torch.nn.utils.prune hook."""
    return [
        hook._tensor_name for hook in module._forward_pre_hooks.values() if isinstance(hook, prune.BasePruningMethod)
    ]


def classifier_name(model: nn.Module) -> str | None:
    """The layer whose outputs are never pruned: ``model.classifier`` when it is a module name, else
    ``model.classifier_layer`` (for models whose ``classifier`` is a submodule, e.g. torchvision's MobileNet)."""
    for attribute in ("classifier", "classifier_layer"):
        value = getattr(model, attribute, None)
        if isinstance(value, str):
            return value
    return None


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless model)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's own train/eval flag afterwards.

    Restoring per module (not ``model.train(was_training)``) keeps deliberately frozen submodules frozen.
    """
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags.items():
            module.training = flag


def clone_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on pruned models.

    A pruned module stores ``weight = weight_orig * weight_mask`` as a plain attribute; that product is a
    non-leaf tensor after any forward with grad enabled, and ``deepcopy`` refuses non-leaf tensors. Seeding
    the memo with a detached copy sidesteps that; the clone's forward pre-hook recomputes it anyway.
    """
    memo: dict[int, object] = {}
    for module in model.modules():
        for name in pruned_tensor_names(module):
            value = module.__dict__.get(name)
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def registrar(registry: dict[str, type], config_key: str) -> Callable[[str], Callable[[type], type]]:
    """A class-decorator factory: ``@register("l1")`` names the class and files it in ``registry``.

    >>> REG: dict[str, type] = {}
    >>> register = registrar(REG, "pruning.importance")
    >>> @register("l1")
    ... class L1: ...
    >>> REG["l1"].name
    'l1'
    """

    def register(name: str) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            cls.name = name
            registry[name] = cls
            return cls

        return decorate

    register.__doc__ = f"Class decorator: make a class selectable as ``{config_key}=<name>``."
    return register
