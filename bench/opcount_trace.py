"""Run trio-mailproxy with every Python opcode it executes counted, per function.

    python3 bench/opcount_trace.py OUT PYTHON -m mailproxy.cli run -c CONFIG

(the argv that bench/servers.py builds for the daemon, with this script and OUT put in
front as its `prefix`; `bench/compare.py --opcodes N` does that). SIGUSR2 clears the
counts (after a warm-up), SIGUSR1 writes them to OUT: one line per code object,
``opcodes <TAB> calls <TAB> file:first line:qualified name``, most opcodes first.

Why opcodes: callgrind counts a login's instructions but cannot say which Python function
they were spent in; `sys.settrace` with `f_trace_opcodes` can, at the price of running
the daemon ten or more times slower (fine for counting, useless for timing). Code
compiled by mypyc (the opt-in compiled build) runs no opcodes and is not seen.
Run it with `workers = 1`: the counts are the process's own.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from collections import Counter
from types import CodeType, FrameType
from typing import Any

opcodes: Counter[CodeType] = Counter()
calls: Counter[CodeType] = Counter()


def _local(frame: FrameType, event: str, arg: Any) -> Any:
    if event == "opcode":
        opcodes[frame.f_code] += 1
    return _local


def _global(frame: FrameType, event: str, arg: Any) -> Any:
    frame.f_trace_opcodes = True
    calls[frame.f_code] += 1
    return _local


def _reset(signum: int, frame: Any) -> None:
    opcodes.clear()
    calls.clear()


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2:4] != ["-m", "mailproxy.cli"]:
        raise SystemExit("usage: opcount_trace.py OUT PYTHON -m mailproxy.cli ARGS...")
    out = argv[0]

    def dump(signum: int, frame: Any) -> None:
        tmp = f"{out}.tmp"
        with open(tmp, "w") as f:
            for code, n in opcodes.most_common():
                f.write(f"{n}\t{calls[code]}\t{code.co_filename}:{code.co_firstlineno}:"
                        f"{code.co_qualname}\n")
        os.replace(tmp, out)        # whole or not at all: the reader polls for it

    signal.signal(signal.SIGUSR2, _reset)
    signal.signal(signal.SIGUSR1, dump)
    sys.argv = ["mailproxy.cli", *argv[4:]]
    sys.settrace(_global)
    runpy.run_module("mailproxy.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
