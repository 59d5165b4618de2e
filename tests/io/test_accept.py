"""The accept loop of a worker: its listening socket's CPU preference (SO_INCOMING_CPU)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from mailproxy.config import Address, Listener
from mailproxy.io import server
from mailproxy.io.server import Daemon, bind_sockets, prefer_cpu

pytestmark = pytest.mark.skipif(server.SO_INCOMING_CPU is None,
                                reason="SO_INCOMING_CPU is Linux-only")


def preference(sock: socket.socket) -> int:
    assert server.SO_INCOMING_CPU is not None
    return sock.getsockopt(socket.SOL_SOCKET, server.SO_INCOMING_CPU)


class Worker:
    """Worker `cpu`'s accept loop on a real SO_REUSEPORT listener; sessions are counted
    and closed instead of served."""

    def __init__(self, cpu: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.li = Listener("imap", Address("127.0.0.1", 0), "none")
        (self.lsock,) = bind_sockets(
            self.li, socket.getaddrinfo("127.0.0.1", 0, type=socket.SOCK_STREAM),
            reuse_port=True)
        prefer_cpu(self.lsock, cpu)
        self.port = self.lsock.getsockname()[1]
        self.daemon = Daemon("unused.toml", name=f"worker {cpu}", reuse_port=True, cpu=cpu)
        self.accepted = 0
        self.clients: list[socket.socket] = []
        monkeypatch.setattr(self.daemon, "admit", lambda *args: None)
        monkeypatch.setattr(self.daemon, "handle", self.handle)

    async def handle(self, li: Listener, stream: Any, peer: object, admission: object) -> None:
        self.accepted += 1
        stream.socket.close()

    def connect(self) -> None:
        self.clients.append(socket.create_connection(("127.0.0.1", self.port)))

    async def all_accepted(self) -> None:
        while self.accepted < len(self.clients):
            await trio.sleep(0.001)

    def start(self, nursery: trio.Nursery) -> trio.CancelScope:
        self.daemon.sessions_nursery = nursery
        scope = trio.CancelScope()
        nursery.start_soon(self.daemon.accept_loop, self.li, self.lsock, scope)
        return scope

    def close(self) -> None:
        for c in self.clients:
            c.close()


async def test_a_worker_that_falls_behind_lets_the_kernel_spread_then_prefers_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "PREFERENCE_PAUSE", 0.3)
    w = Worker(0, monkeypatch)
    # A backlog of more than one accept batch: connections arrive faster than taken.
    for _ in range(3 * server.ACCEPT_BATCH):
        w.connect()
    try:
        async with trio.open_nursery() as nursery:
            scope = w.start(nursery)
            await w.all_accepted()
            assert preference(w.lsock) == -1          # behind: the hash spreads them
            await trio.sleep(0.4)
            w.connect()
            await w.all_accepted()
            await trio.sleep(0.05)
            assert preference(w.lsock) == 0           # caught up and rested: ours again
            scope.cancel()
    finally:
        w.close()


async def test_a_worker_keeping_up_keeps_its_preference(monkeypatch: pytest.MonkeyPatch) -> None:
    w = Worker(1, monkeypatch)
    try:
        async with trio.open_nursery() as nursery:
            scope = w.start(nursery)
            for _ in range(2 * server.ACCEPT_BATCH):     # one at a time: never behind
                w.connect()
                await w.all_accepted()
            assert preference(w.lsock) == 1
            scope.cancel()
    finally:
        w.close()
