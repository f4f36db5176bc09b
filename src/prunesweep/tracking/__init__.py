"""MLflow tracking: the store, one run per sweep point, per-epoch metrics, and the Hydra sweep callback."""

from prunesweep.tracking.run import PointRun, run_name
from prunesweep.tracking.store import Store, TrackingError, check_reachable, open_store

__all__ = ["PointRun", "Store", "TrackingError", "check_reachable", "open_store", "run_name"]
