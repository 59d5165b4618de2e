"""The floor of a Trio login proxy: the least a Python/Trio IMAP or POP3 login proxy can do.

Not a product and not a target to beat: a yardstick for reading trio-mailproxy's figures.
It does the same I/O a login proxy must do, in the same order, and nothing else: accept,
greet, read the login, connect to the one backend, read its greeting, log in there with
the client's credentials, answer the client, then relay both ways with two tasks until
either side closes. No passdb, no ID/forwarding, no limits, no timeouts, no logging, no
error handling beyond closing. Whatever trio-mailproxy costs above this, per login, is
the price of its features and its structure; whatever this costs is the price of Python
and Trio themselves on this machine.

    python3 bench/floor.py --imap HOST:PORT --pop3 HOST:PORT \
        --backend-imap HOST:PORT --backend-pop3 HOST:PORT [--workers N]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket

import trio


async def read_until(fd: int, buf: bytearray, needle: bytes) -> bytes:
    """Bytes up to and including the first line containing *needle* at its start."""
    while True:
        start = 0
        while True:
            end = buf.find(b"\r\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end + 2])
            if line.startswith(needle):
                del buf[:end + 2]
                return line
            start = end + 2
        del buf[:start]
        await trio.lowlevel.wait_readable(fd)
        data = os.read(fd, 65536)
        if not data:
            raise EOFError
        buf += data


async def pump(src: int, dst: int, done: trio.CancelScope) -> None:
    try:
        while True:
            await trio.lowlevel.wait_readable(src)
            data = os.read(src, 65536)
            if not data:
                break
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(dst, view):]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
    except OSError:
        pass
    done.cancel()


async def relay(c: int, b: int) -> None:
    async with trio.open_nursery() as n:
        n.start_soon(pump, c, b, n.cancel_scope)
        n.start_soon(pump, b, c, n.cancel_scope)


def connect(addr: tuple[str, int]) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.connect_ex(addr)
    return s


async def imap_login(cfd: int, cbuf: bytearray, bbuf: bytearray,
                     backend: tuple[str, int], held: list) -> tuple[socket.socket, bytes]:
    os.write(cfd, b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] floor ready.\r\n")
    line = await read_until(cfd, cbuf, b"")
    tag, _cmd, rest = line.rstrip(b"\r\n").split(b" ", 2)
    b = connect(backend)
    held.append(b)
    await read_until(b.fileno(), bbuf, b"* OK")
    os.write(b.fileno(), b"L LOGIN " + rest + b"\r\n")
    reply = await read_until(b.fileno(), bbuf, b"L ")
    return b, tag + reply[1:]


async def pop3_login(cfd: int, cbuf: bytearray, bbuf: bytearray,
                     backend: tuple[str, int], held: list) -> tuple[socket.socket, bytes]:
    os.write(cfd, b"+OK floor ready.\r\n")
    user = await read_until(cfd, cbuf, b"USER ")
    os.write(cfd, b"+OK\r\n")
    password = await read_until(cfd, cbuf, b"PASS ")
    b = connect(backend)
    held.append(b)
    await read_until(b.fileno(), bbuf, b"+OK")
    os.write(b.fileno(), user)
    await read_until(b.fileno(), bbuf, b"")
    os.write(b.fileno(), password)
    reply = await read_until(b.fileno(), bbuf, b"")
    return b, reply


async def session(c: socket.socket, login, backend: tuple[str, int]) -> None:
    """One client: *login* does the protocol's dialogue and returns the backend socket
    and the reply for the client; on success both are relayed until either side ends."""
    held: list[socket.socket] = [c]
    try:
        b, reply = await login(c.fileno(), bytearray(), bytearray(), backend, held)
        os.write(c.fileno(), reply)
        if reply.startswith(b"+OK") or reply.split(b" ", 2)[1:2] == [b"OK"]:
            await relay(c.fileno(), b.fileno())
    except (EOFError, OSError, ValueError):
        pass
    finally:
        for s in held:
            s.close()


async def serve(listener: socket.socket, login, backend: tuple[str, int]) -> None:
    async with trio.open_nursery() as n:
        while True:
            try:
                c, _ = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            c.setblocking(False)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            n.start_soon(session, c, login, backend)


def listen(addr: tuple[str, int], cpu: int | None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(addr)
    s.listen(4096)
    if cpu is not None:   # as trio-mailproxy's workers: prefer connections arriving on `cpu`
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_INCOMING_CPU", 49), cpu)
    s.setblocking(False)
    return s


def addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def worker(a: argparse.Namespace, cpu: int | None = None) -> None:
    imap, pop3 = listen(addr(a.imap), cpu), listen(addr(a.pop3), cpu)

    async def main() -> None:
        async with trio.open_nursery() as n:
            n.start_soon(serve, imap, imap_login, addr(a.backend_imap))
            n.start_soon(serve, pop3, pop3_login, addr(a.backend_pop3))

    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass


def run_forked(doc: str, worker) -> None:
    """The floors' command line: parse it, then run *worker* in this process, or in
    --workers forked processes (worker i prefers connections arriving on CPU i)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name in ("--imap", "--pop3", "--backend-imap", "--backend-pop3"):
        p.add_argument(name, required=True)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    fork_workers(a.workers, lambda cpu: worker(a, cpu))


def fork_workers(workers: int, worker) -> None:
    """Run ``worker(cpu)`` in this process (cpu None), or in ``workers`` forked processes
    (worker i prefers connections arriving on CPU i) until they all end; SIGTERM to this
    process is passed on to them."""
    if workers <= 1:
        worker(None)
        return
    children = []
    cpus = sorted(os.sched_getaffinity(0))
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            worker(cpus[index % len(cpus)])
            os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(c, signal.SIGTERM) for c in children])
    for pid in children:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue


if __name__ == "__main__":
    run_forked(__doc__, worker)
