"""Graceful stop on Ctrl-C / SIGTERM: the first signal asks the loop to checkpoint and exit;
a second one exits at once (the last complete checkpoint stays valid because checkpoints
are written atomically)."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType, TracebackType

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


SAMPLE_SIGNAL = getattr(signal, "SIGUSR1", None)  # "sample now": render the sample prompts at the next step
SAVE_SIGNAL = getattr(signal, "SIGUSR2", None)  # "save now": write a checkpoint after the next step


class StopRequest:
    """Installs handlers for SIGINT and SIGTERM while active (main thread only), and for SIGUSR1,
    which asks for samples at the next step (`kill -USR1 PID`; the studio's "Sample now"), and
    SIGUSR2, which asks for a checkpoint after the next step (`kill -USR2 PID`; "Save now")."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.sample_requested = False
        self.save_requested = False
        self._previous: dict[int, object] = {}

    def take_sample_request(self) -> bool:
        """Whether samples were asked for since the last call (and clear the request)."""
        asked, self.sample_requested = self.sample_requested, False
        return asked

    def take_save_request(self) -> bool:
        """Whether a checkpoint was asked for since the last call (and clear the request)."""
        asked, self.save_requested = self.save_requested, False
        return asked

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        self.sample_requested = True

    def _save(self, signum: int, frame: FrameType | None) -> None:
        self.save_requested = True

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM (the shell convention 128 + signal number)."""
        return EXIT_CODES.get(self.signum, 130) if self.signum is not None else 0

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask for a stop as if `signum` arrived (used by the debug stop hook)."""
        self.signum = signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            print("\nsecond interrupt: exiting now; the last complete checkpoint is kept", file=sys.stderr)
            os._exit(EXIT_CODES.get(signum, 130))
        self.signum = signum
        print("\ninterrupt: saving a checkpoint at the current step, then exiting (interrupt again to exit now)", file=sys.stderr)

    def __enter__(self) -> StopRequest:
        handlers = {sig: self._handle for sig in EXIT_CODES}
        if SAMPLE_SIGNAL is not None:
            handlers[SAMPLE_SIGNAL] = self._sample
        if SAVE_SIGNAL is not None:
            handlers[SAVE_SIGNAL] = self._save
        for sig, handler in handlers.items():
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
