"""``data=torchvision``: any ``torchvision.datasets`` class by name (``data.dataset``), held in memory.

The dataset reads its files from ``data.root`` in torchvision's own layout (``<root>/MNIST/raw/...`` for
``MNIST``). ``data.download=false`` (the default) never touches the network, so it works offline whenever the
files are present, and says so when they are not. Classes with a ``train=`` argument give their own test split
(and train is split into train/val); classes with ``split=`` use ``"train"``/``"test"``; any other is one pool
split three ways. Images are converted to ``data.input_shape`` (see
:class:`~prunesweep.data.tensors.TensorDataModule`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import DataError
from .tensors import Pools, TensorDataModule, stack_items


class TorchvisionDataModule(TensorDataModule):
    """``torchvision.datasets.<dataset>(root, ...)``; the other arguments are :class:`TensorDataModule`'s."""

    def __init__(
        self,
        dataset: str = "MNIST",
        root: str | Path = ".",
        download: bool = False,
        input_shape: Sequence[int] | None = (1, 28, 28),
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_shape=input_shape, **kwargs)
        self.dataset, self.root, self.download = str(dataset), Path(root).expanduser(), bool(download)
        self.name = name or self.dataset.lower()

    def load(self) -> Pools:
        import torchvision.datasets  # optional dependency, needed only for this data config

        cls = getattr(torchvision.datasets, self.dataset, None)
        if not inspect.isclass(cls):
            raise DataError(f"data.dataset={self.dataset!r} is not a class of torchvision.datasets")
        params = inspect.signature(cls).parameters
        if "train" in params:
            splits = {"train": {"train": True}, "test": {"train": False}}
        elif "split" in params:
            splits = {"train": {"split": "train"}, "test": {"split": "test"}}
        else:
            splits = {"pool": {}}
        return {name: self._read(cls, args) for name, args in splits.items()}

    def _read(self, cls: type, args: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            data = cls(str(self.root), download=self.download, **args)
        except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True ..."
            raise DataError(
                f"data.dataset={self.dataset} has no files under data.root={str(self.root)!r} ({err}); "
                "put them there, or set data.download=true once online"
            ) from None
        images, targets = getattr(data, "data", None), getattr(data, "targets", None)
        if isinstance(images, torch.Tensor) and targets is not None:  # MNIST family: tensors already, no PIL
            x = images.unsqueeze(1) if images.dim() == 3 else images
            return (x.float() / 255.0 if not x.is_floating_point() else x.float()), torch.as_tensor(targets).long()
        return stack_items(data[i] for i in range(len(data)))
