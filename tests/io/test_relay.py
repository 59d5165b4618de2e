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

