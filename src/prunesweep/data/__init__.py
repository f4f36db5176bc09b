"""Data layer: raw-file sources with md5 verification, and an in-memory LightningDataModule.

``MNISTDataModule`` is imported lazily: it is the only piece that needs Lightning, so code that just
fetches or reads raw files (``prunesweep.data.sources``, ``read_idx``) doesn't pay for importing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DataError
from .idx import read_idx
from .loaders import InMemoryLoader
from .sources import DATASETS, DatasetSpec, Source, SourceUnavailable, ensure_raw_files

if TYPE_CHECKING:
    from .datamodule import MNISTDataModule, default_data_root

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetSpec",
    "InMemoryLoader",
    "MNISTDataModule",
    "Source",
    "SourceUnavailable",
    "default_data_root",
    "ensure_raw_files",
    "read_idx",
]


def __getattr__(name: str) -> Any:
    if name in ("MNISTDataModule", "default_data_root"):
        from . import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
