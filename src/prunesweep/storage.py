"""Where things are stored: the one reading of a ``sqlite:///`` URI and the one writability probe.

>>> sqlite_path("sqlite:///outputs/mlflow.db?timeout=30")
PosixPath('outputs/mlflow.db')
>>> sqlite_path("http://127.0.0.1:5000") is None
True
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"
PROBE_PREFIX = ".prunesweep-write-probe-"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store URI (query string dropped), or None for any other store."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0]).expanduser()


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` and write then delete a probe file; raises ``OSError`` when that fails.

    Callers turn the error into their own type, naming the config key that chose the folder. Each call's probe
    has its own name: runs that start together on one cache or store folder must not delete each other's probe.
    """
    path = Path(folder).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    handle, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=path)
    try:
        os.write(handle, b"probe")
    finally:
        os.close(handle)
        os.unlink(probe)
    return path
