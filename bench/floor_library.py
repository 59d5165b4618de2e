"""The library loop: trio-mailproxy's own login work, driven by callbacks from one epoll loop.

Not a product and not a target to beat: a yardstick for one design question of issue 4.
The daemon drives its sans-io protocol objects from a Trio task per session, as the
project's shape asks; bench/floor.py and bench/floor_loop.py show what that shape costs
a login with no features at all. This measures the other side of the question: what a
login with the daemon's features would cost if its plaintext login phase were driven by
callbacks from one epoll loop per process, as C proxies are.

It reads the daemon's own config file (the one the bench writes for trio-mailproxy) and,
per login, does the daemon's own work with the daemon's own code:
- the greeting of io/session.opening_greeting(), and a client-facing
  imap.ServerConnection from io/session.server_connection() that parses the client's
  commands;
- the session's ForwardedFields (new session id, addresses, TTL) and SessionInfo, the
  connection counters, a login deadline;
- the passdb chain built from the config (build_chain_from_config), run to completion
  without awaiting: a chain that would wait (SQL, LDAP, an expensive hash) is out of
  this yardstick's reach, and the session ends;
- routing_decision(), ev.BackendLogin with the forwarded fields, a non-blocking connect,
  and a backend-facing imap.ClientConnection (greeting, ID, LOGIN, replies);
- the success reply from the ServerConnection, Dovecot's two log lines through
  mailproxy.log (batched, as the daemon's), then floor_loop's relay.
Left out (each either cheap next to a login or on a path a callback design would leave
in Trio tasks): TLS and STARTTLS, DNS, delay_until and the failure delay, backend
reconnects, the kick/list registry, splice (the relay copies, as the loop floor's does).

    PYTHONPATH=src python3 bench/floor_library.py --config mailproxy.toml
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import socket
import time
from types import SimpleNamespace
from typing import Any

from floor import fork_workers, listen
from floor_loop import IN, Loop, Relay, receive

from mailproxy import log as logmod
from mailproxy.config import load_config
from mailproxy.passdb.base import AuthOutcome, LookupRequest
from mailproxy.passdb.fields import routing_decision
from mailproxy.passdb.from_config import build_chain_from_config
from mailproxy.protocols import _events as ev
from mailproxy.protocols import imap
from mailproxy.protocols._errors import RemoteProtocolError
from mailproxy.protocols.forwarding import ForwardedFields, from_imap_id, new_session_id
from mailproxy.io.session import (FRESH_TTL, SessionInfo, _ip_in, _plain_ip, _secured,
                                  opening_greeting, server_connection)


def step(conn: Any, sock: socket.socket) -> Any:
    """One event from a sans-io connection, after sending what it queued."""
    event = conn.next_event()
    out = conn.data_to_send()
    if out:
        sock.send(out)
    return event


class Worker:
    """One process: the epoll loop, a deadline heap, the daemon's context pieces."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.loop = Loop()
        self.ctx = SimpleNamespace(config=config, server_tls=None, greetings={},
                                   hostname=config.effective_hostname,
                                   chain=build_chain_from_config(config))
        self.deadlines: list[tuple[float, int, LibrarySession]] = []
        self.counter = itertools.count()
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self.sessions: set[SessionInfo] = set()

    def serve(self, li: Any, lsock: socket.socket) -> None:
        bound = lsock.getsockname()[:2]

        def accept(events: int) -> None:
            for _ in range(16):     # a batch, as the daemon's accept loop
                try:
                    c, peer = lsock.accept()
                except BlockingIOError:
                    return
                c.setblocking(False)
                LibrarySession(self, li, c, peer, bound)
        self.loop.watch(lsock, IN, accept)

    def run(self) -> None:
        callbacks, epoll, deadlines = self.loop.callbacks, self.loop.epoll, self.deadlines
        next_flush = time.monotonic() + logmod.FLUSH_INTERVAL
        while True:
            now = time.monotonic()
            if now >= next_flush:
                logmod.flush()
                next_flush = now + logmod.FLUSH_INTERVAL
            while deadlines and deadlines[0][0] <= now:
                heapq.heappop(deadlines)[2].expired()
            wake = min(next_flush, deadlines[0][0]) if deadlines else next_flush
            for fd, events in epoll.poll(max(0.0, wake - now)):
                cb = callbacks.get(fd)
                if cb is not None:
                    cb(events)


class LibrarySession:
    """ClientSession's plaintext path, step by step from callbacks."""

    def __init__(self, w: Worker, li: Any, c: socket.socket, peer: Any, local: Any) -> None:
        self.w, self.li, self.c = w, li, c
        self.b: socket.socket | None = None
        self.done = False
        cfg = w.config
        rip, rport = _plain_ip(peer[0]), peer[1]
        lip, lport = _plain_ip(local[0]), local[1]
        limits = cfg.limits
        if w.total >= limits.max_connections or \
                w.per_ip.get(rip, 0) >= limits.max_connections_per_ip:
            c.close()
            self.done = True
            return
        w.total += 1
        w.per_ip[rip] = w.per_ip.get(rip, 0) + 1
        self.admitted_ip = rip
        self.trusted = _ip_in(rip, cfg.trusted_networks)
        self.forwarded = ForwardedFields(
            session_id=new_session_id(rip, rport, int(time.time() * 1_000_000)),
            originating_ip=rip, originating_port=rport,
            connected_ip=lip, connected_port=lport, ttl=FRESH_TTL)
        self.info = SessionInfo("imap", rip, rport, lip, lport, self.forwarded.session_id)
        self.retained_id: tuple[tuple[str, str | None], ...] = ()
        self.started = time.monotonic()
        greeted = c.send(opening_greeting(w.ctx, li, rip, lip))
        f = self.forwarded
        self.conn: Any = server_connection(
            w.ctx, li, tls_active=False,
            secured=_secured(False, self.trusted, f.originating_ip, f.connected_ip))
        rest = self.conn.data_to_send()[greeted:]
        if rest:
            c.send(rest)
        # The login deadline. Entries are not removed at login (a heap deletes lazily):
        # expired() ignores a session that reached the relay.
        heapq.heappush(w.deadlines, (self.started + limits.login_timeout, next(w.counter), self))
        w.loop.watch(c, IN, self.client_readable)

    # --- the end of a session ---------------------------------------------------------

    def end(self) -> None:
        """The end of a session that did not reach the relay."""
        if self.done:
            return
        self.done = True
        self.w.loop.close(*(s for s in (self.c, self.b) if s is not None))
        self.release()

    def release(self) -> None:
        w = self.w
        w.total -= 1
        n = w.per_ip[self.admitted_ip] - 1
        if n:
            w.per_ip[self.admitted_ip] = n
        else:
            del w.per_ip[self.admitted_ip]

    def expired(self) -> None:
        if self.conn is not None and not self.done:
            try:
                self.c.send(self.conn.send(ev.Bye("Disconnected for inactivity.")))
            except OSError:
                pass
            self.end()

    def vars(self, user: str | None, method: str | None) -> str:
        f = self.forwarded
        return logmod.login_vars(user, method, f.originating_ip, f.connected_ip,
                                 f.session_id)

    # --- the client's commands --------------------------------------------------------

    def client_readable(self, events: int) -> None:
        data = receive(self.c)
        if data is None:
            return
        self.conn.receive_data(data)
        conn = self.conn
        while True:
            try:
                event = step(conn, self.c)
            except RemoteProtocolError as e:
                self.c.send(conn.data_to_send() + e.reply)
                self.end()
                return
            if event is ev.NEED_DATA:
                return
            if isinstance(event, ev.ClientIdentified):
                self.retained_id = event.pairs
                if event.first and self.trusted:
                    self.forwarded = from_imap_id(event.pairs, self.forwarded)
            elif isinstance(event, ev.AuthRequested):
                self.authenticate(event.credentials)
                return
            else:           # ConnectionEnded; STARTTLS is not on this yardstick's path
                self.end()
                return

    def authenticate(self, creds: Any) -> None:
        w = self.w
        f = self.forwarded
        user, method = creds.authcid, creds.mechanism
        request = LookupRequest(
            user=user, password=creds.password or creds.token, protocol="imap",
            remote_ip=f.originating_ip, remote_port=f.originating_port,
            local_ip=f.connected_ip, local_port=f.connected_port,
            session_id=f.session_id, mechanism=method,
            secured=_secured(False, self.trusted, f.originating_ip, f.connected_ip),
            forward_fields=tuple((n, v) for n, v in f.forward if v is not None))
        coro = w.ctx.chain.authenticate(request)
        try:
            coro.send(None)
        except StopIteration as stop:
            result = stop.value
        else:
            coro.close()
            raise SystemExit("floor_library: the passdb chain waited; only passdbs that "
                             "answer at once are in this yardstick")
        if result.outcome is not AuthOutcome.OK:
            self.c.send(self.conn.send(ev.AuthFailed(ev.FailureKind.AUTH_FAILED)))
            return
        decision = routing_decision(result, request, is_self=lambda ip, lip: ip == lip,
                                    listener_port=self.li.bind.port)
        if not decision.proxy or decision.hostip is None or f.loop_detected:
            self.c.send(self.conn.send(ev.AuthFailed(ev.FailureKind.TEMPFAIL)))
            return
        self.user, self.method, self.decision = decision.user, method, decision
        forwarded = f.with_forward(decision.forward)
        if w.config.imap_id_retain and self.retained_id:
            forwarded = forwarded.with_retained_id(self.retained_id)
        login = ev.BackendLogin(
            destuser=decision.destuser, password=decision.password,
            master_user=decision.master or None, mechanism=decision.proxy_mech or None,
            starttls=bool(decision.starttls), nopipelining=decision.nopipelining,
            not_trusted=decision.not_trusted, forwarded=forwarded,
            client_sent_capability=getattr(self.conn, "client_sent_capability", False),
            token=creds.token, ssl=bool(decision.ssl))
        self.info.user, self.info.backend = decision.user, decision.hostip
        self.info.backend_port = decision.port
        self.info.user_fields = dict(decision.user_fields)
        b = socket.socket(socket.AF_INET6 if ":" in decision.hostip else socket.AF_INET,
                          socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        b.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        b.connect_ex((decision.hostip, decision.port))
        self.b = b
        self.backend_started = time.monotonic()
        self.bconn = imap.ClientConnection(login)
        self.relayed: list[bytes] = []
        w.loop.watch(self.c, 0, lambda events: None)     # the client waits for our answer
        w.loop.watch(b, IN, self.backend_readable)

    # --- the backend's replies ---------------------------------------------------------

    def backend_readable(self, events: int) -> None:
        assert self.b is not None
        data = receive(self.b)
        if data is None:
            return
        if not data:
            self.c.send(self.conn.send(ev.AuthFailed(ev.FailureKind.UNAVAILABLE)))
            self.end()
            return
        bconn = self.bconn
        bconn.receive_data(data)
        while True:
            event = step(bconn, self.b)
            if event is ev.NEED_DATA:
                return
            if isinstance(event, ev.UntaggedRelay):
                self.relayed.append(event.line)
            elif isinstance(event, ev.BackendLoggedIn):
                self.logged_in(event)
                return
            else:
                self.c.send(self.conn.send(ev.AuthFailed(ev.FailureKind.BACKEND,
                                                         backend=event)))
                self.end()
                return

    def logged_in(self, event: Any) -> None:
        assert self.b is not None
        c, b, w = self.c, self.b, self.w
        reply = b"".join(self.relayed) + self.conn.send(ev.AuthSucceeded(event))
        c.send(reply)
        d = self.decision
        ip = d.hostip
        prefix = f"imap-login: proxy({self.user},{ip}:{d.port})"
        vars_text = self.vars(self.user, self.method)
        logmod.info_line(f"{prefix}: Started proxying to <{ip}> "
                         f"({time.monotonic() - self.backend_started:.3f} secs): {vars_text}")
        client_pending, trailing = self.conn.trailing_data(), self.bconn.trailing_data()
        # login-time objects go, as at the daemon's relay handoff
        self.conn = self.bconn = self.relayed = self.decision = None
        if client_pending:
            b.send(client_pending)
        if trailing:
            c.send(trailing)
        info, sessions = self.info, w.sessions
        sessions.add(info)

        def closed() -> None:         # the relay has closed both sockets
            sessions.discard(info)
            self.release()
            # the daemon's line also says who closed, the idle time and the byte counts,
            # which this relay does not keep
            logmod.info_line(f"{prefix}: Disconnected: {vars_text}")
        Relay(w.loop, c, b, on_close=closed)


def worker(config_path: str, cpu: int | None) -> None:
    config = load_config(config_path)
    logmod.setup_logging(config.log_format, config.log_level)
    if logmod._handler is not None:
        logmod._handler.batching = True
    w = Worker(config)
    for li in config.listeners:
        if li.protocol == "imap" and li.tls == "none":
            w.serve(li, listen((li.bind.host, li.bind.port), cpu))
    try:
        w.run()
    except KeyboardInterrupt:
        pass
    finally:
        logmod.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    a = p.parse_args()
    fork_workers(load_config(a.config).workers, lambda cpu: worker(a.config, cpu))


if __name__ == "__main__":
    main()
