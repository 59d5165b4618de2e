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


async def test_a_worker_that_falls_behind_lets_the_kernel_spread_then_prefers_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "PREFERENCE_PAUSE", 0.3)
    li = Listener("imap", Address("127.0.0.1", 0), "none")
    (lsock,) = bind_sockets(li, socket.getaddrinfo("127.0.0.1", 0, type=socket.SOCK_STREAM),
                            reuse_port=True)
    prefer_cpu(lsock, 0)
    port = lsock.getsockname()[1]
    daemon = Daemon("unused.toml", name="worker 0", reuse_port=True, cpu=0)
    accepted: list[Any] = []

    async def handle(li: Listener, stream: Any, peer: object, local: object) -> None:
        accepted.append(stream)
        stream.socket.close()

    monkeypatch.setattr(daemon, "handle", handle)
    # A backlog of more than one accept batch: connections arrive faster than taken.
    clients = [socket.create_connection(("127.0.0.1", port))
               for _ in range(3 * server.ACCEPT_BATCH)]
    try:
        async with trio.open_nursery() as nursery:
            daemon.sessions_nursery = nursery
            scope = trio.CancelScope()
            nursery.start_soon(daemon.accept_loop, li, lsock, scope)
            while len(accepted) < len(clients):
                await trio.sleep(0.01)
            assert preference(lsock) == -1          # behind: the hash spreads them
            await trio.sleep(0.4)
            late = socket.create_connection(("127.0.0.1", port))
            clients.append(late)
            while len(accepted) < len(clients):
                await trio.sleep(0.01)
            await trio.sleep(0.05)
            assert preference(lsock) == 0           # caught up and rested: ours again
            scope.cancel()
    finally:
        for c in clients:
            c.close()


async def test_a_worker_keeping_up_keeps_its_preference(monkeypatch: pytest.MonkeyPatch) -> None:
    li = Listener("imap", Address("127.0.0.1", 0), "none")
    (lsock,) = bind_sockets(li, socket.getaddrinfo("127.0.0.1", 0, type=socket.SOCK_STREAM),
                            reuse_port=True)
    prefer_cpu(lsock, 1)
    port = lsock.getsockname()[1]
    daemon = Daemon("unused.toml", name="worker 1", reuse_port=True, cpu=1)
    accepted: list[object] = []

    async def handle(li: Listener, stream: Any, peer: object, local: object) -> None:
        accepted.append(stream)
        stream.socket.close()

    monkeypatch.setattr(daemon, "handle", handle)
    clients = []
    try:
        async with trio.open_nursery() as nursery:
            daemon.sessions_nursery = nursery
            scope = trio.CancelScope()
            nursery.start_soon(daemon.accept_loop, li, lsock, scope)
            for _ in range(2 * server.ACCEPT_BATCH):     # one at a time: never behind
                clients.append(socket.create_connection(("127.0.0.1", port)))
                while len(accepted) < len(clients):
                    await trio.sleep(0.001)
            assert preference(lsock) == 1
            scope.cancel()
    finally:
        for c in clients:
            c.close()

