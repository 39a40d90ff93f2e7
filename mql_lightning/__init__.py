"""mql-lightning: Meta-Q-Learning (Fakoor et al., ICLR 2020) on Lightning, gymnasium and MuJoCo."""

__version__ = "0.1.0"
