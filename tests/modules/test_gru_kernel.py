"""The compiled GRU kernel's machinery: its buffer pool, and its machine code cached in the user's cache directory when
the install is read-only."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mql_lightning.modules.gru_kernel import _Pool

REPO = Path(__file__).parents[2]
PROBE = (
    "import mql_lightning; from mql_lightning.modules.gru import compiled_kernel; "
    "assert compiled_kernel() is not None, 'no kernel'; print(mql_lightning.__file__)"
)


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[Path]:
    """``directory`` made unwritable for this process: a read-only bind mount for root, permissions otherwise."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [directory, *directory.rglob("*")] if not p.is_symlink()}
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        try:
            yield directory
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    # Root writes through permissions: mount a read-only view instead, where the system allows it.
    view = directory.with_name(directory.name + "-ro")
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(directory), str(view)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("running as root, and bind mounts are not allowed here: no way to make a directory read-only")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True, capture_output=True)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=False, capture_output=True)


@pytest.mark.slow
def test_a_read_only_install_compiles_once_into_the_user_cache_directory(tmp_path: Path) -> None:
    site, home = tmp_path / "site", tmp_path / "home"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(REPO)],
                   check=True)
    home.mkdir()
    with read_only(site) as installed:
        assert not os.access(installed / "mql_lightning" / "modules", os.W_OK) or os.geteuid() == 0
        env = {key: value for key, value in os.environ.items() if not key.startswith(("NUMBA_", "XDG_"))}
        env.update(HOME=str(home), PYTHONPATH=str(installed))
        cache = home / ".cache" / "numba"
        snapshots = []
        for _ in range(2):
            run = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                                 check=False)
            assert run.returncode == 0, run.stderr[-2000:]
            assert run.stdout.splitlines()[0].startswith(str(installed)), "imported another copy of the package"
            snapshots.append({p: (p.stat().st_mtime_ns, p.stat().st_size) for p in cache.rglob("gru_kernel.*")})
        in_tree = list((installed / "mql_lightning" / "modules").glob("__pycache__/*.nb*"))
    assert not in_tree
    assert any(p.suffix == ".nbi" for p in snapshots[0]), "no kernel in the user's cache directory"
    # The second process loaded the kernel from there: it wrote nothing (compiling again would rewrite the files).
    assert snapshots[1] == snapshots[0]


def test_pool_buffers_start_on_a_cache_line_and_are_reused() -> None:
    pool = _Pool()
    for size in (1, 3, 17, 256 * 15, 1_000_003):
        buffers = [pool.take(size) for _ in range(4)]
        assert all(b.size == size and b.ctypes.data % 64 == 0 and b.flags.c_contiguous for b in buffers)
        pool.give(buffers[0])
        assert pool.take(size) is buffers[0]
