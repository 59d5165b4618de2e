"""PlainStream: a trio Stream over a TCP socket, made for the login dialogue's small I/O.

Owns: the per-operation cost of socket I/O before the relay. trio.SocketStream makes
every send and receive a full trip through the scheduler (a checkpoint before and after
the system call), which is a large share of a login's CPU when a login is a dozen small
reads and writes. Here an operation that can complete at once does so with one system
call; only an operation that would block waits (trio.lowlevel.wait_readable/writable).

Fairness is kept explicitly: every FAIR_EVERY operations that completed without waiting,
the task yields once to the scheduler, so a client that floods the proxy cannot starve
other sessions, and cancellation (login deadline, kick, shutdown) is checked on every
operation.
"""

from __future__ import annotations

import os
import socket as stdlib_socket
from typing import Any

import trio

FAIR_EVERY = 8


def _broken(e: OSError) -> trio.BrokenResourceError:
    """The BrokenResourceError for a failed read or write, caused by ``e``: backend.py's
    connect_failure() reads the connect error from ``__cause__``. Set by hand because
    mypyc (the compiled build) compiles ``raise ... from e`` without setting it."""
    broken = trio.BrokenResourceError(str(e))
    broken.__cause__ = e
    return broken


class PlainStream(trio.abc.HalfCloseableStream):
    __slots__ = ("socket", "_fd", "_fast", "connecting")

    def __init__(self, sock: Any, *, nodelay: bool = True) -> None:
        # `sock`: a non-blocking stdlib socket (or a trio socket): only its descriptor,
        # setsockopt, shutdown, detach and close are used. nodelay=False: TCP_NODELAY is
        # already set (inherited from the listening socket).
        self.socket = sock
        # read(2)/write(2) on the descriptor are recv/send without flags, and need no
        # private handle on trio's socket object.
        self._fd = sock.fileno()
        self._fast = 0
        self.connecting = False    # a non-blocking connect not yet known to be complete
        if not nodelay:
            return
        try:
            # Login replies are small and must not wait for Nagle's algorithm.
            sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, True)
        except OSError:
            pass

    async def _after_fast_op(self) -> None:
        self._fast += 1
        if self._fast >= FAIR_EVERY:
            self._fast = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        fd = self._fd
        if self.socket.fileno() < 0:
            raise trio.ClosedResourceError("the stream is closed")
        view = memoryview(data)
        waited = False
        while view:
            try:
                sent = os.write(fd, view)
            except BlockingIOError:
                waited = True
                await trio.lowlevel.wait_writable(fd)
                continue
            except OSError as e:
                raise _broken(e)
            view = view[sent:]
        if not waited:
            await self._after_fast_op()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        fd = self._fd
        if self.socket.fileno() < 0:
            raise trio.ClosedResourceError("the stream is closed")
        n = max_bytes or 65536
        try:
            data = os.read(fd, n)
        except BlockingIOError:
            return await self._wait_and_read(fd, n)
        except OSError as e:
            raise _broken(e)
        await self._after_fast_op()
        return data

    async def receive_reply(self, max_bytes: int | None = None) -> bytes:
        """receive_some() for the answer to what was just sent (a greeting, a command):
        the peer cannot have answered yet, so this waits for readability first instead
        of trying a read that would only fail with EAGAIN."""
        if self.socket.fileno() < 0:
            raise trio.ClosedResourceError("the stream is closed")
        return await self._wait_and_read(self._fd, max_bytes or 65536)

    @staticmethod
    async def _wait_and_read(fd: int, n: int) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                return os.read(fd, n)
            except BlockingIOError:
                continue
            except OSError as e:
                raise _broken(e)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._fd)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self.socket.shutdown(stdlib_socket.SHUT_WR)
        except OSError:
            pass

    async def aclose(self) -> None:
        if self.socket.fileno() >= 0:
            trio.lowlevel.notify_closing(self._fd)   # wake any task waiting on it
        self.socket.close()
        await trio.lowlevel.checkpoint()

    def setsockopt(self, *args: Any) -> None:
        self.socket.setsockopt(*args)


async def receive_reply(stream: trio.abc.ReceiveStream,
                        max_bytes: int = 65536) -> bytes | bytearray:
    """Receive the peer's answer to what was just sent: PlainStream.receive_reply(), or
    receive_some() on any other stream (TLS, memory streams)."""
    if type(stream) is PlainStream:
        return await stream.receive_reply(max_bytes)
    return await stream.receive_some(max_bytes)


def plain_socket_of(stream: Any) -> trio.socket.SocketType | None:
    """The socket under a plaintext stream (None for TLS or memory streams)."""
    if isinstance(stream, (PlainStream, trio.SocketStream)):
        return stream.socket
    return None
