"""read_idx on tiny synthetic IDX files (plain and gzip'd), including the ways a file can be broken."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from prunesweep.data import DataError, read_idx


def idx_bytes(t: torch.Tensor) -> bytes:
    """Serialise a uint8 tensor as IDX (magic 0x0000 08 ndim, big-endian dims, raw bytes)."""
    return bytes([0, 0, 0x08, t.dim()]) + struct.pack(f">{t.dim()}I", *t.shape) + t.numpy().tobytes()


def write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["imgs-idx3-ubyte", "imgs-idx3-ubyte.gz"])
def test_images_roundtrip(tmp_path: Path, images: torch.Tensor, name: str) -> None:
    out = read_idx(write(tmp_path / name, idx_bytes(images)))
    assert out.dtype == torch.uint8 and out.shape == (7, 28, 28)
    assert torch.equal(out, images)


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_labels_are_int64(tmp_path: Path, name: str) -> None:
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2], dtype=torch.uint8)
    out = read_idx(str(write(tmp_path / name, idx_bytes(labels))))  # str paths work too
    assert out.dtype == torch.int64
    assert out.tolist() == [3, 1, 4, 1, 5, 9, 2]


def test_empty_file_has_zero_rows(tmp_path: Path) -> None:
    out = read_idx(write(tmp_path / "e", idx_bytes(torch.empty(0, 28, 28, dtype=torch.uint8))))
    assert out.shape == (0, 28, 28)


def test_truncated_file_names_the_file(tmp_path: Path, images: torch.Tensor) -> None:
    path = write(tmp_path / "cut-idx3-ubyte", idx_bytes(images)[:-1])
    with pytest.raises(DataError, match="truncated") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


def test_trailing_bytes_rejected(tmp_path: Path, images: torch.Tensor) -> None:
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(write(tmp_path / "long", idx_bytes(images) + b"\0"))


def test_truncated_header_rejected(tmp_path: Path, images: torch.Tensor) -> None:
    with pytest.raises(DataError, match="header"):
        read_idx(write(tmp_path / "hdr", idx_bytes(images)[:9]))


def test_truncated_gzip_names_the_file(tmp_path: Path, images: torch.Tensor) -> None:
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:200])
    with pytest.raises(DataError, match="gzip") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    "head",
    [b"\x1f\x8b\x08\x00", b"\x00\x00\x0d\x03", b"\x00\x00\x08\x00", b"PK\x03\x04", b"\x00\x00"],
    ids=["gzip-magic", "float-dtype", "zero-dims", "zip", "too-short"],
)
def test_bad_magic_rejected(tmp_path: Path, head: bytes) -> None:
    path = write(tmp_path / "garbage", head + bytes(16))
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")
