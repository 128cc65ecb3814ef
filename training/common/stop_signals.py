"""Stop signals outside a training loop: SLURM's time limit or preemption, `kill`, torchrun and Ctrl-C raise
StopSignal wherever the program is, so that it unwinds (temporary files and locks go) and says what it saved."""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Any

# SIGTERM: SLURM's time limit and preemption, `kill`, torchrun; SIGUSR1: SLURM's `--signal=USR1@<seconds>`
# warning; SIGINT: Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignal(BaseException):
    """A stop signal that arrived outside the training loop (loading weights, building the latent cache, the first
    batch). A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum)
        super().__init__(self.signal.name)


class StopSignalsRaise:
    """While open, a stop signal raises StopSignal wherever the run is, so a job stopped during start-up unwinds:
    temporary files and the lock go, and the script says what was saved. `phase` names what the run is doing.
    Inside the training loop `training.preemption.Preemption` owns the signals (it saves at the next step boundary
    instead)."""

    def __init__(self) -> None:
        self.phase = "starting up"
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignalsRaise:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._raise)
        return self

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        raise StopSignal(signum)

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
