"""Stop requests from SIGTERM and SIGINT, acted on at the next point where stopping leaves a resumable state.

A signal can arrive anywhere: in the middle of an optimiser step, of an episode, of a checkpoint write. Its handler
therefore only records the request (:func:`install_handlers`); the code that can stop cleanly looks at it where
stopping is safe and cheap to check (a module-level read):

* between two training updates and at the end of a validation (:class:`~mql_lightning.callbacks.ReplayCheckpoint`,
  which then saves ``last.ckpt`` and its replay side file, and exits);
* between two warm-up episodes (the DataModule) and between two steps of an adaptation, whose result is then
  abandoned (:func:`check`, raising :class:`StopRequested`).

A second signal of either kind stops the process at once, without saving: the handlers give both signals back their
default action after the first one, and every checkpoint is written atomically, so the previous one stays loadable.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that ask training to save and stop."""


class StopRequested(SystemExit):
    """Raised at a safe point after a stop request; the process exits with ``128 + signal number``.

    ``128 + n`` is the shell's status for a process ended by signal ``n`` (130 for SIGINT, 143 for SIGTERM), so job
    schedulers and scripts see an interrupted run, not a finished one. A ``SystemExit``, like the ``KeyboardInterrupt``
    it replaces for SIGINT, so that ``except Exception`` blocks do not swallow it.

    Attributes:
        signum: The signal that asked to stop.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        """``SIGTERM``, ``SIGINT``, ..."""
        return signal.Signals(self.signum).name


# The pending request: the signal number, and whether any safe point may act on it (one process) or only the ones
# every process of a multi-process run reaches together (see ReplayCheckpoint).
_requested: int | None = None
_anywhere = True


def request_stop(signum: int, anywhere: bool = True) -> None:
    """Record a stop request (what the signal handlers do; also usable from code and tests).

    Args:
        signum: The signal number reported when stopping.
        anywhere: Whether every safe point may act on it (:func:`check`), or only the synchronised ones of a
            multi-process run (:func:`requested`).
    """
    global _requested, _anywhere
    if _requested is None:
        _requested, _anywhere = int(signum), anywhere


def requested() -> int | None:
    """The signal number of the pending stop request, if any."""
    return _requested


def clear() -> None:
    """Forget the pending request (when training ends, so that it does not leak into the next run in this process)."""
    global _requested, _anywhere
    _requested, _anywhere = None, True


def check() -> None:
    """Raise :class:`StopRequested` if a stop was requested and may be acted on here; otherwise nothing (cheap).

    Raises:
        StopRequested: If a stop is pending.
    """
    if _requested is not None and _anywhere:
        raise StopRequested(_requested)


def install_handlers(anywhere: bool = True, signals: Iterable[int] = STOP_SIGNALS) -> Callable[[], None]:
    """Make the given signals request a stop instead of killing the process; return the function that undoes it.

    The first signal records the request and gives every one of these signals back its default action, so that a
    second one stops the process at once. Python lets only the main thread install handlers: called from another
    thread (training started from a worker thread), this does nothing and the signals keep their handlers.

    Args:
        anywhere: See :func:`request_stop`.
        signals: The signals to handle.

    Returns:
        A function restoring the handlers that were installed before, and forgetting any pending request.
    """
    if threading.current_thread() is not threading.main_thread():
        return clear
    signals = tuple(signals)
    previous = {signum: signal.getsignal(signum) for signum in signals}

    def handler(signum: int, frame: FrameType | None) -> None:
        request_stop(signum, anywhere)
        for other in signals:
            signal.signal(other, signal.SIG_DFL)

    for signum in signals:
        signal.signal(signum, handler)

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        clear()

    return restore
