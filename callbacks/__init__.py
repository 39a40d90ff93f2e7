"""Lightning callbacks of mql-lightning (installed as ``mql_lightning.callbacks``)."""
