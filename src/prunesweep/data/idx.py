"""Reader for the IDX format that MNIST and Fashion-MNIST ship in.

IDX layout: a 4-byte magic (two zero bytes, a dtype code, the number of dims), then one big-endian
uint32 per dim, then the data, row-major.  Only unsigned bytes (dtype code 0x08) occur in these
datasets, so that is all we accept.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import torch

from .errors import DataError

_UBYTE = 0x08
# A dim count above this is certainly garbage, not a real tensor (and would make us read a huge header).
_MAX_DIMS = 4


def _read_bytes(path: Path) -> bytearray:
    """Whole file as a (writable) bytearray, transparently gunzipping ``*.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return bytearray(f.read())
        return bytearray(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({e}); delete it and re-fetch") from e


def read_idx(path: str | Path) -> torch.Tensor:
    """Parse an IDX file (plain or ``.gz``) into a tensor.

    1-d files (labels) come back as int64 ``[N]``, everything else as uint8 with the file's shape
    (images: ``[N, 28, 28]``).  The magic number, dim count and exact byte count are checked, so a
    truncated or padded file raises :class:`DataError` naming the file instead of yielding garbage.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise DataError(f"{path}: only {len(buf)} bytes, too short to be an IDX file")
    zero0, zero1, dtype_code, ndim = buf[0], buf[1], buf[2], buf[3]
    if zero0 or zero1 or dtype_code != _UBYTE or not 1 <= ndim <= _MAX_DIMS:
        raise DataError(
            f"{path}: bad IDX magic 0x{bytes(buf[:4]).hex()} (expected 0x000008NN with NN = number of dims); "
            "not an uncompressed IDX ubyte file"
        )
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated IDX header ({len(buf)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    expected = header + math.prod(dims)
    if len(buf) != expected:
        what = "truncated" if len(buf) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {what}: {len(buf)} bytes, but its header {list(dims)} implies {expected}; delete it and re-fetch"
        )
    if expected == header:  # an empty tensor; torch.frombuffer rejects count=0
        data = torch.empty(dims, dtype=torch.uint8)
    else:
        # Zero-copy view of the bytearray (the tensor keeps the buffer alive).
        data = torch.frombuffer(buf, dtype=torch.uint8, offset=header, count=expected - header).view(*dims)
    # Labels become int64 because that is what cross-entropy wants; images stay compact uint8.
    return data.long() if ndim == 1 else data
