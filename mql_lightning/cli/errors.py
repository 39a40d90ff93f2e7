"""Every failure of an ``mql`` command as one line on stderr, with an exit code that says what kind it was."""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path

import yaml
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException

from mql_lightning.data.side_file import WriteError
from mql_lightning.modules.mql import NonFiniteError

TRACEBACK_FLAG = "--traceback"
"""Anywhere on the command line: raise the error with its full traceback instead of the one line."""

# Bad input the user can fix (Lightning raises MisconfigurationException for bad Trainer settings): one `mql: error:`
# line and exit code 2 (argparse's code for usage errors).
_USER_ERRORS = (ValueError, FileNotFoundError, ArgumentError, MisconfigurationException)
# Not bugs, not bad input: a diverged run, a full disk. One line that says what happened and what is kept; exit code 1.
_RUN_FAILURES = (NonFiniteError, WriteError)
# Lines of jsonargparse's errors that describe its internals rather than the bad value.
_PARSER_NOISE = ("Subtypes:", "Errors:", "Given value type:")


def check_config_files(paths: list[str]) -> None:
    """Reject a config file that is not valid YAML, naming the file and the position (the parser names neither).

    Raises:
        ValueError: If a config file does not parse as YAML.
    """
    for path in filter(lambda p: Path(p).is_file(), paths):
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or one_line(err)
            raise ValueError(f"config {path} is not valid YAML: {problem}{where}; fix its syntax there") from err


def one_line(err: BaseException) -> str:
    """An exception's message on one line (parser and torch messages span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def _parser_message(err: ArgumentError) -> str:
    """A parser error on one line, without jsonargparse's internals (the types it tried, the type of the value)."""
    lines = [line for line in str(err).splitlines() if not line.strip().startswith(_PARSER_NOISE)]
    return " ".join(" ".join(lines).split())


def report(err: Exception, subcommand: str | None) -> int:
    """Print the one line that ends a failed command; return its exit code.

    Bad input (parser errors, ``ValueError``, ``FileNotFoundError``) exits with 2; a diverged run or a file that
    cannot be written (a full disk) with 1; anything else is a bug: exit code 1, and its traceback goes to a file,
    so that a run that fails hours in can still be diagnosed.
    """
    if isinstance(err, ArgumentError):
        usage = f"mql {subcommand} --help" if subcommand else "mql --help"
        message, code = f"error: {_parser_message(err)} (`{usage}` lists the accepted options)", 2
    elif isinstance(err, _RUN_FAILURES):
        message, code = f"error: {one_line(err)}", 1
    elif isinstance(err, _USER_ERRORS):
        message, code = f"error: {one_line(err)}", 2
    else:
        with tempfile.NamedTemporaryFile("w", prefix="mql-traceback-", suffix=".txt", delete=False) as file:
            traceback.print_exception(err, file=file)
        message = f"internal error: {type(err).__name__}: {one_line(err)} (traceback in {file.name}; "
        message, code = f"{message}{TRACEBACK_FLAG} prints it)", 1
    print(f"mql: {message}", file=sys.stderr)
    return code
