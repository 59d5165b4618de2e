"""Which worker takes new connections: all to one while one keeps up, spread when busy.

Owns: the choice, made together by the workers of `workers = N`, between

- CONCENTRATE: every new connection of a listener goes to one worker. A classic BPF
  program on the SO_REUSEPORT group (`ret #0`: the group's first socket) picks it;
- SPREAD: the kernel's own choice (the 4-tuple hash, with each worker's SO_INCOMING_CPU
  preference, see server.py).

Why: a login costs a Python worker less CPU when its process is already running and its
caches are warm than when it wakes up for each connection. Measured on the bench machine
(2 cores, IMAP logins at 50 concurrent clients, CPU of all the daemon's processes per
login, daemons side by side, interleaved): one worker 462-506 µs; two workers split by
the kernel 560-608 µs; two workers steered 481-585 µs, 4-20 % less than split in the
same runs (how much depends on how often the kernel's SO_INCOMING_CPU choice already kept
the client's connections on one worker: with a single client process on loopback, often).
Spreading is right once one process cannot keep up, so the workers measure how busy they
are and switch:

- every WINDOW seconds each worker writes its busy share (CPU time / wall time over the
  last SMOOTH windows, so one burst, such as fifty clients connecting at once, is not
  taken for a load) and its share of its descriptor limit in a small table shared by all
  workers (an anonymous shared mapping made by the parent before it forks);
- CONCENTRATE → SPREAD as soon as a worker is busier than BUSY_HIGH, holds more than
  FDS_HIGH of its descriptors, or has stopped reporting (a stuck worker must not keep
  receiving every connection);
- SPREAD → CONCENTRATE when one worker would be less busy than BUSY_LOW carrying what the
  workers together carry now (their busy shares summed, divided by SPREAD_COST: spread
  logins cost more each), none holds more than FDS_LOW of its descriptors, and the mode
  has not changed for HOLD seconds (no flapping).

Without the SPREAD_COST discount the workers stayed spread under a load one of them
carried at 0.76: on the sixth bench machine (2 cores, IMAP logins at 50 clients) the two
spread workers spent 731 µs per login, 0.8 of a core together, over BUSY_LOW, where one
worker had spent 555-586 µs, and took 1,092 logins/s where one had taken 1,276-1,366.

nginx's accept_mutex made the same trade: fewer, hotter workers while the load allows it.
Nothing here is needed for correctness: without SO_ATTACH_REUSEPORT_CBPF (not Linux) the
workers stay in SPREAD, as before.
"""

from __future__ import annotations

import ctypes
import mmap
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import trio

from ..log import log

SO_ATTACH_REUSEPORT_CBPF = 51     # <asm-generic/socket.h>; Python has no name for them
SO_DETACH_REUSEPORT_BPF = 68

WINDOW = 0.5
SMOOTH = 2            # windows a busy share is measured over
BUSY_HIGH = 0.85      # a worker this busy is about to fall behind: spread
BUSY_LOW = 0.7        # one worker would be less busy than this: it will do
SPREAD_COST = 1.25    # what a login costs spread workers / what it costs one worker
# (measured: one worker 462-506 µs, two spread 560-608 µs per login; 555-586 against
# 731 µs on another machine. Between BUSY_LOW and BUSY_HIGH the mode stays as it is:
# that band is what keeps the modes from flapping)
FDS_HIGH = 0.4        # a worker holding this share of its descriptors: spread
FDS_LOW = 0.2
STALE = 4 * WINDOW    # a worker silent this long is treated as overloaded
HOLD = 2.0
REASSERT_EVERY = 10  # windows

SPREAD, CONCENTRATE = 0, 1

# One classic BPF instruction, BPF_RET | BPF_K with k = 0: "the group's socket 0".
_RET_FIRST = struct.pack("HBBI", 0x06, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    busy: float       # CPU seconds per wall-clock second over the last window
    fds: float        # share of the worker's descriptor limit in use
    stamp: float      # time.monotonic() when written (the same clock in every process)


def decide(mode: int, changed_at: float, now: float, loads: Iterable[WorkerLoad]) -> int:
    """The mode the workers should be in (a pure function: the policy, testable alone)."""
    loads = list(loads)
    if not loads:
        return mode
    stale = any(now - w.stamp > STALE for w in loads)
    if mode == CONCENTRATE:
        if stale or any(w.busy > BUSY_HIGH or w.fds > FDS_HIGH for w in loads):
            return SPREAD
        return CONCENTRATE
    if (not stale and now - changed_at >= HOLD
            and sum(w.busy for w in loads) / SPREAD_COST < BUSY_LOW
            and all(w.fds < FDS_LOW for w in loads)):
        return CONCENTRATE
    return SPREAD


class LoadTable:
    """The table the workers share: mode, when it last changed, one slot per worker.
    Made by the parent before forking (MAP_SHARED | MAP_ANONYMOUS, inherited)."""

    _HEAD = struct.Struct("dd")          # mode, changed_at
    _SLOT = struct.Struct("ddd")         # busy, fds, stamp

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._map = mmap.mmap(-1, self._HEAD.size + workers * self._SLOT.size)
        self._HEAD.pack_into(self._map, 0, SPREAD, time.monotonic())
        now = time.monotonic()
        for i in range(workers):
            # A worker that has not reported yet counts as just started and idle.
            self.write(i, WorkerLoad(0.0, 0.0, now))

    def mode(self) -> tuple[int, float]:
        mode, changed_at = self._HEAD.unpack_from(self._map, 0)
        return int(mode), changed_at

    def set_mode(self, mode: int, now: float) -> None:
        self._HEAD.pack_into(self._map, 0, mode, now)

    def write(self, index: int, load: WorkerLoad) -> None:
        self._SLOT.pack_into(self._map, self._HEAD.size + index * self._SLOT.size,
                             load.busy, load.fds, load.stamp)

    def loads(self) -> list[WorkerLoad]:
        return [WorkerLoad(*self._SLOT.unpack_from(self._map, self._HEAD.size
                                                   + i * self._SLOT.size))
                for i in range(self.workers)]


def set_concentrate(sock: socket.socket, on: bool) -> bool:
    """Attach (on) or detach the `ret #0` program on the socket's SO_REUSEPORT group.
    False when the kernel cannot (not Linux, or no program to detach)."""
    try:
        if on:
            program = ctypes.create_string_buffer(_RET_FIRST, len(_RET_FIRST))
            # struct sock_fprog { unsigned short len; struct sock_filter *filter; },
            # native alignment ("@") pads the pointer as the C compiler does.
            fprog = struct.pack("@HP", 1, ctypes.addressof(program))
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
        else:
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError:
        return False
    return True


class Steering:
    """One worker's part: report its load, and switch the mode of its listeners' groups
    when the table says so."""

    def __init__(self, table: LoadTable, index: int, fd_limit: int) -> None:
        self.table = table
        self.index = index
        self.fd_limit = max(fd_limit, 1)
        self.mode = SPREAD        # what this worker's sockets were last set to
        self._windows = 0
        self.sockets: list[socket.socket] = []

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """New listening sockets (start-up, reload) take the current mode."""
        sockets = list(sockets)
        self.sockets = [s for s in self.sockets if s.fileno() >= 0] + sockets
        if self.mode == CONCENTRATE:
            for sock in sockets:
                set_concentrate(sock, True)

    def _apply(self, mode: int) -> bool:
        done = False
        for sock in self.sockets:
            if sock.fileno() >= 0:
                done = set_concentrate(sock, mode == CONCENTRATE) or done
        return done

    def step(self, busy: float, open_fds: int, now: float) -> None:
        """Report this window's load, then follow or change the shared mode."""
        self.table.write(self.index, WorkerLoad(busy, open_fds / self.fd_limit, now))
        mode, changed_at = self.table.mode()
        wanted = decide(mode, changed_at, now, self.table.loads())
        if wanted != mode:
            if not self._apply(wanted) and wanted == CONCENTRATE:
                return            # the kernel cannot: stay spread, say nothing
            self.table.set_mode(wanted, now)
            log.debug("worker %d: new connections %s", self.index,
                      "to one worker" if wanted == CONCENTRATE else "spread")
        elif mode != self.mode or self._windows % REASSERT_EVERY == 0:
            # The table is the truth: a worker sets its groups to it again when it sees
            # another worker's switch, and every REASSERT_EVERY windows anyway, so two
            # workers switching at the same moment cannot leave a group in the other
            # mode for long. (Attaching builds a new program: not every window.)
            self._apply(mode)
        self._windows += 1
        self.mode = wanted

    async def run(self, open_fds: Callable[[], int]) -> None:
        """Every WINDOW: measure this process's busy share and step."""
        meter = BusyMeter(time.process_time(), time.monotonic())
        while True:
            await trio.sleep(WINDOW)
            wall = time.monotonic()
            self.step(meter.sample(time.process_time(), wall), open_fds(), wall)


class BusyMeter:
    """CPU seconds per wall-clock second over the last SMOOTH samples (a sliding window
    moved on at each sample; shorter until SMOOTH samples have been taken)."""

    def __init__(self, cpu: float, wall: float) -> None:
        self._samples: list[tuple[float, float]] = [(cpu, wall)]

    def sample(self, cpu: float, wall: float) -> float:
        self._samples.append((cpu, wall))
        if len(self._samples) > SMOOTH + 1:
            del self._samples[0]
        cpu0, wall0 = self._samples[0]
        return (cpu - cpu0) / max(wall - wall0, 1e-6)
