"""The passwd-file passdb (AuthDatabase.PasswdFile; Dovecot's ``db-passwd-file.c``,
``passdb-passwd-file.c``).

Owns: the args (``scheme=X username_format=F PATH``, PATH may hold %variables for one
file per domain/user, relative paths are relative to the config file's directory), the
file format (``user:password:uid:gid:gecos:home:shell:extra_fields``, fewer fields allowed,
``#`` comments, the libpam-pwdfile ``password[13]``/``[34]``/``[56]`` forms, the old
format whose 8th field is empty), and re-reading a file when it changes.

Each lookup stats the file (mtime, size, inode, device) and re-parses it off the Trio
thread only when that changed; the parsed users are kept in a dict. A missing file means
"unknown user" (Dovecot: "missing passwd file"), any other read error is a temporary
failure.
"""

from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass, field

import trio

from . import schemes
from .base import LookupState, PassdbConfigError, PassdbEntry, PassdbTempFail
from .variables import (UnknownVariable, VariableError, check, expand, has_variables,
                        str_escape)

__all__ = ["PasswdFilePassdb", "PasswdUser", "parse_passwd_file", "parse_args"]

DEFAULT_SCHEME = "CRYPT"                 # PASSWD_FILE_DEFAULT_SCHEME
DEFAULT_USERNAME_FORMAT = "%u"           # PASSWD_FILE_DEFAULT_USERNAME_FORMAT


@dataclass(frozen=True, slots=True, repr=False)
class PasswdUser:
    password: str | None                          # as in the file (None: no field)
    extra_fields: tuple[tuple[str, str], ...]     # unexpanded, in file order

    def __repr__(self) -> str:
        return (f"PasswdUser(password={'***' if self.password else self.password!r}, "
                f"extra_fields={self.extra_fields!r})")


def parse_passwd_file(text: str) -> tuple[dict[str, PasswdUser], list[str]]:
    """The users of a passwd-file and the problems Dovecot would log (passwd_file_add())."""
    users: dict[str, PasswdUser] = {}
    problems: list[str] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line or line[0] in ":#":
            continue                                # no username, or a comment
        parts = line.split(":")
        username = parts[0]
        password: str | None = parts[1] if len(parts) > 1 else None
        if username in users:
            problems.append(f"line {lineno}: User {username} exists more than once")
            continue
        if (password is not None and len(password) > 4 and password[0] not in "{$"
                and password[-1] == "]" and password[-4] == "["):
            # password[type], libpam-pwdfile compatible: 13 = DES, 34 = MD5,
            # 56 = Digest-MD5 (Dovecot's own old form)
            kind = password[-3:-1]
            bare = password[:-4]
            if kind == "34":
                password = "{PLAIN-MD5}" + bare
            elif kind == "56":
                password = "{DIGEST-MD5}" + bare
                if len(password) != 32 + 12:
                    problems.append(f"line {lineno}: User {username} has invalid password")
                    continue
            else:
                password = "{CRYPT}" + bare
        extra: tuple[tuple[str, str], ...] = ()
        # parts[2:7] are uid, gid, gecos, home, shell (userdb only); an empty 8th field
        # is the old format whose 9th field is userdb mail.
        if len(parts) > 7 and parts[7] != "":
            pairs = []
            for item in ":".join(parts[7:]).split(" "):
                if not item:
                    continue
                key, _eq, value = item.partition("=")
                pairs.append((key, value))
            extra = tuple(pairs)
        users[username] = PasswdUser(password, extra)
    return users, problems


def parse_args(args: str) -> tuple[str, str, str]:
    """passwd_file_preinit(): (scheme, username_format, path).

    ``scheme=`` and ``username_format=`` come before the path; the rest of the line is
    the path (Dovecot stops at a token starting with ``/``; a relative path, which
    Dovecot would reject as an unknown setting, is taken as a path here).
    """
    scheme, fmt = DEFAULT_SCHEME, DEFAULT_USERNAME_FORMAT
    rest = args.strip()
    while rest:
        if rest.startswith("/"):
            break
        token, _sp, after = rest.partition(" ")
        key, eq, value = token.partition("=")
        if not eq:
            break                                   # a relative path
        if key == "scheme":
            try:
                scheme = schemes.canonical_scheme(value)
            except schemes.UnknownScheme:
                raise PassdbConfigError(
                    f"passwd-file: unknown password scheme '{value}'") from None
        elif key == "username_format":
            fmt = value
        else:
            raise PassdbConfigError(f"passwd-file: Unknown setting: {key}")
        rest = after.lstrip()
    if not rest:
        raise PassdbConfigError("passwd-file: Missing args (no file path)")
    return scheme, fmt, rest


class _PathTraversal(Exception):
    pass


def _path_fix(value: str) -> str:
    """path_fix(): a variable's value may not add directories to the path."""
    value = value.split("/", 1)[0]
    if value in (".", ".."):
        raise _PathTraversal(value)
    return value


@dataclass(slots=True)
class _File:
    path: str
    users: dict[str, PasswdUser] | None = None
    signature: tuple[int, int, int, int] | None = None
    problems: list[str] = field(default_factory=list)
    lock: trio.Lock | None = None


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _read(path: str) -> tuple[tuple[int, int, int, int], dict[str, PasswdUser], list[str]]:
    """Open, fstat and parse (runs in a worker thread)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if stat_mod.S_ISDIR(st.st_mode):
            raise IsADirectoryError(path)
        data = f.read()
    users, problems = parse_passwd_file(data.decode("utf-8", "surrogateescape"))
    return _signature(st), users, problems


class PasswdFilePassdb:
    """Users from a Dovecot passwd-file (or one file per %variable expansion)."""

    driver = "passwd-file"
    cache_key: str | None = None   # the file is already in memory; Dovecot has no key either

    def __init__(self, args: str, *, base_dir: str | os.PathLike[str] = ".",
                 master: bool = False, source: str = "") -> None:
        self.source = source
        self.master = master
        scheme, fmt, path = parse_args(args)
        for what, template in (("username_format", fmt), ("path", path)):
            try:
                check(template)
            except UnknownVariable as e:
                raise PassdbConfigError(f"passwd-file: {what}: {e}") from None
        if not path.startswith("/"):
            path = os.path.join(os.fspath(base_dir), path)
        self.scheme = scheme
        self.username_format = fmt
        self._has_vars = has_variables(path)
        if not self._has_vars and "%" in path:
            path = path.replace("%%", "%")          # only escaped %% chars
        self.path = path
        self._files: dict[str, _File] = {}
        self._limiter: trio.CapacityLimiter | None = None

    def __repr__(self) -> str:
        return (f"PasswdFilePassdb(path={self.path!r}, scheme={self.scheme!r}, "
                f"username_format={self.username_format!r}, master={self.master})")

    # --- files ---------------------------------------------------------------------

    async def _sync(self, pf: _File) -> dict[str, PasswdUser] | None:
        """passwd_file_sync(): the users, re-read if the file changed; None if missing."""
        try:
            sig = _signature(os.stat(pf.path))
        except FileNotFoundError:
            pf.users, pf.signature = None, None
            return None
        except OSError as e:
            raise PassdbTempFail(f"stat({pf.path}) failed: {e.strerror or e}") from e
        if pf.users is not None and pf.signature == sig:
            return pf.users
        if pf.lock is None:
            pf.lock = trio.Lock()
        async with pf.lock:
            if pf.users is not None and pf.signature == sig:
                return pf.users          # another lookup re-read it meanwhile
            if self._limiter is None:
                self._limiter = trio.CapacityLimiter(2)
            try:
                new_sig, users, problems = await trio.to_thread.run_sync(
                    _read, pf.path, limiter=self._limiter)
            except FileNotFoundError:
                pf.users, pf.signature = None, None
                return None
            except OSError as e:
                raise PassdbTempFail(f"open({pf.path}) failed: {e.strerror or e}") from e
            pf.users, pf.signature, pf.problems = users, new_sig, problems
            return users

    def _file_for(self, state: LookupState) -> _File | None:
        if not self._has_vars:
            path = self.path
        else:
            table = state.variables()
            try:
                path = expand(self.path, table, escape=_path_fix)
            except _PathTraversal:
                return None
            except VariableError as e:
                raise PassdbTempFail(
                    f"Failed to expand passwd-file path {self.path}: {e}") from e
        pf = self._files.get(path)
        if pf is None:
            pf = self._files[path] = _File(path)
        return pf

    # --- PassDB ----------------------------------------------------------------------

    async def lookup(self, state: LookupState) -> PassdbEntry | None:
        pf = self._file_for(state)
        if pf is None:
            return None
        users = await self._sync(pf)
        if users is None:
            if self._has_vars:
                self._files.pop(pf.path, None)       # passwd_file_free()
            return None
        try:
            username = expand(self.username_format, state.variables(), escape=str_escape)
        except VariableError as e:
            raise PassdbTempFail(
                f"Failed to expand username_format={self.username_format}: {e}") from e
        pu = users.get(username)
        if pu is None:
            return None
        password = pu.password if pu.password is not None else ""
        scheme, data = schemes.split_scheme(password, self.scheme)
        if password.startswith("$1$") and scheme == "MD5-CRYPT":
            password = "{MD5-CRYPT}" + data          # password_get_scheme()'s $1$ rule
        fields = [("password", password)]
        fields.extend(pu.extra_fields)
        return PassdbEntry(state.expand_fields(fields), default_scheme=self.scheme)

    async def check(self) -> list[str]:
        """Read the file now (when its path has no variables) and report problems."""
        if self._has_vars:
            return []
        pf = self._files.get(self.path) or self._files.setdefault(self.path, _File(self.path))
        try:
            users = await self._sync(pf)
        except PassdbTempFail as e:
            return [str(e)]
        if users is None:
            return [f"missing passwd file: {self.path}"]
        problems = [f"{self.path}: {p}" for p in pf.problems]
        for name, user in users.items():
            for key, value in user.extra_fields:
                try:
                    check(value)
                except UnknownVariable as e:
                    problems.append(f"{self.path}: user {name}: {key}: {e}")
        return problems

    async def aclose(self) -> None:
        self._files.clear()
