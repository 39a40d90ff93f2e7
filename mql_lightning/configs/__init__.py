"""Benchmark configs and presets, shipped with the package (``mql_lightning.configs``); see ``config_path``."""

from pathlib import Path


def config_path(name: str) -> Path:
    """Path of a shipped config, e.g. ``config_path("point")``, ``config_path("point.yaml")`` or
    ``config_path("presets/authors")`` (the presets compose after a benchmark config).

    Raises:
        FileNotFoundError: If no such config ships with the package.
    """
    root = Path(__file__).parent
    path = root / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file() or root.resolve() not in path.resolve().parents:
        shipped = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))
        raise FileNotFoundError(f"no shipped config {name!r}; available: {', '.join(shipped)}")
    return path
