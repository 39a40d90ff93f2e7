"""LightningModules: the context encoder, the TD3 agent, the propensity classifier, and MQL composing them."""

from mql_lightning.modules.context import ContextEncoder
from mql_lightning.modules.mql import MQL
from mql_lightning.modules.propensity import PropensityClassifier
from mql_lightning.modules.td3 import TD3Agent

__all__ = ["MQL", "ContextEncoder", "PropensityClassifier", "TD3Agent"]
