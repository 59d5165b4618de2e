"""Plaintext sessions after login: every one of them relayed by a single task.

Owns: the relay of sessions that are plain TCP on both sides once logged in (the common
case: TLS ends at a load balancer or is not used inside the data centre). Operators hold
tens of thousands of such sessions idle (IMAP IDLE), so an idle session here costs its two
sockets and a few small slotted objects: no task, no coroutine frames, no buffers. The
bytes never enter Python code: what the backend sends (FETCH, the bulk of the traffic)
the kernel moves socket → pipe → client socket with splice(2); what the client sends
(APPEND) goes through a reused buffer, read and written with one system call each. Pipes
and buffers are lent from small pools only while data is in flight.

How: one epoll set of our own (level-triggered) holds both sockets of every session; the
hub task sleeps on that epoll descriptor through trio, and moves whatever is ready. When a
destination cannot take more, reading from its source stops (the pipe keeps the bytes) and
the destination is watched for writability instead: back-pressure without buffering.

A session ends when either side reaches EOF or fails; both sockets are closed at once and
the session's `on_closed(RelayResult)` is called (it logs Dovecot's "Disconnected ..."
line and releases the connection counters). TLS sessions are relayed by io/relay.py.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
from collections.abc import Callable
from typing import Any

import trio

from ..log import log
from .relay import RelayResult

READS_PER_WAKEUP = 8
# A read this short (a command, a reply line) emptied the socket's receive queue: the
# next splice would only say EAGAIN. Level-triggered epoll reports anything that arrives
# after it.
SMALL_READ = 16384

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


# Towards the backend, a copy through a reused buffer instead: Dovecot takes an APPEND
# faster from freshly copied pages than from spliced ones. Measured on the bench (20-30
# interleaved APPENDs of 20 MiB over loopback, each paired with one through haproxy),
# three runs: spliced 0.93, 0.87 and 0.93 of haproxy's speed; copied 0.99, 0.99 and 0.95.
# FETCH stays spliced: there splicing is the faster (2,180 MB/s against 1,760 copied).
# 32 KiB pieces: smaller ones reach the backend sooner, so Dovecot parses the APPEND while
# the rest is still arriving. On a 2-core AMD EPYC (bench/, 20 interleaved rounds of 30
# APPENDs of 20 MiB, ratio to haproxy's in the same round, median) 128 KiB pieces made
# 0.943, 64 KiB 0.957, 32 KiB 1.008 (1.045 in a second run of 12), 16 KiB 1.009 with
# more reads per wake-up; CPU per GB relayed 0.37, 0.43, 0.51 and 0.59 s (haproxy 0.45).
COPY_SIZE = 1 << 15
MAX_POOLED_BUFFERS = 16
_buffers: list[bytearray] = []


def _borrow_buffer() -> bytearray:
    return _buffers.pop() if _buffers else bytearray(COPY_SIZE)


def _return_buffer(buf: bytearray) -> None:
    if len(_buffers) < MAX_POOLED_BUFFERS:
        _buffers.append(buf)


# EPOLLRDHUP with EPOLLIN: a wake-up says when the peer has closed too, so the read that
# finds the end of the session is made at once instead of on the next wake-up (a
# backend's LOGOUT reply and its FIN usually arrive together).
_RDHUP = select.EPOLLRDHUP
_IN, _OUT = select.EPOLLIN | _RDHUP, select.EPOLLOUT
_FAIL = select.EPOLLERR | select.EPOLLHUP
# A closed peer or a reset is a normal end of a session, not an error worth a traceback.
_GONE = {errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTUNREACH}


class _End:
    """One socket of a relayed session. Bytes read here go to `peer`; `pipe` (spliced)
    or `buf` from `start` (copied) holds `pending` bytes read here that `peer` could not
    take yet."""

    __slots__ = ("fd", "peer", "session", "side", "pipe", "buf", "start", "pending", "mask")

    def __init__(self, fd: int, session: "RelayedSession", side: str) -> None:
        self.fd, self.session, self.side = fd, session, side
        self.peer: _End = self
        self.pipe: tuple[int, int] | None = None
        self.buf: bytearray | None = None
        self.start = 0
        self.pending = 0
        self.mask = _IN


class RelayedSession:
    __slots__ = ("client", "server", "result", "on_closed", "info")

    def __init__(self, client_fd: int, server_fd: int,
                 on_closed: Callable[[RelayResult], None], info: object,
                 result: RelayResult) -> None:
        self.client = _End(client_fd, self, "client")
        self.server = _End(server_fd, self, "server")
        self.client.peer, self.server.peer = self.server, self.client
        self.result = result
        self.on_closed = on_closed
        self.info = info          # what kick/list know of the session


def _closed_already(result: RelayResult) -> None:
    pass


# What a closed session's ends point at instead of each other (see SpliceHub._close).
_GONE_SESSION = RelayedSession(-1, -1, _closed_already, None, RelayResult(now=0.0))
_GONE_END = _End(-1, _GONE_SESSION, "closed")


class SpliceHub:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._ends: dict[int, _End] = {}
        self.sessions: set[RelayedSession] = set()

    def __len__(self) -> int:
        return len(self.sessions)

    def add(self, client: Any, server: Any,
            on_closed: Callable[[RelayResult], None], info: object = None) -> RelayedSession:
        """Take over two logged-in plain sockets (they must have no pending reads)."""
        # detach(): from here on the descriptors are ours alone; trio's objects are inert.
        session = RelayedSession(client.socket.detach(), server.socket.detach(), on_closed,
                                 info, RelayResult())
        for end in (session.client, session.server):
            self._ends[end.fd] = end
            self._epoll.register(end.fd, _IN)
        self.sessions.add(session)
        # The client has just been sent its login reply, and a nearby one (webmail, a
        # load generator) has often sent its next command already: move it now instead
        # of after the hub's next trip through the scheduler. Otherwise the read says
        # EAGAIN and epoll reports the command when it comes.
        self._ready(session.client, select.EPOLLIN)
        return session

    async def run(self) -> None:
        """The hub task: one per process, for as long as the daemon runs."""
        epfd = self._epoll.fileno()
        try:
            while True:
                await trio.lowlevel.wait_readable(epfd)
                for fd, events in self._epoll.poll(0, 1024):
                    end = self._ends.get(fd)
                    if end is not None:
                        self._ready(end, events)
        finally:
            self.close_all("Process shutting down")
            self._epoll.close()

    # --- moving bytes ------------------------------------------------------------------

    def _ready(self, end: _End, events: int) -> None:
        try:
            if events & _OUT and end.peer.pending:
                self._drain(end.peer)
            if events & (_IN | _FAIL) and not end.pending:
                self._read(end, events & _RDHUP)
            elif events & _FAIL:
                self._close(end.session, end.side, "")
        except BlockingIOError:
            pass          # a spurious wake-up: level-triggered epoll reports it again
        except OSError as e:
            if e.errno not in _GONE and e.errno != errno.EBADF:
                log.error("relay: %s", e)
            self._close(end.session, end.side, os.strerror(e.errno) if e.errno else str(e))

    def _read(self, src: _End, peer_closed: int = 0) -> None:
        # Only called when nothing is pending: a pipe (from the backend: spliced) or a
        # buffer (from the client: copied) is borrowed for these reads alone. A bulk
        # transfer is moved in up to READS_PER_WAKEUP rounds before going back to epoll,
        # so other sessions still get their turn.
        copy = src.side == "client"
        release = _return_buffer if copy else _return_pipe
        for _ in range(READS_PER_WAKEUP):
            if src.fd < 0 or src.pending:
                return
            holder: Any = _borrow_buffer() if copy else _borrow_pipe()
            try:
                n = (os.readv(src.fd, (holder,)) if copy
                     else os.splice(src.fd, holder[1], PIPE_SIZE, flags=SPLICE_FLAGS))
            except BlockingIOError:
                release(holder)         # still empty: wait for epoll
                return
            except BaseException:
                release(holder)
                raise
            if n == 0:
                release(holder)
                self._close(src.session, src.side, "")
                return
            result = src.session.result
            if copy:
                src.buf, src.start = holder, 0
                result.client_bytes += n
            else:
                src.pipe = holder
                result.server_bytes += n
            result.last_activity = trio.current_time()
            src.pending = n
            self._drain(src)
            if n < SMALL_READ and not peer_closed:
                return    # the socket was drained: skip the read that would say EAGAIN

    def _drain(self, src: _End) -> None:
        """Move `src`'s pending bytes to its peer; watch the peer if it is full."""
        dst = src.peer
        buf = src.buf
        while src.pending:
            try:
                if buf is not None:
                    with memoryview(buf) as view:
                        n = os.write(dst.fd, view[src.start:src.start + src.pending])
                    src.start += n
                else:
                    assert src.pipe is not None
                    n = os.splice(src.pipe[0], dst.fd, src.pending, flags=SPLICE_FLAGS)
                src.pending -= n
            except BlockingIOError:
                break
        if not src.pending:
            if buf is not None:
                _return_buffer(buf)
                src.buf = None
            else:
                assert src.pipe is not None
                _return_pipe(src.pipe)
                src.pipe = None
        self._update(src)
        self._update(dst)

    def _update(self, end: _End) -> None:
        mask = (0 if end.pending else _IN) | (_OUT if end.peer.pending else 0)
        if mask != end.mask and end.fd >= 0:
            self._epoll.modify(end.fd, mask)
            end.mask = mask

    # --- ending sessions ----------------------------------------------------------------

    def _close(self, session: RelayedSession, closed_by: str, error: str) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        for end in (session.client, session.server):
            if end.fd >= 0:
                self._ends.pop(end.fd, None)
                # No EPOLL_CTL_DEL: closing the only descriptor of the socket (detached
                # from trio's objects in add()) removes it from the epoll set.
                os.close(end.fd)
                end.fd = -1
            if end.pipe is not None:   # bytes still in flight: the session is over anyway
                os.close(end.pipe[0])
                os.close(end.pipe[1])
                end.pipe = None
            if end.buf is not None:    # (a buffer's stale bytes are never sent again)
                _return_buffer(end.buf)
                end.buf = None
        session.result.closed_by = closed_by
        session.result.error = error
        on_closed, session.on_closed = session.on_closed, _closed_already
        # The ends point at their session and at each other: unlink them, so that all of
        # it (and the closure with the log line's text) goes as the last reference does,
        # not at the cyclic collector's next pass.
        client, server = session.client, session.server
        client.peer, server.peer = _GONE_END, _GONE_END
        client.session = server.session = _GONE_SESSION
        try:
            on_closed(session.result)
        except Exception:
            log.exception("relay: error while closing a session")

    def kick(self, session: RelayedSession, reason: str) -> None:
        """End one session now (admin kick): both sockets closed, nothing injected."""
        session.result.error = reason
        self._close(session, "proxy", reason)

    def close_all(self, reason: str) -> None:
        for session in list(self.sessions):
            self._close(session, "proxy", reason)
