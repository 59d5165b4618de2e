"""Counting a Trio task's wake-ups, for tests of work that saves one (io/backend.py's
EarlyReplies, the splice hub's end of a session)."""

from __future__ import annotations

import trio


class StepCounter(trio.abc.Instrument):
    """How many times one task is run by the scheduler (each wake-up is one step).
    Add it with trio.lowlevel.add_instrument(), read `steps` after removing it."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task, self.steps = task, 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1
