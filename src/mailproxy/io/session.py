"""One client session: pre-login dialogue, passdb, backend login, relay.

Owns: the order of a login (the protocol object says what the client asked; this module
decides, asks the passdb, logs in to the backend, and answers), the login deadline, the
failure delay, chained-proxy trust, and the Dovecot-shaped log lines of a session.
Protocol bytes are never built here: every reply comes from the protocol object.

One session = one task (spawned by the listener's nursery) until the backend login is
done, so cancelling it (shutdown) cancels everything it started. Then a plain-TCP session
is handed to the splice hub and the task ends (an idle session costs no task); a TLS
session stays in its task and relays with io/relay.py.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import trio

from .. import log as logmod
from ..log import log
from ..passdb.base import AuthOutcome, LookupRequest
from ..passdb.fields import RoutingError, routing_decision, with_resolved_host
from ..protocols import _events as ev
from ..protocols import imap
from ..protocols._errors import LocalProtocolError, RemoteProtocolError
from ..protocols.forwarding import (TTL_LOOP_REASON, ForwardedFields, from_imap_id,
                                    new_session_id)
from . import backend as backend_mod
from .relay import RelayResult, relay
from .splice_hub import SPLICE, SpliceHub
from .stream import plain_socket_of, receive_reply
from .tls import start_tls_server

if TYPE_CHECKING:
    from .server import ProxyContext
    from ..config import Listener

# Dovecot's fresh-client TTL (wire reference §0.4): the proxy sends TTL-1.
FRESH_TTL = 5


@dataclass(slots=True, eq=False)   # identity hash: kept in the context's session set
class SessionInfo:
    """What `list`/`kick` and the logs know of a session."""
    protocol: str
    remote_ip: str
    remote_port: int
    local_ip: str
    local_port: int
    session_id: str
    user: str | None = None
    backend: str = ""
    backend_port: int = 0
    user_fields: dict[str, str] = field(default_factory=dict)
    cancel_scope: trio.CancelScope | None = None


def _ip_in(ip: str, networks: tuple[Any, ...]) -> bool:
    if not networks:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


def _plain_ip(ip: str) -> str:
    """`::ffff:1.2.3.4` → `1.2.3.4` (dual-stack listeners)."""
    if ":" not in ip:
        return ip      # an IPv4 address from the kernel is already in canonical form
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.version == 6 and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(addr)


def _secured(tls_active: bool, trusted: bool, rip: str, lip: str) -> bool:
    # Dovecot: TLS, or a trusted client, or the client address equals the local address.
    # (Another 127.x address is NOT secured.)
    return tls_active or trusted or rip == lip


def server_connection(ctx: "ProxyContext", listener: "Listener", *, tls_active: bool,
                      secured: bool) -> Any:
    """The client-facing protocol connection for a session (it queues the greeting)."""
    cfg = ctx.config
    return imap.ServerConnection(
        greeting=cfg.login_greeting,
        tls_available=ctx.server_tls is not None and listener.tls != "none",
        tls_active=tls_active,
        secured=secured,
        disable_plaintext_auth=cfg.auth.disable_plaintext_auth,
        mechanisms=cfg.auth.mechanisms,
        capability_override=cfg.imap_capability or None,
        max_line_length=cfg.limits.max_line_length,
        max_literal_size=cfg.limits.max_literal_size,
        hostname=ctx.hostname,
    )


def opening_greeting(ctx: "ProxyContext", listener: "Listener", peer_ip: str,
                     local_ip: str) -> bytes:
    """The greeting a new connection on a plaintext listener gets: the very bytes its
    session's server_connection() will queue (the session skips what was sent). It
    depends on the listener and on whether the client counts as secured, so it is
    built once per pair and kept in the context."""
    rip = _plain_ip(peer_ip)
    secured = _secured(False, _ip_in(rip, ctx.config.trusted_networks), rip,
                       _plain_ip(local_ip))
    key = (id(listener), secured)
    greeting = ctx.greetings.get(key)
    if greeting is None:
        greeting = server_connection(ctx, listener, tls_active=False,
                                     secured=secured).data_to_send()
        ctx.greetings[key] = greeting
    return greeting


class ClientSession:
    def __init__(self, ctx: "ProxyContext", listener: "Listener", stream: trio.abc.Stream,
                 peer: tuple[str, int], local: tuple[str, int],
                 release: Callable[[], None] = lambda: None, greeted: int = 0) -> None:
        self.ctx = ctx
        self.greeted = greeted       # bytes of the greeting the accept loop already sent
        self.release = release
        self.handed_off = False      # True once the splice hub owns the sockets
        self.listener = listener
        self.stream: trio.abc.Stream = stream
        cfg = ctx.config
        rip, rport = _plain_ip(peer[0]), peer[1]
        lip, lport = _plain_ip(local[0]), local[1]
        self.real_remote_ip = rip
        self.trusted = _ip_in(rip, cfg.trusted_networks)
        now_us = int(time.time() * 1_000_000)
        self.forwarded = ForwardedFields(
            session_id=new_session_id(rip, rport, now_us),
            originating_ip=rip, originating_port=rport,
            connected_ip=lip, connected_port=lport, ttl=FRESH_TTL)
        self.info = SessionInfo(listener.protocol, rip, rport, lip, lport,
                                self.forwarded.session_id)
        self.tls_active = False
        self.retained_id: tuple[tuple[str, str | None], ...] = ()
        self.auth_attempts = 0
        self.started = trio.current_time()
        self.last_user: str | None = None
        self.last_method: str | None = None

    # --- helpers -------------------------------------------------------------------

    @property
    def secured(self) -> bool:
        f = self.forwarded
        return _secured(self.tls_active, self.trusted, f.originating_ip, f.connected_ip)

    def vars(self, user: str | None = None, method: str | None = None, **extra: object) -> str:
        f = self.forwarded
        return logmod.login_vars(user, method, f.originating_ip, f.connected_ip,
                                 f.session_id, **extra)

    async def send(self, data: bytes) -> None:
        if data:
            await self.stream.send_all(data)

    # --- the session -----------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.ctx.config
        conn = None
        ok: backend_mod.BackendLoginOK | None = None
        end_reason = "Disconnected"
        try:
            with trio.CancelScope(deadline=self.started + cfg.limits.login_timeout) \
                    as login_scope:
                if self.listener.tls == "implicit":
                    assert self.ctx.server_tls is not None
                    self.stream = await start_tls_server(self.stream, self.ctx.server_tls)
                    self.tls_active = True
                conn = self.new_server_connection()
                await self.send(conn.data_to_send()[self.greeted:])
                ok = await self.login_dialogue(conn)
            if login_scope.cancelled_caught:
                end_reason = "Disconnected: Inactivity"
                if conn is not None:
                    with trio.move_on_after(1):
                        await self.send(conn.send(ev.Bye("Disconnected for inactivity.")))
                log.info("%s-login: %s (%s): %s", self.info.protocol, end_reason,
                         self._attempts_text(), self.vars(self.last_user, self.last_method))
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("%s-login: Disconnected (%s): %s", self.info.protocol,
                     self._attempts_text(), self.vars(self.last_user, self.last_method))
            return
        if ok is None:
            return
        assert conn is not None      # login_dialogue() ran
        client_pending = conn.trailing_data()
        # Login-time objects (parser, buffers, state) are not needed any more: drop them
        # before the relay, which may last for days with thousands of sessions idle.
        conn = None
        try:
            await self.proxy(ok, client_pending)
        finally:
            if not self.handed_off:      # the hub owns (and closes) handed-off sockets
                await trio.aclose_forcefully(ok.stream)

    def _attempts_text(self) -> str:
        secs = int(trio.current_time() - self.started)
        if self.auth_attempts:
            return f"auth failed, {self.auth_attempts} attempts in {secs} secs"
        return f"no auth attempts in {secs} secs"

    def new_server_connection(self) -> Any:
        return server_connection(self.ctx, self.listener, tls_active=self.tls_active,
                                 secured=self.secured)

    async def login_dialogue(self, conn: Any) -> backend_mod.BackendLoginOK | None:
        """Serve pre-login commands until a backend login succeeds or the client leaves."""
        # The greeting went out, so the client speaks next: wait for it before reading.
        # Unless the accept loop sent the greeting: the task's start took long enough
        # that a nearby client's command is usually there already, and a read that
        # succeeds at once saves a trip through the scheduler.
        replied = not self.greeted
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as e:
                await self.send(conn.data_to_send())
                await self.send(e.reply)
                log.info("%s-login: Disconnected: %s (%s): %s", self.info.protocol, e,
                         self._attempts_text(), self.vars(self.last_user, self.last_method))
                return None
            out = conn.data_to_send()
            if out:
                await self.stream.send_all(out)
                replied = True
            if event is ev.NEED_DATA:
                # After a reply the client has to act: wait, rather than try a read that
                # can only fail. Otherwise (a command cut in two) the rest may be there.
                data = await (receive_reply(self.stream) if replied
                              else self.stream.receive_some(65536))
                replied = False
                conn.receive_data(data)   # b"" = EOF: the connection ends itself
            elif isinstance(event, ev.StartTLSRequested):
                assert self.ctx.server_tls is not None
                self.stream = await start_tls_server(self.stream, self.ctx.server_tls)
                self.tls_active = True
                conn.tls_started()
                await self.send(conn.data_to_send())
            elif isinstance(event, ev.ClientIdentified):
                self.client_identified(event)
            elif isinstance(event, ev.AuthRequested):
                ok = await self.authenticate(conn, event.credentials)
                if ok is not None:
                    return ok
            elif isinstance(event, ev.ConnectionEnded):
                await self.send(conn.data_to_send())
                log.info("%s-login: Disconnected: %s (%s): %s", self.info.protocol,
                         event.reason, self._attempts_text(),
                         self.vars(self.last_user, self.last_method))
                return None

    def client_identified(self, event: Any) -> None:
        # imap_id_retain passes on the pairs of the client's latest ID.
        self.retained_id = event.pairs
        # Wire §1.5: only the first ID from a trusted peer is believed.
        if not event.first or not self.trusted:
            return
        self.forwarded = from_imap_id(event.pairs, self.forwarded)
        self.info.remote_ip = self.forwarded.originating_ip
        self.info.remote_port = self.forwarded.originating_port
        self.info.session_id = self.forwarded.session_id

    # --- authentication ---------------------------------------------------------------

    async def authenticate(self, conn: Any, creds: Any) -> backend_mod.BackendLoginOK | None:
        cfg = self.ctx.config
        f = self.forwarded
        user, master = creds.authcid, None
        if creds.authzid is not None:
            # SASL: authorization id = the user to log in as; authentication id = master.
            user, master = creds.authzid, creds.authcid
        elif cfg.auth.master_user_separator and cfg.auth.master_user_separator in user:
            user, master = user.split(cfg.auth.master_user_separator, 1)
        method = creds.mechanism
        self.last_user, self.last_method = user, method
        self.auth_attempts += 1
        request = LookupRequest(
            user=user, password=creds.password or creds.token, protocol=self.info.protocol,
            remote_ip=f.originating_ip, remote_port=f.originating_port,
            local_ip=f.connected_ip, local_port=f.connected_port,
            session_id=f.session_id, mechanism=method, secured=self.secured,
            forward_fields=tuple((n, v) for n, v in f.forward if v is not None),
            master_user=master)
        result = await self.ctx.chain.authenticate(request)

        if result.outcome is AuthOutcome.TEMPFAIL:
            log.warning("%s-login: Login failed (temporary passdb failure%s): %s",
                        self.info.protocol, f": {result.detail}" if result.detail else "",
                        self.vars(user, method))
            await self.send(conn.send(ev.AuthFailed(ev.FailureKind.TEMPFAIL)))
            return None
        if result.outcome is not AuthOutcome.OK:
            await self.refuse(conn, user, method, result.reason, dict(result.fields),
                              result.detail)
            return None

        try:
            decision = routing_decision(result, request, is_self=self.ctx.is_self,
                                        listener_port=self.listener.bind.port)
            if decision.proxy and decision.needs_dns:
                assert decision.host is not None      # needs_dns says so
                addresses = await self.ctx.resolve(decision.host, None)
                decision = with_resolved_host(decision, addresses, request,
                                              is_self=self.ctx.is_self)
        except RoutingError as e:
            if e.auth_failed:
                log.error("%s-login: %s: %s", self.info.protocol, e, self.vars(user, method))
                await self.refuse(conn, user, method, None, dict(result.fields), str(e))
                return None
            log.error("%s-login: proxy(%s): Invalid passdb field %s: %s",
                      self.info.protocol, user, e, self.vars(user, method))
            await self.send(conn.send(ev.AuthFailed(ev.FailureKind.TEMPFAIL)))
            return None
        except OSError as e:
            log.error("%s-login: DNS lookup for %s failed: %s: %s", self.info.protocol,
                      decision.host, e, self.vars(user, method))
            await self.send(conn.send(ev.AuthFailed(ev.FailureKind.TEMPFAIL)))
            return None
        user = self.last_user = decision.user

        if decision.nologin:
            if decision.referral:
                assert decision.host is not None      # referral says so
                referral = ev.Referral(destuser=decision.destuser, host=decision.host,
                                       port=decision.port, reason=decision.reason)
                await self.send(conn.send(ev.AuthFailed(ev.FailureKind.REFERRAL,
                                                        referral=referral)))
            else:
                await self.send(conn.send(ev.AuthFailed(ev.FailureKind.NOLOGIN,
                                                        text=decision.reason)))
            log.info("%s-login: Login refused (nologin): %s", self.info.protocol,
                     self.vars(user, method))
            return None
        if not decision.proxy:
            # A pure proxy has no local mailboxes: a user that is not proxied (no proxy
            # field, or proxy_maybe pointing at ourselves) cannot be served here.
            why = ("proxy_maybe points to this host" if decision.proxy_maybe
                   else "the passdb gave no proxy field")
            log.error("%s-login: proxy(%s): Not proxying: %s, and this proxy has no local "
                      "mail service: %s", self.info.protocol, user, why,
                      self.vars(user, method))
            await self.send(conn.send(ev.AuthFailed(ev.FailureKind.TEMPFAIL)))
            return None
        if decision.delay_until is not None:
            wait = decision.delay_until - time.time()
            if wait > 0:
                await trio.sleep(wait)
        return await self.login_backend(conn, user, method, decision, creds)

    async def refuse(self, conn: Any, user: str, method: str, reason: str | None,
                     fields: dict[str, str], detail: str) -> None:
        # Dovecot's auth_failure_delay, skipped for `nodelay` users.
        if "nodelay" not in fields:
            await trio.sleep(self.ctx.config.auth.failure_delay)
        log.info("%s-login: Login failed (auth failed, %d attempts%s): %s",
                 self.info.protocol, self.auth_attempts, f": {detail}" if detail else "",
                 self.vars(user, method))
        await self.send(conn.send(ev.AuthFailed(ev.FailureKind.AUTH_FAILED, text=reason)))

    async def login_backend(self, conn: Any, user: str, method: str, decision: Any,
                            creds: Any) -> backend_mod.BackendLoginOK | None:
        cfg = self.ctx.config
        f = self.forwarded
        proto = self.info.protocol
        prefix = f"{proto}-login: proxy({user},{{ip}}:{decision.port})"
        if f.loop_detected:
            log.error("%s: Aborting due to remote server: %s",
                      prefix.format(ip=decision.hostip or decision.host), TTL_LOOP_REASON)
            await self.send(conn.send(ev.AuthFailed(ev.FailureKind.CONFIG)))
            return None
        try:
            addresses = await self.ctx.resolve(decision.host, decision.hostip)
        except OSError as e:
            log.error("%s-login: DNS lookup for %s failed: %s: %s", proto, decision.host,
                      e, self.vars(user, method))
            await self.send(conn.send(ev.AuthFailed(ev.FailureKind.TEMPFAIL)))
            return None
        for ip in addresses:
            # Dovecot's check: the very address and port the client reached, same user.
            if (ip == f.connected_ip and decision.port == f.connected_port
                    and decision.destuser == user):
                log.error("%s: Proxying loops to itself", prefix.format(ip=ip))
                await self.send(conn.send(ev.AuthFailed(ev.FailureKind.UNAVAILABLE)))
                return None
        target = backend_mod.BackendTarget(
            host=decision.host, addresses=addresses, port=decision.port,
            ssl_mode=decision.ssl or "", starttls_mode=decision.starttls or "",
            source_ip=decision.source_ip or self.ctx.next_source_ip(),
            timeout=decision.proxy_timeout or cfg.proxy_timeout)
        forwarded = f.with_forward(decision.forward)
        if cfg.imap_id_retain and self.retained_id:
            forwarded = forwarded.with_retained_id(self.retained_id)
        try:
            login = ev.BackendLogin(
                destuser=decision.destuser,
                password=decision.password,
                master_user=decision.master or None,
                mechanism=decision.proxy_mech or None,
                starttls=bool(decision.starttls),
                nopipelining=decision.nopipelining,
                not_trusted=decision.not_trusted,
                forwarded=forwarded,
                client_sent_capability=getattr(conn, "client_sent_capability", False),
                token=creds.token,
                ssl=bool(decision.ssl),
            )
        except LocalProtocolError as e:
            # A passdb value the backend login cannot carry (proxy_mech=CRAM-MD5, a
            # destuser with a line break): Dovecot's proxy_start() refuses before it
            # connects, with "Unsupported SASL mechanism ...".
            log.error("%s: %s", prefix.format(ip=addresses[0]), e)
            await self.send(conn.send(ev.AuthFailed(ev.FailureKind.UNAVAILABLE)))
            return None

        self.info.user = user
        self.info.backend = addresses[0]
        self.info.backend_port = decision.port
        self.info.user_fields = dict(decision.user_fields)
        started = trio.current_time()
        try:
            # The connection (with the ID command it prepares) is made once connect() is
            # under way, during the TCP handshake and the backend's banner.
            ok = await backend_mod.login(target, lambda: imap.ClientConnection(login),
                                         self.ctx.backend_tls,
                                         max_reconnects=cfg.max_reconnects,
                                         early=self.ctx.early_replies)
        except backend_mod.BackendLoginError as e:
            for line in e.relayed:
                await self.send(line)
            ip = target.addresses[0]
            secs = trio.current_time() - started
            if e.kind in ("AUTH", "AUTH_TEMPFAIL"):
                log.info("%s: Login failed: %s (after %d secs)", prefix.format(ip=ip),
                         e.reason, int(secs))
                await self.send(conn.send(ev.AuthFailed(ev.FailureKind.BACKEND,
                                                        backend=e.event)))
            else:
                pre = {"INTERNAL": "Aborting due to internal error: ",
                       "REMOTE": "Aborting due to remote server: ",
                       "REMOTE_CONFIG": "Aborting due to remote server: ",
                       "PROTOCOL": "Remote server sent invalid input: "}.get(e.kind, "")
                log.error("%s: %s%s (after %d secs)", prefix.format(ip=ip), pre, e.reason,
                          int(secs))
                kind = (ev.FailureKind.CONFIG if e.kind.endswith("_CONFIG")
                        else ev.FailureKind.UNAVAILABLE)
                await self.send(conn.send(ev.AuthFailed(kind)))
            return None
        for line in ok.relayed:
            await self.send(line)
        await self.send(conn.send(ev.AuthSucceeded(ok.event)))
        self.info.backend = ok.ip
        timing = f"{trio.current_time() - started:.3f} secs"
        if ok.reconnects:
            timing += f", {ok.reconnects} reconnects"
        host_text = f" ({decision.host})" if decision.host != ok.ip else ""
        as_user = f" as user {decision.destuser}" if decision.destuser != user else ""
        master = f" (master {decision.master})" if decision.master else ""
        logmod.info_line(f"{prefix.format(ip=ok.ip)}: Started proxying to <{ok.ip}>"
                         f"{host_text}{as_user}{master} ({timing}): "
                         f"{self.vars(user, method)}")
        self.log_prefix = prefix.format(ip=ok.ip)
        self.log_user, self.log_method = user, method
        return ok

    # --- after login -----------------------------------------------------------------

    async def proxy(self, ok: backend_mod.BackendLoginOK, client_pending: bytes) -> None:
        hub = self.ctx.hub
        if (hub is not None and SPLICE and plain_socket_of(self.stream) is not None
                and plain_socket_of(ok.stream) is not None):
            await self.hand_to_hub(hub, ok, client_pending)
            return
        scope = trio.CancelScope()
        self.info.cancel_scope = scope
        self.ctx.sessions.add(self.info)
        result = None
        try:
            with scope:
                result = await relay(self.stream, ok.stream, client_pending, ok.trailing)
        finally:
            self.ctx.sessions.discard(self.info)
            if result is None:
                log.info("%s: Disconnected by proxy: Process shutting down: %s",
                         self.log_prefix, self.vars(self.log_user, self.log_method))
        if result is not None:
            self.log_disconnect(result)

    async def hand_to_hub(self, hub: SpliceHub, ok: backend_mod.BackendLoginOK,
                          client_pending: bytes) -> None:
        """Plain TCP both ways: the hub relays it with no task of its own. What the
        closing log line needs is computed now, so the session object can go."""
        if client_pending:
            await ok.stream.send_all(client_pending)
        if ok.trailing:
            await self.stream.send_all(ok.trailing)
        prefix = self.log_prefix
        vars_text = self.vars(self.log_user, self.log_method)
        sessions, info, release = self.ctx.sessions, self.info, self.release
        sent_in, sent_out = len(client_pending), len(ok.trailing)

        def closed(result: RelayResult) -> None:
            sessions.discard(info)
            release()
            result.client_bytes += sent_in
            result.server_bytes += sent_out
            log_disconnect(prefix, vars_text, result)

        sessions.add(info)
        hub.add(self.stream, ok.stream, closed, info)
        self.handed_off = True

    def log_disconnect(self, result: RelayResult) -> None:
        log_disconnect(self.log_prefix, self.vars(self.log_user, self.log_method), result)


def log_disconnect(prefix: str, vars_text: str, result: RelayResult) -> None:
    """Dovecot's end-of-session line: who closed, idle time, bytes each way."""
    idle = int(trio.current_time() - result.last_activity)
    if result.closed_by == "proxy":
        log.info("%s: Disconnected by proxy: %s: %s", prefix,
                 result.error or "Process shutting down", vars_text)
        return
    who = "Disconnected by client" if result.closed_by == "client" else \
        "Disconnected by server"
    err = f": {result.error}" if result.error else ""
    logmod.info_line(f"{prefix}: {who}{err} ({idle}s idle, in={result.client_bytes}, "
                     f"out={result.server_bytes}): {vars_text}")
