"""Steering new connections between workers (io/steering.py): the policy alone, the
table the workers share across fork, and the BPF program on a real SO_REUSEPORT group."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailproxy.config import Address, Listener
from mailproxy.io import steering
from mailproxy.io.server import bind_sockets
from mailproxy.io.steering import (CONCENTRATE, HOLD, SPREAD, STALE, BusyMeter, LoadTable,
                                   Steering, WorkerLoad, decide, set_concentrate)

NOW = 1000.0
IDLE = WorkerLoad(0.05, 0.0, NOW)


def load(busy: float = 0.05, fds: float = 0.0, age: float = 0.0) -> WorkerLoad:
    return WorkerLoad(busy, fds, NOW - age)


# --- the policy ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode, changed_at, loads, expected", [
    # quiet workers, the mode settled: one worker takes the connections
    (SPREAD, NOW - HOLD, [load(0.2), load(0.2)], CONCENTRATE),
    # ... but not right after a change (no flapping)
    (SPREAD, NOW - HOLD / 2, [load(0.2), load(0.2)], SPREAD),
    # together too busy for one worker, even at one worker's lower cost per login
    (SPREAD, NOW - 60, [load(0.5), load(0.45)], SPREAD),
    # spread workers busier together than one would be alone: 0.8 spread is about
    # 0.64 for one worker (the sixth bench machine stayed spread here at 731 µs a login
    # where one worker had spent 555-586)
    (SPREAD, NOW - 60, [load(0.4), load(0.4)], CONCENTRATE),
    # descriptors: one worker would hold too many
    (SPREAD, NOW - 60, [load(0.1, fds=0.25), load(0.1)], SPREAD),
    # a silent worker: never concentrate
    (SPREAD, NOW - 60, [load(0.1), load(0.1, age=STALE + 1)], SPREAD),
    # concentrated and keeping up: stay
    (CONCENTRATE, NOW - 60, [load(0.8), load(0.0)], CONCENTRATE),
    # concentrated and about to fall behind: spread at once (no HOLD)
    (CONCENTRATE, NOW, [load(0.9), load(0.0)], SPREAD),
    (CONCENTRATE, NOW, [load(0.1, fds=0.45), load(0.0)], SPREAD),
    (CONCENTRATE, NOW, [load(0.1), load(0.0, age=STALE + 1)], SPREAD),
])
def test_policy(mode: int, changed_at: float, loads: list[WorkerLoad], expected: int) -> None:
    assert decide(mode, changed_at, NOW, loads) == expected


loads_st = st.lists(st.builds(WorkerLoad, st.floats(0, 2), st.floats(0, 1),
                              st.floats(NOW - 10, NOW)), min_size=1, max_size=8)


@given(mode=st.sampled_from([SPREAD, CONCENTRATE]), since=st.floats(0, 10), loads=loads_st)
def test_policy_properties(mode: int, since: float, loads: list[WorkerLoad]) -> None:
    wanted = decide(mode, NOW - since, NOW, loads)
    if wanted == CONCENTRATE:
        # Only when no worker is overloaded, silent or short of descriptors ...
        assert all(w.busy <= steering.BUSY_HIGH and w.fds <= steering.FDS_HIGH
                   and NOW - w.stamp <= STALE for w in loads)
        # ... and a switch to it needs the quiet criteria and the hold time.
        if mode == SPREAD:
            assert since >= HOLD
            assert sum(w.busy for w in loads) < steering.BUSY_LOW * steering.SPREAD_COST


@given(loads=st.lists(st.floats(0, 2), min_size=1, max_size=8))
def test_policy_does_not_flap(loads: list[float]) -> None:
    """Spread workers that go back to one worker leave it under BUSY_HIGH when logins
    cost it what SPREAD_COST says: the switch back cannot at once trigger a spread."""
    back = decide(SPREAD, NOW - 60, NOW, [load(b) for b in loads])
    if back == CONCENTRATE:
        alone = sum(loads) / steering.SPREAD_COST
        assert decide(CONCENTRATE, NOW, NOW, [load(alone)] + [load(0.0)] * (len(loads) - 1)) \
            == CONCENTRATE


def test_busy_meter_smooths_one_burst() -> None:
    """One window at full load between quiet ones (fifty clients connecting at once) is
    not a load to spread for; two windows at full load are."""
    w = steering.WINDOW
    meter = BusyMeter(0.0, 0.0)
    assert meter.sample(0.3 * w, w) == pytest.approx(0.3)
    assert meter.sample(1.3 * w, 2 * w) == pytest.approx(0.65)    # 0.3, then the burst
    assert meter.sample(1.6 * w, 3 * w) == pytest.approx(0.65)    # the burst, then 0.3
    assert meter.sample(1.9 * w, 4 * w) == pytest.approx(0.3)     # burst out of the window
    meter.sample(2.9 * w, 5 * w)
    sustained = meter.sample(3.9 * w, 6 * w)
    assert sustained == pytest.approx(1.0)
    assert sustained > steering.BUSY_HIGH


# --- the shared table -----------------------------------------------------------------------

def test_table_is_shared_across_fork() -> None:
    table = LoadTable(3)
    pid = os.fork()
    if pid == 0:      # the child: a worker reporting, then switching the mode
        try:
            table.write(2, WorkerLoad(0.5, 0.25, 42.0))
            table.set_mode(CONCENTRATE, 43.0)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert table.loads()[2] == WorkerLoad(0.5, 0.25, 42.0)
    assert table.mode() == (CONCENTRATE, 43.0)
    assert [w.busy for w in table.loads()[:2]] == [0.0, 0.0]


# --- the kernel side ------------------------------------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="SO_ATTACH_REUSEPORT_CBPF is Linux-only")


NewGroup = Callable[[int], list[socket.socket]]


@pytest.fixture
def new_group() -> Iterator[NewGroup]:
    """reuseport_group(), every socket closed after the test."""
    made: list[socket.socket] = []

    def make(n: int) -> list[socket.socket]:
        group = reuseport_group(n)
        made.extend(group)
        return group
    yield make
    for sock in made:
        sock.close()


def reuseport_group(n: int) -> list[socket.socket]:
    """n listening sockets in one SO_REUSEPORT group on a free loopback port."""
    li = Listener("imap", Address("127.0.0.1", 0), "none")
    (first,) = bind_sockets(li, socket.getaddrinfo("127.0.0.1", 0, type=socket.SOCK_STREAM),
                            reuse_port=True)
    port = first.getsockname()[1]
    group = [first]
    for _ in range(n - 1):
        group += bind_sockets(li, socket.getaddrinfo("127.0.0.1", port,
                                                     type=socket.SOCK_STREAM),
                              reuse_port=True)
    return group


def connect_and_count(group: list[socket.socket], n: int) -> list[int]:
    """Open n connections to the group's port; how many each socket received."""
    port = group[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    try:
        time.sleep(0.05)
        counts = []
        for lsock in group:
            got = 0
            while True:
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    break
                conn.close()
                got += 1
            counts.append(got)
        return counts
    finally:
        for c in clients:
            c.close()


@linux_only
def test_concentrate_sends_every_connection_to_one_socket(new_group: NewGroup) -> None:
    group = new_group(2)
    # Without a program the kernel spreads 64 connections from different source
    # ports over both sockets (all on one: probability 2**-63).
    assert all(connect_and_count(group, 64))
    assert set_concentrate(group[1], True)     # any socket of the group sets it
    assert connect_and_count(group, 64) == [64, 0]
    assert set_concentrate(group[0], False)
    assert all(connect_and_count(group, 64))


@linux_only
def test_workers_switch_together(new_group: NewGroup) -> None:
    """Two workers' Steering on one table and one group: quiet → concentrate; one busy
    worker → spread; and each worker follows a switch made by the other."""
    group = new_group(2)
    table = LoadTable(2)
    workers = [Steering(table, i, fd_limit=20000) for i in range(2)]
    for w, sock in zip(workers, group):
        w.add_sockets([sock])
    start = table.mode()[1]
    now = start + HOLD + 1
    workers[0].step(0.1, 0, now)
    workers[1].step(0.1, 0, now)     # both reported quiet, HOLD is over
    assert table.mode()[0] == CONCENTRATE
    assert sorted(connect_and_count(group, 32)) == [0, 32]
    workers[0].step(0.2, 0, now + 0.5)
    assert workers[0].mode == CONCENTRATE      # followed worker 1's switch
    # the worker taking every connection is now nearly saturated
    workers[0].step(0.95, 0, now + 1)
    assert table.mode()[0] == SPREAD
    assert all(connect_and_count(group, 64))
    # quiet again, but within HOLD of the switch: stay spread
    workers[0].step(0.1, 0, now + 1.5)
    workers[1].step(0.1, 0, now + 1.5)
    assert table.mode()[0] == SPREAD
    workers[0].step(0.1, 0, now + 1 + HOLD)
    assert table.mode()[0] == CONCENTRATE
    # a listener added later (reload) is concentrated from the start
    added = new_group(2)
    workers[0].add_sockets(added[:1])
    assert sorted(connect_and_count(added, 32)) == [0, 32]


@linux_only
def test_many_descriptors_spread(new_group: NewGroup) -> None:
    group = new_group(2)
    table = LoadTable(2)
    worker = Steering(table, 0, fd_limit=1000)
    worker.add_sockets(group[:1])
    t = table.mode()[1] + HOLD + 1
    table.write(1, WorkerLoad(0.0, 0.0, t))
    worker.step(0.1, 100, t)
    assert table.mode()[0] == CONCENTRATE
    table.write(1, WorkerLoad(0.0, 0.0, t + 0.5))
    worker.step(0.1, 500, t + 0.5)      # half its descriptors: spread
    assert table.mode()[0] == SPREAD


@linux_only
def test_each_step_puts_the_group_back_in_the_tables_mode(new_group: NewGroup) -> None:
    """Two workers switching at the same moment could leave a group in the mode the
    table does not say; the next step of any worker repairs it."""
    group = new_group(2)
    table = LoadTable(2)
    worker = Steering(table, 0, fd_limit=20000)
    worker.add_sockets(group[:1])
    assert table.mode()[0] == SPREAD
    assert set_concentrate(group[1], True)      # the other worker's stale switch
    assert connect_and_count(group, 32) == [32, 0]
    t = table.mode()[1] + 0.5                    # within HOLD: no switch now
    table.write(1, WorkerLoad(0.0, 0.0, t))
    worker.step(0.1, 0, t)
    assert table.mode()[0] == SPREAD
    assert all(connect_and_count(group, 64))


@linux_only
async def test_workers_left_alone_concentrate(
        monkeypatch: pytest.MonkeyPatch,
        new_group: NewGroup) -> None:
    """Steering.run itself: two quiet workers (windows and hold shortened) end up
    sending every connection to one of them."""
    import trio
    monkeypatch.setattr(steering, "WINDOW", 0.05)
    monkeypatch.setattr(steering, "HOLD", 0.2)
    monkeypatch.setattr(steering, "STALE", 1.0)
    group = new_group(2)
    table = LoadTable(2)
    workers = [Steering(table, i, fd_limit=20000) for i in range(2)]
    for w, sock in zip(workers, group):
        w.add_sockets([sock])
    with trio.move_on_after(1.0):
        async with trio.open_nursery() as nursery:
            for w in workers:
                nursery.start_soon(w.run, lambda: 0)
            while table.mode()[0] != CONCENTRATE:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert table.mode()[0] == CONCENTRATE
    assert sorted(connect_and_count(group, 32)) == [0, 32]
