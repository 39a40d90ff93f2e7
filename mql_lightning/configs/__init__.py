"""Benchmark configs, shipped with the package (``mql_lightning.configs``); see ``config_path``."""

from pathlib import Path


def config_path(name: str) -> Path:
    """Path of a shipped config, e.g. ``config_path("point")`` or ``config_path("point.yaml")``.

    Raises:
        FileNotFoundError: If no such config ships with the package.
    """
    path = Path(__file__).with_name(name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        shipped = sorted(p.stem for p in Path(__file__).parent.glob("*.yaml"))
        raise FileNotFoundError(f"no shipped config {name!r}; available: {', '.join(shipped)}")
    return path
