"""Where things are stored: the one reading of a ``sqlite:///`` URI and the one writability probe.

>>> sqlite_path("sqlite:///outputs/mlflow.db?timeout=30")
PosixPath('outputs/mlflow.db')
>>> sqlite_path("http://127.0.0.1:5000") is None
True
"""

from __future__ import annotations

from pathlib import Path

SQLITE_PREFIX = "sqlite:///"
PROBE_NAME = ".prunesweep-write-probe"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store URI (query string dropped), or None for any other store."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0]).expanduser()


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` and write then delete a probe file; raises ``OSError`` when that fails.

    Callers turn the error into their own type, naming the config key that chose the folder.
    """
    path = Path(folder).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    probe = path / PROBE_NAME
    probe.write_bytes(b"probe")
    probe.unlink()
    return path
