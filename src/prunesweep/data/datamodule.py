"""LightningDataModule for MNIST / Fashion-MNIST held entirely in memory."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .errors import DataError
from .idx import read_idx
from .inmemory import InMemoryDataModule
from .sources import DATASETS, DEFAULT_SOURCES, Source, ensure_raw_files


def default_data_root() -> Path:
    """Per-user cache dir for raw files: ``$XDG_CACHE_HOME/prunesweep/data`` (``~/.cache`` by default)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "prunesweep" / "data"


def _load_images(path: Path) -> torch.Tensor:
    """IDX images -> float32 ``[N, 1, H, W]`` in [0, 1]."""
    return read_idx(path).unsqueeze(1).to(torch.float32).div_(255.0)


class MNISTDataModule(InMemoryDataModule):
    """MNIST or Fashion-MNIST (``name``) as in-memory tensors with a fixed train/val split.

    ``prepare_data`` fetches and verifies the raw files (see :func:`ensure_raw_files`); ``setup`` loads all
    four files, splits the 60k training images into train / val (``val_size``) with a generator seeded by
    ``split_seed`` — the same split for every run with that seed — and optionally keeps only the first
    ``train_subset`` of the (shuffled) train part.  ``train_on_val`` trains on all 60k, as the pruning papers do;
    the validation images are then seen in training, so validation accuracy no longer measures held-out data.
    Loaders are :class:`InMemoryLoader`.
    """

    num_classes: int = 10
    input_shape: tuple[int, int, int] = (1, 28, 28)

    def __init__(
        self,
        name: str = "mnist",
        root: str | Path | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        val_size: int = 5000,
        train_on_val: bool = False,
        train_subset: int | None = None,
        split_seed: int = 0,
        shuffle_seed: int | None = None,
        normalize: bool = True,
        sources: Sequence[str | Source] = DEFAULT_SOURCES,
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__()
        if name not in DATASETS:
            raise DataError(f"unknown dataset {name!r} (data.name); known: {', '.join(sorted(DATASETS))}")
        for key, value in (("data.batch_size", batch_size), ("data.eval_batch_size", eval_batch_size)):
            if int(value) < 1:
                raise DataError(f"{key} must be >= 1, got {value}")
        self.name = name
        self.spec = DATASETS[name]
        self.root = Path(root).expanduser() if root is not None else default_data_root()
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.val_size = int(val_size)
        self.train_on_val = bool(train_on_val)
        self.train_subset = None if train_subset is None else int(train_subset)
        self.split_seed = int(split_seed)
        # The split stays fixed across runs; the batch order follows the run's seed (default: the split's).
        self.shuffle_seed = self.split_seed if shuffle_seed is None else int(shuffle_seed)
        self.normalize = normalize
        self.sources = list(sources) if not isinstance(sources, str) else [sources]
        self.log = log
        self._raw: Path | None = None
        self.x_train: torch.Tensor | None = None
        self.y_train = self.x_val = self.y_val = self.x_test = self.y_test = None

    def prepare_data(self) -> None:
        self._raw = ensure_raw_files(self.name, self.root, self.sources, self.log)

    def setup(self, stage: str | None = None) -> None:
        if self.x_train is not None:  # idempotent: Lightning calls setup once per stage
            return
        # Without prepare_data in this process (other ranks, or setup() called directly) verify here; on a
        # warm cache that is only a stamp check.
        raw = self._raw or ensure_raw_files(self.name, self.root, self.sources, self.log)
        x_all = _load_images(raw / "train-images-idx3-ubyte")
        y_all = read_idx(raw / "train-labels-idx1-ubyte")
        x_test = _load_images(raw / "t10k-images-idx3-ubyte")
        y_test = read_idx(raw / "t10k-labels-idx1-ubyte")
        n = len(x_all)
        if not 1 <= self.val_size < n:
            raise DataError(f"data.val_size must be in 1..{n - 1}, got {self.val_size}")
        n_train = n if self.train_on_val else n - self.val_size
        if self.train_subset is not None and not 1 <= self.train_subset <= n_train:
            raise DataError(
                f"data.train_subset must be in 1..{n_train} (the train part with data.val_size={self.val_size}, "
                f"data.train_on_val={self.train_on_val}), or null for all; got {self.train_subset}"
            )
        if self.normalize:
            mean, std = self.spec.mean, self.spec.std
            x_all.sub_(mean).div_(std)
            x_test.sub_(mean).div_(std)
        # Own generator: the split must not depend on (or disturb) the global RNG state.
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        val_idx = perm[: self.val_size]
        train_idx = self._training_indices(perm[self.val_size :], val_idx)
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        self.x_train, self.y_train = x_all[train_idx], y_all[train_idx]
        self.x_val, self.y_val = x_all[val_idx], y_all[val_idx]
        self.x_test, self.y_test = x_test, y_test

    def __repr__(self) -> str:
        # Lightning's default __str__ calls every *_dataloader() (here: fetch + load the data) and then
        # fails on non-DataLoader iterables, so describe the module from its attributes instead.
        sizes = (
            f"train={len(self.x_train)}, val={len(self.x_val)}, test={len(self.x_test)}"
            if self.x_train is not None
            else "not set up"
        )
        return (
            f"MNISTDataModule(name={self.name!r}, root={str(self.root)!r}, batch_size={self.batch_size}, "
            f"val_size={self.val_size}, train_on_val={self.train_on_val}, train_subset={self.train_subset}, "
            f"split_seed={self.split_seed}; "
            f"{sizes})"
        )
