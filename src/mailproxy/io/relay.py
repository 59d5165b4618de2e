"""After login: bytes both ways, untouched, until either side closes.

Owns: the byte pipe and its counters. No parsing, no per-line work: each direction is one
loop of large reads and writes. Either side closing (or failing) ends both directions, as
Dovecot's proxy does; nothing is injected into the client stream when the backend closes.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any

import trio

from .stream import plain_socket_of

# Large reads keep Python work per byte small; the buffer is allocated by the stream per
# read and freed at once, so an idle session holds none.
RELAY_CHUNK = 65536

# Plaintext on both sides: the kernel moves the bytes (socket → pipe → socket, zero copy)
# with os.splice; Python only waits for readiness. Pipes are lent from a small pool while
# data flows, so an idle session holds its two sockets and nothing more.
SPLICE = hasattr(os, "splice")
SPLICE_FLAGS = (getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0))
MAX_POOLED_PIPES = 32
_pipes: list[tuple[int, int]] = []


# A larger pipe moves a bulk transfer (FETCH/APPEND of a big message) in fewer splice
# calls, each of which costs a trip through Python; pages are only used while data sits in
# the pipe, so an idle pooled pipe costs nothing extra.
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _borrow_pipe() -> tuple[int, int]:
    if _pipes:
        return _pipes.pop()
    pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(pipe[1], F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass          # over /proc/sys/fs/pipe-max-size: the default 64 KiB still works
    return pipe


def _return_pipe(pipe: tuple[int, int]) -> None:
    # Only empty pipes come back (every pump drains its pipe before returning it).
    if len(_pipes) < MAX_POOLED_PIPES:
        _pipes.append(pipe)
    else:
        os.close(pipe[0])
        os.close(pipe[1])


class RelayResult:
    __slots__ = ("client_bytes", "server_bytes", "closed_by", "error", "last_activity")

    def __init__(self) -> None:
        self.client_bytes = 0      # client → server ("in=" in Dovecot's log)
        self.server_bytes = 0      # server → client ("out=")
        self.closed_by = ""        # "client" | "server" | "proxy"
        self.error = ""
        self.last_activity = trio.current_time()


async def _pump(src: trio.abc.ReceiveStream, dst: trio.abc.SendStream, result: RelayResult,
                side: str, done: trio.CancelScope) -> None:
    try:
        while True:
            data = await src.receive_some(RELAY_CHUNK)
            if not data:
                break
            await dst.send_all(data)
            result.last_activity = trio.current_time()
            if side == "client":
                result.client_bytes += len(data)
            else:
                result.server_bytes += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
        result.error = str(e) or type(e).__name__
    if not result.closed_by:
        result.closed_by = side
    done.cancel()


async def _splice_pump(src: Any, dst: Any, result: RelayResult,
                       side: str, done: trio.CancelScope) -> None:
    src_sock, dst_sock = src.socket, dst.socket
    src_fd, dst_fd = src_sock.fileno(), dst_sock.fileno()
    pipe: tuple[int, int] | None = None
    try:
        while True:
            await trio.lowlevel.wait_readable(src_sock)
            pipe = pipe or _borrow_pipe()
            try:
                n = os.splice(src_fd, pipe[1], RELAY_CHUNK, flags=SPLICE_FLAGS)
            except BlockingIOError:
                continue
            if n == 0:
                break                                   # EOF
            left = n
            while left:
                try:
                    left -= os.splice(pipe[0], dst_fd, left, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst_sock)
            _return_pipe(pipe)
            pipe = None
            result.last_activity = trio.current_time()
            if side == "client":
                result.client_bytes += n
            else:
                result.server_bytes += n
    except OSError as e:
        if e.errno not in (errno.ECONNRESET, errno.EPIPE, errno.EBADF, errno.ENOTCONN):
            raise
        result.error = os.strerror(e.errno) if e.errno else str(e)
    finally:
        if pipe is not None:      # cancelled mid-transfer: the pipe may hold data
            os.close(pipe[0])
            os.close(pipe[1])
    if not result.closed_by:
        result.closed_by = side
    done.cancel()


async def relay(client: trio.abc.Stream, server: trio.abc.Stream,
                client_pending: bytes = b"", server_pending: bytes = b"") -> RelayResult:
    """Pump both directions until one ends, then close both. `client_pending` are bytes the client sent
    behind its login command (they go to the server first); `server_pending` are bytes the
    backend sent behind its login reply."""
    result = RelayResult()
    try:
        if client_pending:
            await server.send_all(client_pending)
            result.client_bytes += len(client_pending)
        if server_pending:
            await client.send_all(server_pending)
            result.server_bytes += len(server_pending)
        pump = _pump
        if SPLICE and plain_socket_of(client) is not None \
                and plain_socket_of(server) is not None:
            pump = _splice_pump   # type: ignore[assignment]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, server, result, "client", nursery.cancel_scope)
            nursery.start_soon(pump, server, client, result, "server", nursery.cancel_scope)
    finally:
        # One side ended: the other is closed at once (no half-open sessions), and a
        # cancelled relay (kick, shutdown) closes both.
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(server)
    return result
