"""Stop requests: SIGINT / SIGTERM end a long job at a safe point, quickly, never in the middle of a write."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class CutShort(Exception):
    """Raised inside :meth:`StopRequest.abortable` when a stop is requested."""


class StopRequest:
    """SIGINT / SIGTERM -> stop at the next safe point. A second Ctrl-C aborts at once.

    Outside :meth:`abortable` a signal only sets ``signum`` (the loop polls it between steps: a step,
    the optimizer state and a checkpoint write are never cut in half). Inside it, the signal raises
    :class:`CutShort` at once: for work that can be redone (evaluation, sample grids).
    Handlers are installed only in the main thread and restored on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._abortable = False

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self._abortable:
            self._abortable = False
            raise CutShort

    @contextlib.contextmanager
    def abortable(self) -> Iterator[None]:
        """A block a stop request cuts short (raising :class:`CutShort`), also if it came before."""
        if self.signum is not None:
            raise CutShort
        self._abortable = True
        try:
            yield
        finally:
            self._abortable = False

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
