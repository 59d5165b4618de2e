"""The loop floor: bench/floor.py's login proxy without Trio, driven by one epoll loop.

Not a product and not a target to beat: a second yardstick beside bench/floor.py. It
does exactly the floor's I/O (accept, greet, read the login, connect, log in to the
backend with the client's credentials, answer, relay until either side closes) with the
same system calls, but each socket has a callback that one `select.epoll` loop per
process calls, as C proxies are built: no tasks, no scheduler, no cancel scopes. The
difference between the two floors is what Trio's task-per-session machinery costs a
login on this machine; the difference between this one and nginx or Dovecot is what
CPython itself costs.

    python3 bench/floor_loop.py --imap HOST:PORT --pop3 HOST:PORT \
        --backend-imap HOST:PORT --backend-pop3 HOST:PORT [--workers N]
"""

from __future__ import annotations

import select
import socket
from typing import Callable

from floor import addr, connect, listen, run_forked

IN, OUT = select.EPOLLIN, select.EPOLLOUT


class Loop:
    """One epoll, one callback per registered descriptor."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.callbacks: dict[int, Callable[[int], None]] = {}

    def watch(self, sock: socket.socket, events: int, callback: Callable[[int], None]) -> None:
        fd = sock.fileno()
        if fd in self.callbacks:
            self.epoll.modify(fd, events)
        else:
            self.epoll.register(fd, events)
        self.callbacks[fd] = callback

    def close(self, *socks: socket.socket) -> None:
        for s in socks:
            fd = s.fileno()
            if fd >= 0:
                if self.callbacks.pop(fd, None) is not None:
                    self.epoll.unregister(fd)
                s.close()

    def run(self) -> None:
        callbacks = self.callbacks
        while True:
            for fd, events in self.epoll.poll():
                cb = callbacks.get(fd)
                if cb is not None:
                    cb(events)


class Relay:
    """Both directions of a logged-in session. Bytes a full socket buffer refused wait
    for it, and its peer is not read meanwhile (so nothing piles up in here)."""

    def __init__(self, loop: Loop, c: socket.socket, b: socket.socket,
                 on_close: Callable[[], None] | None = None) -> None:
        self.loop = loop
        self.on_close = on_close            # bench/floor_library.py logs the session's end
        self.peer = {c: b, b: c}
        self.out = {c: b"", b: b""}         # unsent bytes, by destination
        for s in (c, b):
            loop.watch(s, IN, lambda events, s=s: self.ready(s, events))

    def ready(self, s: socket.socket, events: int) -> None:
        peer = self.peer[s]
        try:
            if events & OUT:
                self.out[s] = self._send(s, self.out[s])
            if events & ~OUT:
                data = s.recv(65536)
                if not data:
                    self.close(s, peer)
                    return
                self.out[peer] = self._send(peer, data)
        except BlockingIOError:
            pass
        except OSError:
            self.close(s, peer)
            return
        for x in (s, peer):   # read x unless its peer is full; write x while bytes wait
            events = (0 if self.out[self.peer[x]] else IN) | (OUT if self.out[x] else 0)
            self.loop.watch(x, events, lambda events, x=x: self.ready(x, events))

    def close(self, s: socket.socket, peer: socket.socket) -> None:
        self.loop.close(s, peer)
        if self.on_close is not None:
            self.on_close()

    @staticmethod
    def _send(dst: socket.socket, data: bytes) -> bytes:
        try:
            return data[dst.send(data):]
        except BlockingIOError:
            return data


def receive(sock: socket.socket) -> bytes | None:
    """What a readable socket holds: b"" at its end (or on an error), None if nothing yet."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class Lines:
    """Reads a socket into complete CRLF lines for a callback (login phase only)."""

    def __init__(self, loop: Loop, sock: socket.socket, on_line: Callable[[bytes], bool],
                 on_end: Callable[[], None]) -> None:
        self.buf = bytearray()
        self.loop, self.sock, self.on_line, self.on_end = loop, sock, on_line, on_end
        loop.watch(sock, IN, self.readable)

    def readable(self, events: int) -> None:
        data = receive(self.sock)
        if data is None:
            return
        if not data:
            self.on_end()
            return
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self.buf[:end + 2])
            del self.buf[:end + 2]
            if not self.on_line(line):   # False: this reader is done (handed on)
                return


class Session:
    """One client: the login dialogue as a small state machine, then a Relay."""

    def __init__(self, loop: Loop, c: socket.socket, backend: tuple[str, int]) -> None:
        self.loop, self.c, self.backend = loop, c, backend
        self.b: socket.socket | None = None

    def end(self) -> None:
        self.loop.close(*(s for s in (self.c, self.b) if s is not None))

    def to_backend(self, on_line: Callable[[bytes], bool]) -> None:
        self.b = connect(self.backend)
        self.loop.watch(self.c, 0, lambda events: None)   # the client waits for our answer
        Lines(self.loop, self.b, on_line, self.end)

    def answer(self, reply: bytes, ok: bool) -> None:
        self.c.send(reply)
        if ok and self.b is not None:
            Relay(self.loop, self.c, self.b)
        else:
            self.end()


class IMAPSession(Session):
    GREETING = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] floor ready.\r\n"

    def start(self) -> None:
        self.c.send(self.GREETING)
        Lines(self.loop, self.c, self.client_line, self.end)

    def client_line(self, line: bytes) -> bool:
        self.tag, _cmd, self.args = line.rstrip(b"\r\n").split(b" ", 2)
        self.to_backend(self.backend_line)
        return False

    def backend_line(self, line: bytes) -> bool:
        if line.startswith(b"* OK"):
            self.b.send(b"L LOGIN " + self.args + b"\r\n")
            return True
        if line.startswith(b"L "):
            self.answer(self.tag + line[1:], line.startswith(b"L OK"))
            return False
        return True


class POP3Session(Session):
    GREETING = b"+OK floor ready.\r\n"

    def start(self) -> None:
        self.c.send(self.GREETING)
        self.step = 0
        Lines(self.loop, self.c, self.client_line, self.end)

    def client_line(self, line: bytes) -> bool:
        if line.startswith(b"USER "):
            self.user = line
            self.c.send(b"+OK\r\n")
            return True
        self.password = line
        self.to_backend(self.backend_line)
        return False

    def backend_line(self, line: bytes) -> bool:
        self.step += 1
        if self.step == 1:
            self.b.send(self.user)
        elif self.step == 2:
            self.b.send(self.password)
        else:
            self.answer(line, line.startswith(b"+OK"))
            return False
        return True


def serve(loop: Loop, listener: socket.socket, session: type[Session],
          backend: tuple[str, int]) -> None:
    def accept(events: int) -> None:
        for _ in range(16):   # a batch, as the Trio floor's accept loop
            try:
                c, _ = listener.accept()
            except BlockingIOError:
                return
            c.setblocking(False)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session(loop, c, backend).start()
    loop.watch(listener, IN, accept)


def worker(a, cpu: int | None = None) -> None:
    loop = Loop()
    serve(loop, listen(addr(a.imap), cpu), IMAPSession, addr(a.backend_imap))
    serve(loop, listen(addr(a.pop3), cpu), POP3Session, addr(a.backend_pop3))
    try:
        loop.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    run_forked(__doc__, worker)
