"""``prunesweep-bench``: how fast the harness is, and what pruning buys, measured on this machine.

Seven comparisons, each a plain function returning a :class:`~prunesweep.bench.common.Result`:

* :mod:`.train` — the Lightning loop of a sweep point vs a bare PyTorch loop (images/s).
* :mod:`.data` — :class:`~prunesweep.data.InMemoryLoader` vs torchvision's MNIST + ``DataLoader``.
* :mod:`.pruning` — mask computation vs an epoch; real vs theoretical channel-pruning speedup; CSR storage
  and kernels for unstructured sparsity.
* :mod:`.sweeps` — dense-model reuse vs one dense training per point; a whole sweep end to end.

:mod:`.cli` runs them, prints the table and logs one run to the MLflow experiment ``benchmarks``.
"""

from prunesweep.bench.cli import main

__all__ = ["main"]
