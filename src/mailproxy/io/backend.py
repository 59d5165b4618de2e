"""Connect to a backend and log in there as the client (the proxy in the client role).

Owns: the TCP connect (source IP, several resolved addresses in turn), TLS to the backend
(ssl=yes|any-cert from the start, starttls=... when the protocol object asks), driving a
protocol's client-role connection until BackendLoggedIn / BackendLoginFailed, and
Dovecot's reconnect rules (wire reference §0.2/§0.3):

- each attempt (connect + TLS + banner + login) is bounded by proxy_timeout, re-armed at
  every connect;
- CONNECT, REMOTE, PROTOCOL and AUTH_TEMPFAIL failures are retried on the same backend,
  at most max_reconnects more times, 1 s apart, and not when less than 1.1 s of the
  timeout (measured from the first connect) would remain;
- AUTH, INTERNAL and *_CONFIG failures are final.

Where we do better than Dovecot: a host name resolving to several addresses has each tried
in turn when a connect fails (Dovecot only ever uses the first).

Also here: `EarlyReplies`, which spares a login the wake-up for a reply it does not need
to act on (the backend's answer to the pipelined ID, which comes before its answer to the
login): see its docstring.
"""

from __future__ import annotations


import errno
import os
import socket
import ssl
import sys
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio

from ..protocols import _events as ev
from .stream import PlainStream, receive_reply

RECONNECT_PAUSE = 1.0        # Dovecot's PROXY_CONNECT_RETRY_MSECS
RECONNECT_MIN_REMAINING = 1.1

# Failure kinds that Dovecot retries (login-proxy.c proxy_try_reconnect callers).
RETRIED = {"CONNECT", "REMOTE", "PROTOCOL", "AUTH_TEMPFAIL"}

# Linux's IP_BIND_ADDRESS_NO_PORT: bind() to a source IP takes no port yet, and connect()
# picks one for the full 4-tuple. Without it every bind(ip, 0) reserves a port for all
# destinations, and one source IP runs out after about 28,000 backend connections in all
# instead of that many per backend (nginx's proxy_bind sets it for the same reason).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", None)

# Linux wakes epoll waiters when SO_RCVLOWAT is lowered onto bytes already queued (since
# 4.19); EarlyReplies' sweep relies on that, so elsewhere it stays off.
_RCVLOWAT = getattr(socket, "SO_RCVLOWAT", None) if sys.platform == "linux" else None
EARLY_SWEEP = 0.25         # seconds between EarlyReplies sweeps
MAX_EARLY_BYTES = 8192     # a longer early reply is not worth remembering
MAX_EARLY_KEYS = 4096      # backends x login states remembered


class EarlyReplies:
    """What each backend sends, right after a login step went out, before its answer to
    that step: learned from the logins before, so the next wait skips it.

    A Dovecot backend answers the proxy's pipelined `I ID ...` + `L LOGIN ...` in two
    writes: the ID reply at once, the login reply once its auth process has answered. A
    login woken for the first only parses it and waits again: at one client, about 7%
    of its logins/s on the bench machine. When a read right after a write moved the login
    on by nothing (no event, nothing to send), its length is remembered for that backend
    address and login state (`id+login/banner`); the next wait in that state sets the
    socket's SO_RCVLOWAT one byte above it, so the kernel wakes the proxy only once the
    login's own answer has begun (or at EOF or an error, which always wake). The mark is
    put back to 1 after the wait. Nothing on the wire changes.

    A backend whose early reply became shorter (its ID answer reconfigured) could leave a
    raised mark above everything it will send: every EARLY_SWEEP seconds the sweep lowers
    the mark of a socket that has waited through a whole sweep interval, which wakes its
    task if bytes are there, and forgets what was learned for it. So the worst case is a
    login delayed by at most two sweep intervals once, after such a change. Without the
    sweep task running (`sweep()`), no mark is ever raised.
    """

    __slots__ = ("learned", "waiting", "running", "sweeps")

    def __init__(self) -> None:
        self.learned: dict[tuple[str, int, str], int] = {}
        # socket descriptor -> (socket, key, sweep count when the wait began)
        self.waiting: dict[int, tuple[Any, tuple[str, int, str], int]] = {}
        self.running = False
        self.sweeps = 0

    def raise_mark(self, sock: Any, key: tuple[str, int, str]) -> bool:
        """Before a wait: skip the early reply learned for `key`. True if raised."""
        n = self.learned.get(key)
        if n is None or not self.running or _RCVLOWAT is None:
            return False
        sock.setsockopt(socket.SOL_SOCKET, _RCVLOWAT, n + 1)
        self.waiting[sock.fileno()] = (sock, key, self.sweeps)
        return True

    def lower_mark(self, sock: Any) -> None:
        """After the wait (however it ended): the mark back to 1 unless the sweep did it."""
        if self.waiting.pop(sock.fileno(), None) is not None:
            _wake_on_any_byte(sock)

    def learn(self, key: tuple[str, int, str], nbytes: int) -> None:
        """A read of `nbytes` right after a write answered nothing in state `key`."""
        if nbytes > MAX_EARLY_BYTES:
            return
        if len(self.learned) >= MAX_EARLY_KEYS and key not in self.learned:
            self.learned.clear()
        self.learned[key] = nbytes

    async def sweep(self) -> None:
        """The daemon's task: raised marks are used only while it runs."""
        self.running = True
        try:
            while True:
                await trio.sleep(EARLY_SWEEP)
                self.sweeps += 1
                for fd, (sock, key, since) in list(self.waiting.items()):
                    if self.sweeps - since >= 2:     # a whole interval without waking
                        del self.waiting[fd]
                        self.learned.pop(key, None)
                        _wake_on_any_byte(sock)
        finally:
            self.running = False


def _wake_on_any_byte(sock: Any) -> None:
    """SO_RCVLOWAT back to 1 (which wakes a waiter if bytes are queued)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _RCVLOWAT, 1)
    except OSError:
        pass


@dataclass(slots=True)
class BackendTarget:
    host: str                       # as the passdb gave it (for logs and TLS names)
    addresses: list[str]            # resolved IPs, tried in turn
    port: int
    ssl_mode: str = ""              # "" | "yes" | "any-cert": implicit TLS
    starttls_mode: str = ""         # "" | "yes" | "any-cert"
    source_ip: str | None = None
    timeout: float = 30.0


@dataclass(slots=True)
class BackendLoginOK:
    stream: trio.abc.Stream
    event: Any                      # the protocol's BackendLoggedIn
    trailing: bytes                 # backend bytes after its success reply
    ip: str
    port: int
    reconnects: int
    relayed: list[bytes] = field(default_factory=list)


class BackendLoginError(Exception):
    """The backend login failed for good; `kind` is Dovecot's failure type."""

    def __init__(self, kind: str, reason: str, event: Any = None,
                 relayed: list[bytes] | None = None) -> None:
        super().__init__(reason)
        self.kind, self.reason, self.event = kind, reason, event
        self.relayed = relayed or []


async def connect_tcp(ip: str, port: int, source_ip: str | None) -> PlainStream:
    """Start a non-blocking connect and return at once: IMAP/POP3/SMTP backends speak
    first, so waiting for the banner also waits for the handshake, and a login saves a
    wake-up. A connect that fails shows up on the first read or write, where
    `connect_failure()` turns it back into Dovecot's `connect(ip, port) failed: ...`."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    # Non-blocking from birth (no extra ioctl); Python sees SOCK_NONBLOCK and agrees.
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        if source_ip:
            if IP_BIND_ADDRESS_NO_PORT is not None:    # Linux; elsewhere bind() keeps a port
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source_ip, 0))
        err = sock.connect_ex((ip, port))
        await trio.lowlevel.checkpoint_if_cancelled()
        if err and err != errno.EINPROGRESS:
            raise OSError(err, os.strerror(err))
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    stream = PlainStream(sock)
    stream.connecting = err == errno.EINPROGRESS
    return stream


async def wait_connected(stream: Any) -> None:
    """Finish a pending connect (before TLS, where we must write first)."""
    if getattr(stream, "connecting", False):
        await trio.lowlevel.wait_writable(stream.socket)
        stream.connecting = False
        err = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))


def connect_failure(stream: Any, e: BaseException, ip: str, port: int) -> str | None:
    """The connect() error behind a failed first read or write, if that is what it was."""
    if not getattr(stream, "connecting", False):
        return None
    cause = e.__cause__ if isinstance(e.__cause__, OSError) else None
    if cause is None or not cause.errno:
        return None
    return f"connect({ip}, {port}) failed: {os.strerror(cause.errno)}"


Connector = Callable[[str, int, "str | None"], Awaitable[trio.abc.Stream]]


async def _attempt(target: BackendTarget, ip: str, make_conn: Callable[[], Any],
                   contexts: Any, relayed: list[bytes], connect: Connector,
                   current: list[Any], early: EarlyReplies | None) -> BackendLoginOK:
    """One connect + login. Raises BackendLoginError."""
    try:
        stream: trio.abc.Stream = await connect(ip, target.port, target.source_ip)
    except OSError as e:
        raise BackendLoginError(
            "CONNECT", f"connect({ip}, {target.port}) failed: "
                       f"{os.strerror(e.errno) if e.errno else e}") from None
    plain = stream
    # the socket under a plaintext stream, for EarlyReplies' marks
    plain_sock = plain.socket if isinstance(plain, PlainStream) else None
    try:
        if target.ssl_mode:
            try:
                await wait_connected(stream)
            except OSError as e:
                raise BackendLoginError(
                    "CONNECT", f"connect({ip}, {target.port}) failed: "
                               f"{os.strerror(e.errno) if e.errno else e}") from None
            stream = trio.SSLStream(stream, contexts.for_mode(target.ssl_mode),
                                    server_hostname=target.host)
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError) as e:
                raise _handshake_error(e, "CONNECT", "SSL handshake failed") from None
        conn = make_conn()
        current.append(conn)   # so a timeout can name the state it stopped in
        # EarlyReplies: the key of the wait that followed a write, and what it read
        early_key: tuple[str, int, str] | None = None
        early_read = 0
        while True:
            event = conn.next_event()
            # Whatever the step queued (ID, LOGIN, ...) goes out before we wait again.
            out = conn.data_to_send()
            if early_key is not None:
                if not out and event is ev.NEED_DATA and early is not None:
                    early.learn(early_key, early_read)    # that read answered nothing
                early_key = None
            if out:
                await stream.send_all(out)
            if event is ev.NEED_DATA:
                raised = False
                if out and early is not None and stream is plain and plain_sock is not None:
                    early_key = (ip, target.port, str(conn.state_description))
                    raised = early.raise_mark(plain_sock, early_key)
                try:
                    # Everything a backend sends before login answers us.
                    data = await receive_reply(stream)
                except trio.BrokenResourceError as e:
                    reason = connect_failure(plain, e, ip, target.port)
                    raise BackendLoginError(
                        "CONNECT", reason or f"Disconnected by server: {_ssl_reason(e)}"
                    ) from None
                finally:
                    if raised:
                        assert early is not None and plain_sock is not None
                        early.lower_mark(plain_sock)
                early_read = len(data)
                if isinstance(plain, PlainStream) and plain.connecting:
                    plain.connecting = False    # data came: the connect had succeeded
                if not data:
                    raise BackendLoginError(
                        "CONNECT", f"Disconnected by server "
                                   f"(state={_state(conn)})")
                conn.receive_data(data)
            elif isinstance(event, ev.StartTLSRequired):
                mode = target.starttls_mode or "yes"
                stream = trio.SSLStream(stream, contexts.for_mode(mode),
                                        server_hostname=target.host)
                try:
                    await stream.do_handshake()
                except (trio.BrokenResourceError, ssl.SSLError) as e:
                    raise _handshake_error(e, "REMOTE", "STARTTLS failed") from None
                conn.tls_started()
                out = conn.data_to_send()
                if out:
                    await stream.send_all(out)
            elif isinstance(event, ev.UntaggedRelay):
                relayed.append(event.line)
            elif isinstance(event, ev.BackendLoggedIn):
                return BackendLoginOK(stream, event, conn.trailing_data(), ip, target.port,
                                      0, relayed)
            elif isinstance(event, ev.BackendLoginFailed):
                raise BackendLoginError(event.kind.name, event.reason, event)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


def _state(conn: Any) -> str:
    return str(conn.state_description)


def _handshake_error(e: BaseException, kind: str, what: str) -> BackendLoginError:
    """A certificate that does not verify (chain or name) is final: retrying the same
    backend cannot fix it. Other handshake failures are retried like a failed connect."""
    cause = e.__cause__ or e
    if isinstance(cause, ssl.SSLCertVerificationError):
        return BackendLoginError("INTERNAL", f"{what}: certificate verification failed: "
                                             f"{cause.verify_message or _ssl_reason(e)}")
    return BackendLoginError(kind, f"{what}: {_ssl_reason(e)}")


def _ssl_reason(e: BaseException) -> str:
    cause = e.__cause__ or e
    return str(getattr(cause, "reason", None) or cause or type(cause).__name__)


async def login(target: BackendTarget, make_conn: Callable[[], Any], contexts: Any, *,
                max_reconnects: int, connect: Connector = connect_tcp,
                early: EarlyReplies | None = None) -> BackendLoginOK:
    """Log in to the backend with Dovecot's retry rules; returns the logged-in stream.
    `early`: the daemon's EarlyReplies (see there), or None to wait for every reply."""
    started = trio.current_time()
    reconnects = 0
    addr_index = 0
    relayed: list[bytes] = []
    while True:
        attempt_started = trio.current_time()
        current: list[Any] = []
        error: BackendLoginError | None = None
        # CancelScope(deadline=...) is move_on_after() without its context-manager wrapper
        with trio.CancelScope(deadline=trio.current_time() + target.timeout) as scope:
            # A connect that fails outright moves on to the next resolved address at once.
            for _ in range(len(target.addresses)):
                ip = target.addresses[addr_index % len(target.addresses)]
                try:
                    ok = await _attempt(target, ip, make_conn, contexts, relayed, connect,
                                        current, early)
                    ok.reconnects = reconnects
                    return ok
                except BackendLoginError as e:
                    error = e
                    if e.kind == "CONNECT" and e.reason.startswith("connect("):
                        addr_index += 1
                        continue
                    break
        if scope.cancelled_caught:
            secs = int(trio.current_time() - attempt_started)
            state = _state(current[-1]) if current else "/none"
            error = BackendLoginError(
                "CONNECT", f"Login timed out in state={state} (after {secs} secs"
                           + (f", {reconnects} reconnects" if reconnects else "") + ")")
        assert error is not None
        error.relayed = relayed
        if error.kind not in RETRIED or reconnects >= max_reconnects:
            raise error
        elapsed = trio.current_time() - started
        if elapsed + RECONNECT_MIN_REMAINING > target.timeout:
            raise error
        reconnects += 1
        await trio.sleep(RECONNECT_PAUSE)
        # Dovecot retries the same ip:port; with several addresses we go on to the next.
        addr_index += 1



