"""prunesweep: Hydra sweeps of neural-network pruning with accuracy-vs-sparsity curves in MLflow."""

__version__ = "0.1.0"
