"""The post-login byte pipe, on Trio memory streams (no sockets)."""

from __future__ import annotations

import trio
import trio.testing

from mailproxy.io.relay import relay


async def test_bytes_flow_both_ways_and_pending_bytes_go_first() -> None:
    client_side, proxy_client = trio.testing.memory_stream_pair()
    proxy_server, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        results = []

        async def run() -> None:
            results.append(await relay(proxy_client, proxy_server,
                                       client_pending=b"b SELECT INBOX\r\n",
                                       server_pending=b"* 1 EXISTS\r\n"))

        nursery.start_soon(run)
        assert await server_side.receive_some() == b"b SELECT INBOX\r\n"
        assert await client_side.receive_some() == b"* 1 EXISTS\r\n"
        await client_side.send_all(b"c NOOP\r\n")
        assert await server_side.receive_some() == b"c NOOP\r\n"
        await server_side.send_all(b"c OK NOOP completed.\r\n")
        assert await client_side.receive_some() == b"c OK NOOP completed.\r\n"
        await server_side.aclose()          # the backend goes away
        assert await client_side.receive_some() == b""   # ... so does the client side
    (result,) = results
    assert result.closed_by == "server"
    assert result.client_bytes == len(b"b SELECT INBOX\r\nc NOOP\r\n")
    assert result.server_bytes == len(b"* 1 EXISTS\r\nc OK NOOP completed.\r\n")


async def test_client_closing_closes_the_backend() -> None:
    client_side, proxy_client = trio.testing.memory_stream_pair()
    proxy_server, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        results = []

        async def run() -> None:
            results.append(await relay(proxy_client, proxy_server))

        nursery.start_soon(run)
        await client_side.aclose()
        assert await server_side.receive_some() == b""
    assert results[0].closed_by == "client"


async def test_relay_has_no_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    # After login an IDLE may last for hours: the relay never times a session out.
    client_side, proxy_client = trio.testing.memory_stream_pair()
    proxy_server, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay, proxy_client, proxy_server)
        await trio.sleep(24 * 3600)
        await client_side.send_all(b"DONE\r\n")
        assert await server_side.receive_some() == b"DONE\r\n"
        nursery.cancel_scope.cancel()


async def test_cancelling_the_relay_ends_it_promptly() -> None:
    # A kick or shutdown cancels the session scope: the relay must not swallow it.
    client_side, proxy_client = trio.testing.memory_stream_pair()
    proxy_server, server_side = trio.testing.memory_stream_pair()
    with trio.move_on_after(0.2) as scope:
        await relay(proxy_client, proxy_server)
    assert scope.cancelled_caught


def socket_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    import socket

    a, b = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), \
        trio.SocketStream(trio.socket.from_stdlib_socket(b))


async def test_plain_sockets_are_spliced_intact_both_ways_at_once() -> None:
    # Plaintext on both sides takes the os.splice path: megabytes in both directions at
    # the same time arrive complete and in order, and the counters add up.
    from mailproxy.io import relay as relay_mod

    assert relay_mod.SPLICE
    client_side, proxy_client = socket_stream_pair()
    proxy_server, server_side = socket_stream_pair()
    up = bytes(range(256)) * 12_000           # ~3 MB each way
    down = bytes(reversed(range(256))) * 12_000
    got: dict[str, bytearray] = {"up": bytearray(), "down": bytearray()}
    results = []

    async def reader(stream: trio.SocketStream, key: str, size: int) -> None:
        while len(got[key]) < size:
            data = await stream.receive_some(65536)
            assert data
            got[key] += data

    async with trio.open_nursery() as nursery:
        async def run() -> None:
            results.append(await relay(proxy_client, proxy_server))

        nursery.start_soon(run)
        nursery.start_soon(client_side.send_all, up)
        nursery.start_soon(server_side.send_all, down)
        async with trio.open_nursery() as readers:
            readers.start_soon(reader, server_side, "up", len(up))
            readers.start_soon(reader, client_side, "down", len(down))
        await client_side.aclose()
        assert await server_side.receive_some() == b""
    assert got["up"] == up and got["down"] == down
    assert results[0].client_bytes == len(up) and results[0].server_bytes == len(down)
    assert results[0].closed_by == "client"
    # Pipes are returned (or closed) when the data stops: the pool stays bounded.
    assert len(relay_mod._pipes) <= relay_mod.MAX_POOLED_PIPES
