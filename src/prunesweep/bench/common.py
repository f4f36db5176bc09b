"""What every comparison shares: its result shape, interleaved timing, the table, host facts, peak memory."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from matplotlib.figure import Figure


@dataclass(frozen=True)
class Row:
    """One line of the printed table. ``ok`` is None where there is no goal to meet."""

    what: str
    value: str
    goal: str = ""
    ok: bool | None = None


@dataclass
class Result:
    """One comparison: metrics under stable names (logged to MLflow) and the rows that explain them."""

    section: str
    metrics: dict[str, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, value: str, goal: str = "", ok: bool | None = None) -> None:
        self.rows.append(Row(what, value, goal, ok))


def interleaved(cases: Mapping[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every case once per round, in turn, ``warmup + repeats`` rounds; keep the timings of the last ``repeats``.

    A case returns the seconds of the part it wants timed (so its own setup stays out). On a shared, noisy machine
    a drift or a neighbour's burst then hits all cases alike; the order flips every round (A B, B A, ...) so neither
    side is always the one that runs right after the other's caches or allocations.
    """
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            seconds = cases[name]()
            if round_ >= warmup:
                times[name].append(seconds)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how much the repeats disagreed, shown so a noisy number is recognisable as such."""
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid else float("nan")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


DEVICES = ("auto", "cpu", "cuda")


def bench_device(choice: str, cuda_available: bool | None = None) -> str:
    """``cpu`` or ``cuda`` for ``--device``: ``auto`` takes the GPU when there is one; ``cuda`` without one is an
    error rather than a CPU run that would be reported as a GPU row.

    >>> bench_device("auto", cuda_available=False), bench_device("auto", cuda_available=True)
    ('cpu', 'cuda')
    """
    if choice not in DEVICES:
        raise ValueError(f"--device {choice!r}: choose from {', '.join(DEVICES)}")
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if choice == "cuda" and not available:
        raise ValueError("--device cuda: torch sees no CUDA device here")
    return "cuda" if choice == "cuda" or (choice == "auto" and available) else "cpu"


def device_name(device: str) -> str:
    """What the bench ran on, for its table and tags: the GPU's name, or the CPU model and torch's threads."""
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"CPU: {cpu_model()}, {torch.get_num_threads()} torch threads"


def host_tags() -> dict[str, str]:
    """Facts that decide whether two bench runs can be compared at all."""
    load1, load5, _ = os.getloadavg()
    return {
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "cpu_count": str(os.cpu_count()),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_start": f"{load1:.2f} {load5:.2f}",
    }


class ForeignCPU:
    """Share of the machine's CPU time that *other* processes used since this object was made.

    The bench's own noise gauge: with 2 cores and 2 torch threads, every parallel op waits for its second
    thread whenever a neighbour holds a core (a whole scheduler slice, milliseconds), so a few percent of foreign
    load already bends the numbers. Own time includes the subprocess sweeps once they have been waited for.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        own = psutil.Process().cpu_times()
        mine = own.user + own.system + own.children_user + own.children_system
        return time.perf_counter(), busy, mine

    def fraction(self) -> float:
        wall0, busy0, mine0 = self.start
        wall1, busy1, mine1 = self._sample()
        capacity = (wall1 - wall0) * (os.cpu_count() or 1)
        return max(0.0, (busy1 - busy0) - (mine1 - mine0)) / capacity if capacity > 0 else 0.0


class PeakRSS:
    """Samples the resident memory of a process and all its descendants in a thread; ``peak`` is their largest sum.

    ``ru_maxrss`` would only give the largest single child, and it accumulates over every child this process ever
    waited for, so sampling is the way to see one sweep's footprint, joblib workers included.
    """

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0  # bytes, summed over the tree
        self.peak_single = 0  # bytes, the largest single process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            sizes = []
            for proc in procs:
                try:
                    sizes.append(proc.memory_info().rss)
                except psutil.Error:  # a child that exited between listing and reading
                    continue
            if sizes:
                self.peak = max(self.peak, sum(sizes))
                self.peak_single = max(self.peak_single, max(sizes))
            self._stop.wait(self.interval_s)


def format_table(results: Sequence[Result]) -> str:
    """The plain table: section, measurement, value, goal, and whether the goal is met."""
    header = ("section", "measurement", "value", "goal", "met")
    lines = [header]
    for result in results:
        for row in result.rows:
            met = "" if row.ok is None else ("yes" if row.ok else "NO")
            lines.append((result.section, row.what, row.value, row.goal, met))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    for result in results:
        out.extend(f"note ({result.section}): {note}" for note in result.notes)
    return "\n".join(out)
