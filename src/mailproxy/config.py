"""The operator's TOML config (shared/interface.md) → frozen dataclasses.

Owns: reading, defaults, validation, and the `FILE:LINE: KEY: message` shape of every
operator-facing config error. Must not import io/ or start anything; passdb drivers are
only *described* here (PassdbSpec) and built by the caller.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOLS = ("imap", "pop3", "submission", "lmtp", "managesieve")
# Protocols whose client-facing side exists today; the others are refused with a clear
# message rather than accepted and silently not served.
SUPPORTED_PROTOCOLS = ("imap",)
TLS_MODES = ("none", "starttls", "implicit")
DEFAULT_MECHANISMS = ("PLAIN", "LOGIN")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """One operator mistake: `FILE:LINE: KEY: message` (LINE may be 0 when unknown)."""

    def __init__(self, file: str, line: int, key: str, message: str) -> None:
        self.file, self.line, self.key, self.message = file, line, key, message
        super().__init__(f"{file}:{line}: {key}: {message}")


class ConfigErrors(Exception):
    """Every problem found in one load, in file order."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Listener:
    protocol: str
    bind: Address
    tls: str = "starttls"
    proxy_protocol: bool = False
    source: str = ""  # FILE:LINE of the [[listener]] header, for later messages


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    mechanisms: tuple[str, ...] = DEFAULT_MECHANISMS
    disable_plaintext_auth: bool = True
    master_user_separator: str = ""
    failure_delay: float = 2.0
    cache_size: int = 0
    cache_ttl: float = 3600.0
    cache_negative_ttl: float = 3600.0


@dataclass(frozen=True, slots=True)
class PassdbConfig:
    driver: str
    args: str
    master: bool
    source: str  # FILE:LINE


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 10000
    max_connections_per_ip: int = 100
    login_timeout: float = 180.0
    max_line_length: int = 1024
    max_literal_size: int = 8192


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    bind: Address | None = None


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    redis_url: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    listeners: tuple[Listener, ...]
    passdbs: tuple[PassdbConfig, ...]
    trusted_networks: tuple[IPNetwork, ...] = ()
    haproxy_trusted_networks: tuple[IPNetwork, ...] = ()
    source_ips: tuple[str, ...] = ()
    proxy_self: tuple[str, ...] = ()
    max_disconnect_delay: float = 0.0
    proxy_timeout: float = 30.0
    max_reconnects: int = 3
    hostname: str = ""
    login_greeting: str = "trio-mailproxy ready."
    shutdown_grace: float = 30.0
    workers: int = 1
    admin_socket: Path = Path("/run/trio-mailproxy/admin.sock")
    imap_id_retain: bool = False
    imap_capability: str = ""
    log_format: str = "text"
    log_level: str = "info"
    tls: TLSConfig | None = None
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: Limits = field(default_factory=Limits)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def effective_hostname(self) -> str:
        return self.hostname or socket.getfqdn()


# --- locating keys in the source text -------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(?:#.*)?$")
_KEYLINE = re.compile(r"^\s*([A-Za-z0-9_\-\"']+)\s*=")


class _LineIndex:
    """Maps (table, array index, key) to the line it was written on.

    tomllib keeps no positions; operators need `FILE:LINE`, so we re-scan the text. Only the
    shapes this config uses are needed: top-level keys, [table], [[array]] of flat tables.
    """

    def __init__(self, text: str) -> None:
        self.keys: dict[tuple[str, int, str], int] = {}
        self.headers: dict[tuple[str, int], int] = {}
        counts: dict[str, int] = {}
        table, index = "", 0
        for lineno, raw in enumerate(text.splitlines(), start=1):
            m = _HEADER.match(raw)
            if m and not _KEYLINE.match(raw):
                table = m.group(2).strip().strip("\"'")
                if m.group(1) == "[[":
                    index = counts.get(table, 0)
                    counts[table] = index + 1
                else:
                    index = 0
                self.headers.setdefault((table, index), lineno)
                continue
            k = _KEYLINE.match(raw)
            if k:
                self.keys.setdefault((table, index, k.group(1).strip("\"'")), lineno)

    def line(self, table: str, index: int, key: str) -> int:
        return self.keys.get((table, index, key)) or self.headers.get((table, index), 0)


# --- value checkers ---------------------------------------------------------------------


class _Reader:
    """Reads one table, recording problems instead of stopping at the first."""

    def __init__(self, loader: "_Loader", table: str, index: int, data: dict[str, Any]) -> None:
        self.loader, self.table, self.index, self.data = loader, table, index, data
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> None:
        self.loader.fail(self.table, self.index, key, message)

    def keyname(self, key: str) -> str:
        return f"{self.table}.{key}" if self.table else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        # bool is an int in Python; a duration or count written `true` is still a mistake.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.fail(key, f"expected {_kind_name(kind)}, got a boolean")
            return default
        if not isinstance(value, kind):
            self.fail(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
            return default
        return value

    def duration(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.get(key, (int, float), default)
        if value < minimum:
            self.fail(key, f"must be >= {minimum:g} seconds")
            return default
        return float(value)

    def count(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self.get(key, int, default)
        if value < minimum:
            self.fail(key, f"must be >= {minimum}")
            return default
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)} (got {value!r})")
            return default
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key, list, [])
        for item in value:
            if not isinstance(item, str):
                self.fail(key, "expected a list of strings")
                return ()
        return tuple(value)

    def networks(self, key: str) -> tuple[IPNetwork, ...]:
        out = []
        for item in self.strings(key):
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.fail(key, f"not an IP network: {item!r}")
        return tuple(out)

    def path(self, key: str) -> Path | None:
        value = self.get(key, str, "")
        if not value:
            return None
        p = Path(value)
        return p if p.is_absolute() else self.loader.base_dir / p

    def address(self, key: str, default: str | None) -> Address | None:
        value = self.get(key, str, default or "")
        if not value:
            return None
        try:
            return parse_address(value)
        except ValueError as e:
            self.fail(key, str(e))
            return None

    def finish(self) -> None:
        for key in self.data:
            if key not in self.used:
                self.fail(key, "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    if set(kinds) == {int, float}:
        return "a number of seconds"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_address(value: str) -> Address:
    """`HOST:PORT` or `[V6]:PORT`."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
    if not m:
        raise ValueError(f"expected HOST:PORT or [V6]:PORT, got {value!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return Address(host, port)


# --- the loader -------------------------------------------------------------------------


class _Loader:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.base_dir = path.parent
        self.index = _LineIndex(text)
        self.errors: list[ConfigError] = []

    def fail(self, table: str, index: int, key: str, message: str) -> None:
        line = self.index.line(table, index, key)
        name = f"{table}.{key}" if table and key else (key or table)
        self.errors.append(ConfigError(str(self.path), line, name, message))

    def source(self, table: str, index: int) -> str:
        return f"{self.path}:{self.index.headers.get((table, index), 0)}"

    def not_yet(self, reader: "_Reader", key: str, value: float) -> float:
        # Accepting a setting and silently ignoring it would mislead the operator.
        if value:
            reader.fail(key, "spreading disconnects is not implemented yet")
        return value

    def table(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            self.fail("", 0, name, "expected a table")
            return {}
        return value

    def array(self, data: dict[str, Any], name: str) -> list[dict[str, Any]]:
        value = data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail("", 0, name, f"expected [[{name}]] tables")
            return []
        return value

    def load(self, data: dict[str, Any]) -> Config:
        top = _Reader(self, "", 0, data)
        top.used |= {"listener", "passdb", "tls", "auth", "limits", "metrics", "cluster"}

        listeners = []
        for i, item in enumerate(self.array(data, "listener")):
            r = _Reader(self, "listener", i, item)
            protocol = r.choice("protocol", PROTOCOLS, "imap")
            if protocol not in SUPPORTED_PROTOCOLS and "protocol" in item:
                r.fail("protocol", f"protocol {protocol!r} is not implemented yet "
                       f"(supported: {', '.join(SUPPORTED_PROTOCOLS)})")
            bind = r.address("bind", "0.0.0.0:143")
            tls = r.choice("tls", TLS_MODES, "starttls")
            proxy_protocol = r.get("proxy_protocol", bool, False)
            if proxy_protocol:
                r.fail("proxy_protocol", "the HAProxy PROXY header is not implemented yet")
            r.finish()
            if bind is not None:
                listeners.append(Listener(protocol, bind, tls, proxy_protocol,
                                          self.source("listener", i)))
        if not data.get("listener"):
            self.fail("", 0, "listener", "at least one [[listener]] is required")

        passdbs = []
        for i, item in enumerate(self.array(data, "passdb")):
            r = _Reader(self, "passdb", i, item)
            driver = r.choice("driver", ("static", "passwd-file", "sql", "ldap"), "passwd-file")
            args = r.get("args", str, "")
            master = r.get("master", bool, False)
            r.finish()
            passdbs.append(PassdbConfig(driver, args, master, self.source("passdb", i)))
        if not any(not p.master for p in passdbs):
            self.fail("", 0, "passdb", "at least one (non-master) [[passdb]] is required")

        tls = None
        if "tls" in data:
            r = _Reader(self, "tls", 0, self.table(data, "tls"))
            tls = TLSConfig(r.path("cert_file"), r.path("key_file"), r.path("ca_file"),
                            r.path("client_cert_file"), r.path("client_key_file"))
            r.finish()
            for key in ("cert_file", "key_file", "ca_file", "client_cert_file", "client_key_file"):
                p = getattr(tls, key)
                if p is not None and not p.is_file():
                    r.fail(key, f"no such file: {p}")
        if any(li.tls != "none" for li in listeners):
            if tls is None or tls.cert_file is None or tls.key_file is None:
                bad = next(i for i, li in enumerate(listeners) if li.tls != "none")
                self.fail("listener", bad, "tls",
                          "a TLS listener needs [tls] cert_file and key_file")

        r = _Reader(self, "auth", 0, self.table(data, "auth"))
        mechs = tuple(m.upper() for m in r.strings("mechanisms")) if "mechanisms" in r.data \
            else DEFAULT_MECHANISMS
        known = {"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"}
        for m in mechs:
            if m not in known:
                r.fail("mechanisms", f"unsupported mechanism {m!r} (supported: "
                       f"{', '.join(sorted(known))})")
        auth = AuthConfig(
            mechanisms=mechs,
            disable_plaintext_auth=r.get("disable_plaintext_auth", bool, True),
            master_user_separator=r.get("master_user_separator", str, ""),
            failure_delay=r.duration("failure_delay", 2.0),
            cache_size=r.count("cache_size", 0),
            cache_ttl=r.duration("cache_ttl", 3600.0),
            cache_negative_ttl=r.duration("cache_negative_ttl", 3600.0),
        )
        r.finish()

        r = _Reader(self, "limits", 0, self.table(data, "limits"))
        limits = Limits(
            max_connections=r.count("max_connections", 10000, minimum=1),
            max_connections_per_ip=r.count("max_connections_per_ip", 100, minimum=1),
            login_timeout=r.duration("login_timeout", 180.0, minimum=0.001),
            max_line_length=r.count("max_line_length", 1024, minimum=64),
            max_literal_size=r.count("max_literal_size", 8192, minimum=64),
        )
        r.finish()

        r = _Reader(self, "metrics", 0, self.table(data, "metrics"))
        metrics = MetricsConfig(r.address("bind", None))
        if metrics.bind is not None:
            r.fail("bind", "the metrics endpoint is not implemented yet")
        r.finish()
        r = _Reader(self, "cluster", 0, self.table(data, "cluster"))
        cluster = ClusterConfig(r.get("redis_url", str, ""))
        if cluster.redis_url:
            r.fail("redis_url", "clustering is not implemented yet")
        r.finish()

        source_ips = top.strings("source_ips")
        for ip in source_ips:
            if not ip.startswith("?"):
                try:
                    ipaddress.ip_address(ip)
                except ValueError:
                    top.fail("source_ips", f"not an IP address: {ip!r}")
        proxy_self = top.strings("proxy_self")
        for ip in proxy_self:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                top.fail("proxy_self", f"not an IP address: {ip!r}")
        cfg = Config(
            path=self.path,
            listeners=tuple(listeners),
            passdbs=tuple(passdbs),
            trusted_networks=top.networks("trusted_networks"),
            haproxy_trusted_networks=top.networks("haproxy_trusted_networks"),
            source_ips=source_ips,
            proxy_self=proxy_self,
            max_disconnect_delay=self.not_yet(top, "max_disconnect_delay",
                                              top.duration("max_disconnect_delay", 0.0)),
            proxy_timeout=top.duration("proxy_timeout", 30.0, minimum=0.001),
            max_reconnects=top.count("max_reconnects", 3),
            hostname=top.get("hostname", str, ""),
            login_greeting=top.get("login_greeting", str, "trio-mailproxy ready."),
            shutdown_grace=top.duration("shutdown_grace", 30.0),
            workers=top.count("workers", 1, minimum=1),
            admin_socket=top.path("admin_socket") or Path("/run/trio-mailproxy/admin.sock"),
            imap_id_retain=top.get("imap_id_retain", bool, False),
            imap_capability=top.get("imap_capability", str, ""),
            log_format=top.choice("log_format", ("text", "json"), "text"),
            log_level=top.choice("log_level", ("debug", "info", "warning", "error"), "info"),
            tls=tls,
            auth=auth,
            limits=limits,
            metrics=metrics,
            cluster=cluster,
        )
        top.finish()
        if "\r" in cfg.login_greeting or "\n" in cfg.login_greeting:
            top.fail("login_greeting", "must be a single line")
        return cfg


def load_config(path: str | Path) -> Config:
    """Load and validate; raises ConfigErrors listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigErrors([ConfigError(str(path), 0, "file", e.strerror or str(e))]) from None
    except UnicodeDecodeError:
        raise ConfigErrors([ConfigError(str(path), 0, "file", "not UTF-8 text")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = int(m.group(1)) if m else 0
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise ConfigErrors([ConfigError(str(path), line, "toml", msg)]) from None
    loader = _Loader(path.resolve(), text)
    loader.path = path  # report the path as the operator wrote it
    cfg = loader.load(data)
    if loader.errors:
        loader.errors.sort(key=lambda e: e.line)
        raise ConfigErrors(loader.errors)
    return cfg
