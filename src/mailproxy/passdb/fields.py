"""Passdb extra fields -> a typed, validated routing decision.

Owns: how a successful PassdbResult turns into "proxy to host:port as destuser with this
password" (PasswordDatabase.ExtraFields.Proxy, wire reference §0.1, §0.6, §0.7, §4):
Dovecot's defaults (backend ports per protocol, 993/995/465 with ``ssl`` and no ``port``,
the LMTP listener's port, ``protocol=lmtp|smtp`` for LMTP), ``proxy_maybe`` against "is
this host me", ``delay_until=<ts>[+<rand>]``, ``forward_*`` and ``user_*`` fields in
passdb order, ``destuser`` defaulting to the login user, ``pass`` or the client's password,
``master`` (or the master user who logged in), and every value checked: a bad port,
timeout, address or ssl value raises RoutingError naming the field.

Host names are not resolved here (io/ does that): ``host`` stays as given, ``hostip`` is
set when the passdb gave it or ``host`` is an IP literal. Pure; no trio, no sockets.
"""

from __future__ import annotations

import ipaddress
import random
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from ..protocols._secret import Secret
from .base import MAX_DELAY_SECS, AuthOutcome, LookupRequest, PassdbResult, parse_delay_until

__all__ = [
    "RoutingDecision",
    "RoutingError",
    "routing_decision",
    "with_resolved_host",
    "parse_duration",
    "DEFAULT_PORTS",
    "DEFAULT_HOST_IMMEDIATE_FAILURE_AFTER",
]

#: protocol -> (default port, default port with ssl=yes) (login binaries' default ports)
DEFAULT_PORTS: Mapping[str, tuple[int, int]] = {
    "imap": (143, 993),
    "pop3": (110, 995),
    "submission": (587, 465),
    "managesieve": (4190, 4190),
}
#: LOGIN_PROXY_DEFAULT_HOST_IMMEDIATE_FAILURE_AFTER_SECS
DEFAULT_HOST_IMMEDIATE_FAILURE_AFTER = 30.0
_LMTP_PROTOCOL_PORTS = {"lmtp": 24, "smtp": 25}


class RoutingError(ValueError):
    """A passdb field has a value that cannot be used; ``field`` names it.

    ``auth_failed`` is True when Dovecot fails the authentication for it (a
    ``delay_until`` too far ahead) rather than reporting an internal error.
    """

    def __init__(self, field: str, message: str, *, auth_failed: bool = False) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.auth_failed = auth_failed


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    user: str                          # the user who logged in (passdb may rewrite it)
    proxy: bool                        # proxy now: `proxy`, or `proxy_maybe` to another host
    proxy_maybe: bool
    proxy_always: bool
    host: str | None                   # as the passdb gave it (IP or DNS name)
    hostip: str | None                 # the IP to connect to, when known without DNS
    port: int
    port_given: bool                   # the passdb gave `port` (else a default)
    destuser: str                      # sent to the backend verbatim
    password: Secret | None            # `pass`, else the client's password
    master: str | None                 # master user name for the backend login
    source_ip: str | None
    protocol: str                      # backend protocol (LMTP: "lmtp" or "smtp")
    proxy_timeout: float | None        # seconds; None = the configured default
    proxy_mech: str | None
    nopipelining: bool
    not_trusted: bool
    noauth: bool
    host_immediate_failure_after: float
    ssl: str | None                    # "yes" | "any-cert": TLS from the start
    starttls: str | None               # "yes" | "any-cert": STARTTLS first
    forward: tuple[tuple[str, str], ...]       # forward_<name>: (name, value)
    user_fields: tuple[tuple[str, str], ...]   # user_<name> fields, key as given
    delay_until: float | None          # unix time to answer at (randomness applied)
    nologin: bool
    reason: str | None
    allow_nets: tuple[str, ...]
    nodelay: bool

    @property
    def referral(self) -> bool:
        """Login referral (PasswordDatabase.ExtraFields.Host): host given, not proxying."""
        return self.host is not None and not self.proxy

    @property
    def needs_dns(self) -> bool:
        """``host`` is a DNS name and no ``hostip`` was given: resolve before connecting
        (and, for proxy_maybe, call with_resolved_host() to finish the self check)."""
        return self.host is not None and self.hostip is None


_SPACE_RE = re.compile(r"\s")


def parse_duration(value: str, *, default_unit: str = "s") -> float:
    """Dovecot's time settings: ``30`` (default unit), ``500ms``, ``2 s``, ``1min``...
    Returns seconds; ValueError when it is not a duration."""
    m = re.fullmatch(r"\s*(\d+)\s*([a-z]*)\s*", value.lower())
    if m is None:
        raise ValueError(f"invalid time interval '{value}'")
    number, unit = int(m.group(1)), m.group(2) or default_unit
    units = {
        ("ms", "msec", "msecs", "millisecond", "milliseconds"): 0.001,
        ("s", "sec", "secs", "second", "seconds"): 1.0,
        ("m", "min", "mins", "minute", "minutes"): 60.0,
        ("h", "hour", "hours"): 3600.0,
        ("d", "day", "days"): 86400.0,
        ("w", "week", "weeks"): 604800.0,
    }
    for names, factor in units.items():
        if unit in names:
            return number * factor
    raise ValueError(f"unknown time unit '{unit}' in '{value}'")


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _ip(value: str) -> str | None:
    if _CANONICAL_IPV4.fullmatch(value):
        return value       # already a canonical IPv4 address (the usual `host`)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _port(value: str) -> int:
    # net_str2port(): 1..65535, digits only
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise RoutingError("port", f"invalid port number '{value}'")
    return int(value)


def _tls_mode(field: str, value: str) -> str:
    v = value.strip().lower()
    if v == "any-cert":
        return "any-cert"
    # Dovecot turns TLS on for any value; a value that reads as "off" is refused
    # instead of silently enabling TLS.
    if v in ("", "yes", "y", "true", "1"):
        return "yes"
    raise RoutingError(field, f"invalid value '{value}' (expected yes or any-cert)")


IsSelf = Callable[[str, str], bool] | Collection[str] | None


def _self_check(is_self: IsSelf, ip: str, local_ip: str) -> bool:
    """auth_request_proxy_ip_is_self(): the address the client reached, or one of ours."""
    norm = _ip(ip) or ip
    if norm == (_ip(local_ip) or local_ip):
        return True
    if is_self is None:
        return False
    if callable(is_self):
        return bool(is_self(norm, local_ip))
    return norm in {(_ip(x) or x) for x in is_self}


def routing_decision(
    result: PassdbResult,
    request: LookupRequest,
    *,
    is_self: IsSelf = None,
    listener_port: int | None = None,
    protocol_defaults: Mapping[str, tuple[int, int]] | None = None,
    now: float | None = None,
    rng: random.Random | None = None,
) -> RoutingDecision:
    """The typed view of ``result.fields`` for ``request`` (a successful login).

    ``is_self(ip, local_ip)`` (or a collection of IPs) says whether an address is this
    proxy (listener addresses + ``proxy_self``); the address the client reached always
    counts. ``listener_port`` is the LMTP listener's port (LMTP's default backend port).
    Raises RoutingError naming the field with a bad value.
    """
    fields: dict[str, str] = {}
    forward: list[tuple[str, str]] = []
    user_fields: list[tuple[str, str]] = []
    for key, value in result.fields:          # passdb order (the chain keeps keys unique)
        fields[key] = value
        if key.startswith("forward_") and len(key) > len("forward_"):
            forward.append((key[len("forward_"):], value))
        elif key.startswith("user_") and result.outcome is AuthOutcome.OK:
            user_fields.append((key, value))

    protocol = request.protocol.lower()
    is_lmtp = protocol == "lmtp"
    defaults = protocol_defaults or DEFAULT_PORTS

    proxy = "proxy" in fields
    proxy_maybe = "proxy_maybe" in fields
    proxy_always = "proxy_always" in fields
    host = fields.get("host") or None
    hostip = None
    if "hostip" in fields and fields["hostip"] != "":
        hostip = _ip(fields["hostip"])
        if hostip is None:
            raise RoutingError("hostip", f"invalid IP address '{fields['hostip']}'")
    if host is not None:
        if "/" in host or _SPACE_RE.search(host):
            raise RoutingError("host", f"invalid host '{host}'")
        if hostip is None:
            hostip = _ip(host.strip("[]"))
    source_ip = None
    if fields.get("source_ip"):
        source_ip = _ip(fields["source_ip"])
        if source_ip is None:
            raise RoutingError("source_ip", f"invalid IP address '{fields['source_ip']}'")

    ssl = _tls_mode("ssl", fields["ssl"]) if "ssl" in fields else None
    starttls = _tls_mode("starttls", fields["starttls"]) if "starttls" in fields else None

    backend_protocol = protocol
    port_given = "port" in fields and fields["port"] != ""
    port = _port(fields["port"]) if port_given else None
    if is_lmtp:
        if "protocol" in fields:
            backend_protocol = fields["protocol"].lower()
            if backend_protocol not in _LMTP_PROTOCOL_PORTS:
                raise RoutingError("protocol", f"unknown protocol '{fields['protocol']}' "
                                   "(expected lmtp or smtp)")
            if port is None:
                port = _LMTP_PROTOCOL_PORTS[backend_protocol]
        if port is None:
            port = listener_port or request.local_port or 24
    elif port is None:
        plain, with_ssl = defaults.get(protocol, (0, 0))
        port = with_ssl if ssl is not None else plain
        if port == 0:
            raise RoutingError("port", f"no default port for protocol '{protocol}'")

    proxy_timeout = None
    if fields.get("proxy_timeout"):
        raw = fields["proxy_timeout"]
        try:
            if is_lmtp:
                if not raw.isdigit():
                    raise ValueError("LMTP takes whole seconds")
                proxy_timeout = float(raw)
            else:
                proxy_timeout = parse_duration(raw)
        except ValueError as e:
            raise RoutingError("proxy_timeout", f"invalid value '{raw}': {e}") from None
        if proxy_timeout == 0:
            proxy_timeout = None

    failure_after = DEFAULT_HOST_IMMEDIATE_FAILURE_AFTER
    if fields.get("proxy_host_immediate_failure_after"):
        raw = fields["proxy_host_immediate_failure_after"]
        try:
            failure_after = parse_duration(raw)
        except ValueError as e:
            raise RoutingError("proxy_host_immediate_failure_after",
                               f"invalid value '{raw}': {e}") from None

    delay_until = None
    if result.outcome is AuthOutcome.OK and fields.get("delay_until"):
        now = time.time() if now is None else now
        ts, rand, error = parse_delay_until(fields["delay_until"], now)
        if error is not None:
            raise RoutingError("delay_until", error, auth_failed=True)
        if ts is not None:
            extra = (rng or random).randrange(rand) if rand > 0 else 0
            delay_until = float(min(ts + extra, int(now) + MAX_DELAY_SECS))

    destuser = fields.get("destuser") or result.user
    password: Secret | None
    if "pass" in fields:
        password = Secret(fields["pass"])
    else:
        password = request.password
    master = fields.get("master") or result.master_user or None

    decision = RoutingDecision(
        user=result.user,
        proxy=proxy,
        proxy_maybe=proxy_maybe,
        proxy_always=proxy_always,
        host=host,
        hostip=hostip,
        port=port,
        port_given=port_given,
        destuser=destuser,
        password=password,
        master=master,
        source_ip=source_ip,
        protocol=backend_protocol,
        proxy_timeout=proxy_timeout,
        proxy_mech=fields.get("proxy_mech") or None,
        nopipelining="proxy_nopipelining" in fields,
        not_trusted="proxy_not_trusted" in fields,
        noauth="proxy_noauth" in fields,
        host_immediate_failure_after=failure_after,
        ssl=ssl,
        starttls=starttls,
        forward=tuple(forward),
        user_fields=tuple(user_fields),
        delay_until=delay_until,
        nologin="nologin" in fields,
        reason=fields.get("reason"),
        allow_nets=tuple(fields.get("allow_nets", "").replace(",", " ").split()),
        nodelay="nodelay" in fields,
    )
    if (proxy or proxy_maybe) and host is None:
        raise RoutingError("host", "proxy field set but host not given")
    if proxy_maybe and not proxy:
        if hostip is None:
            # host is a DNS name: proxy for now; with_resolved_host() decides.
            return replace(decision, proxy=True)
        return _resolve_maybe(decision, [hostip], request, is_self)
    return decision


def _resolve_maybe(decision: RoutingDecision, addresses: Sequence[str],
                   request: LookupRequest, is_self: IsSelf) -> RoutingDecision:
    """auth_request_proxy_finish_ip(): proxy_maybe to ourselves logs in locally."""
    host_is_self = any(_self_check(is_self, ip, request.local_ip) for ip in addresses)
    # auth_request_proxy_is_self(): a given port must also be the one the client reached
    port_is_self = not decision.port_given or decision.port == request.local_port
    if not (host_is_self and port_is_self):
        return replace(decision, proxy=True)
    # Drop the proxy fields (auth_request_proxy_finish_failure()): not proxied.
    plain, _ssl = DEFAULT_PORTS.get(request.protocol.lower(), (decision.port, 0))
    return replace(decision, proxy=False, host=None, hostip=None, port=plain,
                   destuser=decision.user)


def with_resolved_host(decision: RoutingDecision, addresses: Sequence[str],
                       request: LookupRequest, *, is_self: IsSelf = None) -> RoutingDecision:
    """After io/ resolved a DNS ``host``: set ``hostip`` to the first address and, for
    ``proxy_maybe``, check every address against "is this host me" (wire §0.6)."""
    if not addresses:
        raise ValueError("no addresses")
    decision = replace(decision, hostip=str(addresses[0]))
    if decision.proxy_maybe:
        return _resolve_maybe(decision, addresses, request, is_self)
    return decision
