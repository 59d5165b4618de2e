"""The daemon: listeners, shared context, signals, reload and shutdown.

Owns: ProxyContext (what every session shares and what SIGHUP replaces), the accept loops
with the total and per-IP connection caps, and the process lifetime (SIGTERM/SIGINT drain
for shutdown_grace then exit 0; SIGHUP reload without dropping sessions).
"""

from __future__ import annotations

import errno
import gc
import ipaddress
import itertools
import resource
import signal
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from ..config import Config, ConfigError, ConfigErrors, Listener, load_config
from .. import log as logmod
from ..log import log
from ..passdb.from_config import build_chain_from_config
from .backend import EarlyReplies
from .session import ClientSession, SessionInfo, opening_greeting
from .splice_hub import SpliceHub
from .steering import LoadTable, Steering
from .stream import PlainStream
from .tls import BackendContexts, server_context

ACCEPT_BACKOFF = 0.1   # trio's serve_listeners: on EMFILE/ENFILE sleep 100 ms and go on
SLEEP_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


def _can_bind(ip: str) -> bool:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def resolve_source_ips(entries: tuple[str, ...]) -> list[str]:
    """login_source_ips: `?name` = only the resolved addresses that exist on this host."""
    out: list[str] = []
    for entry in entries:
        if entry.startswith("?"):
            try:
                infos = socket.getaddrinfo(entry[1:], None, type=socket.SOCK_STREAM)
            except OSError:
                continue
            for info in infos:
                ip = info[4][0]
                if ip not in out and _can_bind(ip):
                    out.append(ip)
        else:
            out.append(entry)
    return out


class Admission:
    """What the accept loop settled for a connection before its session task starts."""

    __slots__ = ("local", "release", "greeted")

    def __init__(self, local: Any, release: Callable[[], None], greeted: int) -> None:
        self.local = local          # the address the client reached
        self.release = release      # gives back the connection's place under the caps
        self.greeted = greeted      # bytes of the greeting already sent


@dataclass
class ProxyContext:
    """Everything sessions share. SIGHUP builds a new one; running sessions keep theirs."""

    config: Config
    chain: Any
    server_tls: ssl.SSLContext | None
    backend_tls: BackendContexts
    hostname: str
    source_ips: list[str]
    sessions: set[SessionInfo] = field(default_factory=set)
    hub: SpliceHub | None = None
    # what backends answer early (io/backend.py), learned across logins and reloads
    early_replies: EarlyReplies | None = None
    # opening_greeting()'s bytes by (listener id, secured): the context's listeners
    # live as long as it does
    greetings: dict[tuple[int, bool], bytes] = field(default_factory=dict)
    _source_cycle: Any = None

    def __post_init__(self) -> None:
        self._source_cycle = itertools.cycle(self.source_ips) if self.source_ips else None
        self._self_ips = {str(ipaddress.ip_address(ip)) for ip in self.config.proxy_self}
        for li in self.config.listeners:
            if li.bind.host not in ("0.0.0.0", "::", ""):
                self._self_ips.add(li.bind.host)

    def next_source_ip(self) -> str | None:
        return next(self._source_cycle) if self._source_cycle else None

    def is_self(self, ip: str, local_ip: str) -> bool:
        """auth_proxy_self: the address the client reached, or a listener/proxy_self IP."""
        return ip == local_ip or ip in self._self_ips

    async def resolve(self, host: str, hostip: str | None) -> list[str]:
        if hostip:
            return [hostip]
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        infos = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        out: list[str] = []
        for info in infos:
            ip = info[4][0]
            if ip not in out:
                out.append(ip)
        if not out:
            raise OSError(f"no addresses for {host}")
        return out

    async def aclose(self) -> None:
        await self.chain.aclose()


async def build_context(config: Config) -> ProxyContext:
    chain = build_chain_from_config(config)
    server_tls = None
    if config.tls is not None and config.tls.cert_file and config.tls.key_file:
        server_tls = server_context(config.tls)
    backend_tls = BackendContexts(config.tls)
    hostname = config.hostname or await trio.to_thread.run_sync(socket.getfqdn)
    source_ips = await trio.to_thread.run_sync(resolve_source_ips, config.source_ips)
    return ProxyContext(config, chain, server_tls, backend_tls, hostname, source_ips)


def raise_nofile_limit() -> int:
    """Raise the soft descriptor limit to the hard one (nginx's worker_rlimit_nofile):
    every proxied session holds two sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


LISTEN_BACKLOG = 4096


ACCEPT_BATCH = 16      # connections accepted per wake-up before yielding to sessions

# Workers: each one's listening sockets prefer the connections whose packets arrive on "its"
# CPU (SO_INCOMING_CPU, honoured by SO_REUSEPORT's choice since Linux 6.1). With a
# multi-queue NIC that spreads connections as evenly as the hash would, and keeps each on
# one CPU; under light load it sends a client's successive connections to the same worker,
# whose caches are still warm, instead of alternating between workers. A worker that
# falls behind (a full accept batch: everything arriving on its CPU, e.g. a single-queue
# NIC) drops the preference for PREFERENCE_PAUSE, so the kernel spreads by hash again.
SO_INCOMING_CPU = getattr(socket, "SO_INCOMING_CPU", None)
PREFERENCE_PAUSE = 1.0


def prefer_cpu(sock: socket.socket, cpu: int) -> None:
    """Set (cpu >= 0) or clear (-1) a listening socket's CPU preference."""
    if SO_INCOMING_CPU is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, cpu)
        except OSError:
            pass    # an old kernel: the plain SO_REUSEPORT hash decides, as before


def bind_error(li: Listener, e: OSError) -> ConfigError:
    """A listener address that cannot be bound is an operator mistake: Dovecot's words
    (`bind(IP, PORT) failed: ...`) on one line naming the [[listener]]."""
    file, _, line = li.source.rpartition(":")
    host = li.bind.host or "*"
    return ConfigError(file or "<config>", int(line) if line.isdigit() else 0,
                       "listener.bind", f"bind({host}, {li.bind.port}) failed: "
                       f"{e.strerror or e}")


def bind_sockets(li: Listener, infos: list[Any], *, reuse_port: bool,
                 listen: bool = True) -> list[socket.socket]:
    """Bind and listen on every address of one listener (non-blocking sockets). With
    several workers every process binds its own socket with SO_REUSEPORT and the kernel
    spreads new connections across them. Raises ConfigError (see bind_error)."""
    out: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in infos:
            sock = socket.socket(family, type_, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)          # a numeric address: does not block
            except OSError as e:
                raise bind_error(li, e) from None
            if not listen:
                continue
            # Accepted sockets inherit TCP_NODELAY from the listener (Linux): one
            # setsockopt per listener instead of one per connection.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


def _addresses(li: Listener, getaddrinfo: Any) -> Any:
    return getaddrinfo(li.bind.host or None, li.bind.port, type=socket.SOCK_STREAM,
                       flags=socket.AI_PASSIVE)


async def open_listeners(li: Listener, *, reuse_port: bool) -> list[socket.socket]:
    try:
        infos = await _addresses(li, trio.socket.getaddrinfo)
    except OSError as e:
        raise bind_error(li, e) from None
    return bind_sockets(li, infos, reuse_port=reuse_port)


def check_listeners(config: Config) -> None:
    """Bind every listener once and let go (the parent, before forking workers): a port
    that is taken is one line on stderr at start, not workers failing one after another.
    Bound only, never listening: no connection can land on these sockets."""
    for li in config.listeners:
        try:
            infos = _addresses(li, socket.getaddrinfo)
        except OSError as e:
            raise bind_error(li, e) from None
        for sock in bind_sockets(li, infos, reuse_port=config.workers > 1, listen=False):
            sock.close()


class Daemon:
    def __init__(self, config_path: str, *, name: str = "master",
                 reuse_port: bool = False, cpu: int | None = None,
                 load_table: LoadTable | None = None, index: int = 0) -> None:
        self.config_path = config_path
        self.name = name
        self.reuse_port = reuse_port
        self.cpu = cpu          # a worker's CPU: see SO_INCOMING_CPU above
        self.ctx: ProxyContext | None = None
        self.per_ip: dict[str, int] = {}
        self.total = 0
        self.listeners: dict[tuple[str, int, str, str, bool], tuple[Any, trio.CancelScope]] = {}
        self.sessions_nursery: trio.Nursery | None = None
        self.logging_in = 0     # session tasks still running (not yet handed to the hub)
        self.ready = trio.Event()
        self.hub = SpliceHub()
        self.early_replies = EarlyReplies()
        self.load_table = load_table
        self.index = index
        self.steering: Steering | None = None

    async def run(self, config: Config) -> int:
        limit = raise_nofile_limit()
        if self.load_table is not None:
            self.steering = Steering(self.load_table, self.index, limit)
        log.info("master: trio-mailproxy starting; open files limit %d "
                 "(about %d proxied sessions)", limit, max(0, (limit - 64) // 2))
        self.ctx = await build_context(config)
        self.ctx.hub = self.hub
        self.ctx.early_replies = self.early_replies
        # Bound before any nursery exists: an address that cannot be bound ends the run
        # with its ConfigError (one line from the CLI), not a traceback from a task.
        bound = await self.bind_listeners(config, strict=True)
        # Signals are caught before the first accept, so a SIGTERM right after start-up
        # still drains cleanly instead of killing the process.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async with trio.open_nursery() as sessions:
                self.sessions_nursery = sessions
                sessions.start_soon(self.hub.run)
                sessions.start_soon(self.early_replies.sweep)
                sessions.start_soon(logmod.flush_periodically)
                async with trio.open_nursery() as accept:
                    self.accept_nursery = accept
                    self.serve_listeners(bound)
                    if self.steering is not None:
                        # Two descriptors per session (client, backend).
                        accept.start_soon(self.steering.run, lambda: 2 * self.total)
                    self.ready.set()
                    stop = await self.wait_signals(sigs)
                    accept.cancel_scope.cancel()
                # Listeners are closed: drain sessions for shutdown_grace, then cancel.
                if self.logging_in or len(self.hub):
                    log.info("%s: stopping; %d sessions draining for up to %gs", self.name,
                             self.logging_in + len(self.hub),
                             self.ctx.config.shutdown_grace)
                with trio.move_on_after(self.ctx.config.shutdown_grace):
                    while self.logging_in or len(self.hub):
                        await trio.sleep(0.05)
                sessions.cancel_scope.cancel()
        await self.ctx.aclose()
        log.info("master: stopped (%s)", stop)
        logmod.flush()
        return 0

    async def wait_signals(self, sigs: Any) -> str:
        async for sig in sigs:
            if sig == signal.SIGHUP:
                await self.reload()
            else:
                return signal.Signals(sig).name
        return "signal stream ended"

    async def reload(self) -> None:
        try:
            config = await trio.to_thread.run_sync(load_config, self.config_path)
            new_ctx = await build_context(config)
        except ConfigErrors as e:
            for err in e.errors:
                log.error("config: reload failed, keeping the old config: %s", err)
            return
        except Exception as e:   # e.g. a TLS key that does not load
            log.error("config: reload failed, keeping the old config: %s", e)
            return
        old = self.ctx
        assert old is not None
        new_ctx.sessions = old.sessions
        new_ctx.hub = old.hub
        new_ctx.early_replies = old.early_replies
        self.ctx = new_ctx
        # A new listener that cannot be bound is logged and skipped; the others serve.
        self.serve_listeners(await self.bind_listeners(config, strict=False))
        log.info("config: reloaded %s", self.config_path)
        # The old passdb chain may still be in use by sessions logging in right now; it is
        # closed when they are done with it (drivers close their pools on garbage).

    def _key(self, li: Listener) -> tuple[str, int, str, str, bool]:
        return (li.bind.host, li.bind.port, li.protocol, li.tls, li.proxy_protocol)

    async def bind_listeners(self, config: Config, *, strict: bool
                             ) -> list[tuple[Any, Listener, list[socket.socket]]]:
        """Close the listeners the config no longer has; bind the new ones. With
        `strict`, a listener that cannot be bound raises its ConfigError; otherwise it is
        logged and left out."""
        wanted = {self._key(li): li for li in config.listeners}
        for key in list(self.listeners):
            if key not in wanted:
                _, scope = self.listeners.pop(key)
                scope.cancel()
        bound: list[tuple[Any, Listener, list[socket.socket]]] = []
        for key, li in wanted.items():
            if key in self.listeners:
                continue
            try:
                sockets = await open_listeners(li, reuse_port=self.reuse_port)
            except ConfigError as e:
                if strict:
                    for _, _, done in bound:
                        for sock in done:
                            sock.close()
                    raise
                log.error("config: %s", e)
                continue
            if self.cpu is not None:
                for sock in sockets:
                    prefer_cpu(sock, self.cpu)
            bound.append((key, li, sockets))
        return bound

    def serve_listeners(self, bound: list[tuple[Any, Listener, list[socket.socket]]]) -> None:
        assert self.accept_nursery is not None
        for key, li, sockets in bound:
            scope = trio.CancelScope()
            self.listeners[key] = (sockets, scope)
            for lsock in sockets:
                self.accept_nursery.start_soon(self.accept_loop, li, lsock, scope)
            if self.steering is not None:
                self.steering.add_sockets(sockets)
            log.info("%s: listening on %s (%s, tls=%s)", self.name, li.bind, li.protocol,
                     li.tls)

    async def accept_loop(self, li: Listener, lsock: socket.socket,
                          scope: trio.CancelScope) -> None:
        """Accept until cancelled. Connections waiting in the backlog are taken in
        batches with plain accept(2) calls; the task waits (and yields) only when the
        backlog is empty, and yields at least every ACCEPT_BATCH connections."""
        # A listener bound to one address knows every connection's local address; only a
        # wildcard bind has to ask the kernel (getsockname) per connection.
        bound = lsock.getsockname()
        family = int(lsock.family)
        local = None if bound[0] in ("0.0.0.0", "::") else bound[:2]
        assert self.sessions_nursery is not None
        start = self.sessions_nursery.start_soon
        batch = 0
        cpu = self.cpu
        preferring = cpu is not None
        resume_preference = 0.0
        with scope:
            try:
                while True:
                    try:
                        fd, peer = lsock._accept()
                    except BlockingIOError:
                        batch = 0
                        if not preferring and cpu is not None and \
                                trio.current_time() >= resume_preference:
                            prefer_cpu(lsock, cpu)     # caught up: take our CPU's again
                            preferring = True
                        await trio.lowlevel.wait_readable(lsock)
                        continue
                    except OSError as e:
                        if e.errno in SLEEP_ERRNOS:
                            log.error("%s: accept() failed: %s; retrying in 100 ms",
                                      self.name, e)
                            await trio.sleep(ACCEPT_BACKOFF)
                            continue
                        raise
                    # What socket.accept() does (it calls _accept() too), without its
                    # per-call enum conversions of the listener's family and type
                    sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
                    sock.setblocking(False)
                    stream = PlainStream(sock, nodelay=False)
                    start(self.handle, li, stream, peer, self.admit(li, stream, peer, local))
                    batch += 1
                    if batch >= ACCEPT_BATCH:
                        batch = 0
                        if cpu is not None:
                            # Behind: let the kernel spread this CPU's connections too.
                            if preferring:
                                prefer_cpu(lsock, -1)
                                preferring = False
                            resume_preference = trio.current_time() + PREFERENCE_PAUSE
                        await trio.lowlevel.checkpoint()
            finally:
                trio.lowlevel.notify_closing(lsock)
                lsock.close()

    def admit(self, li: Listener, stream: PlainStream, peer: Any,
              local: Any) -> Admission | None:
        """A new connection's synchronous start, in the accept loop: the connection caps,
        then, on a plaintext listener, the greeting. Sent before the session's task is
        spawned, the greeting reaches the client a scheduler round earlier, and the
        client's login is on its way while the task starts (the greeting is the first
        step of every login's critical path). None: over a cap, or the socket is gone."""
        ctx = self.ctx
        assert ctx is not None
        if local is None:
            try:
                local = stream.socket.getsockname()
            except OSError:
                return None
        ip = peer[0]
        limits = ctx.config.limits
        if self.total >= limits.max_connections or \
                self.per_ip.get(ip, 0) >= limits.max_connections_per_ip:
            log.warning("master: connection limit reached (rip=%s): closing", ip)
            return None
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1

        def release() -> None:
            # Called once: when the session task ends, or, for a session handed to the
            # splice hub, when the hub closes it.
            self.total -= 1
            n = self.per_ip[ip] - 1
            if n:
                self.per_ip[ip] = n
            else:
                del self.per_ip[ip]

        greeted = 0
        if li.tls != "implicit" and not li.proxy_protocol:
            try:
                # A new socket's send buffer is empty: a greeting always fits.
                greeted = stream.socket.send(opening_greeting(ctx, li, ip, local[0]))
            except OSError:
                pass        # the session's own send of it reports the failure
        return Admission(local, release, greeted)

    async def handle(self, li: Listener, stream: PlainStream, peer: Any,
                     admission: Admission | None) -> None:
        ctx = self.ctx
        assert ctx is not None
        if admission is None:
            # Over a cap: say so in the protocol's own words and close.
            with trio.move_on_after(1):
                try:
                    await stream.send_all(b"* BYE [UNAVAILABLE] Too many connections, "
                                          b"try again later.\r\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await trio.aclose_forcefully(stream)
            return
        release = admission.release
        self.logging_in += 1
        session = ClientSession(ctx, li, stream, peer[:2], admission.local[:2],
                                release=release, greeted=admission.greeted)
        try:
            await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass
        except Exception:
            log.exception("master: internal error in session %s", session.info.session_id)
        finally:
            self.logging_in -= 1
            if not session.handed_off:
                release()
                await trio.aclose_forcefully(session.stream)


def run_daemon(config_path: str, config: Config) -> int:
    # Everything imported and built so far lives as long as the process: move it out of
    # the collector's generations, so the collections that login churn triggers do not
    # scan it again and again, and forked workers share its pages instead of copying them.
    gc.freeze()
    if config.workers <= 1:
        return trio.run(Daemon(config_path).run, config)
    from .workers import run_workers
    return run_workers(config_path, config)
