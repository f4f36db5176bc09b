"""Building what ``model._target_`` and ``data._target_`` name: any importable callable, with errors naming the key.

Trust model: a config is code. Its ``_target_`` may name any importable callable, which is imported and called
with the group's keys, as in every Hydra application; so run only configs and command lines you would run as
Python. Nothing here sandboxes it; it only makes mistakes easy to read.

* Only keys the callable accepts are passed (its signature is inspected; a ``**kwargs`` callable gets every
  key). ``name`` is a label for run names (default: the class name, ``${target_name:model._target_}``) and is
  passed only to a callable that names it as a parameter (the built-in registry, ``build_model``).
* A model must be an ``nn.Module`` whose output on the data's images is ``(batch, classes)``; models that declare
  no prunable units get them found by :func:`prunesweep.pruning.discover.annotate`.
* Data must be a datamodule with the harness's interface (``train/val/test_dataloader`` and
  ``calibration_batches``, e.g. :class:`~prunesweep.data.MNISTDataModule`), or a ``LightningDataModule`` or
  map-style dataset of ``(image, label)`` pairs, which is loaded into memory and wrapped
  (:class:`~prunesweep.data.tensors.TensorDataModule`).
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from prunesweep.pruning import annotate
from prunesweep.pruning._util import eval_mode

#: The input every built-in data config yields; data configs with other images declare ``input_shape``.
DEFAULT_INPUT_SHAPE: tuple[int, ...] = (1, 28, 28)
#: Keys that describe the config rather than the object: passed only to callables that ask for them.
LABEL_KEYS = ("name",)
_HARNESS_DATA_INTERFACE = ("train_dataloader", "val_dataloader", "test_dataloader", "calibration_batches")


class TargetError(ValueError):
    """A ``_target_`` cannot be imported, built, or used; the message names the key."""


def _class_name(target: str) -> str:
    return str(target).rpartition(".")[2]


if not OmegaConf.has_resolver("target_name"):
    # ``name: ${target_name:${model._target_}}``: a custom model's label defaults to its class name.
    OmegaConf.register_new_resolver("target_name", _class_name)


def locate(target: str, key: str) -> Callable[..., Any]:
    """Import ``pkg.module.attr`` (attributes may nest, ``pkg.module.Class.build``), or raise naming ``key``.

    >>> locate("torch.nn.Linear", "model._target_").__name__
    'Linear'
    >>> locate("no_such_pkg.Net", "model._target_")
    Traceback (most recent call last):
    ...
    prunesweep.targets.TargetError: model._target_='no_such_pkg.Net' cannot be imported: no module named 'no_such_pkg'
    """
    parts = str(target).split(".")
    if not target or not all(parts):
        raise TargetError(f"{key}={target!r} is not a dotted import path such as 'my_package.models.Net'")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and module_name.startswith(err.name):
                continue  # not a module: try a shorter prefix (the rest are attributes)
            raise TargetError(f"{key}={target!r} cannot be imported: {err}") from None
        except Exception as err:  # the module exists but fails to import: show why
            raise TargetError(
                f"{key}={target!r}: importing {module_name} failed: {type(err).__name__}: {err}"
            ) from None
        for attribute in parts[split:]:
            if not hasattr(obj, attribute):
                raise TargetError(f"{key}={target!r} cannot be imported: {obj.__name__} has no attribute {attribute!r}")
            obj = getattr(obj, attribute)
        if not callable(obj):
            raise TargetError(f"{key}={target!r} is a {type(obj).__name__}, not a class or function")
        return obj
    raise TargetError(f"{key}={target!r} cannot be imported: no module named {parts[0]!r}")


def accepted_kwargs(fn: Callable[..., Any], keys: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``keys`` that ``fn`` accepts; ``_hydra_`` keys and, unless named, labels are dropped.

    >>> accepted_kwargs(lambda num_classes=10: None, {"name": "net", "num_classes": 3, "depth": 2})
    {'num_classes': 3}
    >>> accepted_kwargs(lambda **kw: None, {"name": "net", "num_classes": 3})
    {'num_classes': 3}
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no signature: pass everything but the labels
        return {k: v for k, v in keys.items() if k not in LABEL_KEYS and not k.startswith("_")}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {
        k: v for k, v in keys.items() if not k.startswith("_") and (k in params or (takes_any and k not in LABEL_KEYS))
    }


def build(group_cfg: DictConfig | Mapping[str, Any], key: str, **extra: Any) -> Any:
    """Instantiate ``group_cfg`` (a ``_target_`` and its keys) with only the keys its target accepts."""
    keys = _plain(group_cfg)
    target = keys.get("_target_")
    if not target:
        raise TargetError(f"{key} is missing; name the class or function to build, e.g. {key}=my_package.Net")
    fn = locate(str(target), key)
    kwargs = accepted_kwargs(fn, keys)
    objects = accepted_kwargs(fn, extra)  # Python objects (a log function): passed beside the config
    hydra_keys = {k: v for k, v in keys.items() if k.startswith("_") and k != "_target_"}
    try:
        return instantiate({"_target_": target, **hydra_keys, **kwargs}, **objects)
    except Exception as err:
        cause = err.__cause__ or err  # Hydra wraps the callable's own exception
        raise TargetError(
            f"{key}={target!r} failed when called with {sorted(kwargs)}: {type(cause).__name__}: {cause}"
        ) from err


def build_model(
    model_cfg: DictConfig | Mapping[str, Any],
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
    num_classes: int | None = None,
    classes_from: str = "the data has {} classes",
) -> nn.Module:
    """The ``nn.Module`` ``model_cfg`` names, checked on a batch of ``input_shape`` images and annotated with
    prunable units if it declares none. ``num_classes`` must equal its output width (``classes_from`` says
    where it comes from, in the error)."""
    plain = _plain(model_cfg)
    target = str(plain.get("_target_", ""))
    model = build(plain, "model._target_")
    if not isinstance(model, nn.Module):
        raise TargetError(f"model._target_={target!r} built a {type(model).__name__}, which is not a torch.nn.Module")
    example = torch.zeros(2, *input_shape)
    try:
        with eval_mode(model), torch.inference_mode():
            output = model(example)
    except Exception as err:
        raise TargetError(
            f"model._target_={target!r} fails on a batch of shape {tuple(example.shape)} (the data's images): "
            f"{type(err).__name__}: {err}"
        ) from None
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise TargetError(f"model._target_={target!r} must return (batch, classes) logits; it returned {shape}")
    if num_classes is not None and output.shape[1] != num_classes:
        raise TargetError(
            f"model._target_={target!r} has {output.shape[1]} outputs but {classes_from.format(num_classes)}; "
            f"set model.num_classes to the data's classes (or make the model's output match)"
        )
    return _annotated(model, example[:1], key=json.dumps([plain, list(input_shape)], sort_keys=True, default=str))


# What annotate found, per model config and input shape: a sweep validates every point, and tracing a
# MobileNet's graph takes seconds. Only names are kept, so any fresh instance of the same config can reuse them.
_FOUND: dict[str, dict[str, Any]] = {}
_FOUND_ATTRIBUTES = ("prunable_layers", "classifier", "classifier_layer", "channel_layers", "structures")


def _annotated(model: nn.Module, example: torch.Tensor, key: str) -> nn.Module:
    if key not in _FOUND:
        annotate(model, example)
        _FOUND[key] = {
            name: value
            for name in _FOUND_ATTRIBUTES
            if isinstance(value := getattr(model, name, None), (str, tuple, dict)) and name in vars(model)
        }
        return model
    for name, value in _FOUND[key].items():
        setattr(model, name, value)
    return model


def _plain(group_cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A config group, resolved, as a plain dict."""
    keys = OmegaConf.to_container(group_cfg, resolve=True) if isinstance(group_cfg, DictConfig) else dict(group_cfg)
    assert isinstance(keys, dict)
    return keys


def build_datamodule(data_cfg: DictConfig | Mapping[str, Any], log: Callable[[str], None] = print) -> Any:
    """The datamodule ``data_cfg`` names; a ``LightningDataModule`` or dataset without the harness's
    interface is loaded into memory and wrapped with the config's batch and split keys."""
    from prunesweep.data.tensors import TensorDataModule  # Lightning: imported only when data is built

    keys = _plain(data_cfg)
    built = build(keys, "data._target_", log=log)
    if all(callable(getattr(built, name, None)) for name in _HARNESS_DATA_INTERFACE):
        return built
    try:
        return TensorDataModule.wrap(built, log=log, **accepted_kwargs(TensorDataModule, keys))
    except TypeError as err:
        raise TargetError(
            f"data._target_={keys.get('_target_')!r} built a {type(built).__name__}, which is neither a datamodule "
            f"with {', '.join(_HARNESS_DATA_INTERFACE)} nor a LightningDataModule or dataset of (image, label) "
            f"pairs: {err}"
        ) from None


def data_signature(datamodule: Any) -> tuple[tuple[int, ...], int | None]:
    """``(input_shape, num_classes)`` of a set-up datamodule: its attributes, else its first test batch."""
    shape = getattr(datamodule, "input_shape", None)
    if shape is None:
        shape = tuple(next(iter(datamodule.test_dataloader()))[0].shape[1:])
    return tuple(int(s) for s in shape), getattr(datamodule, "num_classes", None)
