"""Helpers shared by the tests: run commands (``runs``), child processes (``processes``) and test callbacks
(``callbacks``, named on ``mql`` command lines as ``tests.helpers.callbacks.<Name>``). Test modules import from here,
never from each other."""
