"""The splice hub: many plain sessions relayed by one task, on real socket pairs."""

from __future__ import annotations

import os
import socket

import trio

from mailproxy.io.relay import RelayResult
from mailproxy.io.splice_hub import SpliceHub
from tests.support.steps import StepCounter


def pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = socket.socketpair()
    return (trio.SocketStream(trio.socket.from_stdlib_socket(a)),
            trio.SocketStream(trio.socket.from_stdlib_socket(b)))


class Session:
    """A client ↔ hub ↔ server triple; `closed` records the hub's final result."""

    def __init__(self, hub: SpliceHub) -> None:
        self.client, proxy_client = pair()
        proxy_server, self.server = pair()
        self.results: list[RelayResult] = []
        self.done = trio.Event()

        def closed(result: RelayResult) -> None:
            self.results.append(result)
            self.done.set()

        hub.add(proxy_client, proxy_server, closed)


async def read_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(65536)
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


async def test_many_sessions_one_task_bytes_intact_both_ways() -> None:
    hub = SpliceHub()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        sessions = [Session(hub) for _ in range(20)]
        assert len(hub) == 20
        for i, s in enumerate(sessions):
            await s.client.send_all(b"a%d NOOP\r\n" % i)
            await s.server.send_all(b"* %d EXISTS\r\n" % i)
        for i, s in enumerate(sessions):
            assert await read_exactly(s.server, len(b"a%d NOOP\r\n" % i)) == b"a%d NOOP\r\n" % i
            assert await read_exactly(s.client, len(b"* %d EXISTS\r\n" % i)) == \
                b"* %d EXISTS\r\n" % i
        await sessions[3].client.aclose()
        await sessions[3].done.wait()
        assert await sessions[3].server.receive_some() == b""    # the other side closed too
        (result,) = sessions[3].results
        assert result.closed_by == "client"
        assert result.client_bytes == len(b"a3 NOOP\r\n")
        assert result.server_bytes == len(b"* 3 EXISTS\r\n")
        assert len(hub) == 19
        nursery.cancel_scope.cancel()
    # Cancelling the hub (shutdown) ends every remaining session as closed by the proxy.
    assert all(s.results and s.results[0].closed_by == "proxy"
               for i, s in enumerate(sessions) if i != 3)


async def test_back_pressure_holds_data_until_the_reader_catches_up() -> None:
    hub = SpliceHub()
    payload = bytes(range(256)) * 40_000        # ~10 MB: far more than socket buffers
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        s = Session(hub)
        nursery.start_soon(s.client.send_all, payload)
        await trio.sleep(0.2)                   # the server is not reading: hub must wait
        got = await read_exactly(s.server, len(payload))
        assert got == payload
        await s.server.send_all(b"* BYE\r\n")
        assert await read_exactly(s.client, 7) == b"* BYE\r\n"
        await s.server.aclose()
        await s.done.wait()
        assert s.results[0].closed_by == "server"
        assert s.results[0].client_bytes == len(payload)
        nursery.cancel_scope.cancel()


async def test_kick_closes_both_sides_without_injecting_anything() -> None:
    hub = SpliceHub()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        s = Session(hub)
        (relayed,) = hub.sessions
        hub.kick(relayed, "Kicked by admin")
        assert await s.client.receive_some() == b""
        assert await s.server.receive_some() == b""
        assert s.results[0].closed_by == "proxy" and s.results[0].error == "Kicked by admin"
        nursery.cancel_scope.cancel()


async def test_plain_sockets_are_relayed_intact_both_ways_at_once() -> None:
    # Megabytes in both directions at the same time (spliced one way, copied the other)
    # arrive complete and in order, and the counters add up.
    from mailproxy.io import splice_hub as hub_mod

    assert hub_mod.SPLICE
    hub = SpliceHub()
    up = bytes(range(256)) * 12_000           # ~3 MB each way
    down = bytes(reversed(range(256))) * 12_000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        s = Session(hub)
        nursery.start_soon(s.client.send_all, up)
        nursery.start_soon(s.server.send_all, down)
        got_up = await read_exactly(s.server, len(up))
        got_down = await read_exactly(s.client, len(down))
        await s.client.aclose()
        assert await s.server.receive_some() == b""
        await s.done.wait()
        nursery.cancel_scope.cancel()
    assert got_up == up and got_down == down
    assert s.results[0].client_bytes == len(up) and s.results[0].server_bytes == len(down)
    assert s.results[0].closed_by == "client"
    # Pipes and buffers are returned (or freed) when the data stops: the pools stay
    # bounded.
    assert len(hub_mod._pipes) <= hub_mod.MAX_POOLED_PIPES
    assert len(hub_mod._buffers) <= hub_mod.MAX_POOLED_BUFFERS


async def test_a_closed_session_is_freed_at_once_not_by_the_cycle_collector() -> None:
    # Tens of thousands of sessions end per minute on a busy proxy: each must be freed
    # by reference counting as it closes (its closure holds the log line's text), not
    # left for the cyclic garbage collector.
    import gc
    import weakref

    hub = SpliceHub()
    client, proxy_client = pair()
    proxy_server, server = pair()
    ended = trio.Event()

    class OnClosed:
        def __call__(self, result: RelayResult) -> None:
            ended.set()

    on_closed = OnClosed()
    alive = weakref.ref(on_closed)
    hub.add(proxy_client, proxy_server, on_closed)
    del on_closed
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            await client.aclose()
            await ended.wait()
            assert alive() is None
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()
        await server.aclose()


def plain_pair() -> tuple[trio.SocketStream, socket.socket]:
    """The proxy's side as a trio stream, the peer's as a non-blocking stdlib socket: a
    recv() there says at once whether the bytes have arrived (BlockingIOError if not)."""
    a, b = socket.socketpair()
    b.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), b


async def test_a_command_sent_before_the_hand_off_is_moved_by_add_itself() -> None:
    # No hub task runs here: what the client sent right after its login reply (before
    # the hub took the sockets) reaches the server during add(), not a scheduler round
    # later.
    hub = SpliceHub()
    proxy_client, client = plain_pair()
    proxy_server, server = plain_pair()
    client.send(b"b LOGOUT\r\n")
    results: list[RelayResult] = []
    hub.add(proxy_client, proxy_server, results.append)
    assert server.recv(100) == b"b LOGOUT\r\n"
    assert results == [] and len(hub) == 1
    hub.close_all("test over")
    assert results[0].closed_by == "proxy"
    client.close()
    server.close()


async def test_a_last_reply_and_the_close_behind_it_take_one_wakeup() -> None:
    """A backend's LOGOUT reply and its FIN usually arrive together: the hub relays the
    reply and ends the session in the same wake-up, instead of waking again for the
    end of the stream."""
    hub = SpliceHub()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        s = Session(hub)
        await trio.sleep(0.05)                      # the hub is waiting on its epoll set
        (hub_task,) = nursery.child_tasks
        counter = StepCounter(hub_task)
        trio.lowlevel.add_instrument(counter)
        reply = b"* BYE Logging out\r\nb OK Logout completed.\r\n"
        # both before the hub can run: written and shut without a checkpoint between
        os.write(s.server.socket.fileno(), reply)
        s.server.socket.shutdown(socket.SHUT_WR)
        await s.done.wait()
        trio.lowlevel.remove_instrument(counter)
        assert counter.steps == 1
        assert await read_exactly(s.client, len(reply)) == reply
        assert await s.client.receive_some() == b""
        assert s.results[0].closed_by == "server"
        nursery.cancel_scope.cancel()
