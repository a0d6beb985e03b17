"""Ctrl-C that stops long jobs at a safe point instead of anywhere.

Python raises ``KeyboardInterrupt`` between any two bytecodes, including while a ctypes call
converts its arguments (MuJoCo's EGL bindings are ctypes): there ctypes turns it into
``ctypes.ArgumentError: argument 2: KeyboardInterrupt``, which an ``except KeyboardInterrupt``
does not catch, so the job would die without saving. :class:`DeferredInterrupt` instead records
the first Ctrl-C and lets the job stop at its next safe point (:meth:`DeferredInterrupt.check`,
or a callback reading :attr:`DeferredInterrupt.requested`); a second Ctrl-C raises at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class DeferredInterrupt:
    """Context manager deferring the first SIGINT to the next :meth:`check`.

    Outside the main thread (where signal handlers cannot be installed) it changes nothing.

    Example:
        >>> with DeferredInterrupt() as interrupt:
        ...     for step in range(3):
        ...         interrupt.check()  # raises KeyboardInterrupt here after a Ctrl-C
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nCtrl-C: stopping at the next safe point (press Ctrl-C again to stop at once)",
            flush=True,
        )

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self._installed = False

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a Ctrl-C arrived since entering the block."""
        if self.requested:
            raise KeyboardInterrupt
