"""LightningModules: the context encoder, the TD3 agent, the propensity classifier, and MQL composing them."""

from mql_lightning.modules.agent import TD3Agent
from mql_lightning.modules.context import ContextEncoder
from mql_lightning.modules.mql import MQL
from mql_lightning.modules.propensity import PropensityClassifier

__all__ = ["MQL", "ContextEncoder", "PropensityClassifier", "TD3Agent"]
