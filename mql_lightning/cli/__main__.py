"""``python -m mql_lightning.cli`` runs the ``mql`` command."""

from mql_lightning.cli import main

main()
