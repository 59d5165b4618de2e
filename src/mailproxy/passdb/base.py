"""The passdb chain: lookups in order, password checks, extra-field rules, master users.

Owns: LookupRequest / PassdbResult / AuthOutcome (architecture.md), the PassDB protocol
the drivers implement, and Dovecot 2.3's auth-request logic around them
(``src/auth/auth-request.c``, ``auth-request-fields.c``, ``passdb-cache.c``):

- user name handling before any lookup: ``auth_username_chars`` and
  ``auth_username_format`` (Dovecot's defaults: the safe character set and ``%Lu``);
- the chain order and result rules (PasswordDatabase.txt, MultipleDatabases):
  success -> return-ok, failure -> continue, internal failure -> continue; a temporary
  failure anywhere with no later success is a TEMPFAIL;
- extra fields set in passdb order with their side effects (``user``/``username``/
  ``domain`` rewrite the user, ``allow_nets``/``fail``/bad ``delay_until`` fail that
  passdb, ``nopassword``, ``noauthenticate``, ``login_user``, ``passdb_import``,
  ``:protected``/``:remove`` suffixes); a failed passdb's fields are rolled back;
- master users (Authentication.MasterUsers): the master passdbs check the master's
  password, then the normal passdbs look the login user up without a password check;
- the auth cache (cache.py) for passdbs that declare a cache key.

Expensive hashes are verified in ``trio.to_thread.run_sync`` behind a CapacityLimiter, so
the Trio thread never runs bcrypt, Argon2, SHA-crypt or PBKDF2. Must not import io/ or
protocols/ (except the Secret type).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

import trio

from ..protocols._secret import Secret
from . import schemes
from .variables import VariableError, VariableTable, auth_table, expand

if TYPE_CHECKING:
    from .cache import AuthCache

__all__ = [
    "AuthOutcome",
    "LookupRequest",
    "PassdbResult",
    "PassdbEntry",
    "PassdbSpec",
    "PassDB",
    "LookupState",
    "PassdbChain",
    "PassdbConfigError",
    "PassdbTempFail",
    "SECRET_FIELDS",
    "DEFAULT_USERNAME_CHARS",
    "DEFAULT_USERNAME_FORMAT",
    "MAX_DELAY_SECS",
    "build_chain",
]

#: Fields whose values are passwords: never shown by repr()/str() or the lookup command.
SECRET_FIELDS = frozenset({"pass", "password", "password_noscheme"})
#: auth_username_chars default (auth-settings.c).
DEFAULT_USERNAME_CHARS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@")
#: auth_username_format default (auth-settings.c): lower-case the whole name.
DEFAULT_USERNAME_FORMAT = "%Lu"
#: AUTH_REQUEST_MAX_DELAY_SECS: delay_until may be at most this far ahead.
MAX_DELAY_SECS = 300
#: Dovecot's CACHED_PASSWORD_SCHEME for passdbs that return no password.
_CACHED_PASSWORD_SCHEME = "SHA1"

# The extra field names auth_request_set_field() treats specially (_set_field); every other
# name without a ":protected"/":remove" suffix is stored as it is.
_SPECIAL_FIELDS = frozenset((
    "password", "password_noscheme", "user", "username", "domain", "login_user",
    "allow_nets", "allow_real_nets", "fail", "delay_until", "noauthenticate", "nopassword",
    "passdb_import"))


class PassdbConfigError(Exception):
    """A passdb spec cannot be built; the message names the problem (config.py adds
    ``FILE:LINE: KEY:``). ``source`` is the spec's "file:line"."""

    def __init__(self, message: str, *, source: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.source = source


class PassdbTempFail(Exception):
    """A lookup failed for a reason that may go away (Dovecot: internal failure)."""


class AuthOutcome(enum.Enum):
    OK = "ok"              # authenticated (or found, for a lookup without password)
    FAILED = "failed"      # wrong password, refused by a field, or master user not allowed
    TEMPFAIL = "tempfail"  # a passdb had an internal failure and nothing later succeeded
    NOUSER = "nouser"      # no passdb knows the user


@dataclass(frozen=True, slots=True)
class LookupRequest:
    user: str                       # the user to log in as (after the master split)
    password: Secret | None         # None: no password to check (lookup only)
    protocol: str                   # "imap", "pop3", ...
    remote_ip: str
    remote_port: int
    local_ip: str
    local_port: int
    session_id: str = ""
    mechanism: str = "PLAIN"
    secured: bool = False
    forward_fields: tuple[tuple[str, str], ...] = ()   # from a trusted peer, names
                                                       # without the forward_ prefix
    master_user: str | None = None  # the master user (user*master or SASL authcid)


def _redacted(fields: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((k, "***" if _field_name(k) in SECRET_FIELDS else v) for k, v in fields)


def _field_name(key: str) -> str:
    for suffix in (":protected", ":remove"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


@dataclass(frozen=True, slots=True, repr=False)
class PassdbResult:
    outcome: AuthOutcome
    user: str                             # final user (user= field may rewrite it)
    fields: tuple[tuple[str, str], ...]   # extra fields in passdb order, %vars expanded,
                                          # password field removed
    reason: str | None = None             # the passdb's `reason` field
    master_user: str | None = None        # set when a master user logged in as `user`
    detail: str = ""                      # for the log only (never sent to the client)

    def redacted_fields(self) -> tuple[tuple[str, str], ...]:
        """``fields`` with password values (``pass``...) replaced by ``***``."""
        return _redacted(self.fields)

    def __repr__(self) -> str:
        return (f"PassdbResult(outcome={self.outcome!r}, user={self.user!r}, "
                f"fields={self.redacted_fields()!r}, reason={self.reason!r}, "
                f"master_user={self.master_user!r}, detail={self.detail!r})")


@dataclass(frozen=True, slots=True, repr=False)
class PassdbEntry:
    """What one passdb found for the user.

    ``fields`` are the passdb's fields in its own order, values already %-expanded,
    including ``password`` / ``password_noscheme`` where the passdb sets them (their
    position matters, as in Dovecot). ``default_scheme`` applies to a password without
    a ``{SCHEME}`` prefix.
    """

    fields: tuple[tuple[str, str], ...]
    default_scheme: str = "PLAIN"

    def __repr__(self) -> str:
        return (f"PassdbEntry(fields={_redacted(self.fields)!r}, "
                f"default_scheme={self.default_scheme!r})")


@dataclass(frozen=True, slots=True)
class PassdbSpec:
    driver: str
    args: str
    master: bool = False
    source: str = ""                # "file:line", for error messages


@dataclass(frozen=True, slots=True)
class LookupState:
    """What a driver may read while looking a user up (the auth request, read-only)."""

    request: LookupRequest
    user: str                       # current user name (after earlier passdbs' user=)
    original_user: str              # the name the chain started with
    login_user: str | None          # during a master passdb lookup: the user to become
    master_user: str | None         # after a master login: the master's name
    fields: Mapping[str, str]       # extra fields set so far (earlier passdbs, forward_*)
    passdb_id: int                  # 1-based position of the passdb in the config

    def variables(self, *, fields: Mapping[str, str] | None = None) -> VariableTable:
        """The %-variable table of this request (Variables.txt, auth process)."""
        req = self.request
        return auth_table(
            user=self.user, service=req.protocol, local_ip=req.local_ip,
            remote_ip=req.remote_ip, local_port=req.local_port,
            remote_port=req.remote_port,
            password=_reveal(req.password),
            mechanism=req.mechanism, secured=req.secured, session=req.session_id,
            passdb_id=self.passdb_id, login_user=self.login_user,
            master_user=self.master_user, original_user=self.original_user,
            fields=self.fields if fields is None else fields)

    def expand(self, template: str, *, escape=None) -> str:  # type: ignore[no-untyped-def]
        """Expand one template; an expansion error is a temporary failure (Dovecot:
        "Failed to expand ...")."""
        try:
            return expand(template, self.variables(), escape=escape)
        except VariableError as e:
            raise PassdbTempFail(f"Failed to expand {template}: {e}") from e

    def expand_fields(self, pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """Expand extra-field values in order, as Dovecot sets them one by one: the
        table is taken once (so ``%u`` is the user before this passdb's ``user=``), while
        ``%{passdb:name}`` sees the fields set earlier on the same line."""
        pairs = tuple(pairs)
        if not any("%" in value for _, value in pairs):
            return pairs          # nothing to expand (the common static case): no table
        live = dict(self.fields)
        table = self.variables(fields=live)
        out = []
        for key, value in pairs:
            try:
                value = expand(value, table)
            except VariableError as e:
                raise PassdbTempFail(
                    f"Failed to expand extra field {key}={value}: {e}") from e
            out.append((key, value))
            if _field_name(key) not in SECRET_FIELDS:
                live[_field_name(key)] = value
        return tuple(out)


def _reveal(secret: Secret | None) -> str | None:
    if secret is None:
        return None
    value = secret.reveal()
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


class PassDB(Protocol):
    """A password database driver (static, passwd-file; sql and ldap later)."""

    driver: str
    source: str                     # "file:line" of its config entry
    master: bool
    cache_key: str | None           # template of Dovecot's cache key, None = never cached

    async def lookup(self, state: LookupState) -> PassdbEntry | None:
        """The user's entry, None when the user does not exist here; raises
        PassdbTempFail on an internal failure."""
        ...

    async def check(self) -> list[str]:
        """Problems found by reading the database now (``trio-mailproxy check``)."""
        ...

    async def aclose(self) -> None:
        ...


# --- passdb results (enum passdb_result) ---------------------------------------------------


class _R(enum.Enum):
    INTERNAL_FAILURE = -1
    USER_UNKNOWN = -3
    USER_DISABLED = -4
    NEXT = -6
    PASSWORD_MISMATCH = 0
    OK = 1


class _Rule(enum.Enum):
    RETURN = "return"
    RETURN_OK = "return-ok"
    RETURN_FAIL = "return-fail"
    CONTINUE = "continue"
    CONTINUE_OK = "continue-ok"
    CONTINUE_FAIL = "continue-fail"


@dataclass(slots=True)
class _Passdb:
    db: PassDB
    id: int
    result_success: _Rule = _Rule.RETURN_OK
    result_failure: _Rule = _Rule.CONTINUE
    result_internalfail: _Rule = _Rule.CONTINUE


@dataclass(slots=True)
class _Auth:
    """The mutable auth request (struct auth_request, the parts we need)."""

    request: LookupRequest
    user: str
    original_user: str
    translated_user: str
    login_user: str | None = None
    master_user: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    passdb_password: str | None = None
    failed: bool = False
    skip_password_check: bool = False
    passdb_success: bool = False
    seen_internal_failure: bool = False
    seen_user: bool = False          # some passdb knew the user (wrong password...)
    details: list[str] = field(default_factory=list)
    tempfail_detail: str = ""
    passdb_id: int = 0

    @property
    def detail(self) -> str:
        return self.details[-1] if self.details else ""

    @detail.setter
    def detail(self, text: str) -> None:
        self.details.append(text)

    def state(self) -> LookupState:
        return LookupState(
            request=self.request, user=self.user, original_user=self.original_user,
            login_user=self.login_user, master_user=self.master_user,
            fields=MappingProxyType(dict(self.fields)), passdb_id=self.passdb_id)


def _join(details: list[str]) -> str:
    """Every passdb's reason for the log, in order, without repeats."""
    return "; ".join(dict.fromkeys(d for d in details if d))


def _is_in_nets(remote_ip: str, networks: str) -> tuple[bool, str]:
    """auth_request_validate_networks(): (allowed, log text)."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    if remote_ip:
        try:
            ip = ipaddress.ip_address(remote_ip.split("%", 1)[0])
        except ValueError:
            ip = None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    for net in networks.replace(",", " ").split():
        if net == "local":
            if ip is None:
                return True, ""
            continue
        try:
            network = ipaddress.ip_network(net, strict=False)
        except ValueError:
            continue                # Dovecot logs "Invalid network" and goes on
        if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped \
                and network.prefixlen >= 96:
            network = ipaddress.ip_network(
                f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}",
                strict=False)
        if ip is not None and ip.version == network.version and ip in network:
            return True, ""
    if ip is None:
        return False, "allow_nets check failed: Remote IP not known and 'local' missing"
    return False, f"allow_nets check failed: IP {ip} not in allowed networks"


def parse_delay_until(value: str, now: float) -> tuple[int | None, int, str | None]:
    """``<unix time>[+<max random secs>]`` -> (timestamp or None if already past,
    randomness, error). The error names why the login must fail (auth-request.c)."""
    ts_text, plus, rand_text = value.partition("+")
    rand = 0
    if plus:
        if not rand_text.isdigit():
            return None, 0, f"Invalid delay_until randomness number '{rand_text}'"
        rand = int(rand_text)
    try:
        ts = int(ts_text)
    except ValueError:
        return None, 0, f"Invalid delay_until timestamp '{ts_text}'"
    if ts <= int(now):
        return None, rand, None
    if ts - int(now) > MAX_DELAY_SECS:
        return None, rand, f"delay_until timestamp {ts_text} is too much in the future, failing"
    return ts, rand, None


class PassdbChain:
    """The configured passdbs in order, plus the master passdbs; answers logins."""

    def __init__(
        self,
        passdbs: Sequence[PassDB],
        *,
        cache: AuthCache | None = None,
        hash_threads: int | None = None,
        username_chars: str | None = DEFAULT_USERNAME_CHARS,
        username_format: str = DEFAULT_USERNAME_FORMAT,
    ) -> None:
        self._all = list(passdbs)
        entries = [_Passdb(db, i + 1) for i, db in enumerate(self._all)]
        self._normal = [p for p in entries if not p.db.master]
        self._masters = [p for p in entries if p.db.master]
        for p in self._masters:
            # "pass" (see _master_rule) decides continue vs continue-ok at run time.
            p.result_success = _Rule.CONTINUE_OK
        self._cache = cache
        self._hash_threads = hash_threads or max(2, os.cpu_count() or 2)
        self._limiter: trio.CapacityLimiter | None = None
        self._username_chars = frozenset(username_chars) if username_chars else None
        self._username_format = username_format

    @property
    def passdbs(self) -> tuple[PassDB, ...]:
        return tuple(self._all)

    @property
    def cache(self) -> AuthCache | None:
        return self._cache

    async def aclose(self) -> None:
        for db in self._all:
            await db.aclose()

    async def check(self) -> list[tuple[str, str]]:
        """(source, problem) for every passdb whose database cannot be read now."""
        problems: list[tuple[str, str]] = []
        for db in self._all:
            for problem in await db.check():
                problems.append((db.source, problem))
        return problems

    # --- user names ----------------------------------------------------------------

    def _fix_username(self, name: str, req: LookupRequest) -> tuple[str | None, str]:
        """auth_request_fix_username(): (fixed name, error)."""
        if self._username_chars is not None:
            for ch in name:
                if ch not in self._username_chars:
                    return None, ("Username character disallowed by auth_username_chars: "
                                  f"0x{ord(ch):02x} (username: {name[:128]})")
        if self._username_format == "%Lu":
            # Dovecot's default auth_username_format, on every login: no table needed.
            name = name.lower()
        elif self._username_format:
            table = auth_table(user=name, service=req.protocol, local_ip=req.local_ip,
                               remote_ip=req.remote_ip, local_port=req.local_port,
                               remote_port=req.remote_port, mechanism=req.mechanism,
                               secured=req.secured, session=req.session_id)
            try:
                name = expand(self._username_format, table)
            except VariableError as e:
                return None, f"Failed to expand username_format={self._username_format}: {e}"
        if not name:
            return None, "Empty username"
        return name, ""

    # --- the chain -----------------------------------------------------------------

    async def authenticate(self, req: LookupRequest) -> PassdbResult:
        """Run the chain as a login would (verify_plain), or as a lookup when
        ``req.password`` is None."""
        auth_name = req.master_user if req.master_user is not None else req.user
        user, error = self._fix_username(auth_name, req)
        if user is None:
            return PassdbResult(AuthOutcome.FAILED, req.user, (), detail=error)
        a = _Auth(request=req, user=user, original_user=auth_name, translated_user=user)
        # auth_request_import_info("forward_fields"): forwarded by a trusted proxy,
        # they behave like extra fields of an earlier passdb (and are passed on).
        for name, value in req.forward_fields:
            a.fields["forward_" + name] = value
        chain = self._normal
        if req.master_user is not None:
            login, error = self._fix_username(req.user, req)
            if login is None:
                return PassdbResult(AuthOutcome.FAILED, req.user, (), detail=error)
            if not login:
                return PassdbResult(
                    AuthOutcome.FAILED, req.user, (),
                    detail="Master user login attempted to use empty login username")
            if login != user:
                if not self._masters:
                    return PassdbResult(
                        AuthOutcome.FAILED, req.user, (),
                        detail=("Attempted master login with no master passdbs "
                                f"(trying to log in as user: {login})"))
                a.login_user = login
                chain = self._masters
        password = _reveal(req.password)
        if password is not None and any(c in password for c in "\001\t\r\n"):
            return PassdbResult(AuthOutcome.FAILED, user, (),
                                detail="Attempted login with password having illegal chars")
        if not chain:
            return PassdbResult(AuthOutcome.TEMPFAIL, user, (),
                                detail="All password databases were skipped")

        index = 0
        result = _R.INTERNAL_FAILURE
        while True:
            p = chain[index]
            a.passdb_id = p.id
            snapshot = dict(a.fields)
            a.passdb_password = None
            a.failed = False
            result = await self._run_one(p, a, password)
            continue_, next_chain, next_index, result = self._handle_result(
                p, a, result, chain, index, snapshot)
            if continue_ and next_chain is not None:
                chain, index = next_chain, next_index
                continue
            break
        return self._finish(a, result)

    def _handle_result(self, p: _Passdb, a: _Auth, result: _R, chain: list[_Passdb],
                       index: int, snapshot: dict[str, str]):  # type: ignore[no-untyped-def]
        """auth_request_handle_passdb_callback(): apply the result rules."""
        if result in (_R.OK, _R.PASSWORD_MISMATCH):
            a.seen_user = True
        if a.failed:
            # The passdb worked but one of its fields refused (allow_nets...): fail this
            # lookup, let the next passdb try.
            if result is _R.OK:
                result = _R.USER_UNKNOWN
            a.failed = False
        if result is _R.USER_DISABLED:
            return False, None, 0, result
        if result is _R.OK:
            rule = p.result_success
            if p.db.master:
                rule = self._master_rule(a)
        elif result is _R.INTERNAL_FAILURE:
            rule = p.result_internalfail
        elif result is _R.NEXT:
            rule = _Rule.CONTINUE
        else:
            rule = p.result_failure
        passdb_continue = False
        if rule is _Rule.RETURN_OK:
            a.passdb_success = True
        elif rule is _Rule.RETURN_FAIL:
            a.passdb_success = False
        elif rule is _Rule.CONTINUE:
            passdb_continue = True
            if result is _R.OK:
                a.skip_password_check = True
        elif rule is _Rule.CONTINUE_OK:
            passdb_continue = True
            a.passdb_success = True
            a.skip_password_check = True
        elif rule is _Rule.CONTINUE_FAIL:
            passdb_continue = True
            a.passdb_success = False
        # nopassword is specific to one passdb and must not leak to the next one.
        a.fields.pop("nopassword", None)
        a.fields.pop("noauthenticate", None)

        if a.login_user is not None and result is _R.OK:
            # auth_request_master_user_login_finish(): the master is authenticated;
            # continue with the normal passdbs for the login user.
            a.master_user = a.user
            a.user = a.login_user
            a.translated_user = a.login_user
            a.login_user = None
            next_chain: list[_Passdb] | None = self._normal
            next_index = 0
        else:
            next_chain, next_index = chain, index + 1
        if next_chain is not None and next_index >= len(next_chain):
            next_chain = None

        if result not in (_R.OK, _R.NEXT):
            a.fields = snapshot              # auth_fields_rollback()

        if passdb_continue and next_chain is not None:
            if result is _R.INTERNAL_FAILURE:
                a.seen_internal_failure = True
            return True, next_chain, next_index, result
        if result is _R.NEXT:
            a.detail = "Last passdb had noauthenticate field, cannot authenticate user"
            result = _R.INTERNAL_FAILURE
        elif a.passdb_success:
            result = _R.OK
        elif a.seen_internal_failure:
            result = _R.INTERNAL_FAILURE
        return False, None, 0, result

    @staticmethod
    def _master_rule(a: _Auth) -> _Rule:
        """A master passdb's success rule.

        Dovecot's ``pass = yes`` (result_success = continue) requires the login user to
        exist in the normal passdbs. There is no per-passdb setting in our config, so a
        ``pass`` field returned by the master passdb carries it (``pass=yes``); it is a
        setting, not the password to send, and is removed. Without it the normal passdbs
        are still consulted (a proxy needs their routing fields) with Dovecot's
        ``continue-ok``: the master login stands even if they do not know the user.
        """
        value = a.fields.pop("pass", None)
        if value is not None and value.strip().lower() in ("yes", "y", "1", "true", ""):
            return _Rule.CONTINUE
        return _Rule.CONTINUE_OK

    def _finish(self, a: _Auth, result: _R) -> PassdbResult:
        fields = tuple(a.fields.items())
        reason = a.fields.get("reason")
        if result is _R.OK:
            outcome = AuthOutcome.OK
            detail = (f"Master user {a.master_user} logging in as {a.user}"
                      if a.master_user is not None else "")
        elif result is _R.INTERNAL_FAILURE:
            outcome = AuthOutcome.TEMPFAIL
            detail = a.tempfail_detail or a.detail
        elif (result is _R.USER_UNKNOWN and not a.seen_user and a.master_user is None
              and a.login_user is None):
            # Dovecot answers a plain FAIL either way; NOUSER means no passdb knew the
            # user at all (what an LMTP lookup needs).
            outcome = AuthOutcome.NOUSER
            detail = _join(a.details) or "unknown user"
        else:
            # mismatch, or a master user who may not log in as this user (AUTHZFAILED)
            outcome = AuthOutcome.FAILED
            detail = _join(a.details) or ("Password mismatch"
                                          if result is _R.PASSWORD_MISMATCH else "unknown user")
        return PassdbResult(outcome, a.user, fields, reason=reason,
                            master_user=a.master_user, detail=detail)

    # --- one passdb ----------------------------------------------------------------

    async def _run_one(self, p: _Passdb, a: _Auth, password: str | None) -> _R:
        cache_key = self._cache_key(p, a)
        if cache_key is not None:
            cached = await self._cache_verify(p, a, cache_key, password, use_expired=False)
            if cached is not None:
                return cached
        try:
            entry = await p.db.lookup(a.state())
        except PassdbTempFail as e:
            a.detail = a.tempfail_detail = f"{p.db.driver}: {e}"
            if cache_key is not None:
                # "If a database lookup fails because of some internal error, but data
                # still exists in the cache (even if expired), the cached data is used."
                cached = await self._cache_verify(p, a, cache_key, password,
                                                  use_expired=True)
                if cached is not None:
                    return cached
            return _R.INTERNAL_FAILURE
        if entry is None:
            a.detail = "unknown user"
            if cache_key is not None:
                self._cache_save(cache_key, a, _R.USER_UNKNOWN, (), password)
            return _R.USER_UNKNOWN
        for key, value in entry.fields:
            self._set_field(a, key, value, entry.default_scheme)
        result = await self._verify_password(a, password, entry.default_scheme)
        if result is _R.OK and "noauthenticate" in a.fields:
            result = _R.NEXT
        if cache_key is not None and result in (_R.OK, _R.PASSWORD_MISMATCH):
            self._cache_save(cache_key, a, result, entry.fields, password)
        return result

    async def _verify_password(self, a: _Auth, password: str | None,
                               default_scheme: str) -> _R:
        """auth_request_password_verify(), with the lookup-only case."""
        if a.skip_password_check or password is None:
            return _R.OK
        if "nopassword" in a.fields:
            return _R.OK
        if a.passdb_password is None:
            a.detail = "No password returned (and no nopassword)"
            return _R.PASSWORD_MISMATCH
        return await self._check(a, a.passdb_password, password, default_scheme)

    async def _check(self, a: _Auth, stored: str, password: str, default_scheme: str) -> _R:
        try:
            ok = await self.verify_hash(stored, password, default_scheme=default_scheme,
                                        user=a.original_user)
        except schemes.SchemeError as e:
            scheme = schemes.split_scheme(stored, default_scheme)[0]
            a.detail = f"Password data is not valid for scheme {scheme}: {e}"
            return _R.PASSWORD_MISMATCH
        if not ok:
            a.detail = "Password mismatch"
            return _R.PASSWORD_MISMATCH
        return _R.OK

    async def verify_hash(self, stored: str, password: str, *, default_scheme: str,
                          user: str | None = None) -> bool:
        """schemes.verify(), off the Trio thread when the scheme is expensive."""
        if not schemes.is_expensive(stored, default_scheme):
            return schemes.verify(stored, password, default_scheme=default_scheme, user=user)
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(self._hash_threads)

        def run() -> bool:
            return schemes.verify(stored, password, default_scheme=default_scheme, user=user)

        return await trio.to_thread.run_sync(run, limiter=self._limiter)

    # --- extra fields (auth_request_set_field) ---------------------------------------------

    def _set_field(self, a: _Auth, name: str, value: str, default_scheme: str) -> None:
        if name not in _SPECIAL_FIELDS and ":" not in name and name:
            a.fields[name] = value       # proxy, host, port, ...: most fields of a login
            return
        if name.endswith(":protected"):
            name = name[: -len(":protected")]
            if name in a.fields:
                return
        elif name.endswith(":remove"):
            a.fields.pop(name[: -len(":remove")], None)
            return
        if not name:
            return
        if name in ("password", "password_noscheme"):
            if a.passdb_password is not None:
                a.detail = "Multiple password values not supported"
                return
            if name == "password" and value.startswith("{") and "}" in value:
                a.passdb_password = value
            else:
                a.passdb_password = "{" + default_scheme + "}" + value
            return
        if name in ("user", "username", "domain"):
            new = self._updated_username(a.user, name, value)
            if not new:
                a.detail = "username attempted to be changed to empty"
                a.failed = True
            else:
                a.user = new
        elif name == "login_user":
            a.login_user = value
        elif name in ("allow_nets", "allow_real_nets"):
            # We know the client's address only (a trusted proxy's forwarded one when
            # there is one), so allow_real_nets checks the same address.
            ok, why = _is_in_nets(a.request.remote_ip, value)
            if not ok:
                a.detail = why.replace("allow_nets", name)
                a.failed = True
        elif name == "fail":
            a.detail = "fail field set"
            a.failed = True
        elif name == "delay_until":
            _ts, _rand, error = parse_delay_until(value, time.time())
            if error is not None:
                a.detail = error
                a.failed = True
        elif name == "noauthenticate":
            a.fields[name] = value
            a.fields["nopassword"] = ""
            return
        elif name == "nopassword":
            if a.passdb_password is not None and "noauthenticate" not in a.fields:
                _scheme, data = schemes.split_scheme(a.passdb_password, default_scheme)
                if data:
                    a.detail = "nopassword set but password is non-empty"
                    return
            a.passdb_password = None
            a.fields[name] = value
            return
        elif name == "passdb_import":
            for item in value.split("\t"):
                key, _eq, val = item.partition("=")
                if key:
                    self._set_field(a, key, val, default_scheme)
            return
        a.fields[name] = value

    @staticmethod
    def _updated_username(old: str, name: str, value: str) -> str:
        """get_updated_username()."""
        if name == "user":
            return value
        local, at, domain = old.partition("@")
        if name == "username":
            if "@" in value:
                return value
            return value + (at + domain if at else "")
        # domain
        return f"{local}@{value}"

    # --- cache (passdb-cache.c) ----------------------------------------------------------

    def _cache_key(self, p: _Passdb, a: _Auth) -> str | None:
        if self._cache is None or not self._cache.enabled or p.db.cache_key is None:
            return None
        state = LookupState(
            request=a.request, user=a.translated_user, original_user=a.original_user,
            login_user=a.login_user, master_user=a.master_user, fields={},
            passdb_id=p.id)
        from .cache import cache_key

        return cache_key(p.id, a.master_user, p.db.cache_key, state.variables())

    async def _cache_verify(self, p: _Passdb, a: _Auth, key: str, password: str | None,
                            *, use_expired: bool) -> _R | None:
        """passdb_cache_verify_plain(): a result from the cache, or None to look up."""
        assert self._cache is not None
        hit = self._cache.lookup(key)
        if hit is None or (hit.expired and not use_expired):
            return None
        node = hit.node
        if node.negative:
            a.detail = "unknown user (cached)"
            return _R.USER_UNKNOWN
        if node.password is None or password is None:
            ret = True               # cached NULL password (nopassword), or lookup only
        else:
            try:
                ret = await self.verify_hash(node.password, password,
                                             default_scheme=_CACHED_PASSWORD_SCHEME,
                                             user=a.original_user)
            except schemes.SchemeError:
                ret = False
            if not ret and (node.last_success or hit.neg_expired):
                # The password may have changed since the last successful login:
                # look it up again (Authentication.Caching, "Normal scenario").
                node.last_success = False
                return None
        node.last_success = ret
        for k, v in node.fields:
            self._set_field(a, k, v, _CACHED_PASSWORD_SCHEME)
        if not ret:
            a.detail = "Password mismatch (cached)"
            return _R.PASSWORD_MISMATCH
        return _R.OK

    def _cache_save(self, key: str, a: _Auth, result: _R,
                    fields: tuple[tuple[str, str], ...], password: str | None) -> None:
        """auth_request_save_cache()."""
        assert self._cache is not None
        if result is _R.USER_UNKNOWN:
            self._cache.insert_negative(key)
            return
        stored = a.passdb_password
        if "nopassword" in a.fields:
            stored = None
        elif stored is None:
            # The passdb gave no password: cache a hash of the one that worked.
            if result is not _R.OK or password is None:
                return
            stored = schemes.generate(_CACHED_PASSWORD_SCHEME, password)
        # The password is cached on its own; every other field is replayed on a hit.
        kept = tuple((k, v) for k, v in fields
                     if _field_name(k) not in ("password", "password_noscheme"))
        self._cache.insert(key, stored, kept, last_success=result is _R.OK)


def build_chain(specs: Sequence[PassdbSpec], *, base_dir: str | os.PathLike[str],
                cache: AuthCache | None = None, **chain_options: object) -> PassdbChain:
    """Build the passdbs of ``specs`` (config order) into a chain.

    Raises PassdbConfigError (with ``.source``) for an unknown driver or bad args.
    """
    from .passwd_file import PasswdFilePassdb
    from .static import StaticPassdb

    passdbs: list[PassDB] = []
    for spec in specs:
        driver = spec.driver.strip().lower()
        try:
            if driver == "static":
                passdbs.append(StaticPassdb(spec.args, master=spec.master, source=spec.source))
            elif driver == "passwd-file":
                passdbs.append(PasswdFilePassdb(spec.args, base_dir=base_dir,
                                                master=spec.master, source=spec.source))
            elif driver in ("sql", "ldap"):
                raise PassdbConfigError(f"driver '{driver}' is not supported yet")
            else:
                raise PassdbConfigError(
                    f"unknown passdb driver '{spec.driver}' "
                    "(supported: static, passwd-file, sql, ldap)")
        except PassdbConfigError as e:
            raise PassdbConfigError(e.message, source=spec.source) from None
    if not any(not db.master for db in passdbs):
        raise PassdbConfigError("at least one passdb without master = true is required",
                                source=specs[0].source if specs else "")
    return PassdbChain(passdbs, cache=cache, **chain_options)  # type: ignore[arg-type]
