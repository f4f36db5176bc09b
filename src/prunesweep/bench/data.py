"""Data path: our in-memory batch slicing vs torchvision's MNIST + ToTensor through a DataLoader."""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from prunesweep.bench.common import Result, interleaved, median, spread
from prunesweep.data import InMemoryLoader, MNISTDataModule, ensure_raw_files
from prunesweep.data.sources import RAW_FILES


def torchvision_root(raw: Path, into: Path) -> Path:
    """A root that ``torchvision.datasets.MNIST`` accepts (``<root>/MNIST/raw/*-ubyte``), made of symlinks to
    our verified raw files, so both sides read the same bytes and nothing is downloaded."""
    folder = into / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        link = folder / name
        if not link.exists():
            link.symlink_to(raw / name)
    return into


def _drain(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], limit: int | None) -> int:
    """Pull batches until ``limit`` images (or the end); the images seen."""
    seen = 0
    for x, _ in batches:
        seen += len(x)
        if limit is not None and seen >= limit:
            break
    return seen


def data_path(datamodule: MNISTDataModule, batch_size: int, repeats: int, images: int | None = None) -> Result:
    """Images/s of one epoch over the 60k training images (or the first ``images``), iterating only, no model.

    Ours: :class:`InMemoryLoader` over the decoded, normalised tensors the datamodule holds. Theirs: torchvision's
    ``MNIST`` with ``ToTensor()`` (no normalisation, which would only make it slower) and a ``DataLoader`` with
    ``num_workers=0``. Both shuffle. One-time setup (reading and decoding the files) is reported separately.
    """
    raw = ensure_raw_files(datamodule.name, datamodule.root, datamodule.sources, lambda _msg: None)

    start = time.perf_counter()
    fresh = MNISTDataModule(datamodule.name, datamodule.root, sources=datamodule.sources, log=lambda _msg: None)
    fresh.prepare_data()
    fresh.setup()
    ours_setup = time.perf_counter() - start
    # All 60k images: the datamodule's train and validation parts together.
    x = torch.cat([fresh.x_train, fresh.x_val])
    y = torch.cat([fresh.y_train, fresh.y_val])
    del fresh

    with tempfile.TemporaryDirectory(prefix="prunesweep-bench-tv-") as tmp:
        root = torchvision_root(raw, Path(tmp))
        start = time.perf_counter()
        dataset = datasets.MNIST(str(root), train=True, transform=transforms.ToTensor(), download=False)
        theirs_setup = time.perf_counter() - start
        limit = images if images is not None else len(x)
        counts: dict[str, int] = {}

        def ours() -> float:
            loader = InMemoryLoader(x, y, batch_size, shuffle=True)
            start = time.perf_counter()
            counts["ours"] = _drain(loader, limit)
            return time.perf_counter() - start

        def theirs() -> float:
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
            start = time.perf_counter()
            counts["theirs"] = _drain(loader, limit)
            return time.perf_counter() - start

        # Warm-up: a few batches each, enough to fault in the pages and the PIL code paths.
        for loader in (InMemoryLoader(x, y, batch_size), DataLoader(dataset, batch_size=batch_size)):
            _drain(itertools.islice(loader, 4), None)
        times = interleaved({"ours": ours, "theirs": theirs}, repeats=repeats, warmup=0)
    return _result(counts, times, {"ours": ours_setup, "theirs": theirs_setup}, batch_size)


def _result(
    counts: dict[str, int], times: dict[str, list[float]], setup_s: dict[str, float], batch_size: int
) -> Result:
    """The data comparison's metrics and rows, from the images each side drained and its timings."""
    ours_setup, theirs_setup = setup_s["ours"], setup_s["theirs"]
    ours_rate = counts["ours"] / median(times["ours"])
    theirs_rate = counts["theirs"] / median(times["theirs"])
    ratio = median([t / o for o, t in zip(times["ours"], times["theirs"], strict=True)])
    result = Result("data")
    result.metrics = {
        "data/images": counts["ours"],
        "data/inmemory_img_s": ours_rate,
        "data/torchvision_img_s": theirs_rate,
        "data/inmemory_over_torchvision": ratio,
        "data/inmemory_setup_s": ours_setup,
        "data/torchvision_setup_s": theirs_setup,
        "data/spread_inmemory": spread(times["ours"]),
        "data/spread_torchvision": spread(times["theirs"]),
    }
    result.add(f"InMemoryLoader, {counts['ours']} images, batch {batch_size}", f"{ours_rate:,.0f} img/s")
    result.add("torchvision MNIST+ToTensor, DataLoader(workers=0)", f"{theirs_rate:,.0f} img/s")
    result.add("in-memory / torchvision", f"{ratio:,.1f}x")
    result.add("one-time setup, ours (read+decode+normalise+split)", f"{ours_setup:.2f} s")
    result.add("one-time setup, torchvision (read+decode)", f"{theirs_setup:.2f} s")
    return result
