"""Own data: a folder of class subfolders (real MNIST written as PNGs), any torchvision dataset read offline,
and foreign datasets / datamodules wrapped in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from prunesweep.data import DataError, default_data_root, read_idx
from prunesweep.data.folder import ImageFolderDataModule
from prunesweep.data.tensors import TensorDataModule
from prunesweep.data.torchvision import TorchvisionDataModule

RAW = default_data_root() / "mnist" / "raw"
QUIET = {"log": lambda message: None}


def write_mnist_pngs(folder: Path, n: int, rgb: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` real MNIST training images as ``folder/<digit>/<index>.png``."""
    images = read_idx(RAW / "train-images-idx3-ubyte")[:n]
    labels = read_idx(RAW / "train-labels-idx1-ubyte")[:n]
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / str(int(label))).mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image.numpy())
        (picture.convert("RGB") if rgb else picture).save(folder / str(int(label)) / f"{index:05d}.png")
    return images, labels


def test_image_folder_reads_splits_and_normalises_from_the_training_split(tmp_path):
    _, labels = write_mnist_pngs(tmp_path, 300)
    data = ImageFolderDataModule(tmp_path, val_fraction=0.1, test_fraction=0.2, batch_size=32, **QUIET)
    data.setup()
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (210, 30, 60)
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28) and data.classes == [str(d) for d in range(10)]
    assert sorted(torch.cat([data.y_train, data.y_val, data.y_test]).tolist()) == sorted(labels.tolist())
    assert abs(float(data.x_train.mean())) < 1e-4 and abs(float(data.x_train.std()) - 1) < 1e-3
    assert abs(float(data.x_test.mean())) > 1e-4  # held-out images use the training statistics, not their own
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and y.dtype == torch.long
    assert len(data.calibration_batches(2)) == 2


def test_image_folder_train_on_val_trains_on_the_validation_images_too(tmp_path):
    write_mnist_pngs(tmp_path, 300)
    held_out = ImageFolderDataModule(tmp_path, val_fraction=0.1, test_fraction=0.2, normalize=False, **QUIET)
    held_out.setup()
    logs: list[str] = []
    data = ImageFolderDataModule(
        tmp_path, val_fraction=0.1, test_fraction=0.2, normalize=False, train_on_val=True, log=logs.append
    )
    data.setup()
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (240, 30, 60)
    assert torch.equal(data.x_train, torch.cat([held_out.x_val, held_out.x_train]))
    assert torch.equal(data.x_test, held_out.x_test)
    assert any("30 validation images are also trained on" in m for m in logs)


def test_image_folder_converts_rgb_and_resizes(tmp_path):
    write_mnist_pngs(tmp_path, 40, rgb=True)
    data = ImageFolderDataModule(tmp_path, input_shape=(3, 16, 16), **QUIET)
    data.setup()
    assert data.x_train.shape[1:] == (3, 16, 16)


def test_image_folder_errors_name_the_key(tmp_path):
    with pytest.raises(DataError, match=r"data.path=.* is not a folder"):
        ImageFolderDataModule(tmp_path / "missing", **QUIET).setup()
    (tmp_path / "only").mkdir()
    with pytest.raises(DataError, match="1 class subfolders"):
        ImageFolderDataModule(tmp_path, **QUIET).setup()
    with pytest.raises(DataError, match=r"data\.val_fraction"):
        ImageFolderDataModule(tmp_path, val_fraction=1.5, **QUIET)


def test_torchvision_dataset_by_name_reads_present_files_offline(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (raw / name).symlink_to(RAW / name)
    data = TorchvisionDataModule("MNIST", root=tmp_path, train_subset=500, val_fraction=5000 / 60000, **QUIET)
    data.setup()
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (500, 5000, 10000)
    assert data.num_classes == 10 and data.name == "mnist"
    with pytest.raises(DataError, match=r"data.dataset=FashionMNIST has no files under data.root=.*data.download=true"):
        TorchvisionDataModule("FashionMNIST", root=tmp_path, **QUIET).setup()
    with pytest.raises(DataError, match=r"data\.dataset='NoSuchSet' is not a class of torchvision\.datasets"):
        TorchvisionDataModule("NoSuchSet", root=tmp_path, **QUIET).setup()


def test_a_plain_dataset_and_a_foreign_datamodule_are_wrapped():
    x, y = torch.rand(120, 1, 28, 28), torch.arange(120) % 3
    wrapped = TensorDataModule.wrap(TensorDataset(x, y), batch_size=16, **QUIET)
    wrapped.setup()
    assert wrapped.num_classes == 3 and len(wrapped.x_train) + len(wrapped.x_val) + len(wrapped.x_test) == 120

    class Foreign(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(x[:100], y[:100]), batch_size=25)

        def test_dataloader(self):
            return DataLoader(TensorDataset(x[100:], y[100:]), batch_size=25)

    foreign = TensorDataModule.wrap(Foreign(), val_fraction=0.2, **QUIET)
    foreign.setup()
    assert (len(foreign.x_train), len(foreign.x_val), len(foreign.x_test)) == (80, 20, 20)
    with pytest.raises(TypeError, match="has neither dataloaders nor __len__"):
        TensorDataModule.wrap(object())
