"""Stopping when asked, and checkpoints by wall time.

SIGTERM (what SLURM, Kubernetes and most schedulers send before a kill), SIGINT (Ctrl-C) and
SIGUSR1 (e.g. `sbatch --signal=USR1@120`) let the current step finish; the trainer then writes its
checkpoint and exits with REQUEUE_EXIT_CODE, and re-running the same command resumes. A second
signal acts as it normally would (Ctrl-C twice stops at once).

In a distributed run every rank must save and stop at the same step, or the others would wait in
a collective for a rank that has left: each step ends with one all-reduce (max) of every rank's
"stop" and "checkpoint due" flags, so a signal to any one rank stops them all.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType

import torch
import torch.distributed as dist

# EX_TEMPFAIL of sysexits.h: a temporary failure, the same command run again continues the work.
REQUEUE_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopSignals:
    """While active (a context manager), records the first stop signal instead of dying of it."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None:  # asked twice: stop now, the way this signal normally does
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        self.received = signal.Signals(number).name
        print(f"received {self.received}: stopping after this step, with a checkpoint", flush=True)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: Ctrl-C and `scancel` signal the whole process group, data workers
    included; a worker that died of it would crash the main process before it could checkpoint."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


@dataclass(frozen=True)
class Decision:
    save: bool
    stop: bool


class CheckpointSchedule:
    """When to checkpoint after a step: every `every_steps` steps (0: never by count), every
    `every_minutes` of wall time since the last save (0: never by time), and before stopping on a
    signal. The same decision on every rank."""

    def __init__(
        self,
        every_steps: int,
        every_minutes: float,
        signals: StopSignals,
        world_size: int,
        device: torch.device,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_steps, self.every_minutes, self.signals = every_steps, every_minutes, signals
        self.world_size, self.device, self.clock = world_size, device, clock
        self.last_save = clock()

    def after_step(self, step: int) -> Decision:
        due = bool(self.every_minutes) and self.clock() - self.last_save >= 60 * self.every_minutes
        stop = self.signals.received is not None
        if self.world_size > 1:
            flags = torch.tensor([due, stop], dtype=torch.int32, device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            due, stop = (bool(flag) for flag in flags.tolist())
        by_count = bool(self.every_steps) and step % self.every_steps == 0
        return Decision(save=due or stop or by_count, stop=stop)

    def saved(self) -> None:
        self.last_save = self.clock()
