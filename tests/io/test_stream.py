"""PlainStream: bytes, EOF, errors, and its fairness and cancellation rules.

(trio's check_half_closeable_stream is not used: it requires every operation to yield to
the scheduler, which is exactly the cost PlainStream exists to avoid on the login path.)
"""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing

from mailproxy.io.stream import FAIR_EVERY, PlainStream


async def plain_pair() -> tuple[PlainStream, PlainStream]:
    a, b = socket.socketpair()
    return (PlainStream(trio.socket.from_stdlib_socket(a)),
            PlainStream(trio.socket.from_stdlib_socket(b)))


async def test_bytes_both_ways_eof_and_close() -> None:
    left, right = await plain_pair()
    await left.send_all(b"a LOGIN alice secret\r\n")
    assert await right.receive_some(1024) == b"a LOGIN alice secret\r\n"
    big = b"y" * 3_000_000                     # far beyond the socket buffers: must wait
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(right.send_all, big)
        while len(got) < len(big):
            got += await left.receive_some(65536)
    assert got == big
    await right.send_eof()
    assert await left.receive_some(10) == b""
    await left.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"x")


async def test_a_reset_peer_is_a_broken_stream() -> None:
    left, right = await plain_pair()
    right.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await left.send_all(b"unread\r\n")
    await right.aclose()                       # unread data + linger 0: a reset
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(3):
            await left.send_all(b"x" * 65536)
            await left.receive_some(10)


async def test_a_flooding_peer_cannot_starve_other_tasks() -> None:
    # Data is always there to read, so no receive ever waits: PlainStream must still
    # yield to the scheduler regularly.
    left, right = await plain_pair()
    await right.send_all(b"NOOP\r\n" * 5000)    # fits the socket buffer: always ready
    ticks = 0

    async def other_task() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        await trio.sleep(0)
        before = ticks
        for _ in range(FAIR_EVERY * 10):
            assert await left.receive_some(60)
        assert ticks - before >= 9
        nursery.cancel_scope.cancel()


async def test_cancellation_is_seen_even_when_data_is_ready() -> None:
    left, right = await plain_pair()
    await right.send_all(b"x" * 10000)
    with trio.CancelScope() as scope:
        scope.cancel()
        await left.receive_some(10)
        raise AssertionError("not reached: the cancelled scope raises at the operation")
    assert scope.cancelled_caught


async def test_accepted_connections_have_nodelay_from_the_listener() -> None:
    # The daemon sets TCP_NODELAY once on the listening socket instead of once per
    # connection: login replies must never wait for Nagle's algorithm.
    from mailproxy.config import Address, Listener
    from mailproxy.io.server import open_listeners

    (lsock,) = await open_listeners(Listener("imap", Address("127.0.0.1", 0), "none"),
                                    reuse_port=False)
    with lsock, socket.create_connection(lsock.getsockname()) as client:
        await trio.lowlevel.wait_readable(lsock)
        conn, _ = lsock.accept()
        with conn:
            stream = PlainStream(conn, nodelay=False)
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            client.sendall(b"a LOGOUT\r\n")
            assert await stream.receive_some(100) == b"a LOGOUT\r\n"


async def test_receive_reply_waits_for_the_answer() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        stream = PlainStream(a, nodelay=False)
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def reader() -> None:
                got.append(await stream.receive_reply())

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []               # nothing sent yet: still waiting
            b.sendall(b"* OK ready\r\n")
        assert got == [b"* OK ready\r\n"]
        b.close()
        assert await stream.receive_reply() == b""   # EOF


async def test_a_source_ip_bind_leaves_the_port_to_connect() -> None:
    # With source_ip(s), the port is chosen at connect() for the whole 4-tuple
    # (IP_BIND_ADDRESS_NO_PORT), so one source IP is not limited to one ephemeral range
    # across all backends; the connection still comes from that source IP.
    from mailproxy.io.backend import IP_BIND_ADDRESS_NO_PORT, connect_tcp
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(10)    # the loopback handshake is done before accept() is called
    stream = await connect_tcp("127.0.0.1", listener.getsockname()[1], "127.0.0.9")
    try:
        sock = stream.socket
        if IP_BIND_ADDRESS_NO_PORT is not None:
            assert sock.getsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT) == 1
        accepted, peer = listener.accept()
        accepted.close()
        assert peer[0] == "127.0.0.9" and peer[1] != 0
    finally:
        await stream.aclose()
        listener.close()
