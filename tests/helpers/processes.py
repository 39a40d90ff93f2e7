"""Run the ``mql`` command in child processes: forked from a server that imported it once, or as the real script.

:func:`run_mql` and :func:`run_mql_concurrently` run it as the console script runs it, without paying for its imports.

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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository root: put on ``PYTHONPATH`` of real ``mql`` processes, so they import the test callbacks."""

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


# --------------------------------------------------------------------------------------------------------------
# The real console script, in a process of its own (needed for signals and for multi-process strategies)
# --------------------------------------------------------------------------------------------------------------
def mql_command() -> list[str]:
    """The installed ``mql`` console script (``python -m mql_lightning.cli`` if there is none)."""
    script = Path(sys.executable).with_name("mql")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mql_lightning.cli"]


def _environment(**env_vars: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **env_vars}


def run_mql_script(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the ``mql`` script with ``args`` in ``cwd`` (runs go to ``cwd/runs``) and wait for it."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*mql_command(), *args], cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=timeout,
        check=False,
    )


class RunningMql:
    """An ``mql`` script started in the background; its stderr lines are collected with their arrival times.

    Args:
        cwd: Working directory (runs go to ``cwd/runs``).
        args: The command line after ``mql``.
        env_vars: Extra environment variables of the process.
    """

    def __init__(self, cwd: Path, args: Sequence[str], **env_vars: str) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [*mql_command(), *args], cwd=cwd, env=_environment(**env_vars), text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append((time.monotonic(), line))
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for_line(self, text: str, timeout: float = 180) -> None:
        """Block until a stderr line contains ``text`` (e.g. a mark printed by a test callback).

        Raises:
            AssertionError: If the process closes its stderr (exits) first, or ``timeout`` seconds pass.
        """
        with self._changed:
            seen = self._changed.wait_for(
                lambda: self._closed or any(text in line for _, line in self.lines), timeout=timeout
            )
            found = any(text in line for _, line in self.lines)
        assert found, f"no line with {text!r} (exit code {self.process.poll()}; seen: {seen}):\n{self.stderr()[-3000:]}"

    def wait(self, timeout: float = 300) -> int:
        """Wait for the exit and for every line of stderr; the exit code."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)  # stderr is closed: once the reader returns it has every line
        return code

    def stderr(self) -> str:
        """Everything read from stderr so far."""
        with self._changed:
            return "".join(line for _, line in self.lines)
