"""An in-memory datamodule for any image-classification data: the harness's interface over plain tensors.

:class:`TensorDataModule` holds train/val/test tensors and serves them like
:class:`~prunesweep.data.MNISTDataModule` (:class:`~prunesweep.data.loaders.InMemoryLoader` batches, a fixed
seeded split, ``calibration_batches``). A subclass only implements :meth:`TensorDataModule.load`, returning
one pool of ``(images, labels)`` (split into train/val/test here) or separate ``train`` and ``test`` pools
(train is split into train/val). :meth:`TensorDataModule.wrap` does that for a foreign ``LightningDataModule``
or a map-style dataset of ``(image, label)`` pairs. Normalisation uses the training split's per-channel mean
and std, so nothing about the data is hard-coded.

>>> import torch
>>> class Noise(TensorDataModule):
...     def load(self):
...         return {"pool": (torch.rand(100, 1, 8, 8), torch.arange(100) % 4)}
>>> data = Noise(val_fraction=0.1, test_fraction=0.2, batch_size=16, log=lambda message: None)
>>> data.setup()
>>> len(data.x_train), len(data.x_val), len(data.x_test), data.num_classes, data.input_shape
(70, 10, 20, 4, (1, 8, 8))
>>> abs(float(data.x_train.mean())) < 1e-5, round(float(data.x_train.std()), 2)
(True, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from .errors import DataError
from .inmemory import InMemoryDataModule

Pools = dict[str, tuple[torch.Tensor, torch.Tensor]]


def image_tensor(image: Any) -> torch.Tensor:
    """A float ``C×H×W`` tensor from a tensor, a ``H×W(×C)`` array or a PIL image (integers scaled to [0, 1])."""
    if isinstance(image, torch.Tensor):
        tensor = image
    else:
        array = np.asarray(image)
        tensor = torch.from_numpy(array.copy())
        if tensor.dim() == 3:
            tensor = tensor.permute(2, 0, 1)  # H×W×C (PIL, numpy) -> C×H×W
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    is_integer = not torch.is_floating_point(tensor)
    tensor = tensor.to(torch.float32)
    return tensor / 255.0 if is_integer else tensor


def fit_images(x: torch.Tensor, input_shape: Sequence[int] | None) -> torch.Tensor:
    """``N×C×H×W`` images converted to ``input_shape`` (``C×H×W``): RGB<->grey, bilinear resize."""
    if input_shape is None:
        return x
    channels, *size = (int(s) for s in input_shape)
    if x.shape[1] != channels:
        if channels == 1 and x.shape[1] == 3:  # ITU-R 601 luma, as PIL's convert("L")
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise DataError(f"cannot turn {x.shape[1]}-channel images into data.input_shape={list(input_shape)}")
    if list(x.shape[2:]) != size:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


def stack_items(items: Iterable[tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image, label)`` pairs -> ``(N×C×H×W float, N int64)``; every image must have the same shape."""
    images, labels = [], []
    for image, label in items:
        images.append(image_tensor(image))
        labels.append(int(label))
    if not images:
        raise DataError("the data has no images")
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise DataError(f"images differ in shape {sorted(shapes)[:3]}...; set data.input_shape to resize them")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


class TensorDataModule(InMemoryDataModule):
    """Train/val/test tensors in memory with a seeded split (see the module docstring)."""

    def __init__(
        self,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        train_subset: int | None = None,
        train_on_val: bool = False,
        split_seed: int = 0,
        shuffle_seed: int | None = None,
        normalize: bool = True,
        input_shape: Sequence[int] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__()
        for key, value in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
            if not 0.0 < float(value) < 1.0:
                raise DataError(f"{key}={value} must lie in (0, 1)")
        if float(val_fraction) + float(test_fraction) >= 1.0:
            raise DataError("data.val_fraction + data.test_fraction must leave images to train on (sum < 1)")
        for key, value in (("data.batch_size", batch_size), ("data.eval_batch_size", eval_batch_size)):
            if int(value) < 1:
                raise DataError(f"{key} must be >= 1, got {value}")
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.train_subset = None if train_subset is None else int(train_subset)
        self.train_on_val = bool(train_on_val)  # the papers' protocol: val is then trained on, not held out
        self.split_seed = int(split_seed)
        self.shuffle_seed = self.split_seed if shuffle_seed is None else int(shuffle_seed)
        self.normalize = normalize
        self.requested_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self.log = log
        self.x_train: torch.Tensor | None = None
        self.y_train = self.x_val = self.y_val = self.x_test = self.y_test = None
        self.num_classes: int | None = None
        self.input_shape: tuple[int, ...] | None = self.requested_shape

    def load(self) -> Pools:
        """``{"pool": (x, y)}`` or ``{"train": (x, y), "test": (x, y)}``; ``x`` is ``N×C×H×W`` float."""
        raise NotImplementedError

    @classmethod
    def wrap(cls, data: Any, **kwargs: Any) -> TensorDataModule:
        """A ``LightningDataModule`` (read through its loaders) or a map-style dataset, held in memory."""
        if isinstance(data, pl.LightningDataModule):
            return _Wrapped(lambda: _read_datamodule(data), **kwargs)
        if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            return _Wrapped(lambda: {"pool": stack_items(data[i] for i in range(len(data)))}, **kwargs)
        raise TypeError(f"a {type(data).__name__} has neither dataloaders nor __len__ and __getitem__")

    def setup(self, stage: str | None = None) -> None:
        if self.x_train is not None:  # idempotent: Lightning calls setup once per stage
            return
        pools = {name: (fit_images(x, self.requested_shape), y) for name, (x, y) in self.load().items()}
        x, y, train, val = self._split(pools)
        train = self._training_indices(train, val)
        if self.train_subset is not None:
            if not 1 <= self.train_subset <= len(train):
                raise DataError(
                    f"data.train_subset must be in 1..{len(train)} (or null for all); got {self.train_subset}"
                )
            train = train[: self.train_subset]
        self.x_train, self.y_train, self.x_val, self.y_val = x[train], y[train], x[val], y[val]
        self.num_classes = int(max(int(t.max()) for t in (self.y_train, self.y_val, self.y_test))) + 1
        self.input_shape = tuple(self.x_train.shape[1:])
        if self.normalize:  # per-channel statistics of the training split only: nothing leaks from held-out data
            dims = (0, 2, 3)
            mean, std = self.x_train.mean(dims, keepdim=True), self.x_train.std(dims, keepdim=True).clamp_min(1e-8)
            self.x_train, self.x_val, self.x_test = ((t - mean) / std for t in (self.x_train, self.x_val, self.x_test))
        self.log(
            f"{type(self).__name__}: train={len(train)}, val={len(val)}, test={len(self.x_test)}, "
            f"{self.num_classes} classes, images {self.input_shape}"
        )

    def _split(self, pools: Pools) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The images and labels that train and val index, and those indices; sets the test split."""
        generator = torch.Generator().manual_seed(self.split_seed)  # own RNG: the split never moves
        if "pool" in pools:
            (x, y), n = pools["pool"], len(pools["pool"][0])
            order = torch.randperm(n, generator=generator)
            n_test, n_val = round(self.test_fraction * n), round(self.val_fraction * n)
            test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
            self.x_test, self.y_test = x[test], y[test]
        else:
            (x, y), n = pools["train"], len(pools["train"][0])
            order = torch.randperm(n, generator=generator)
            n_val = round(self.val_fraction * n)
            val, train = order[:n_val], order[n_val:]
            self.x_test, self.y_test = pools["test"]
        if min(len(val), len(train), len(self.x_test)) == 0:
            raise DataError(
                f"{n} images are too few for data.val_fraction / data.test_fraction to leave every split one"
            )
        return x, y, train, val

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_size={self.batch_size}, split_seed={self.split_seed})"


class _Wrapped(TensorDataModule):
    def __init__(self, read: Callable[[], Pools], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._read = read

    def load(self) -> Pools:
        return self._read()


def _read_datamodule(data: pl.LightningDataModule) -> Pools:
    """Every batch of a foreign datamodule's train (and, if it has one, test) loader, concatenated."""
    data.prepare_data()
    data.setup("fit")
    pools = {"train": _concat(data.train_dataloader())}
    try:
        data.setup("test")
        pools["test"] = _concat(data.test_dataloader())
    except (NotImplementedError, AttributeError, TypeError):  # no test split: hold one out of the train pool
        pools = {"pool": pools["train"]}
    return pools


def _concat(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*((x.float(), y.long()) for x, y in loader), strict=True)
    return torch.cat(xs), torch.cat(ys)
