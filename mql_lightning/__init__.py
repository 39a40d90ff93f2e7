"""mql-lightning: Meta-Q-Learning (Fakoor et al., ICLR 2020) on Lightning, gymnasium and MuJoCo.

Importing the package registers its task families with gymnasium under the ``mql/`` namespace (gymnasium's
convention, as with ``gymnasium.register_envs(mql_lightning)``)::

    import gymnasium
    import mql_lightning

    env = gymnasium.make("mql/PointRobot-v0")

It imports neither torch nor Lightning: those load with the parts that need them (``mql_lightning.modules``, ...).
"""

from mql_lightning import envs  # noqa: F401  (registers the task families)

__version__ = "0.1.0"
