"""``data=image_folder``: any folder of class subfolders (``root/<class>/<image>``), held in memory.

Classes are the subfolder names in sorted order (label 0 is the first), as in torchvision's ``ImageFolder``.
Every image is read with Pillow, converted to ``input_shape``'s channels (1: grey, 3: RGB) and resized to its
height and width, so folders of mixed sizes work. Train/val/test come from one seeded split of all images and
the normalisation from the training split (see :class:`~prunesweep.data.tensors.TensorDataModule`).

The config names the folder as ``data.path``, which is part of the config and dense-model hashes (``data.root``
is not: it only says where a fixed dataset's files live). Changing images in place keeps the hash; use a new
folder name for new data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .errors import DataError
from .tensors import Pools, TensorDataModule, image_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
_MODES = {1: "L", 3: "RGB"}


class ImageFolderDataModule(TensorDataModule):
    """The images under ``path/<class>/``; the other arguments are :class:`TensorDataModule`'s."""

    def __init__(
        self, path: str | Path, input_shape: Sequence[int] = (1, 28, 28), name: str = "image_folder", **kwargs: Any
    ) -> None:
        if len(input_shape) != 3 or int(input_shape[0]) not in _MODES:
            raise DataError(f"data.input_shape={list(input_shape)} must be [channels (1 or 3), height, width]")
        super().__init__(input_shape=input_shape, **kwargs)
        self.name = name
        self.path = Path(path).expanduser()
        self.classes: list[str] = []

    def load(self) -> Pools:
        if not self.path.is_dir():
            raise DataError(f"data.path={str(self.path)!r} is not a folder (expected one subfolder per class)")
        self.classes = sorted(p.name for p in self.path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(self.classes) < 2:
            raise DataError(
                f"data.path={str(self.path)!r} has {len(self.classes)} class subfolders; it needs two or more"
            )
        channels, height, width = (int(s) for s in self.requested_shape or ())
        images, labels = [], []
        for label, name in enumerate(self.classes):
            files = sorted(f for f in (self.path / name).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"data.path class folder {name!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
            for file in files:
                images.append(image_tensor(_read(file, _MODES[channels], (width, height))))
                labels.append(label)
        self.log(f"read {len(images)} images of {len(self.classes)} classes from {self.path}")
        return {"pool": (torch.stack(images), torch.tensor(labels, dtype=torch.long))}


def _read(file: Path, mode: str, size: tuple[int, int]) -> Image.Image:
    try:
        with Image.open(file) as image:
            image = image.convert(mode)
            return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)
    except OSError as err:
        raise DataError(f"cannot read image {file}: {err}") from None
