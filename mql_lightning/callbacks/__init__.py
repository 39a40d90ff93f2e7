"""Lightning callbacks of mql-lightning (installed as ``mql_lightning.callbacks``)."""

from mql_lightning.callbacks.adaptation import AdaptationCallback
from mql_lightning.callbacks.checkpoint import ReplayCheckpoint

__all__ = ["AdaptationCallback", "ReplayCheckpoint"]
