"""Run the ``mql`` command in child processes, each as the console script runs it, without paying for its imports.

A fresh interpreter spends seconds importing torch and Lightning before ``mql`` reads its command line. The children
here are forked from a server process that imported :mod:`mql_lightning.cli` once (multiprocessing's forkserver), and
each runs ``main()`` with ``sys.argv`` set, as the ``mql`` script does: a process of its own, with its own exit code,
stderr, working directory and global state, started in a fraction of a second. An exception that escapes ``main``
is printed with its traceback and exits with code 1, as the interpreter would do. Not for multi-process strategies:
their launcher starts more processes by re-running ``sys.argv``, which names no script here.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# forkserver where the platform has it (Linux, macOS); spawn, slower but equivalent, elsewhere.
_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
_CONTEXT = multiprocessing.get_context(_METHOD)
if _METHOD == "forkserver":
    # Imported once by the server, before any torch thread exists, so every child forks from a clean state.
    _CONTEXT.set_forkserver_preload(["mql_lightning.cli"])


@dataclass
class Result:
    """What a finished ``mql`` command left: its exit code and output."""

    returncode: int
    stdout: str
    stderr: str


def run_mql(args: Sequence[str], cwd: Path, timeout: float = 300.0) -> Result:
    """Run ``mql ARGS`` in ``cwd`` and wait for it.

    Args:
        args: The command line after ``mql``.
        cwd: Working directory of the command.
        timeout: Seconds before the command is killed and the test fails.

    Returns:
        Exit code, stdout and stderr of the command.
    """
    return run_mql_concurrently([(args, cwd)], timeout)[0]


def run_mql_concurrently(
    commands: Sequence[tuple[Sequence[str], Path]], timeout: float = 300.0, max_parallel: int | None = None
) -> list[Result]:
    """Run several ``mql`` commands at the same time (one process each) and wait for all of them.

    Args:
        commands: ``(command line after mql, working directory)`` of every command.
        timeout: Seconds for all of them, after which those still running are killed and the test fails.
        max_parallel: Commands running at any one time; all of them if ``None``.

    Returns:
        One result per command, in order.

    Raises:
        TimeoutError: If the commands did not finish in time.
    """
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="mql-cli-") as out:
        streams = [(Path(out) / f"{i}.out", Path(out) / f"{i}.err") for i in range(len(commands))]
        processes = [
            _CONTEXT.Process(target=_main_in_child, args=(list(args), str(cwd), str(stdout), str(stderr)))
            for (args, cwd), (stdout, stderr) in zip(commands, streams, strict=True)
        ]
        waiting, running = list(processes), []
        try:
            while waiting or running:
                while waiting and len(running) < (max_parallel or len(processes)):
                    running.append(waiting.pop(0))
                    running[-1].start()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mql commands did not finish within {timeout} s: {commands}")
                multiprocessing.connection.wait([p.sentinel for p in running], timeout=deadline - time.monotonic())
                running = [p for p in running if p.is_alive()]
        finally:
            for process in running:
                process.kill()
                process.join()
        return [
            Result(process.exitcode, stdout.read_text(), stderr.read_text())
            for process, (stdout, stderr) in zip(processes, streams, strict=True)
        ]


def _main_in_child(args: list[str], cwd: str, stdout: str, stderr: str) -> None:
    """The child: the ``mql`` console script with its standard streams sent to files."""
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    from mql_lightning.cli import main

    sys.argv = ["mql", *args]
    main()
