"""Lightning callbacks of mql-lightning (installed as ``mql_lightning.callbacks``)."""

from mql_lightning.callbacks.adaptation import AdaptationCallback
from mql_lightning.callbacks.checkpoint import ReplayCheckpoint
from mql_lightning.callbacks.progress import MQLProgressBar

__all__ = ["AdaptationCallback", "MQLProgressBar", "ReplayCheckpoint"]
