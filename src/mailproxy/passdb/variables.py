"""Dovecot %-variable expansion (``src/lib/var-expand.c``, ``src/auth/auth-request-var-expand.c``).

Owns: the template syntax ``%[-][0][width][.[0][-]width]<modifiers><key>`` and
``%{long_key}``, the modifiers (L U E X R H N M D T), ``%%``, the auth request's variable
table (Variables.txt, "work only in Dovecot-auth"), ``%{passdb:name[:default]}``,
``%{userdb:...}`` (always empty here: no userdb), ``%{env:NAME}``, ``%{pid}``,
``%{hostname}``, ``%{uid}``/``%{gid}``, the hash functions (``%{sha256;rounds=2,truncate=32,
salt=x,format=base64:user}``) and ``%{if;a;op;b;then;else}``.

An unknown variable is an error, as in Dovecot (which writes ``UNSUPPORTED_VARIABLE_x``
and fails the lookup with "Failed to expand ..."): ``expand()`` raises UnknownVariable
carrying that partial text, and ``check()`` finds unknown names at config time.

Pure and synchronous; imports nothing from trio or io/.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "VariableError",
    "UnknownVariable",
    "VariableTable",
    "expand",
    "check",
    "has_variables",
    "str_escape",
    "auth_table",
]


class VariableError(ValueError):
    """A template could not be expanded (Dovecot: "Failed to expand ...")."""


class UnknownVariable(VariableError):
    """The template names a variable that does not exist.

    ``partial`` is what Dovecot would have produced (with ``UNSUPPORTED_VARIABLE_<key>``).
    """

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


Escape = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class VariableTable:
    """What the variables expand to.

    ``short`` maps one-character keys (``u``), ``long`` maps long names (``user``); a
    value of None expands to "". ``passdb`` gives ``%{passdb:name}`` (the extra fields
    set so far); ``userdb`` gives ``%{userdb:name}``.
    """

    short: Mapping[str, str | None]
    long: Mapping[str, str | None]
    passdb: Mapping[str, str] = field(default_factory=dict)
    userdb: Mapping[str, str] = field(default_factory=dict)


def str_escape(value: str) -> str:
    """Dovecot str_escape(): backslash before ``"``, ``'`` and ``\\``."""
    return re.sub(r"([\"'\\])", r"\\\1", value)


# --- modifiers -------------------------------------------------------------------------


def _str_hash(value: str) -> int:
    """lib/hash.c str_hash() (the "old hash" of %H)."""
    h = 0
    for byte in value.encode("utf-8", "surrogateescape"):
        h = ((h << 4) + byte) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
            h ^= g
    return h


@dataclass(slots=True)
class _Ctx:
    offset: int = 0
    width: int = 0
    zero_padding: bool = False


def _m_hex(value: str, ctx: _Ctx) -> str:
    try:
        n = int(value, 10) if value.isdigit() else 0
    except ValueError:
        n = 0
    return "%x" % n


def _m_hash(value: str, ctx: _Ctx, new: bool) -> str:
    if new:
        digest = hashlib.md5(value.encode("utf-8", "surrogateescape")).digest()
        n = int.from_bytes(digest[:8], "big")
    else:
        n = _str_hash(value)
    if ctx.width:
        n %= ctx.width
        ctx.width = 0
    text = "%x" % (n & 0xFFFFFFFF)
    # the offset is (ab)used as the zero-padded length: %2.256Nu gives 00..ff
    text = text.rjust(ctx.offset, "0") if ctx.offset > 0 else text
    ctx.offset = 0
    return text


_MODIFIERS: dict[str, Callable[[str, _Ctx], str]] = {
    "L": lambda v, c: v.lower(),
    "U": lambda v, c: v.upper(),
    "E": lambda v, c: str_escape(v),
    "X": _m_hex,
    "R": lambda v, c: v[::-1],
    "H": lambda v, c: _m_hash(v, c, new=False),
    "N": lambda v, c: _m_hash(v, c, new=True),
    "M": lambda v, c: hashlib.md5(v.encode("utf-8", "surrogateescape")).hexdigest(),
    "D": lambda v, c: v.replace(".", ",dc="),
    "T": lambda v, c: v.rstrip(" \t\r\n\v\f"),
}
_MAX_MODIFIERS = 10

_HASH_METHODS = {
    "md4": None, "md5": "md5", "sha1": "sha1", "sha256": "sha256", "sha384": "sha384",
    "sha512": "sha512", "sha3-256": "sha3_256", "sha3-512": "sha3_512",
}


def _hash_bytes(method: str, data: bytes) -> bytes:
    if method == "md4":
        from .schemes import _md4

        return _md4(data)
    algo = _HASH_METHODS[method]
    assert algo is not None
    return hashlib.new(algo, data).digest()


def _truncate_rshift_bits(buf: bytearray, bits: int) -> bytearray:
    """buffer_truncate_rshift_bits(), byte for byte (including its odd shifting)."""
    if len(buf) * 8 < bits:
        return buf
    if bits <= 0:
        return bytearray()
    nbytes = (bits + 7) // 8
    rem = bits % 8
    out = bytearray(buf[: min(nbytes, len(buf))])
    if rem and out:
        for i in range(len(out) - 1, 0, -1):
            out[i] = ((out[i] >> (8 - rem)) + ((out[i - 1] & (0xFF >> rem)) << rem)) & 0xFF
        out[0] = out[0] >> (8 - rem)
    return out


# --- the expander ----------------------------------------------------------------------


class _Expander:
    def __init__(self, table: VariableTable, escape: Escape | None) -> None:
        self.table = table
        self.escape = escape or (lambda s: s)
        self.error: VariableError | None = None
        self.failures = 0

    def fail(self, err: VariableError) -> None:
        self.failures += 1
        if self.error is None:
            self.error = err

    # var_expand_short()
    def short(self, key: str) -> str:
        if key in self.table.short:
            value = self.table.short[key]
            return self.escape(value) if value else ""
        if key == "%":
            return "%"
        self.fail(UnknownVariable(f"Unknown variable '%{key}'"))
        return f"UNSUPPORTED_VARIABLE_{key}"

    # var_expand_long()
    def long(self, key: str) -> str | None:
        if key in self.table.long:
            value = self.table.long[key]
            return self.escape(value) if value else ""
        if key == "pid":
            return str(os.getpid())
        if key == "uid":
            return str(os.geteuid())
        if key == "gid":
            return str(os.getegid())
        if key == "hostname":
            return socket.gethostname()
        name, sep, data = key.partition(":")
        algo = name.split(";", 1)[0]
        if algo.lower() in _HASH_METHODS and sep:
            return self.hash(name, data)
        if algo.lower() == "if":
            return self.conditional(key)
        if algo.lower() == "pkcs5":
            self.fail(VariableError("%{pkcs5:...} is not supported"))
            return ""
        if name == "env":
            return os.environ.get(data, "")
        if name in ("passdb", "userdb"):
            fields = self.table.passdb if name == "passdb" else self.table.userdb
            fname, has_default, default = data.partition(":")
            value = fields.get(fname)
            if value is None:
                value = default if has_default else ""
            return self.escape(value)
        self.fail(UnknownVariable(f"Unknown variable '%{name}'"))
        return f"UNSUPPORTED_VARIABLE_{name}"

    def hash(self, key: str, data: str) -> str:
        algo, _, argtext = key.partition(";")
        if algo not in _HASH_METHODS:
            self.fail(UnknownVariable(f"Unknown variable '%{key}'"))
            return ""
        value = self.long(data)
        if value is None:
            value = ""
        rounds, truncbits, salt, fmt = 1, 0, b"", "hex"
        for arg in argtext.split(",") if argtext else []:
            k, eq, v = arg.partition("=")
            if not eq:
                continue
            if k == "rounds":
                if not v.isdigit() or int(v) < 1:
                    self.fail(VariableError(
                        f"Cannot parse hash arguments:'{v}' is not number for rounds"))
                    return ""
                rounds = int(v)
            elif k == "truncate":
                if not v.isdigit():
                    self.fail(VariableError(
                        f"Cannot parse hash arguments:'{v}' is not number for truncbits"))
                    return ""
                size = len(_hash_bytes(algo, b""))
                truncbits = min(int(v), size * 8)
            elif k == "salt":
                salt = _Expander(self.table, self.escape).run(v, self).encode(
                    "utf-8", "surrogateescape")
                break
            elif k == "format":
                if v not in ("hex", "hexuc", "base64"):
                    self.fail(VariableError(
                        f"Cannot parse hash arguments:'{v}' is not supported format"))
                    return ""
                fmt = v
        buf = value.encode("utf-8", "surrogateescape")
        for _ in range(rounds):
            buf = _hash_bytes(algo, salt + buf)
        out = bytes(_truncate_rshift_bits(bytearray(buf), truncbits)) if truncbits else buf
        if fmt == "base64":
            return base64.b64encode(out).decode("ascii")
        # Dovecot 2.3 prints "hexuc" in lower case too (binary_to_hex for both).
        return out.hex()

    def conditional(self, key: str) -> str:
        """var_expand_if(): %{if;value1;op;value2;then;else}."""
        params: list[str] = []
        buf: list[str] = []
        depth = 0
        escape = maybe_var = False
        text = key[key.index(";") + 1 :] if ";" in key else None
        if text is None:
            self.fail(VariableError("if: missing parameter(s)"))
            return ""
        for ch in text:
            if ch == "\\" and not escape:
                escape = True
                continue
            if escape:
                buf.append(ch)
                escape = False
                continue
            if ch == "%":
                maybe_var = True
            elif maybe_var and ch == "{":
                depth += 1
                maybe_var = False
            elif depth > 0 and ch == "}":
                depth -= 1
            elif depth == 0 and ch == ";":
                params.append("".join(buf))
                buf = []
                continue
            elif depth == 0 and ch == ":":
                break
            buf.append(ch)
        if buf:
            params.append("".join(buf))
        if len(params) == 4:
            params.append("")
        if len(params) != 5:
            self.fail(VariableError(
                f"if: requires four or five parameters, got {len(params)}"))
            return ""
        lhs, op, rhs, yes, no = (_Expander(self.table, self.escape).run(p, self)
                                 for p in params)
        try:
            result = _compare(lhs, op, rhs)
        except VariableError as e:
            self.fail(e)
            return ""
        return yes if result else no

    def run(self, template: str, parent: _Expander | None = None) -> str:
        out: list[str] = []
        s = template
        i, n = 0, len(s)
        while i < n:
            ch = s[i]
            if ch != "%":
                out.append(ch)
                i += 1
                continue
            i += 1
            ctx = _Ctx()
            sign = 1
            if i < n and s[i] == "-":
                sign = -1
                i += 1
            if i < n and s[i] == "0":
                ctx.zero_padding = True
                i += 1
            while i < n and s[i].isdigit() and s[i].isascii():
                ctx.width = ctx.width * 10 + int(s[i])
                i += 1
            if i < n and s[i] == ".":
                ctx.offset = sign * ctx.width
                sign = 1
                ctx.width = 0
                i += 1
                ctx.zero_padding = False
                if i < n and s[i] == "0":
                    ctx.zero_padding = True
                    i += 1
                if i < n and s[i] == "-":
                    sign = -1
                    i += 1
                while i < n and s[i].isdigit() and s[i].isascii():
                    ctx.width = ctx.width * 10 + int(s[i])
                    i += 1
                ctx.width = sign * ctx.width
            modifiers: list[Callable[[str, _Ctx], str]] = []
            while len(modifiers) < _MAX_MODIFIERS and i < n and s[i] in _MODIFIERS:
                modifiers.append(_MODIFIERS[s[i]])
                i += 1
            if i >= n:
                break
            before = self.failures
            if s[i] == "{" and "}" in s[i:]:
                depth = 1
                esc = False
                end = i + 1
                while end < n and depth > 0:
                    c = s[end]
                    if not esc and c == "\\":
                        esc = True
                    elif esc:
                        esc = False
                    elif c == "{":
                        depth += 1
                    elif c == "}":
                        depth -= 1
                    end += 1
                key = s[i + 1 : end - 1] if depth == 0 else s[i + 1 :]
                value = self.long(key)
                i = end
            else:
                value = self.short(s[i])
                i += 1
            if value is None:
                value = ""
            if self.failures != before:
                out.append(value)           # a failed variable: no modifiers
                continue
            for m in modifiers:
                value = m(value, ctx)
            if ctx.offset < 0:
                if len(value) > -ctx.offset:
                    value = value[len(value) + ctx.offset :]
            elif ctx.offset > 0:
                value = value[ctx.offset :]
            if ctx.width == 0:
                out.append(value)
            elif not ctx.zero_padding:
                width = ctx.width if ctx.width > 0 else len(value) + ctx.width
                # a negative result becomes a huge size_t in Dovecot: the whole value
                out.append(value[:width] if width >= 0 else value)
            else:
                out.append(value.rjust(ctx.width, "0"))
        if parent is not None and self.error is not None:
            parent.fail(self.error)
        return "".join(out)


def _wildcard(value: str, mask: str) -> bool:
    """wildcard_match(): * and ? only."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in mask)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _compare(lhs: str, op: str, rhs: str) -> bool:
    numeric = {"==": lambda a, b: a == b, "<": lambda a, b: a < b,
               "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
               ">=": lambda a, b: a >= b, "!=": lambda a, b: a != b}
    if op in numeric:
        try:
            a = int(lhs)
        except ValueError:
            raise VariableError(f"if: {lhs} (lhs) is not a number") from None
        try:
            b = int(rhs)
        except ValueError:
            raise VariableError(f"if: {rhs} (rhs) is not a number") from None
        return numeric[op](a, b)
    if op == "eq":
        return lhs == rhs
    if op == "ne":
        return lhs != rhs
    if op == "lt":
        return lhs < rhs
    if op == "le":
        return lhs <= rhs
    if op == "gt":
        return lhs > rhs
    if op == "ge":
        return lhs >= rhs
    if op == "*":
        return _wildcard(lhs, rhs)
    if op == "!*":
        return not _wildcard(lhs, rhs)
    if op in ("~", "!~"):
        try:
            matched = re.search(rhs, lhs) is not None
        except re.error as e:
            raise VariableError(f"if: regex failed: {e}") from None
        return matched != (op == "!~")
    raise VariableError(f"if: Unsupported comparator '{op}'")


def expand(template: str, table: VariableTable, *, escape: Escape | None = None) -> str:
    """Expand ``template``; ``escape`` is applied to every value taken from ``table``.

    Raises UnknownVariable (with ``.partial``) or VariableError like Dovecot's
    var_expand() returning <= 0.
    """
    if "%" not in template:
        return template
    ex = _Expander(table, escape)
    result = ex.run(template)
    if ex.error is not None:
        if isinstance(ex.error, UnknownVariable):
            raise UnknownVariable(str(ex.error), result)
        raise ex.error
    return result


def has_variables(template: str) -> bool:
    """True if expanding may change the text (anything but literal text and ``%%``)."""
    return "%" in template.replace("%%", "")


def check(template: str) -> None:
    """Raise UnknownVariable if ``template`` names a variable the auth table lacks.

    For config-time validation: other problems (an ``%{if}`` comparing non-numbers)
    depend on the values and are only found when expanding.
    """
    if "%" not in template:
        return
    ex = _Expander(_DUMMY_TABLE, None)
    ex.run(template)
    if isinstance(ex.error, UnknownVariable):
        raise ex.error


# --- the auth request's table ------------------------------------------------------------

# auth_request_var_expand_static_tab: (short key, long key); aliases at the end.
_AUTH_KEYS: tuple[tuple[str | None, str], ...] = (
    ("u", "user"), ("n", "username"), ("d", "domain"), ("s", "service"), ("h", "home"),
    ("l", "lip"), ("r", "rip"), ("p", "pid"), ("w", "password"), ("!", ""),
    ("m", "mech"), ("c", "secured"), ("a", "lport"), ("b", "rport"), ("k", "cert"),
    (None, "login_user"), (None, "login_username"), (None, "login_domain"),
    (None, "session"), (None, "real_lip"), (None, "real_rip"), (None, "real_lport"),
    (None, "real_rport"), (None, "domain_first"), (None, "domain_last"),
    (None, "master_user"), (None, "session_pid"), (None, "orig_user"),
    (None, "orig_username"), (None, "orig_domain"), (None, "auth_user"),
    (None, "auth_username"), (None, "auth_domain"), (None, "local_name"),
    (None, "client_id"), (None, "local_ip"), (None, "remote_ip"), (None, "local_port"),
    (None, "remote_port"), (None, "real_local_ip"), (None, "real_remote_ip"),
    (None, "real_local_port"), (None, "real_remote_port"), (None, "mechanism"),
    (None, "original_user"), (None, "original_username"), (None, "original_domain"),
)

_DUMMY_TABLE = VariableTable(
    short={k: "" for k, _ in _AUTH_KEYS if k},
    long={name: "" for _, name in _AUTH_KEYS if name},
)


def _user_parts(user: str | None) -> tuple[str | None, str | None, str | None]:
    if user is None:
        return None, None, None
    name, at, domain = user.partition("@")
    return user, name, domain if at else None


def auth_table(
    *,
    user: str,
    service: str,
    local_ip: str = "",
    remote_ip: str = "",
    local_port: int = 0,
    remote_port: int = 0,
    password: str | None = None,
    mechanism: str = "",
    secured: bool = False,
    session: str = "",
    passdb_id: int = 0,
    login_user: str | None = None,
    master_user: str | None = None,
    original_user: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> VariableTable:
    """The variables of an auth request (auth_request_get_var_expand_table_full()).

    ``user`` is the current user name (after passdb ``user=`` changes), ``original_user``
    the name as it reached the passdb chain, ``login_user`` the user a master user logs
    in as (during the master passdb lookup), ``fields`` the extra fields set so far.
    Addresses and ports of a connection relayed by a trusted proxy are the client's;
    the ``real_*`` variables equal them (the peer proxy is not known here).
    """
    u, n, d = _user_parts(user)
    orig = original_user if original_user is not None else user
    ou, on, od = _user_parts(orig)
    au, an, ad = _user_parts(master_user if master_user is not None else orig)
    lu, ln, ld = _user_parts(login_user)
    domain_first = domain_last = None
    if "@" in user:
        rest = user.split("@", 1)[1]
        domain_first = rest.split("@", 1)[0]
        domain_last = user.rsplit("@", 1)[1]
    lip = local_ip or None
    rip = remote_ip or None
    values: dict[str, str | None] = {
        "user": u, "username": n, "domain": d, "service": service, "home": None,
        "lip": lip, "rip": rip, "pid": str(os.getpid()), "password": password,
        "": str(passdb_id), "mech": mechanism, "secured": "secured" if secured else "",
        "lport": str(local_port), "rport": str(remote_port), "cert": "",
        "login_user": lu, "login_username": ln, "login_domain": ld,
        "session": session or None, "real_lip": lip, "real_rip": rip,
        "real_lport": str(local_port), "real_rport": str(remote_port),
        "domain_first": domain_first, "domain_last": domain_last,
        "master_user": master_user, "session_pid": None,
        "orig_user": ou, "orig_username": on, "orig_domain": od,
        "auth_user": au, "auth_username": an, "auth_domain": ad,
        "local_name": None, "client_id": None,
        "local_ip": lip, "remote_ip": rip, "local_port": str(local_port),
        "remote_port": str(remote_port), "real_local_ip": lip, "real_remote_ip": rip,
        "real_local_port": str(local_port), "real_remote_port": str(remote_port),
        "mechanism": mechanism, "original_user": ou, "original_username": on,
        "original_domain": od,
    }
    short = {k: values[name] for k, name in _AUTH_KEYS if k}
    long = {name: values[name] for _, name in _AUTH_KEYS if name}
    # not copied: %{passdb:name} must see fields set while a line is being expanded
    return VariableTable(short=short, long=long, passdb=fields if fields is not None else {})
